"""Tiny random checkpoints for tests and the demo: transformers Llava / LlavaNext / LlavaOnevision
models with small SigLIP + Qwen2 configs and a byte-level ChatML tokenizer, built in memory (no
network), optionally saved as a checkpoint folder that `from_pretrained` loads.

`widths="real"` gives SigLIP-so400m / Qwen2-0.5B widths (1152 / 1024, real vocabulary size) with
few layers, for benchmarks of the glue around the big matmuls.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from . import plan as planning

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
KINDS = ("llava", "llava_next", "onevision")


def tiny_tokenizer():
    """A byte-level tokenizer (every UTF-8 byte is a token, no merges) with Qwen's ChatML special
    tokens: ids 0..255 bytes, then <|im_end|> 256 (eos), <|endoftext|> 257 (pad), <|im_start|> 258,
    <image> 259, <video> 260."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_map = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_map))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:])
    fast.padding_side = "left"
    return fast


def tiny_model(kind: str = "llava", *, widths: str = "tiny", vision_layers: int = 2, text_layers: int = 2,
               tile: Optional[int] = None, seed: int = 0, image_token_id: int = 259, video_token_id: int = 260,
               vocab_size: Optional[int] = None, text_head_dim: Optional[int] = None, device=None):
    """A random transformers model of `kind`. widths='tiny': SigLIP 32 wide with 28-pixel tiles
    (2x2 features); 'real': SigLIP 1152 (MLP 4304, 16 heads, 384-pixel tiles, 27x27 features) and
    Qwen2 1024 (MLP 2816, 16 heads, 2 KV heads), vocabulary 152000. text_head_dim: the LLM's head
    width (default hidden / heads: 12 for 'tiny'; FlexAttention's GPU kernels need at least 16).
    device: where the weights are made and initialized (the 0.5B-depth benchmark model took ~27 s
    of initialization on this project's 2-core host; on a GPU, milliseconds). The random values
    depend on the device's generator: the same seed gives other weights on another device."""
    import transformers

    if kind not in KINDS:
        raise ValueError(f"tiny_model: kind must be one of {KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    if widths == "tiny":
        tile = tile or 28
        vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                                                 num_attention_heads=2, image_size=tile, patch_size=14,
                                                 vision_use_head=False)
        text = transformers.Qwen2Config(vocab_size=vocab_size or 300, hidden_size=48, intermediate_size=96,
                                        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=4096, tie_word_embeddings=True,
                                        **({"head_dim": text_head_dim} if text_head_dim else {}))
    elif widths == "real":
        tile = tile or planning.TILE
        vision = transformers.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=vision_layers,
                                                 num_attention_heads=16, image_size=tile, patch_size=14,
                                                 layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                                 vision_use_head=False)
        text = transformers.Qwen2Config(vocab_size=vocab_size or 152000, hidden_size=1024, intermediate_size=2816,
                                        num_hidden_layers=text_layers, num_attention_heads=16, num_key_value_heads=2,
                                        max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True)
    else:
        raise ValueError(f"tiny_model: widths must be 'tiny' or 'real', got {widths!r}")
    # No attention-pooling head on the tower, as in the published checkpoints (LLaVA's SigLIP tower
    # drops it; transformers' LlavaOnevisionConfig defaults to vision_use_head=False): with it,
    # transformers' get_image_features would run a head no checkpoint has, inflating the reference.
    if widths == "real":  # OneVision's 6x6 grid of 384-pixel tiles
        grid = [list(p) for p in planning.ONEVISION_PINPOINTS]
    else:  # up to 3x3 tiles
        grid = [[tile * r, tile * c] for r in range(1, 4) for c in range(1, 4) if r * c > 1]
    common = dict(vision_config=vision, text_config=text, image_token_id=image_token_id,
                  vision_feature_layer=-1, vision_feature_select_strategy="full")
    if kind == "llava":
        config, cls = transformers.LlavaConfig(**common), transformers.LlavaForConditionalGeneration
    elif kind == "llava_next":
        config = transformers.LlavaNextConfig(image_grid_pinpoints=grid, **common)
        cls = transformers.LlavaNextForConditionalGeneration
    else:
        config = transformers.LlavaOnevisionConfig(image_grid_pinpoints=grid, video_token_id=video_token_id,
                                                   vision_aspect_ratio="anyres_max_9", **common)
        cls = transformers.LlavaOnevisionForConditionalGeneration
    # (torch.manual_seed above seeds every device's generator.)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return cls(config).eval()


def save_tiny_checkpoint(path: str, kind: str = "llava", **kwargs) -> str:
    """Saves a tiny random model of `kind` and the byte-level tokenizer to `path` (a checkpoint folder
    in transformers' layout); returns the path."""
    model = tiny_model(kind, **kwargs)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
