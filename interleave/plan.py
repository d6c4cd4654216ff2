"""Image and video planning: sizes, grids and visual-token counts. Pure Python, no tensors.

For an image of (height, width) and a mode, `plan_image` says everything the later steps need:
the anyres best resolution, the resized size, the padding, the tile grid, the number of 384x384
patches, the unpadded feature extent, the OneVision shrink, and the number of visual tokens.
`plan_video` does the same for a list of frames. REFERENCE.md sections 1, 5, 6, 7 are the spec.

Modes
  llava          squash to 384x384: 729 tokens (+1 with newline=True: the original interleave evaluator)
  pad            pad to a square with (127,127,127), then squash: 729 (+1 with newline=True, OneVision
                 multi-image samples)
  anyres         LLaVA-NeXT spatial_unpad: base 729 + the unpadded grid with a newline after every row
  anyres_max_N   OneVision: as anyres, then a bilinear shrink when the grid exceeds N*729 features
Pinpoints are (height, width) pairs, in the order transformers reads `image_grid_pinpoints`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

TILE = 384        # SigLIP so400m-patch14-384 input size
PATCH = 14        # its patch size
GRID_SIDE = TILE // PATCH  # 27 features per side, 729 per tile
PAD_COLOR = (127, 127, 127)  # int(0.5 * 255) per channel: OneVision pads to square with the image mean

Pinpoints = Sequence[Sequence[int]]

# OneVision: all 36 pairs of {384, ..., 2304}^2 in (h, w) order, h the outer loop.
ONEVISION_PINPOINTS: tuple[tuple[int, int], ...] = tuple(
    (h, w) for h in range(384, 2305, 384) for w in range(384, 2305, 384))

# lmms-lab llava-interleave checkpoints, as their config writes them: (width, height) pairs for the
# original LLaVA code. There is no 384x384 entry: even a 384x384 image gets a 2-patch grid.
LMMS_INTERLEAVE_PINPOINTS_WH: tuple[tuple[int, int], ...] = (
    (384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152))


def pinpoints_from_wh(pairs: Pinpoints) -> tuple[tuple[int, int], ...]:
    """(width, height) pairs -> (height, width) pairs, keeping their order (it breaks ties)."""
    return tuple((int(h), int(w)) for w, h in pairs)


# The lmms-lab grid as the original LLaVA code reads it, in this module's (h, w) convention.
# (transformers reads the same config list as (h, w) directly: pass LMMS_INTERLEAVE_PINPOINTS_WH
# unchanged to reproduce a transformers processor built from that config.)
LMMS_INTERLEAVE_PINPOINTS: tuple[tuple[int, int], ...] = pinpoints_from_wh(LMMS_INTERLEAVE_PINPOINTS_WH)

MODES = ("llava", "pad", "anyres", "anyres_max_N")
POOLINGS = ("none", "avg", "max", "bilinear")


# ---- the arithmetic, one function per reference function ------------------------------------
def select_best_resolution(height: int, width: int, pinpoints: Pinpoints) -> tuple[int, int]:
    """transformers image_processing_utils.select_best_resolution: the candidate keeping the most
    pixels after an aspect-preserving fit, then the least waste; the first candidate wins ties."""
    _check_size(height, width)
    if not pinpoints:
        raise ValueError("select_best_resolution: pinpoints is empty")
    best, best_effective, best_waste = None, 0, float("inf")
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (int(cand_h), int(cand_w)), effective, waste
    return best


def resized_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """transformers llava_next get_patch_output_size: fit inside the target keeping the aspect
    ratio; the short side is rounded up (ceil), so it can upscale by a pixel."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def center_padding(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) to center (height, width) in the target; the odd pixel goes
    bottom/right (transformers _pad_for_patching and pad_to_square use floor offsets)."""
    top, left = (target_h - height) // 2, (target_w - width) // 2
    return top, target_h - height - top, left, target_w - width - left


def unpadded_extent(height: int, width: int, feature_h: int, feature_w: int,
                    rounding: str = "hf") -> tuple[int, int]:
    """transformers llava_next unpad_image / _get_unpadded_features: crop the padding rows (or
    columns) of a (feature_h, feature_w) feature map of an image of (height, width). The crop is
    symmetric, so one padding row survives when the padding is odd.

    rounding="hf": int(round(x, 7)) as transformers; "original": float64 then truncation, as the
    original LLaVA-NeXT code (they differ when x is within 1e-7 below an integer)."""
    if rounding not in ("hf", "original"):
        raise ValueError(f"unpadded_extent: rounding must be 'hf' or 'original', got {rounding!r}")
    fix = (lambda x: int(round(x, 7))) if rounding == "hf" else int
    if width / height > feature_w / feature_h:
        new_h = fix(height * (feature_w / width))
        pad = (feature_h - new_h) // 2
        return feature_h - 2 * pad, feature_w
    new_w = fix(width * (feature_h / height))
    pad = (feature_w - new_w) // 2
    return feature_h, feature_w - 2 * pad


def shrink_extent(feature_h: int, feature_w: int, max_patches: int,
                  side: int = GRID_SIDE) -> Optional[tuple[int, int]]:
    """OneVision anyres_max_N (llava_onevision pack_image_features): when the unpadded map holds
    more than 1.1^2 * N tiles' features, it is bilinearly resized to (h // ratio, w // ratio).
    Returns the new extent, or None when no shrink happens."""
    ratio = math.sqrt(feature_h * feature_w / (max_patches * side ** 2))
    if ratio > 1.1:
        return int(feature_h // ratio), int(feature_w // ratio)
    return None


# ---- plans ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """What one image becomes. Sizes are (height, width) in pixels unless named `*_features`."""
    mode: str
    size: tuple[int, int]                    # the original image
    canvas: tuple[int, int]                  # what the tiles are cut from: best resolution, or the square
    resized: tuple[int, int]                 # the image inside the canvas before padding
    padding: tuple[int, int, int, int]       # (top, bottom, left, right) around `resized`
    pad_value: tuple[int, int, int]          # RGB of the padding ((0, 0, 0) anyres, PAD_COLOR pad mode)
    grid: tuple[int, int]                    # tile rows, cols after the base tile; (0, 0) when none
    num_patches: int                         # 384x384 tiles fed to the vision tower, base first
    unpadded_features: Optional[tuple[int, int]]  # anyres: the map after unpad
    shrunk_features: Optional[tuple[int, int]]    # anyres_max_N: the map after the shrink, if any
    newline: bool
    num_tokens: int                          # visual tokens this image contributes to the prompt


def plan_image(height: int, width: int, mode: str = "llava", *, pinpoints: Pinpoints = ONEVISION_PINPOINTS,
               newline: Optional[bool] = None, rounding: str = "hf", tile: int = TILE,
               patch: int = PATCH, pad_color: Sequence[int] = PAD_COLOR) -> ImagePlan:
    """Plans one image. newline: for llava/pad, whether one image_newline token follows the 729
    (default False); anyres modes always put one after every feature row. pad_color: the RGB of
    `pad` mode (transformers: int(255 * image_mean) per channel)."""
    _check_size(height, width)
    side = tile // patch
    base = side * side
    if mode in ("llava", "pad"):
        if mode == "pad":
            square = max(height, width)
            padding, canvas = center_padding(height, width, square, square), (square, square)
            pad_value = tuple(int(v) for v in pad_color)
            if len(pad_value) != 3 or not all(0 <= v <= 255 for v in pad_value):
                raise ValueError(f"plan_image: pad_color must be 3 values in [0, 255], got {pad_color!r}")
        else:
            padding, canvas, pad_value = (0, 0, 0, 0), (height, width), (0, 0, 0)
        extra = 1 if newline else 0
        return ImagePlan(mode, (height, width), canvas, (height, width), padding, pad_value, (0, 0), 1,
                         None, None, bool(newline), base + extra)

    max_patches = _anyres_max(mode)
    if newline is False:
        raise ValueError(f"plan_image: mode {mode!r} always puts a newline after every feature row")
    best_h, best_w = select_best_resolution(height, width, pinpoints)
    rows, cols = best_h // tile, best_w // tile
    resized = resized_size(height, width, best_h, best_w)
    padding = center_padding(*resized, best_h, best_w)
    feat = unpadded_extent(height, width, rows * side, cols * side, rounding)
    shrunk = shrink_extent(*feat, max_patches, side) if max_patches else None
    fh, fw = shrunk or feat
    return ImagePlan(mode, (height, width), (best_h, best_w), resized, padding, (0, 0, 0), (rows, cols),
                     1 + rows * cols, feat, shrunk, True, base + fh * (fw + 1))


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """What a video (a list of frames, each squashed to 384x384) becomes."""
    num_frames: int
    pooling: str
    frame_features: tuple[int, int]  # per-frame feature map after pooling
    newline: bool                    # one image_newline after the whole video
    num_tokens: int


def pooled_extent(pooling: str, side: int = GRID_SIDE) -> tuple[int, int]:
    """none: 27x27; avg/max: LLaVA-NeXT-Video 2x2 pooling in floor mode (27 -> 13); bilinear:
    OneVision apply_pooling, interpolate to ceil(27/2) = 14."""
    if pooling == "none":
        return side, side
    if pooling in ("avg", "max"):
        return side // 2, side // 2
    if pooling == "bilinear":
        return math.ceil(side / 2), math.ceil(side / 2)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def plan_video(num_frames: int, pooling: str = "none", *, newline: Optional[bool] = None,
               tile: int = TILE, patch: int = PATCH) -> VideoPlan:
    """Plans a video of `num_frames` frames. newline defaults to True for bilinear (OneVision: one
    after the video) and False otherwise (the interleave model treats frames as plain images)."""
    if num_frames < 1:
        raise ValueError(f"plan_video: a video needs at least one frame, got {num_frames}")
    fh, fw = pooled_extent(pooling, tile // patch)
    newline = (pooling == "bilinear") if newline is None else bool(newline)
    return VideoPlan(num_frames, pooling, (fh, fw), newline, num_frames * fh * fw + int(newline))


def sample_frames(total_frames: int, num_samples: int, *, allow_repeats: bool = True) -> list[int]:
    """Uniform frame indices as the LLaVA-NeXT training code: linspace(0, total-1, k) truncated
    to int. Raises on an empty video or a bad count (the original demo divides by zero there).

    A video shorter than num_samples gets repeated indices, as the training code's linspace gives
    them (sample_frames(3, 5) == [0, 0, 1, 1, 2]); with allow_repeats=False that is a ValueError
    naming both numbers instead."""
    if total_frames < 1:
        raise ValueError(f"sample_frames: the video has no frames (total_frames={total_frames})")
    if num_samples < 1:
        raise ValueError(f"sample_frames: num_samples must be >= 1, got {num_samples}")
    if total_frames < num_samples and not allow_repeats:
        raise ValueError(f"sample_frames: the video is too short: {total_frames} frame(s), {num_samples} asked for "
                         "(allow_repeats=True repeats frames as the training code's linspace does)")
    if num_samples == 1:
        return [0]
    step = (total_frames - 1) / (num_samples - 1)
    # numpy.linspace computes start + i*step; int() truncates like .astype(int).
    return [int(i * step) for i in range(num_samples - 1)] + [total_frames - 1]


def _anyres_max(mode: str) -> int:
    """0 for plain anyres, N for anyres_max_N; ValueError for anything else."""
    if mode == "anyres":
        return 0
    if mode.startswith("anyres_max_"):
        n = mode[len("anyres_max_"):]
        if n.isdigit() and int(n) > 0:
            return int(n)
    raise ValueError(f"plan_image: unknown mode {mode!r}; modes are llava, pad, anyres, anyres_max_N")


def _check_size(height: int, width: int) -> None:
    if not (isinstance(height, int) and isinstance(width, int)) or height < 1 or width < 1:
        raise ValueError(f"image size must be positive integers (height, width), got ({height!r}, {width!r})")
