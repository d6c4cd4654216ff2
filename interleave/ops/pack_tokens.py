"""pack_tokens: projected tile/frame features -> every image's visual tokens in merge order.

    tokens = pack_tokens(features, plans, newline)
    # features [P_total, side*side, H] (the projector's output for every tile/frame of the batch),
    # plans: interleave.plan.ImagePlan / VideoPlan per item, newline [H] or None -> [T_total, H]

What transformers does in a Python loop per image after the projector, in one pass (one launch
on CUDA): LlavaNext/LlavaOnevision `pack_image_features` (base tile, then the tiles' grid as one
map, unpadded, shrunk bilinearly under anyres_max_N, a newline after every row), OneVision's
video `apply_pooling` (bilinear 27 -> 14, one newline after the video), LLaVA-NeXT-Video's 2x2
avg/max pooling, and the plain 729 (+ newline) of `llava`/`pad` images. Copy modes are bitwise
equal to transformers; interpolating modes compute in ATen's order and opmath type.

The layout (which feature rows and weights feed each output row) is a small table of segments,
a few per image, built from the plans on the host and cached (`build_layout`); the CUDA op copies
it to the device asynchronously: no host sync. Autograd: the backward gathers, for every feature
row, the output rows it fed (weighted for bilinear/avg, to the argmax for max) and sums the
newline's rows in a fixed order: deterministic on both devices, no atomics.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional, Sequence, Union

import torch
from torch._subclasses.fake_tensor import is_fake

from .. import _extension, plan as planning, reference

_OP = "interleave::pack_tokens"
_KERNELS = {dev: _extension.has_op_kernel(_OP, dev) for dev in ("cpu", "cuda")}
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# csrc/common/pack_tokens.h Field / Kind / Resample
LAYOUT_FIELDS = 16
KIND_MAP, KIND_NEWLINE = 0, 1
COPY, BILINEAR, AVG2, MAX2 = 0, 1, 2, 3
_POOLING = {"none": COPY, "bilinear": BILINEAR, "avg": AVG2, "max": MAX2}

Plan = Union[planning.ImagePlan, planning.VideoPlan]


def _map_row(out_start, src_start, repeat, tiles, crop, resample, out_hw, newline_col):
    (tiles_r, tiles_c), (top, left, ch, cw), (oh, ow) = tiles, crop, out_hw
    rows = repeat * oh * (ow + newline_col)
    return [KIND_MAP, out_start, rows, src_start, repeat, tiles_r, tiles_c, top, left, ch, cw, resample,
            oh, ow, newline_col, 0]


def _newline_row(out_start):
    return [KIND_NEWLINE, out_start, 1] + [0] * (LAYOUT_FIELDS - 3)


@functools.lru_cache(maxsize=256)
def _cached_layout(plans: tuple, side: int, with_newline: bool):
    rows, out, src = [], 0, 0
    for index, p in enumerate(plans):
        if isinstance(p, planning.VideoPlan):
            if p.pooling not in _POOLING:
                raise ValueError(f"pack_tokens: plans[{index}] has unknown pooling {p.pooling!r}")
            expected = planning.pooled_extent(p.pooling, side)
            if tuple(p.frame_features) != expected:
                raise ValueError(f"pack_tokens: plans[{index}] pools frames to {p.frame_features} but "
                                 f"{side}x{side} features pool to {expected} ({p.pooling})")
            resample = _POOLING[p.pooling]
            rows.append(_map_row(out, src, p.num_frames, (1, 1), (0, 0, side, side), resample,
                                 p.frame_features, 0))
            out += rows[-1][2]
            src += p.num_frames * side * side
            if p.newline and with_newline:
                rows.append(_newline_row(out))
                out += 1
            continue
        if not isinstance(p, planning.ImagePlan):
            raise TypeError(f"pack_tokens: plans[{index}] must be an ImagePlan or VideoPlan, got {type(p).__name__}")
        rows.append(_map_row(out, src, 1, (1, 1), (0, 0, side, side), COPY, (side, side), 0))  # base tile
        out += side * side
        src += side * side
        if p.grid != (0, 0):
            tiles_r, tiles_c = p.grid
            uh, uw = p.unpadded_features
            if uh > tiles_r * side or uw > tiles_c * side:
                raise ValueError(f"pack_tokens: plans[{index}] unpads a {uh}x{uw} map from {tiles_r}x{tiles_c} "
                                 f"tiles of {side}x{side} features: the plan was made for another grid size")
            top, left = (tiles_r * side - uh) // 2, (tiles_c * side - uw) // 2  # unpad_image's symmetric crop
            resample, out_hw = (BILINEAR, p.shrunk_features) if p.shrunk_features else (COPY, (uh, uw))
            if min(out_hw) > 0:  # an extreme aspect ratio can unpad to nothing (7x5000 on a 24px grid)
                rows.append(_map_row(out, src, 1, p.grid, (top, left, uh, uw), resample, out_hw, int(with_newline)))
                out += rows[-1][2]
            src += tiles_r * tiles_c * side * side
        elif p.newline and with_newline:
            rows.append(_newline_row(out))
            out += 1
    table = torch.tensor(rows, dtype=torch.int64).reshape(-1, LAYOUT_FIELDS)
    has_max = any(r[0] == KIND_MAP and r[11] == MAX2 for r in rows)
    return table, out, src // (side * side), has_max


def build_layout(plans: Sequence[Plan], side: int = planning.GRID_SIDE, with_newline: bool = True):
    """(table int64 [S, 16], num_rows, num_features, has_max) for `plans`; cached by the plans (they are
    frozen dataclasses). The table format is documented in csrc/common/pack_tokens.h."""
    if torch.compiler.is_compiling():  # dynamo traces the pure function itself (no cache-wrapper warning)
        return _cached_layout.__wrapped__(tuple(plans), int(side), bool(with_newline))
    return _cached_layout(tuple(plans), int(side), bool(with_newline))


def _side(features: torch.Tensor) -> int:
    if features.dim() != 3:
        raise ValueError(f"pack_tokens: features must be [P, side*side, H], got shape {tuple(features.shape)}")
    side = math.isqrt(features.shape[1])
    if side * side != features.shape[1] or side == 0:
        raise ValueError(f"pack_tokens: features must be [P, side*side, H] (a square grid per tile, e.g. 729 "
                         f"= 27x27), got {features.shape[1]} rows per tile")
    return side


@contextlib.contextmanager
def cuda_max_blocks(blocks: int):
    """Within the block, the CUDA row kernels run on at most `blocks` blocks of 8 warps, each
    looping over rows (0: one block per 8 rows, the default). For tests and benchmarks."""
    if int(blocks) < 0:
        raise ValueError(f"cuda_max_blocks: blocks must be >= 0, got {blocks}")
    with _extension.native_setting("_set_pack_max_blocks", int(blocks)):
        yield


def pack_tokens(features: torch.Tensor, plans: Sequence[Plan], newline: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Every item's visual tokens, in plan order. features: [P_total, side*side, H] float, the tiles
    (base first, then the grid row-major) or frames of each plan in order. newline: the model's
    image_newline [H] (cast to the features' dtype) or None (then no newline token anywhere)."""
    if not isinstance(features, torch.Tensor) or features.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"pack_tokens: features must be a float32/float64/bfloat16/float16 tensor, got "
                        f"{getattr(features, 'dtype', type(features).__name__)}")
    side = _side(features)
    table, num_rows, num_features, _ = build_layout(plans, side, newline is not None)
    if num_features != features.shape[0]:
        raise ValueError(f"pack_tokens: the plans describe {num_features} tiles/frames but features has "
                         f"{features.shape[0]}")
    if newline is not None:
        if newline.shape != (features.shape[2],):
            raise ValueError(f"pack_tokens: newline must be [{features.shape[2]}] (H of features), got "
                             f"{tuple(newline.shape)}")
        if newline.device != features.device:
            raise ValueError(f"pack_tokens: newline is on {newline.device} but features on {features.device}")
        newline = newline.to(features.dtype)
    if _KERNELS.get("cuda" if features.is_cuda else features.device.type, False):
        with _extension.op_scope("pack_tokens", features, newline):
            return torch.ops.interleave.pack_tokens.default(features, newline, table, num_rows, side)
    return reference.pack_tokens(features, list(plans), newline, side)


if _extension.module is not None:

    @torch.library.register_fake(_OP)
    def _pack_tokens_fake(features, newline, layout, num_rows, side):
        return features.new_empty(num_rows, features.shape[2])

    @torch.library.register_fake(_OP + "_backward")
    def _pack_tokens_backward_fake(grad, features, layout, num_features, side, newline_grad):
        dim = grad.shape[1]
        return grad.new_empty(num_features, side * side, dim), grad.new_empty(dim if newline_grad else 0)

    def _setup_context(ctx, inputs, output):
        features, newline, layout, _num_rows, side = inputs
        # Max pooling's gradient needs the values (argmax); the other modes only their shape.
        # Under torch.compile the layout is a fake tensor whose values cannot be read: keep them.
        has_max = is_fake(layout) or bool(((layout[:, 0] == KIND_MAP) & (layout[:, 11] == MAX2)).any())
        ctx.save_for_backward(layout, features if has_max else None)
        ctx.num_features, ctx.side, ctx.has_newline = features.shape[0], side, newline is not None

    def _backward(ctx, grad):
        layout, features = ctx.saved_tensors
        newline_grad = ctx.has_newline and ctx.needs_input_grad[1]
        grad_features, grad_newline = torch.ops.interleave.pack_tokens_backward(
            grad, features, layout, ctx.num_features, ctx.side, newline_grad)
        return (grad_features if ctx.needs_input_grad[0] else None, grad_newline if newline_grad else None,
                None, None, None)

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
