"""anyres_tiles: uint8 images -> the uint8 384x384 tiles the vision tower reads.

    result = anyres_tiles([image_a, image_b], mode="anyres_max_9")
    result.tiles          # [P, 384, 384, 3] uint8; per image: base tile first, then the grid row-major
    result.plans          # interleave.plan.ImagePlan per image (token counts, grids, sizes)
    result.tile_offsets   # image i owns tiles[tile_offsets[i]:tile_offsets[i + 1]]

Equal to Pillow, bit for bit: the base tile is `Image.resize((384, 384), BICUBIC)` of the image
(of its padded square in `pad` mode), the grid is the image resized to the plan's size, pasted
centred on a black canvas of the best resolution and cut into tiles, as transformers' PIL image
processors do (LlavaNext/LlavaOnevision `get_image_patches`). Modes: see interleave.plan. Video
frames and 3D views are a list of images in mode "llava" (a plain squash each).

One call handles a whole batch of images of different sizes: `plan` turns every image into one or
two resize jobs (a table of integers) and the kernel runs them all.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import _extension, nvtx, plan as planning, reference

_OP = "interleave::anyres_tiles"
# Which devices have a compiled kernel, looked up once (see merge_tokens.py).
_KERNELS = {dev: _extension.has_op_kernel(_OP, dev) for dev in ("cpu", "cuda")}
JOB_FIELDS = 15  # csrc/common/resample.h JobField
FIRST_TILE_FIELD = 13  # kJobFirstTile

ImageLike = Union[torch.Tensor, np.ndarray]


@dataclasses.dataclass
class Tiles:
    tiles: torch.Tensor                 # [P, tile, tile, 3] uint8 (batch=True: [B, max P, ...])
    plans: list                         # ImagePlan per image
    tile_offsets: list[int]             # len(images) + 1: image i's first tile in the flat order


def _as_uint8_hwc(image: ImageLike, index: int) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"anyres_tiles: images[{index}] must be a uint8 tensor or numpy array [H, W, 3], "
                        f"got {type(image).__name__} (convert PIL images with numpy.asarray(img.convert('RGB')))")
    if image.dtype != torch.uint8:
        raise TypeError(f"anyres_tiles: images[{index}] must be uint8, got {image.dtype}")
    if image.dim() != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"anyres_tiles: images[{index}] must be [H, W, 3] (RGB, channels last), "
                         f"got shape {tuple(image.shape)}")
    return image


PASS_ORDERS = ("pillow13", "tall100", "horizontal")


def pillow_pass_order(version: str) -> str:
    """The pass order of a Pillow version: "pillow13" from 13.0, "tall100" for 12.2 and 12.3
    (Image.resize, python-pillow/Pillow#9524), "horizontal" before."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return "pillow13"
    if major >= 13:
        return "pillow13"
    return "tall100" if (major, minor) >= (12, 2) else "horizontal"


def _installed_pillow_order() -> str:
    try:
        import PIL
    except ImportError:
        return "pillow13"
    return pillow_pass_order(PIL.__version__)


def vertical_first(src_h: int, src_w: int, out_h: int, out_w: int, order: str) -> bool:
    """Pillow's pass order. "pillow13" (Pillow >= 13, ImagingResampleInner): vertical first when
    the height shrinks by more than twice as many pixels as the width. "tall100" (Pillow 12.2 and
    12.3, in Python: Image.resize): vertical first when the image is more than 100x taller than wide
    and its height shrinks. "horizontal" (Pillow before 12.2): always horizontal first."""
    if order == "pillow13":
        return (src_h - out_h) > 0 and (src_h - out_h) > (src_w - out_w) * 2
    if order == "tall100":
        return src_h > src_w * 100 and out_h < src_h
    if order == "horizontal":
        return False
    raise ValueError(f"pass order must be one of {PASS_ORDERS}, got {order!r}")


def _packed_rgb(rgb) -> int:
    r, g, b = rgb
    return int(r) | int(g) << 8 | int(b) << 16


def normalization_table(mean: Sequence[float], std: Sequence[float], rescale_factor: float = 1 / 255,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[3, 256]: the normalized value of every uint8 per channel, computed as transformers' PIL
    processors do (rescale: float64 multiply then float32; normalize: (x - mean) / std in float32),
    so a lookup gives their pixel_values bit for bit."""
    values = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(3, 1)
    return torch.from_numpy((values[None, :] - mean32) / std32).to(dtype)


def build_jobs(plans: Sequence[planning.ImagePlan], tile: int,
               order: Optional[str] = None) -> tuple[torch.Tensor, list[int]]:
    """The job table (int64 [J, 15], csrc/common/resample.h) and the first tile of each image.
    order: Pillow's pass order (see vertical_first); default: that of the installed Pillow."""
    order = order or _installed_pillow_order()
    rows, offsets, next_tile = [], [], 0
    for index, p in enumerate(plans):
        offsets.append(next_tile)
        h, w = p.size
        if p.mode == "pad":  # pad to the square first (a virtual canvas), then squash
            top, _, left, _ = p.padding
            rows.append([index, *p.canvas, top, left, _packed_rgb(p.pad_value), tile, tile, tile, tile, 0, 0, 0, next_tile,
                         vertical_first(*p.canvas, tile, tile, order)])
        else:                # base tile: squash of the original image
            rows.append([index, h, w, 0, 0, 0, tile, tile, tile, tile, 0, 0, 0, next_tile,
                         vertical_first(h, w, tile, tile, order)])
        next_tile += 1
        if p.grid != (0, 0):  # anyres: resize into the best resolution, pad, cut
            top, _, left, _ = p.padding
            rows.append([index, h, w, 0, 0, 0, *p.resized, *p.canvas, top, left, _packed_rgb(p.pad_value), next_tile,
                         vertical_first(h, w, *p.resized, order)])
            next_tile += p.grid[0] * p.grid[1]
    offsets.append(next_tile)
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, JOB_FIELDS), offsets


def _plan_batch(sizes, mode, pinpoints, newline, tile, pad_color, batch=False):
    """Plans, job table and tile offsets of a batch, memoized on the sizes and settings (16 video
    frames took ~70 us of Python per call here, more than the GPU's tiling of them). mode: one
    mode, or a tuple with one per image."""
    try:
        key = (sizes, mode, tuple(map(tuple, pinpoints)), newline, tile, tuple(pad_color), batch,
               _installed_pillow_order())
        plans, jobs, offsets = _plan_batch_cached(key)
    except TypeError:  # unhashable settings: plan without the memo
        plans, jobs, offsets = _plan_batch_uncached(sizes, mode, pinpoints, newline, tile, pad_color, batch)
    return list(plans), jobs, list(offsets)


def _plan_batch_uncached(sizes, mode, pinpoints, newline, tile, pad_color, batch=False):
    modes = [mode] * len(sizes) if isinstance(mode, str) else list(mode)
    plans = [planning.plan_image(h, w, m, pinpoints=pinpoints, newline=newline, tile=tile, pad_color=pad_color)
             for (h, w), m in zip(sizes, modes)]
    jobs, offsets = build_jobs(plans, tile)
    if batch:  # image i's tiles from i * max_patches on; the op zeroes the tiles no job writes
        most = max((p.num_patches for p in plans), default=0)
        shift = torch.tensor([i * most - offsets[i] for i in range(len(plans))], dtype=torch.int64)
        jobs[:, FIRST_TILE_FIELD] += shift[jobs[:, 0]]
        offsets = [i * most for i in range(len(plans) + 1)]
    return plans, jobs, offsets


@functools.lru_cache(maxsize=256)
def _plan_batch_cached(key):
    sizes, mode, pinpoints, newline, tile, pad_color, batch, _order = key
    plans, jobs, offsets = _plan_batch_uncached(sizes, mode, pinpoints, newline, tile, pad_color, batch)
    return tuple(plans), jobs, tuple(offsets)  # jobs: an input of the op, never written


@contextlib.contextmanager
def cuda_tensor_cores(enabled: bool = True):
    """Within the block (a process-wide setting, restored on exit), whether the CUDA kernel may
    run its first (horizontal) resize pass on tensor cores, and both passes in one kernel for
    jobs that need both (frames, views, base tiles, most grids), wherever that is exact (at most
    32 taps per output, i.e. rows shrunk by up to ~7.5x, and weights below 2^22). Both paths give
    Pillow's bytes by construction. Off by default until a GPU run has checked it (`pytest -m cuda` runs both paths against Pillow; bench/gpu_check.sh times both)."""
    with _extension.native_setting("_set_anyres_mma", bool(enabled)):
        yield


@contextlib.contextmanager
def cuda_integer_tensor_cores(enabled: bool = True):
    """Within the block (a process-wide setting, restored on exit), whether the CUDA kernel may run
    its first (horizontal) resize pass on integer tensor cores: Pillow's int32 sums as three byte
    planes of the weights on `mma.m16n8k32` (uint8 pixels), exact by construction, wherever a group
    of 8 outputs reads at most 64 source pixels (rows shrunk by up to ~5.5x, and every upscale);
    jobs that need a vertical pass too run it in the same blocks (`cuda_fused_passes`). It replaces
    `cuda_tensor_cores`' path while on. Off by default until a GPU run has timed it
    (`INTERLEAVE_ANYRES_IMMA=1` starts a process with it on); `pytest -m cuda` checks it against
    Pillow."""
    with _extension.native_setting("_set_anyres_imma", bool(enabled)):
        yield


@contextlib.contextmanager
def cuda_integer_staged_rows(enabled: bool = True):
    """Within the block (a process-wide setting, restored on exit), whether the integer tensor-core
    pass 1 (`cuda_integer_tensor_cores`) copies each warp's source rows into shared memory with
    16-byte `cp.async`, the next 16 rows in flight while it computes (images whose rows are 16-byte
    aligned: widths that are multiples of 16, e.g. 1920; others load as without it). Without it the
    pass reads its operands straight from global memory with 32-bit loads that each touch 8 rows'
    cache lines. The same bytes either way. Off by default until a GPU run has timed it
    (`INTERLEAVE_ANYRES_IMMA_STAGED=1` starts a process with it on)."""
    with _extension.native_setting("_set_anyres_imma_staged", bool(enabled)):
        yield


@contextlib.contextmanager
def cuda_fused_passes(enabled: bool = True):
    """Within the block (a process-wide setting, restored on exit), whether a job whose first pass
    runs on tensor cores (`cuda_tensor_cores` or `cuda_integer_tensor_cores`) and that needs a
    vertical pass too runs both in one kernel, its intermediate rows in shared memory (on by
    default; off keeps the intermediate in global memory, for benchmarks that time the two apart).
    The bytes are the same either way."""
    with _extension.native_setting("_set_anyres_fused", bool(enabled)):
        yield


@contextlib.contextmanager
def cuda_simt_rows(rows: int):
    """Within the block, the CUDA kernel's SIMT first (horizontal) pass computes `rows` intermediate
    rows per block (1, the default, or 4: each tap's weight then serves four rows; a variant
    waiting for a GPU run). Both give Pillow's bytes. For tests and benchmarks."""
    if int(rows) not in (1, 4):
        raise ValueError(f"cuda_simt_rows: rows must be 1 or 4, got {rows}")
    with _extension.native_setting("_set_anyres_simt_rows", int(rows)):
        yield


CPU_SIMD_LEVELS = ("generic", "avx2", "avx512")


def cpu_simd_supported() -> str:
    """The best instruction-set level of the CPU kernel's inner loops on this CPU: "avx512"
    (AVX-512 with VNNI and VBMI: Zen 4, Ice Lake and later), "avx2", or "generic" (portable C++;
    also when the extension is not loaded)."""
    if _extension.module is None:
        return "generic"
    return CPU_SIMD_LEVELS[_extension.module._anyres_cpu_simd_supported()]


def cpu_simd_level() -> str:
    """The level the CPU kernel uses now (`cpu_simd`, INTERLEAVE_CPU_SIMD, or the best supported)."""
    if _extension.module is None:
        return "generic"
    return CPU_SIMD_LEVELS[_extension.module._anyres_cpu_simd()]


@contextlib.contextmanager
def cpu_simd(level: str = "auto"):
    """Within the block (a process-wide setting, restored on exit), the instruction-set level of the
    CPU kernel's resize and normalization loops: "auto" (the best this CPU supports, the default),
    "avx512", "avx2" or "generic", capped at what the CPU supports. Every level computes Pillow's
    integer arithmetic exactly and gives the same bytes; this is for tests and benchmarks. The
    environment variable INTERLEAVE_CPU_SIMD sets the same thing for a whole process."""
    if level != "auto" and level not in CPU_SIMD_LEVELS:
        raise ValueError(f"cpu_simd: level must be 'auto' or one of {CPU_SIMD_LEVELS}, got {level!r}")
    with _extension.native_setting("_set_anyres_cpu_simd", -1 if level == "auto" else CPU_SIMD_LEVELS.index(level)):
        yield


def anyres_tiles(images: Union[ImageLike, Sequence[ImageLike]], mode: Union[str, Sequence[str]] = "anyres_max_9", *,
                 pinpoints: planning.Pinpoints = planning.ONEVISION_PINPOINTS,
                 newline: Optional[bool] = None, tile: int = planning.TILE,
                 pad_color: Sequence[int] = planning.PAD_COLOR,
                 normalize: Optional[torch.Tensor] = None, batch: bool = False) -> Tiles:
    """Tiles for every image of the batch. images: uint8 [H, W, 3] tensors (CPU or CUDA, all on
    one device) or numpy arrays, or one such image. mode: one plan mode for all images, or one per
    image. normalize: a [3, 256] table from `normalization_table`; then tiles are
    [P, 3, tile, tile] normalized values in its dtype (transformers' pixel_values layout) instead of
    [P, tile, tile, 3] uint8. batch=True: tiles are [len(images), max patches, ...], image i's
    tiles first in row i and zeros after them, as transformers' processors batch pixel_values,
    written in place by the op (no second copy of the pixels); tile_offsets[i] is then i * max
    patches and plans[i].num_patches says how many are real."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        images = [images]
    images = [_as_uint8_hwc(im, i) for i, im in enumerate(images)]
    if not isinstance(mode, str):
        mode = tuple(mode)
        if len(mode) != len(images):
            raise ValueError(f"anyres_tiles: {len(mode)} modes for {len(images)} images")
    sizes = tuple((int(im.shape[0]), int(im.shape[1])) for im in images)
    plans, jobs, offsets = _plan_batch(sizes, mode, pinpoints, newline, tile, pad_color, bool(batch))
    device = images[0].device if images else torch.device("cpu")
    if normalize is not None:
        normalize = normalize.to(device)
    if _KERNELS.get(device.type, False):
        with nvtx.range("anyres_tiles"):
            tiles = torch.ops.interleave.anyres_tiles(images, jobs, offsets[-1], tile, normalize)
    else:
        tiles = reference.anyres_tiles([im.cpu() for im in images], plans, tile).to(device)
        if normalize is not None:  # the same table lookup, in PyTorch
            tiles = normalize[torch.arange(3, device=device).view(1, 3, 1, 1), tiles.permute(0, 3, 1, 2).long()]
        if batch:
            packed, start = tiles, 0
            tiles = packed.new_zeros(offsets[-1], *packed.shape[1:])
            for p, first in zip(plans, offsets):
                tiles[first:first + p.num_patches] = packed[start:start + p.num_patches]
                start += p.num_patches
    if batch:
        tiles = tiles.view(len(images), offsets[1] if images else 0, *tiles.shape[1:])
    return Tiles(tiles, plans, offsets)


if _extension.module is not None:

    @torch.library.register_fake(_OP)
    def _anyres_tiles_fake(images, jobs, num_tiles, tile, lut=None):
        device = images[0].device if images else torch.device("cpu")
        if lut is not None:
            return torch.empty(num_tiles, 3, tile, tile, dtype=lut.dtype, device=device)
        return torch.empty(num_tiles, tile, tile, 3, dtype=torch.uint8, device=device)
