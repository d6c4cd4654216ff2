"""interleave.generate (this module: interleave.generation): text from image/video/3D + text prompts with an InterleaveModel.

    generate(model, "<image><image>What changed?", [img_a, img_b])                  # one prompt -> str
    generate(model, [p1, p2], [[a], [b, c]], do_sample=True, top_p=0.9)             # batch -> list[str]
    for piece in generate(model, prompt, images, stream=True): print(piece, end="")  # streaming

Prompts of a batch may hold different numbers and kinds of visual inputs: they are left-padded
(InterleaveModel.prepare). The visual path runs once, at prefill (transformers' generation passes
the pixels to the first forward only; decode steps reuse the KV cache). Decoding is transformers'
own `generate` (greedy, sampling with temperature / top-p / top-k, stop strings and ids, static
cache for CUDA graphs with `static_cache=True`).
"""
from __future__ import annotations

import threading
from typing import Iterator, Optional, Sequence, Union


def generate(model, prompts: Union[str, Sequence[str]], visuals=None, *, max_new_tokens: int = 64,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop: Optional[Sequence[Union[str, int]]] = None, static_cache: bool = False, stream: bool = False,
             chat: bool = True, system: Optional[str] = "You are a helpful assistant.",
             image_format: str = "interleaved", seed: Optional[int] = None):
    """Returns the generated text (a str for one prompt, a list for a batch), or with stream=True an
    iterator of text pieces (one prompt only). stop: strings and/or token ids that end a sequence
    (the tokenizer's eos, `<|im_end|>` for Qwen, always does)."""
    import torch

    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if visuals is not None and single and (not visuals or not isinstance(visuals[0], (list, tuple))):
        visuals = [visuals]
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if stream and len(prompts) != 1:
        raise ValueError("generate: stream=True takes one prompt")
    batch = model.prepare(prompts, visuals, chat=chat, system=system, image_format=image_format)
    tokenizer = model.tokenizer
    stop = list(stop or [])
    eos = [t for t in stop if isinstance(t, int)]
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=sorted(set(eos)) or None)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
    strings = [s for s in stop if isinstance(s, str)]
    if strings:
        kwargs.update(stop_strings=strings, tokenizer=tokenizer)
    if static_cache:
        kwargs["cache_implementation"] = "static"
    if seed is not None:
        torch.manual_seed(seed)
    prompt_len = batch["input_ids"].shape[1]
    if stream:
        return _until_stop(_stream(model, batch, kwargs), strings)
    with torch.inference_mode():
        out = model.hf.generate(**batch, **kwargs)
    texts = [_trim(tokenizer.decode(row[prompt_len:], skip_special_tokens=True), strings) for row in out]
    return texts[0] if single else texts


def _trim(text: str, stop_strings: Sequence[str]) -> str:
    """Cuts the text at the first stop string (generation stops after producing it)."""
    cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def _until_stop(pieces, stop_strings: Sequence[str]) -> Iterator[str]:
    """The streamed pieces cut as _trim cuts the whole text: a piece's tail that could begin a stop
    string is held back until the next piece tells, and nothing from the first stop string on is
    yielded (transformers stops generating there, but its streamer has already sent that text)."""
    if not stop_strings:
        yield from pieces
        return
    held = ""
    for piece in pieces:
        held += piece
        cut = min((held.find(s) for s in stop_strings if s in held), default=-1)
        if cut >= 0:
            if cut:
                yield held[:cut]
            return
        keep = max((k for s in stop_strings for k in range(1, len(s)) if held.endswith(s[:k])), default=0)
        if len(held) > keep:
            yield held[:len(held) - keep]
            held = held[len(held) - keep:]
    if held:
        yield held


def _stream(model, batch, kwargs) -> Iterator[str]:
    import torch
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors = []

    def run():
        try:
            with torch.inference_mode():
                model.hf.generate(**batch, **kwargs, streamer=streamer)
        except BaseException as e:  # surfaced in the consumer's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for piece in streamer:
        yield piece
    thread.join()
    if errors:
        raise errors[0]
