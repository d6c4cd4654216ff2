"""Prompts: Qwen ChatML with image/video placeholders, expanded to each input's token count.

    text = chat_prompt([("user", "<image><image>What differs?")], image_format="interleaved")
    ids = encode(tokenizer, text, plans, image_token_id=151646)   # placeholders expanded

REFERENCE.md section 9. A turn's `<image>` / `<video>` placeholders either stay where the text puts
them ("interleaved") or all move to the front of the turn, one per line ("front": LLaVA's
in-the-front format); the paper trains on a mix and evaluates either way. Each placeholder is
expanded to its input's token count from interleave.plan (what transformers' processors do with
`num_image_tokens`), so the ids match the features `pack_tokens` produces, in order.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Union

from . import plan as planning

IMAGE = "<image>"
VIDEO = "<video>"
DEFAULT_SYSTEM = "You are a helpful assistant."
FORMATS = ("interleaved", "front")
_PLACEHOLDER = re.compile(r"(<image>|<video>)")

Turn = tuple[str, str]  # (role, text): role "system" | "user" | "assistant"


def apply_format(text: str, image_format: str = "interleaved") -> str:
    """'interleaved': unchanged. 'front': every placeholder of the text first, one per line, then the
    text without them (stripped)."""
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {FORMATS}, got {image_format!r}")
    if image_format == "interleaved":
        return text
    holders = _PLACEHOLDER.findall(text)
    rest = _PLACEHOLDER.sub("", text).strip()
    return "".join(h + "\n" for h in holders) + rest


def chat_prompt(turns: Union[str, Sequence[Turn]], system: Optional[str] = DEFAULT_SYSTEM,
                image_format: str = "interleaved", add_generation_prompt: bool = True) -> str:
    """Qwen ChatML: `<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...<|im_end|>\\n` and,
    with add_generation_prompt, `<|im_start|>assistant\\n`. A plain string is one user turn.
    system=None leaves the system turn out (as transformers' chat template for these models)."""
    if isinstance(turns, str):
        turns = [("user", turns)]
    parts = []
    if system is not None:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    for role, text in turns:
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"chat_prompt: role must be system, user or assistant, got {role!r}")
        if role == "user":
            text = apply_format(text, image_format)
        parts.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def count_placeholders(text: str) -> tuple[int, int]:
    holders = _PLACEHOLDER.findall(text)
    return holders.count(IMAGE), holders.count(VIDEO)


def _token_id(tokenizer, token: str, given: Optional[int]) -> Optional[int]:
    if given is not None:
        return int(given)
    tid = tokenizer.convert_tokens_to_ids(token)
    return None if tid is None or tid == getattr(tokenizer, "unk_token_id", None) else int(tid)


def encode(tokenizer, text: str, plans: Sequence, *, image_token_id: Optional[int] = None,
           video_token_id: Optional[int] = None) -> list[int]:
    """Token ids of `text` with the k-th placeholder expanded to plans[k].num_tokens copies of its
    token id (`<image>` takes an ImagePlan, `<video>` a VideoPlan, in order). Text between
    placeholders is tokenized without special-token additions; ChatML markers in the text are the
    tokenizer's special tokens."""
    pieces = _PLACEHOLDER.split(text)
    holders = pieces[1::2]
    if len(holders) != len(plans):
        n_img, n_vid = count_placeholders(text)
        raise ValueError(f"encode: the prompt has {n_img} <image> and {n_vid} <video> placeholders "
                         f"({len(holders)} in all) but {len(plans)} visual inputs were given")
    ids: list[int] = []
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            if piece:
                ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
            continue
        p = plans[k // 2]
        is_video = isinstance(p, planning.VideoPlan)
        if (piece == VIDEO) != is_video:
            raise ValueError(f"encode: placeholder {k // 2} is {piece} but its input is "
                             f"{'a video' if is_video else 'an image'}")
        tid = _token_id(tokenizer, piece, video_token_id if is_video else image_token_id)
        if tid is None:
            raise ValueError(f"encode: the tokenizer has no {piece} token and no id was given")
        ids.extend([tid] * p.num_tokens)
    return ids


def encode_chat(tokenizer, turns: Sequence[Turn], plans: Sequence, *, system: Optional[str] = DEFAULT_SYSTEM,
                image_format: str = "interleaved", image_token_id: Optional[int] = None,
                video_token_id: Optional[int] = None, ignore_index: int = -100) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a whole conversation for training: labels are the ids of the
    assistant turns' text and their `<|im_end|>\\n`, ignore_index everywhere else (system, user
    turns, the `<|im_start|>assistant\\n` header, and every visual position)."""
    ids: list[int] = []
    labels: list[int] = []
    used = 0

    def add(text, learn):
        nonlocal used
        n_img, n_vid = count_placeholders(text)
        part_plans = plans[used:used + n_img + n_vid]
        used += n_img + n_vid
        part = encode(tokenizer, text, part_plans, image_token_id=image_token_id, video_token_id=video_token_id)
        ids.extend(part)
        labels.extend(part if learn else [ignore_index] * len(part))

    if system is not None:
        add(f"<|im_start|>system\n{system}<|im_end|>\n", False)
    for role, text in turns:
        if role == "assistant":
            add("<|im_start|>assistant\n", False)
            add(f"{text}<|im_end|>\n", True)
        else:
            add(f"<|im_start|>{role}\n{apply_format(text, image_format) if role == 'user' else text}<|im_end|>\n", False)
    if used != len(plans):
        raise ValueError(f"encode_chat: the conversation has {used} placeholders but {len(plans)} visual inputs were given")
    visual = {i for i in (image_token_id, video_token_id) if i is not None}
    labels = [ignore_index if t in visual else lab for t, lab in zip(ids, labels)]
    return ids, labels
