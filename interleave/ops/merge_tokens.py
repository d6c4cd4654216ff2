"""merge_tokens: the LLM's input embeddings with the visual rows scattered into the placeholders.

    inputs_embeds = merge_tokens(input_ids, embed_weight, visual, image_token_id)
    # input_ids [B, L] int64, embed_weight [V, D], visual [K, D]  ->  [B, L, D] in embed_weight's dtype

Bitwise equal to transformers' `embed_tokens(input_ids).masked_scatter(mask, visual.to(dtype))`
(LlavaModel.forward), in one pass that writes each output row once. Gradients flow to `visual` (a
gather) and to `embed_weight` (text rows accumulated in position order, deterministic).

Host syncs. With `num_placeholders=None` (default) the CUDA op counts the placeholders and checks
the text ids on the device, then reads that result back once (one host sync) so that a mismatch
raises ValueError before anything is written. Passing `num_placeholders` (the processor knows it:
the sum of the images' token counts) makes the op sync-free: the same checks run on the device and a
failure becomes a device-side assertion; no kernel ever reads or writes out of bounds. The CPU op
always checks before writing (no sync involved). The backward never syncs.
"""
from __future__ import annotations

import contextlib
import operator
from typing import Optional, Sequence, Union

import torch

from .. import _extension, reference

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_OP = "interleave::merge_tokens"
# Which devices have a compiled kernel, looked up once: the dispatcher query is not traceable by
# torch.compile, a dict lookup is.
_KERNELS = {dev: _extension.has_op_kernel(_OP, dev) for dev in ("cpu", "cuda")}


def _placeholder_ids(image_token_id: Union[int, Sequence[int]]) -> list[int]:
    try:
        ids = [operator.index(image_token_id)]
    except TypeError:
        ids = [operator.index(i) for i in image_token_id]
    if not 1 <= len(ids) <= 8:
        raise ValueError(f"merge_tokens: image_token_id must be an int or 1..8 ints, got {ids}")
    return ids


@contextlib.contextmanager
def cuda_min_chunk(positions: int):
    """Within the block, the CUDA kernels give each block at least `positions` token positions
    (default 32; the chunk is also at least n / 1024). Smaller chunks mean more blocks copying fewer
    rows each, for short sequences. For tests and benchmarks."""
    if not 1 <= int(positions) <= 4096:
        raise ValueError(f"cuda_min_chunk: positions must be in [1, 4096], got {positions}")
    with _extension.native_setting("_set_merge_min_chunk", int(positions)):
        yield


@contextlib.contextmanager
def cuda_lookback(enabled: bool = True):
    """Within the block, the sync-free CUDA forward (`num_placeholders` given) is one launch whose
    blocks find the placeholders before their chunk by a decoupled look-back, at any length (off
    by default: the de8175c H100 run timed it 1-5% slower than the self count at 8192 positions;
    `INTERLEAVE_MERGE_LOOKBACK=1` starts it on). Off: the self count of `cuda_self_count_max`.
    For tests and benchmarks."""
    with _extension.native_setting("_set_merge_lookback", bool(enabled)):
        yield


@contextlib.contextmanager
def cuda_flat_loads(loads: int):
    """Within the block, each thread of the CUDA forward's row copy has `loads` 16-byte loads in
    flight (8 by default, or 16). For tests and benchmarks."""
    if int(loads) not in (8, 16):
        raise ValueError(f"cuda_flat_loads: loads must be 8 or 16, got {loads}")
    with _extension.native_setting("_set_merge_flat_loads", int(loads)):
        yield


@contextlib.contextmanager
def cuda_self_count_max(positions: int):
    """Within the block and with the look-back off (the default), the sync-free CUDA forward is one
    launch up to `positions` token positions, each block counting the ids before its chunk itself
    (default 8192; 0: always a count kernel first, two launches). For tests and benchmarks."""
    if not 0 <= int(positions) <= 1 << 20:
        raise ValueError(f"cuda_self_count_max: positions must be in [0, 2**20], got {positions}")
    with _extension.native_setting("_set_merge_self_count_max", int(positions)):
        yield


@contextlib.contextmanager
def cuda_count_rotation(enabled: bool = True):
    """Within the block, each block of the self-counting sync-free CUDA forward (look-back off)
    walks the ids before its chunk from its own offset (off by default: the 12ae393 and de8175c
    H100 runs timed it no faster). For tests and benchmarks."""
    with _extension.native_setting("_set_merge_count_rotation", bool(enabled)):
        yield


def _check_args(input_ids, embed_weight, visual, num_placeholders):
    """Everything knowable without reading data (no sync), for the PyTorch fallback. The compiled
    op makes the same checks, with the same messages, before any kernel (merge_tokens_checks.cpp),
    so the kernel path does not repeat them here."""
    if input_ids.dtype != torch.int64:
        raise TypeError(f"merge_tokens: input_ids must be int64, got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"merge_tokens: input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if embed_weight.dim() != 2:
        raise ValueError(f"merge_tokens: embed_weight must be [V, D], got shape {tuple(embed_weight.shape)}")
    if visual.dim() != 2:
        raise ValueError(f"merge_tokens: visual must be [K, D], got shape {tuple(visual.shape)}")
    for name, t in (("embed_weight", embed_weight), ("visual", visual)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"merge_tokens: {name} must be float32/float64/bfloat16/float16, got {t.dtype}")
    if visual.shape[1] != embed_weight.shape[1]:
        raise ValueError(f"merge_tokens: visual has D={visual.shape[1]} but embed_weight has "
                         f"D={embed_weight.shape[1]}")
    if not (input_ids.device == embed_weight.device == visual.device):
        raise ValueError(f"merge_tokens: all tensors must be on one device, got input_ids on "
                         f"{input_ids.device}, embed_weight on {embed_weight.device}, visual on {visual.device}")
    if num_placeholders is not None and num_placeholders != visual.shape[0]:
        raise ValueError(f"merge_tokens: num_placeholders={num_placeholders} but visual has "
                         f"{visual.shape[0]} rows")


def merge_tokens(input_ids: torch.Tensor, embed_weight: torch.Tensor, visual: torch.Tensor,
                 image_token_id: Union[int, Sequence[int]], *, num_placeholders: Optional[int] = None,
                 padding_idx: Optional[int] = None) -> torch.Tensor:
    """Embeds `input_ids` [B, L] with `embed_weight` [V, D] and puts `visual` [K, D] (cast to the
    embedding dtype) at the placeholder positions, k-th placeholder in row-major order <- row k.

    image_token_id: one id or several (image and video placeholders).
    num_placeholders: the number of placeholders if the caller knows it; makes the CUDA op sync-free.
    padding_idx: as nn.Embedding's: that row gets no gradient.
    """
    ids = _placeholder_ids(image_token_id)
    if _KERNELS.get("cuda" if input_ids.is_cuda else input_ids.device.type, False):
        # The C++ op runs _check_args' checks (same messages and exception types) before any
        # kernel; not repeating them here saves ~1 us of host time per call.
        with _extension.op_scope("merge_tokens", embed_weight, visual):
            return torch.ops.interleave.merge_tokens.default(
                input_ids, embed_weight, visual, ids, num_placeholders,
                -1 if padding_idx is None else padding_idx)
    _check_args(input_ids, embed_weight, visual, num_placeholders)
    return _reference_with_checks(input_ids, embed_weight, visual, ids, padding_idx)


def _reference_with_checks(input_ids, embed_weight, visual, ids, padding_idx):
    mask = reference.placeholder_mask(input_ids, ids)
    text = input_ids[~mask]
    bad = (text < 0) | (text >= embed_weight.shape[0])
    if bool(bad.any()):
        value = int(text[bad][0])
        raise ValueError(f"merge_tokens: text token id {value} is outside the embedding table "
                         f"[0, {embed_weight.shape[0]})")
    return reference.merge_tokens(input_ids, embed_weight, visual, ids, padding_idx)


# ---- torch.library: fake implementations and autograd for the compiled op ------------------
if _extension.module is not None:

    @torch.library.register_fake(_OP)
    def _merge_tokens_fake(input_ids, embed_weight, visual, image_token_ids, num_placeholders=None,
                           padding_idx=-1):
        return embed_weight.new_empty(input_ids.shape[0], input_ids.shape[1], embed_weight.shape[1])

    @torch.library.register_fake(_OP + "_backward")
    def _merge_tokens_backward_fake(grad_output, input_ids, image_token_ids, num_embeddings,
                                    num_visual, visual_dtype, padding_idx, weight_grad, visual_grad):
        dim = grad_output.shape[2]
        grad_weight = grad_output.new_empty((num_embeddings, dim) if weight_grad else (0,))
        grad_visual = grad_output.new_empty((num_visual, dim) if visual_grad else (0,), dtype=visual_dtype)
        return grad_weight, grad_visual

    def _setup_context(ctx, inputs, output):
        input_ids, embed_weight, visual, image_token_ids, _num_placeholders, padding_idx = inputs
        ctx.save_for_backward(input_ids)
        ctx.image_token_ids = image_token_ids
        ctx.num_embeddings = embed_weight.shape[0]
        ctx.num_visual = visual.shape[0]
        ctx.visual_dtype = visual.dtype
        ctx.padding_idx = padding_idx

    def _backward(ctx, grad_output):
        (input_ids,) = ctx.saved_tensors
        weight_grad, visual_grad = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_weight, grad_visual = torch.ops.interleave.merge_tokens_backward(
            grad_output, input_ids, ctx.image_token_ids, ctx.num_embeddings, ctx.num_visual,
            ctx.visual_dtype, ctx.padding_idx, weight_grad, visual_grad)
        return (None, grad_weight if weight_grad else None, grad_visual if visual_grad else None,
                None, None, None)

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
