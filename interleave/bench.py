"""Benchmarks: every op against its references, timed in the same run.

`python -m interleave bench` runs the embedded default cases on every available device, prints a
table (shape, ours, reference, ratio, GB/s; TFLOP/s for GEMM-like ops) and writes JSON. Outputs are
checked against the reference: bitwise, or for floating-point ops (patch_embed) an error against a
float64 reference at most 2x the reference's own. The pytest-benchmark suites in bench/
time the same cases (this module is their single source of shapes and baselines).

Timing: medians. CPU: time.perf_counter around each call (outputs are fresh allocations, as in
real use). CUDA: CUDA events around each call, with the L2 flushed before it (a 256 MiB write) so
inputs never sit in cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch

from . import __version__, _extension, reference, transformers_compat
from .ops import merge_tokens

IMAGE_TOKEN_ID = 151646  # <image> of the llava-interleave-qwen checkpoints (REFERENCE.md section 8)


@dataclasses.dataclass
class Case:
    """One benchmark: `ours` and each baseline take no arguments and return the op's output."""
    op: str
    device: str
    shape: str
    dtype: str
    ours: Callable[[], torch.Tensor]
    baselines: dict[str, Callable[[], torch.Tensor]]
    bytes_moved: int  # bytes the op must read and write at least
    variants: dict[str, Callable[[], torch.Tensor]] = dataclasses.field(default_factory=dict)
    # None: ours must equal the reference bit for bit. Else the largest error allowed, relative to
    # the reference's largest magnitude (interpolating ops round differently from ATen).
    tolerance: Optional[float] = None
    # Peak memory in bytes of one call per implementation (ours / a baseline name), for ops whose
    # point is memory; reported next to the times. Slow cases lower the warm-up and repetitions.
    memory: dict[str, Callable[[], int]] = dataclasses.field(default_factory=dict)
    warmup: int = 3
    min_reps: int = 5
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. why a baseline was skipped
    flops: int = 0  # floating-point operations of the op (GEMM-like ops), for TFLOP/s
    # Floating-point ops are not bitwise equal to their reference: `truth` computes a float64
    # reference, and the op passes when its error is at most 2x the reference's (DESIGN.md).
    truth: Optional[Callable[[], torch.Tensor]] = None


# ---- merge_tokens ------------------------------------------------------------------------------
def _generator_on(device, host: torch.Generator, seed: int) -> torch.Generator:
    """`host` itself for the CPU, else a generator of `device` seeded with `seed`: large random
    inputs are drawn where they will live (drawn on the host, a 152000 x 4096 table takes ~5 s of
    one core, which on a GPU machine comes out of the GPU check's budget)."""
    return host if torch.device(device).type == "cpu" else torch.Generator(device=device).manual_seed(seed)


def merge_tokens_inputs(B=1, L=8192, D=1024, K=7290, V=152000, dtype=torch.float32, device="cpu", seed=0):
    """Ten 27x27 images (K = 7290 placeholders) spread over an 8192-token prompt, random text ids
    from a Qwen-sized vocabulary, a random table and random visual rows (never zeros)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V - 1000, (B, L), generator=g)
    per_row = [K // B + (1 if b < K % B else 0) for b in range(B)]
    for b, count in enumerate(per_row):
        input_ids[b, torch.randperm(L, generator=g)[:count]] = IMAGE_TOKEN_ID
    # Independent normal values (no row repeats another: a gather of the wrong row shows).
    dev = _generator_on(device, g, seed)
    weight = torch.empty(V, D, device=device).normal_(generator=dev).to(dtype)
    visual = torch.empty(K, D, device=device).normal_(generator=dev).to(dtype)
    return input_ids.to(device), weight, visual


def _merge_variants(device, ids, weight, visual, K) -> dict:
    from .ops import merge_tokens
    variants = {"ours_sync_free": lambda: merge_tokens(ids, weight, visual, IMAGE_TOKEN_ID, num_placeholders=K)}
    if device == "cuda":
        from .ops.merge_tokens import cuda_flat_loads, cuda_lookback, cuda_self_count_max

        def sync_free_with(*settings):
            with contextlib.ExitStack() as stack:
                for setting in settings:
                    stack.enter_context(setting)
                return merge_tokens(ids, weight, visual, IMAGE_TOKEN_ID, num_placeholders=K)
        # ours_sync_free is the default sync-free path: one launch, each block counting the ids
        # before its chunk. Against it: the decoupled look-back (one launch at any length; the
        # de8175c run timed its first version 1-5% slower with a cold L2, this one looks back a
        # whole block at a time), the count kernel first, and 16 loads in flight per thread in the
        # row copy (one round of loads per 32-row chunk at D=1024 bf16), alone and with the
        # look-back. Chunks of 16 and rotated count walks (slower or no faster in the 12ae393 and
        # de8175c runs) are no longer timed.
        lookback, loads16 = not preflight_failed("merge_lookback"), not preflight_failed("merge_loads16")
        if lookback:
            variants["ours_sync_free_lookback"] = lambda: sync_free_with(cuda_lookback(True))
        variants["ours_sync_free_two_launch"] = lambda: sync_free_with(cuda_self_count_max(0))
        if loads16:
            variants["ours_sync_free_loads16"] = lambda: sync_free_with(cuda_flat_loads(16))
        if lookback and loads16:
            variants["ours_sync_free_lookback_loads16"] = lambda: sync_free_with(cuda_lookback(True), cuda_flat_loads(16))
    return variants


def merge_tokens_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    configs = [(1024, torch.float32), (1024, torch.bfloat16), (4096, torch.float32), (4096, torch.bfloat16)]
    L, K, V = 8192, 7290, 152000
    if quick:
        configs, L, K, V = [(256, torch.float32)], 1024, 729, 4096
    compiled = torch.compile(reference.merge_tokens) if compile_reference else None
    cases = []
    drawn = {}  # float32 inputs per width: the bfloat16 case's are the same draw cast (as before), drawn once
    for D, dtype in configs:
        if D not in drawn:
            drawn[D] = merge_tokens_inputs(L=L, D=D, K=K, V=V, dtype=torch.float32, device=device)
        ids, weight, visual = drawn[D][0], drawn[D][1].to(dtype), drawn[D][2].to(dtype)
        n, es = ids.numel(), weight.element_size()
        moved = n * D * es + (n - K) * D * es + K * D * visual.element_size() + n * 8
        baselines = {
            "transformers": lambda i=ids, w=weight, v=visual: reference.merge_tokens(i, w, v, [IMAGE_TOKEN_ID]),
            "index_put": lambda i=ids, w=weight, v=visual: reference.merge_tokens_index_put(i, w, v, [IMAGE_TOKEN_ID]),
        }
        if compiled is not None:
            baselines["compiled"] = lambda i=ids, w=weight, v=visual: compiled(i, w, v, [IMAGE_TOKEN_ID])
        cases.append(Case(
            op="merge_tokens", device=device, shape=f"B=1 L={L} D={D} K={K}",
            dtype=str(dtype).replace("torch.", ""),
            ours=lambda i=ids, w=weight, v=visual: merge_tokens(i, w, v, IMAGE_TOKEN_ID),
            variants=_merge_variants(device, ids, weight, visual, K),
            baselines=baselines, bytes_moved=moved))
    return cases


# ---- anyres_tiles -------------------------------------------------------------------------------
def _smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A photo-like uint8 image (gradients plus noise): resize costs do not depend on content,
    but equality checks on smooth data catch different errors than on pure noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 255, h).view(h, 1, 1)
    x = torch.linspace(0, 255, w).view(1, w, 1)
    base = torch.cat([x.expand(h, w, 1), y.expand(h, w, 1), ((x + y) / 2).expand(h, w, 1)], 2)
    noise = torch.randint(-20, 21, (h, w, 3), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def _with_tensor_cores(anyres_tiles, images, mode) -> torch.Tensor:
    from .ops.anyres_tiles import cuda_tensor_cores
    with cuda_tensor_cores(True):
        return anyres_tiles(images, mode).tiles


def _with_integer_tensor_cores(anyres_tiles, images, mode, fused=True, staged=False) -> torch.Tensor:
    from .ops.anyres_tiles import cuda_fused_passes, cuda_integer_staged_rows, cuda_integer_tensor_cores
    with cuda_integer_tensor_cores(True), cuda_fused_passes(fused), cuda_integer_staged_rows(staged):
        return anyres_tiles(images, mode).tiles


def _with_simt_rows(anyres_tiles, images, mode, rows) -> torch.Tensor:
    from .ops.anyres_tiles import cuda_simt_rows
    with cuda_simt_rows(rows):
        return anyres_tiles(images, mode).tiles


def _cpu_simd_below_best(level: str) -> bool:
    """Whether `level` is a lower instruction-set level than the best the CPU kernels use here."""
    from .ops.anyres_tiles import CPU_SIMD_LEVELS, cpu_simd_supported
    return CPU_SIMD_LEVELS.index(level) < CPU_SIMD_LEVELS.index(cpu_simd_supported())


def _with_cpu_simd(level: str, fn):
    from .ops.anyres_tiles import cpu_simd
    with cpu_simd(level):
        return fn()


def anyres_tiles_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    from .ops import anyres_tiles
    from .plan import plan_image
    try:
        import PIL  # noqa: F401  (the baseline)
    except ImportError:
        print("bench: Pillow is not installed; skipping anyres_tiles", file=sys.stderr)
        return []

    # The last two are issue 3's GPU bar read both ways ("tiles for a batch of 16 1920x1080
    # images"): video frames squashed to one tile each (all resize), and 16 photos under the
    # OneVision grid (16 tiles each: the base tile resized, the grid's 15 a padded copy).
    configs = [("1080x1920 anyres_max_9", [(1080, 1920)], "anyres_max_9"),
               ("1411x1411 anyres_max_9", [(1411, 1411)], "anyres_max_9"),
               ("16 frames 1080x1920 squash", [(1080, 1920)] * 16, "llava"),
               ("16 images 1080x1920 anyres_max_9", [(1080, 1920)] * 16, "anyres_max_9")]
    if quick:
        configs = [("300x500 anyres_max_9", [(300, 500)], "anyres_max_9")]
    cases = []
    for name, sizes, mode in configs:
        images = [_smooth_image(h, w, i).to(device) for i, (h, w) in enumerate(sizes)]
        plans = [plan_image(h, w, mode) for h, w in sizes]
        tiles = sum(p.num_patches for p in plans)
        moved = sum(h * w * 3 for h, w in sizes) + tiles * 384 * 384 * 3
        cpu_images = [im.cpu() for im in images]
        # On CUDA, pass 1 on tensor cores too (both exact; off by default until verified on a GPU),
        # so one run compares them.
        variants = {"ours_mma": lambda ims=images, m=mode: _with_tensor_cores(anyres_tiles, ims, m)} \
            if device == "cuda" and not preflight_failed("anyres_mma") else {}
        # On CUDA, the SIMT pass 1 with 4 rows per block (a tap's weight serves four rows).
        if device == "cuda" and not preflight_failed("anyres_rows4"):
            variants["ours_rows4"] = lambda ims=images, m=mode: _with_simt_rows(anyres_tiles, ims, m, 4)
        # On CUDA, pass 1 on integer tensor cores (byte planes of the weights on mma.m16n8k32), with
        # the vertical pass in the same blocks, and with the intermediate in global memory.
        if device == "cuda" and not preflight_failed("anyres_imma"):
            variants["ours_imma"] = lambda ims=images, m=mode: _with_integer_tensor_cores(anyres_tiles, ims, m)
            variants["ours_imma_unfused"] = lambda ims=images, m=mode: _with_integer_tensor_cores(anyres_tiles, ims, m,
                                                                                                  fused=False)
            # ... and fused with each warp's source rows staged in shared memory by 16-byte cp.async
            # (images with 16-byte aligned rows: the 1920-wide frames; the others load as in ours_imma).
            if not preflight_failed("anyres_imma_staged"):
                variants["ours_imma_staged"] = lambda ims=images, m=mode: _with_integer_tensor_cores(
                    anyres_tiles, ims, m, staged=True)
        # On the CPU, the same images channels-first ([3, H, W] viewed as [H, W, 3], as torchvision's
        # decoders return them), read in place by the kernel.
        if device == "cpu":
            planar = [im.permute(2, 0, 1).contiguous().permute(1, 2, 0) for im in images]
            variants["ours_channels_first"] = lambda ims=planar, m=mode: anyres_tiles(ims, m).tiles
        if device == "cpu" and _cpu_simd_below_best("avx2"):  # what the AVX-512 loops gain, same run
            variants["ours_avx2"] = lambda ims=images, m=mode: _with_cpu_simd("avx2", lambda: anyres_tiles(ims, m).tiles)
        cases.append(Case(
            op="anyres_tiles", device=device, shape=f"{name} -> {tiles} tiles", dtype="uint8",
            ours=lambda ims=images, m=mode: anyres_tiles(ims, m).tiles, variants=variants,
            # Pillow's resize + paste + crop, as transformers' PIL processors tile (no normalization).
            baselines={"pillow": lambda ims=cpu_images, ps=plans: reference.anyres_tiles(ims, ps)},
            bytes_moved=moved,
            # Pillow takes ~0.3-0.6 s a call on the 16-image cases: fewer calls (the GPU check's minutes)
            **({"warmup": 1, "min_reps": 3} if len(sizes) > 1 else {})))
    return cases


# ---- patch_embed --------------------------------------------------------------------------------
def patch_embed_inputs(N=16, S=384, p=14, C=1152, dtype=torch.float32, device="cpu", seed=0):
    """Random uint8 tiles [N, S, S, 3] and SigLIP-shaped random parameters (weights ~ 1/sqrt(K),
    position embedding ~ N(0, 1)): the GEMM's cost does not depend on the values."""
    g = torch.Generator().manual_seed(seed)
    T = (S // p) ** 2
    tiles = torch.randint(0, 256, (N, S, S, 3), generator=g, dtype=torch.uint8)
    weight = torch.randn(C, 3, p, p, generator=g) / (3 * p * p) ** 0.5
    bias = torch.randn(C, generator=g) * 0.1
    pos = torch.randn(T, C, generator=g)
    return tiles.to(device), weight.to(device, dtype), bias.to(device, dtype), pos.to(device, dtype)


def preflight_skipped() -> list[str]:
    """The paths bench/gpu_check.sh's isolated preflight (bench/gpu_preflight.py) ruled out for this
    run (INTERLEAVE_SKIP_PATHS): a never-verified kernel that faults would leave a sticky CUDA
    error for every later case of this process."""
    return [p for p in os.environ.get("INTERLEAVE_SKIP_PATHS", "").split(",") if p]


def preflight_failed(path: str) -> bool:
    return path in preflight_skipped()


def _with_gemm(mode: str, args, tune: bool = False) -> torch.Tensor:
    from .ops import patch_embed
    from .ops.patch_embed import cublaslt_tune, cuda_gemm
    with cuda_gemm(mode), cublaslt_tune(tune):
        return patch_embed(*args)


def patch_embed_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """patch_embed from uint8 tiles against the reference path from the same tiles (the processor's
    normalization + SiglipVisionEmbeddings: normalize, conv2d, flatten/transpose, add), the conv as
    unfold + linear, and torch.compile of the reference. Variant: ours from HF pixel_values."""
    from .ops import patch_embed
    configs = [(N, dtype) for dtype in (torch.float32, torch.bfloat16) for N in (1, 16, 64)]
    S, p, C = 384, 14, 1152
    if quick:
        configs, S, C = [(2, torch.float32)], 28, 32
    compiled = torch.compile(reference.patch_embed_tiles) if compile_reference else None
    cases = []
    for N, dtype in configs:
        tiles, weight, bias, pos = patch_embed_inputs(N, S, p, C, dtype, device)
        pixel_values = reference.normalize_tiles(tiles)
        T, K = pos.shape[0], 3 * p * p
        es = weight.element_size()
        moved = tiles.numel() + weight.numel() * es + pos.numel() * es + N * T * C * es
        baselines = {
            "transformers": lambda a=(tiles, weight, bias, pos): reference.patch_embed_tiles(*a),
            "unfold_linear": lambda a=(tiles, weight, bias, pos): reference.patch_embed_unfold(*a),
        }
        if compiled is not None:
            baselines["compiled"] = lambda a=(tiles, weight, bias, pos): compiled(*a)
        variants = {"ours_pixel_values": lambda a=(pixel_values, weight, bias, pos): patch_embed(*a)}
        notes = []
        if device == "cuda" and dtype == torch.bfloat16:
            # ours is "auto" (the cuBLAS path at every size); every GEMM forced too, so one run
            # compares them. "wgmma" (the Hopper kernel) falls back to auto's path where the build
            # or GPU lacks it: a note says which one that variant timed.
            # cublas_copy: the cuBLAS path as it was before cuBLASLt took the position embedding
            # into the GEMM (the copy into the output, then addmm onto it): same-run comparison.
            # wgmma_staged: the same kernel with each tile's pixels copied into shared memory first.
            for mode in ("wgmma", "wgmma_staged", "cublas", "cublas_copy", "mma"):
                if mode.startswith("wgmma"):
                    if preflight_failed(mode):
                        notes.append(f"ours_{mode} left out: bench/gpu_preflight.py failed or found it unavailable")
                        continue
                    from .ops.patch_embed import wgmma_available
                    notes.append(f"ours_{mode} ran the wgmma kernel: {wgmma_available()}")
                variants[f"ours_{mode}"] = lambda a=(tiles, weight, bias, pos), m=mode: _with_gemm(m, a)
            # cublas_tuned: the cuBLASLt GEMM with its algorithm timed per shape on the first call
            # (the warm-up), the fastest of the heuristic's first 8 kept.
            if not preflight_failed("cublas_tune"):
                variants["ours_cublas_tuned"] = lambda a=(tiles, weight, bias, pos): _with_gemm("cublas", a, tune=True)
        cases.append(Case(
            op="patch_embed", device=device, shape=f"N={N} S={S} p={p} C={C}",
            dtype=str(dtype).replace("torch.", ""),
            ours=lambda a=(tiles, weight, bias, pos): patch_embed(*a),
            variants=variants, notes=notes,
            baselines=baselines, bytes_moved=moved, flops=2 * N * T * K * C,
            truth=lambda a=(tiles, weight, bias, pos): reference.patch_embed(
                (a[0].permute(0, 3, 1, 2).double() / 127.5 - 1), *(t.double() for t in a[1:]))))
    return cases


# ---- the image processor (anyres_tiles + normalization + batching) ---------------------------------
def _photo(h: int, w: int) -> "np.ndarray":
    """scikit-image's astronaut resized to (h, w) with Pillow, or a smooth synthetic image when
    scikit-image is not installed (GPU machines)."""
    import numpy as np
    try:
        from skimage import data
        from PIL import Image
        return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC))
    except ImportError:
        return _smooth_image(h, w, 0).numpy()


def _skimage_photo(name: str, h: int, w: int) -> "np.ndarray":
    """scikit-image's `name` photo (retina 1411x1411, astronaut 512x512), or a smooth synthetic
    image of its size when scikit-image is not installed."""
    try:
        from skimage import data
        return getattr(data, name)()
    except ImportError:
        return _smooth_image(h, w, 0).numpy()


def image_processor_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """interleave.hf.ImageProcessor against transformers' PIL processor (the reference: equal
    pixel_values) and its torchvision-backend processor (when torchvision is installed)."""
    import numpy as np

    from .hf import ImageProcessor
    try:
        onevision_pil = transformers_compat.pil_image_processor_class("onevision")
        siglip_pil = transformers_compat.pil_image_processor_class("siglip")
    except ImportError:
        return []
    siglip = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    configs = [("OneVision 1080x1920 -> 16 tiles", onevision_pil(**siglip), "onevision", [_photo(1080, 1920)]),
               ("SigLIP 16 frames 1080x1920", siglip_pil(size={"height": 384, "width": 384}, **siglip),
                "siglip", [_photo(1080, 1920)] * 16)]
    if device == "cpu":  # issue 3's real photos, single images (CPU only: GPU runs are budgeted)
        retina, astronaut = _skimage_photo("retina", 1411, 1411), _skimage_photo("astronaut", 512, 512)
        configs[1:1] = [("OneVision retina 1411x1411", configs[0][1], configs[0][2], [retina]),
                        ("OneVision astronaut 512x512", configs[0][1], configs[0][2], [astronaut]),
                        # a batch of mixed sizes: pixel_values zero-padded to the most patches
                        ("OneVision 4 images of mixed sizes", configs[0][1], configs[0][2],
                         [_photo(1080, 1920), retina, astronaut, _photo(720, 1280)])]
    if quick:
        configs = [("OneVision 300x500", configs[0][1], configs[0][2], [_photo(300, 500)])]
    cases = []
    for name, hf_pil, kind, images in configs:
        ours = ImageProcessor.from_hf(hf_pil, device=device)
        baselines = {"transformers_pil": lambda p=hf_pil, ims=images: p(ims, return_tensors="pt")["pixel_values"]}
        hf_tv = _torchvision_processor(hf_pil, kind)
        if hf_tv is not None:  # the torchvision backend (transformers' default processor class)
            kwargs = {"device": device} if device == "cuda" else {}
            baselines["transformers_torchvision"] = lambda p=hf_tv, ims=images, kw=kwargs: p(
                ims, return_tensors="pt", **kw)["pixel_values"]
        probe = ours(images)["pixel_values"]
        moved = sum(im.nbytes for im in images) + probe.numel() * probe.element_size()
        variants = {}
        if device == "cuda":  # each image uploaded on its own (ours: one pinned, asynchronous upload)
            pageable = ImageProcessor.from_hf(hf_pil, device=device, upload="pageable")
            variants["ours_pageable"] = lambda p=pageable, ims=images: p(ims)["pixel_values"]
            # staged and uploaded in 2 MiB pieces, a piece's transfer under the host's copy of the next
            overlapped = ImageProcessor.from_hf(hf_pil, device=device, upload="overlapped")
            variants["ours_overlapped"] = lambda p=overlapped, ims=images: p(ims)["pixel_values"]
        # The same images channels-first ([3, H, W] tensors, as torchvision.io.decode_image returns
        # them): read in place by the CPU kernel, staged as stored for CUDA.
        chw = [torch.from_numpy(np.array(im, copy=True)).permute(2, 0, 1).contiguous() for im in images]
        variants["ours_channels_first"] = lambda p=ours, ims=chw: p(ims)["pixel_values"]
        if device == "cpu" and _cpu_simd_below_best("avx2"):
            variants["ours_avx2"] = lambda p=ours, ims=images: _with_cpu_simd("avx2", lambda: p(ims)["pixel_values"])
        cases.append(Case(
            op="image_processor", device=device, shape=name, dtype="float32",
            ours=lambda p=ours, ims=images: p(ims)["pixel_values"], variants=variants,
            baselines=baselines, bytes_moved=moved))
        if device == "cuda" and not quick:
            cases.append(_decoded_on_gpu_case(name, ours, hf_pil, hf_tv, [t.cuda() for t in chw], moved))
    if device == "cpu" and not quick:  # (CPU only: GPU runs are budgeted)
        cases += _video_processor_cases()
    return cases


def _video_processor_cases() -> list:
    """interleave.hf.VideoProcessor against transformers' OneVision video processor on a 16-frame
    1080x1920 clip: not bitwise (transformers resizes video frames with torchvision, ours with
    Pillow's arithmetic), held to 2 levels of the normalized values."""
    import numpy as np
    try:
        import torchvision  # noqa: F401  (transformers' video processors need it)
        from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
    except ImportError:
        print("bench: torchvision missing; skipping the video processor case", file=sys.stderr)
        return []
    from .hf import VideoProcessor
    hf_video = LlavaOnevisionVideoProcessor()
    ours = VideoProcessor.from_hf(hf_video)
    clip = np.stack([np.asarray(_photo(1080, 1920))] * 16)
    probe = ours([clip])["pixel_values_videos"]
    # 2 levels of the channel with the smallest std, relative to the largest value (Case.tolerance)
    two_levels = 2 / (255 * min(hf_video.image_std))
    return [Case(op="image_processor", device="cpu", shape="OneVision video processor, 16 frames 1080x1920",
                 dtype="float32", ours=lambda: ours([clip])["pixel_values_videos"],
                 baselines={"transformers_video_processor": lambda: hf_video(videos=[clip], return_tensors="pt")[
                     "pixel_values_videos"]},
                 bytes_moved=clip.nbytes + probe.numel() * probe.element_size(),
                 tolerance=two_levels / float(probe.abs().max()) * 1.001)]


def _torchvision_processor(hf_pil, kind: str):
    """transformers' torchvision-backend processor of `kind` with the PIL processor's settings, or
    None without torchvision (the class imports, then fails on call)."""
    try:
        cls = transformers_compat.torchvision_image_processor_class(kind)
        if cls is None:
            return None
        return cls(**{k: getattr(hf_pil, k) for k in ("image_mean", "image_std")},
                   **({"size": {"height": 384, "width": 384}} if kind == "siglip" else {}))
    except (ImportError, AttributeError, TypeError):
        return None


def _decoded_on_gpu_case(name: str, ours, hf_pil, hf_tv, on_gpu: list, bytes_moved: int) -> Case:
    """The same images already on the GPU, as a GPU decoder returns them (uint8 [3, H, W]:
    torchvision.io.decode_jpeg(device="cuda"), NVDEC video frames): no host-to-device copy on
    either side, so the two processors' own work is what is timed (issue 3's 10x bar against
    transformers' processor with device="cuda"). Each image is its own device tensor. The PIL
    processor is the reference for the bits, on host copies (its time includes the download)."""
    baselines = {"transformers_pil": lambda p=hf_pil, ims=on_gpu: p(
        [im.permute(1, 2, 0).cpu().numpy() for im in ims], return_tensors="pt")["pixel_values"]}
    notes = ["inputs: uint8 [3, H, W] CUDA tensors (as GPU decoders return them); transformers_pil "
             "(the reference for the bits) downloads them first"]
    if hf_tv is not None:
        baselines["transformers_torchvision"] = lambda p=hf_tv, ims=on_gpu: p(
            ims, return_tensors="pt", device="cuda")["pixel_values"]
    else:
        notes.append("transformers_torchvision left out: torchvision is not installed")
    return Case(op="image_processor", device="cuda", shape=f"{name}, decoded on the GPU", dtype="float32",
                ours=lambda p=ours, ims=on_gpu: p(ims)["pixel_values"], baselines=baselines, notes=notes,
                bytes_moved=bytes_moved, warmup=2, min_reps=3)


# ---- pack_tokens ---------------------------------------------------------------------------------
# Eight images of mixed sizes under OneVision's anyres_max_9 (two of them shrunk) and a 32-frame video.
PACK_IMAGE_SIZES = [(1080, 1920), (480, 640), (899, 1024), (2000, 3000), (384, 384), (720, 1280),
                    (1024, 768), (3000, 2000)]


def pack_tokens_bytes(plans, dim: int, element_size: int, with_newline: bool = True) -> int:
    """Bytes pack_tokens must move: every feature row some output reads, once, plus the output."""
    from .ops.pack_tokens import build_layout
    table, rows, _, _ = build_layout(plans, 27, with_newline)
    read = 0
    for seg in table.tolist():
        if seg[0] != 0:
            continue
        repeat, crop_h, crop_w, resample, out_h, out_w = seg[4], seg[9], seg[10], seg[11], seg[12], seg[13]
        read += repeat * ((2 * out_h) * (2 * out_w) if resample in (2, 3) else crop_h * crop_w)
    return (read + rows + 1) * dim * element_size


def _hf_pack_images(features_per_image, sizes, newline):
    """transformers' LlavaOnevisionModel.pack_image_features on a stand-in `self` (only its config
    is read), concatenated as LlavaOnevisionModel.get_image_features does."""
    import types
    from transformers.models.llava_onevision import modeling_llava_onevision as ov
    from .plan import ONEVISION_PINPOINTS
    fake = types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(image_size=384, patch_size=14),
        image_grid_pinpoints=[list(p) for p in ONEVISION_PINPOINTS]))
    packed, _ = ov.LlavaOnevisionModel.pack_image_features(
        fake, features_per_image, sizes, image_newline=newline, vision_aspect_ratio="anyres_max_9")
    return torch.cat(packed) if isinstance(packed, (list, tuple)) else packed


def _hf_pool_video(frames, newline):
    """OneVision's video path: apply_pooling (bilinear 27 -> 14 per frame), then one newline."""
    import types
    from transformers.models.llava_onevision import modeling_llava_onevision as ov
    fake = types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(image_size=384, patch_size=14)))
    pooled = ov.LlavaOnevisionModel.apply_pooling(fake, frames).reshape(-1, frames.shape[-1])
    return torch.cat((pooled, newline[None].to(pooled)), dim=0)


def _pack_tolerance(dtype) -> float:
    # fp32: a few ulp (ATen's vectorized order differs). bf16: ATen rounds intermediates to bf16
    # (ours rounds once), so the two differ by up to a couple of bf16 ulp.
    return 1e-6 if dtype == torch.float32 else 2.0 ** -6


def _pack_grid_variants(device: str, call) -> dict:
    """On CUDA: the same call with the row kernels on a grid of 2 and 8 blocks per SM (each block
    looping over rows) instead of one block per 8 rows, so one run shows which hides latency best."""
    if device != "cuda":
        return {}
    from .ops.pack_tokens import cuda_max_blocks
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count

    def capped(blocks):
        with cuda_max_blocks(blocks):
            return call()
    return {f"ours_grid{k}xSM": (lambda k=k: capped(k * sms)) for k in (2, 8)}


def pack_tokens_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    from .ops import pack_tokens
    from .plan import plan_image, plan_video
    try:
        import transformers.models.llava_onevision.modeling_llava_onevision  # noqa: F401 (the baseline)
    except ImportError:
        print("bench: transformers is not installed; skipping pack_tokens", file=sys.stderr)
        return []
    sizes, frames, configs = PACK_IMAGE_SIZES, 32, [(1024, torch.float32), (1024, torch.bfloat16),
                                                    (4096, torch.float32), (4096, torch.bfloat16)]
    if quick:
        sizes, frames, configs = sizes[:2], 4, [(256, torch.float32)]
    image_plans = [plan_image(h, w, "anyres_max_9") for h, w in sizes]
    video_plans = [plan_video(frames, "bilinear")]
    cases = []
    drawn = {}  # per width, drawn once: the bfloat16 case's inputs are the float32 draw cast
    for dim, dtype in configs:
        if dim not in drawn:
            g = torch.Generator().manual_seed(dim)
            drawn[dim] = (torch.randn(sum(p.num_patches for p in image_plans), 729, dim, generator=g),
                          torch.randn(frames, 729, dim, generator=g), torch.randn(dim, generator=g))
        feats, clip, newline = (x.to(dtype).to(device) for x in drawn[dim])
        per_image = list(feats.split([p.num_patches for p in image_plans]))
        size_tensor = torch.tensor(sizes, device=device)
        es, tokens = feats.element_size(), sum(p.num_tokens for p in image_plans)
        cases.append(Case(
            op="pack_tokens", device=device, dtype=str(dtype).replace("torch.", ""),
            shape=f"{len(sizes)} images anyres_max_9 ({feats.shape[0]} tiles -> {tokens} tokens) H={dim}",
            ours=lambda f=feats, n=newline: pack_tokens(f, image_plans, n),
            variants=_pack_grid_variants(device, lambda f=feats, n=newline: pack_tokens(f, image_plans, n)),
            baselines={"transformers": lambda f=per_image, s=size_tensor, n=newline: _hf_pack_images(f, s, n)},
            bytes_moved=pack_tokens_bytes(image_plans, dim, es), tolerance=_pack_tolerance(dtype)))
        cases.append(Case(
            op="pack_tokens", device=device, dtype=str(dtype).replace("torch.", ""),
            shape=f"video {frames} frames bilinear 27->14 H={dim}",
            ours=lambda f=clip, n=newline: pack_tokens(f, video_plans, n),
            variants=_pack_grid_variants(device, lambda f=clip, n=newline: pack_tokens(f, video_plans, n)),
            baselines={"transformers": lambda f=clip, n=newline: _hf_pool_video(f, n)},
            bytes_moved=pack_tokens_bytes(video_plans, dim, es), tolerance=_pack_tolerance(dtype)))
    return cases


# ---- the model's visual path and time to first token ---------------------------------------------------
def model_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """A OneVision-layout model with the real widths (SigLIP 1152, Qwen2 1024, vocabulary 152000, random
    weights; few layers on CPU, the 0.5B depth on GPU), ours (InterleaveModel: our processor, patched
    visual path, merge) against transformers (its PIL image processor, unpatched model):
      - visual path: a 1920x1080 photo under anyres_max_9, uint8 image -> inputs_embeds
        (processor + vision tower + projector + packing + merge);
      - time to first token: a 4-image prompt, processor + prefill + one decoded token."""
    try:
        onevision_pil = transformers_compat.pil_image_processor_class("onevision")
    except ImportError:
        print("bench: transformers/Pillow missing; skipping model", file=sys.stderr)
        return []
    from . import InterleaveModel, hf
    from .tiny import tiny_model, tiny_tokenizer

    on_gpu = device == "cuda"
    vision_layers, text_layers = (26, 24) if on_gpu else (1, 2)
    if quick:
        vision_layers, text_layers = 1, 1
    dtype = torch.bfloat16 if on_gpu else torch.float32
    # Qwen's <image> id and vocabulary; --quick keeps the widths but a small vocabulary.
    image_id, vocab = (259, 2048) if quick else (151646, 152000)
    hf_model = tiny_model("onevision", widths="real", vision_layers=vision_layers, text_layers=text_layers,
                          image_token_id=image_id, video_token_id=image_id + 1,
                          vocab_size=vocab, device=device).to(dtype=dtype)
    ref_processor = onevision_pil(image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                  image_grid_pinpoints=hf_model.config.image_grid_pinpoints)
    model = InterleaveModel.from_transformers(hf_model, tiny_tokenizer(), hf.ImageProcessor.from_hf(ref_processor))
    inner = hf_model.model
    embed = inner.get_input_embeddings()
    photo = _photo(1080, 1920) if not quick else _photo(300, 500)
    batch = model.prepare(["<image>Describe the image."], [[photo]])
    ids = batch["input_ids"]

    def ours_embeds():
        pixels = model.visual_inputs([[photo]])[0]
        tokens, _ = hf.visual_tokens(hf_model, pixels["pixel_values"], pixels["image_sizes"],
                                     batch_num_images=pixels.get("batch_num_images"))
        return merge_tokens(ids, embed.weight, tokens, image_id)

    def ref_embeds():
        pixels = ref_processor([[photo]], return_tensors="pt")
        was = hf.is_patched(hf_model)
        hf.unpatch(hf_model)
        try:
            visual = transformers_compat.image_features(
                inner, pixels["pixel_values"].to(device, dtype), pixels["image_sizes"].to(device),
                pixels["batch_num_images"]).to(dtype)
        finally:
            if was:
                hf.patch(hf_model)
        mask = (ids == image_id).unsqueeze(-1)
        return embed(ids).masked_scatter(mask, visual)

    with torch.no_grad():
        probe = ours_embeds()
    layers = f"SigLIP 1152 x{vision_layers} layers"
    cases = [Case(op="model", device=device, dtype=str(dtype).replace("torch.", ""),
                  shape=f"visual path {photo.shape[0]}x{photo.shape[1]} anyres_max_9 ({ids.shape[1]} tokens), {layers}",
                  ours=torch.no_grad()(ours_embeds), baselines={"transformers": torch.no_grad()(ref_embeds)},
                  bytes_moved=photo.nbytes + probe.numel() * probe.element_size(),
                  # bf16 through 26 SigLIP layers: the conv-vs-GEMM patch embedding difference grows
                  # to ~0.1 of values ~10-50 (H100 run); fp32 stays within 1e-5.
                  tolerance=1e-5 if dtype == torch.float32 else 2e-2)]

    four = [_photo(h, w) for h, w in ((480, 640), (720, 1280), (600, 600), (1080, 1920))]
    if quick:  # a smoke run: two of them (multi-image prompts take 729 base tokens per image at any size)
        four = four[:2]
    prompt = "<image>" * len(four) + "What do these pictures have in common?"
    tok = model.tokenizer

    def ours_first_token():
        b = model.prepare([prompt], [four])
        return model.hf.generate(**b, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)[:, -1:]

    ref_batch = model.prepare([prompt], [four])  # the same ids; pixels come from transformers' processor

    def ref_first_token():
        pixels = ref_processor([four], return_tensors="pt")
        hf.unpatch(hf_model)
        try:
            return hf_model.generate(input_ids=ref_batch["input_ids"], attention_mask=ref_batch["attention_mask"],
                                     pixel_values=pixels["pixel_values"].to(device, dtype),
                                     image_sizes=pixels["image_sizes"].to(device),
                                     batch_num_images=pixels["batch_num_images"], max_new_tokens=1, do_sample=False,
                                     pad_token_id=tok.pad_token_id)[:, -1:]
        finally:
            hf.patch(hf_model)

    cases.append(Case(op="model", device=device, dtype=str(dtype).replace("torch.", ""),
                      shape=f"time to first token, {len(four)} images ({ref_batch['input_ids'].shape[1]} tokens), "
                            f"{layers}, Qwen2 1024 x{text_layers} layers",
                      ours=torch.no_grad()(ours_first_token), baselines={"transformers": torch.no_grad()(ref_first_token)},
                      bytes_moved=sum(im.nbytes for im in four)))
    return cases


# ---- a training step ------------------------------------------------------------------------------------
def train_step_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """One optimizer step (pixels + forward + backward + AdamW) on a batch of 4 mixed samples
    (multi-image, a 4-frame video, a 3D pair, a single image) of the interleave (Llava) layout with
    real widths (SigLIP 1152, Qwen2 1024, 2 layers each; vision frozen, projector + LLM trained).
    Ours: the trainer's step (our processor, patched visual path and merge, the loss through
    linear_cross_entropy, which runs the LM head only on labelled rows). Reference: transformers' PIL
    processor, the unpatched model and its loss over full logits. Same initial weights each call
    (the optimizer state is reset), same loss."""
    try:
        siglip_pil = transformers_compat.pil_image_processor_class("siglip")
    except ImportError:
        return []
    from . import InterleaveModel, hf, processing
    from .tiny import tiny_model, tiny_tokenizer
    from .model import to_model
    from .train import CausalLMLoss, set_trainable

    vocab = 2048 if quick else 32768  # the LM head at 152k would dwarf everything else on a CPU
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf_model = tiny_model("llava", widths="real", vision_layers=2 if not quick else 1, text_layers=2 if not quick else 1,
                          vocab_size=vocab, device=device).to(dtype=dtype)
    ref_processor = siglip_pil(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    model = InterleaveModel.from_transformers(hf_model, tiny_tokenizer(), hf.ImageProcessor.from_hf(ref_processor))
    trainable = set_trainable(model, "projector,llm")
    initial = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    photos = [_photo(h, w) for h, w in ((480, 640), (720, 1280), (600, 600), (1080, 1920), (512, 512))]
    sizes = (2, 4, 2, 1) if not quick else (1, 1, 1, 1)
    visuals, k = [], 0
    for n in sizes:
        visuals.append([photos[(k + i) % len(photos)] for i in range(n)])
        k += n
    turns = [[("user", "<image>" * n + "Describe."), ("assistant", "Something worth describing. " * 4)] for n in sizes]
    tok = model.tokenizer
    encoded = [processing.encode_chat(tok, t, model.plan_visuals([v])[0], image_token_id=model.image_token_id)
               for t, v in zip(turns, visuals)]
    longest = max(len(i) for i, _ in encoded)
    ids = torch.tensor([i + [tok.pad_token_id] * (longest - len(i)) for i, _ in encoded], device=device)
    labels = torch.tensor([lab + [-100] * (longest - len(lab)) for _, lab in encoded], device=device)
    mask = (torch.arange(longest)[None] < torch.tensor([len(i) for i, _ in encoded])[:, None]).long().to(device)

    net = CausalLMLoss(hf_model, fused=True)  # what `python -m interleave train` runs
    maker = model.pixel_maker(uint8=None)
    count = (labels[:, 1:] != -100).sum()

    def step(reference: bool):
        hf_model.load_state_dict(initial)
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        if reference:
            flat = [im for v in visuals for im in v]
            pixels = {"pixel_values": ref_processor(flat, return_tensors="pt")["pixel_values"].to(device, dtype)}
            hf.unpatch(hf_model)
        else:  # the trainer's pixels: uint8 tiles into the fused patch embedding
            pixels = to_model(maker(visuals, device), device, dtype)
        try:
            if reference:  # transformers' forward and loss (full logits, F.cross_entropy)
                loss = hf_model(input_ids=ids, attention_mask=mask, labels=labels, **pixels).loss
            else:          # the trainer's: our visual path, linear_cross_entropy over the labelled rows
                loss = net(ids, mask, labels, **pixels) / count
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            hf.patch(hf_model)
        return loss.detach().reshape(1)

    tokens = int(mask.sum())
    return [Case(op="train_step", device=device, dtype=str(dtype).replace("torch.", ""),
                 shape=f"4 mixed samples ({sum(sizes)} images, {tokens} tokens), SigLIP 1152 + Qwen2 1024, vocab {vocab}",
                 ours=lambda: step(False), baselines={"transformers": lambda: step(True)},
                 bytes_moved=sum(p.nbytes for v in visuals for p in v), tolerance=1e-5)]


# ---- sequence packing -----------------------------------------------------------------------------------
def packing_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """Forward + backward of a mixed batch (a 4-frame video, two images, one image, text-only) of
    the interleave (Llava) layout at 384-pixel tiles (729 tokens per image), packed into rows of at
    most the longest sample (first-fit, block-diagonal attention) against the same batch padded.
    A Qwen2 of width 512 (2 layers, vocabulary 8192) keeps the LM the cost that padding multiplies.
    GB/s here is tokens/s / 1e9 * 1e9 (the `bytes_moved` is the real token count), same loss."""
    import transformers

    from . import InterleaveModel, processing
    from . import data as datamod
    from .tiny import tiny_tokenizer

    torch.manual_seed(0)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=384, patch_size=14)
    text = transformers.Qwen2Config(vocab_size=8192, hidden_size=512 if not quick else 64, intermediate_size=1408,
                                    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                    max_position_embeddings=8192)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=259,
                                      vision_feature_layer=-1, vision_feature_select_strategy="full")
    model = InterleaveModel.from_transformers(transformers.LlavaForConditionalGeneration(config).to(device),
                                              tiny_tokenizer())
    photo = _photo(480, 640)
    frames = 4 if not quick else 2
    kinds = [("<image>" * frames + "What happens?", [photo] * frames), ("<image><image>Compare.", [photo] * 2),
             ("<image>Describe.", [photo]), ("Say hi.", [])]
    samples = []
    for q, vis in kinds:
        plans = model.plan_visuals([vis])[0] if vis else []
        ids, labels = processing.encode_chat(model.tokenizer, [("user", q), ("assistant", "A reply. " * 8)], plans,
                                             image_token_id=259)
        samples.append({"input_ids": ids, "labels": labels, "visuals": vis, "truncated": False,
                        "visual_tokens": sum(1 for t in ids if t == 259)})
    longest = max(len(x["input_ids"]) for x in samples)
    padded = datamod.collate(samples, pad_id=257)
    packed = datamod.collate_packed(samples, max_len=longest, pad_id=257)
    real_tokens = sum(len(x["input_ids"]) for x in samples)

    def step(batch):
        model.hf.zero_grad(set_to_none=True)
        pixels = model.visual_inputs(batch["visuals"])[0]
        extra = {"position_ids": batch["position_ids"].to(device)} if "position_ids" in batch else {}
        logits = model.hf(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                          **extra, **pixels).logits
        labels = batch["labels"].to(device)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                 ignore_index=-100, reduction="sum")
        loss.backward()
        return loss.detach().reshape(1)

    shape = (f"{len(samples)} samples ({real_tokens} tokens): padded {tuple(padded['input_ids'].shape)}, "
             f"packed {tuple(packed['input_ids'].shape)}")
    return [Case(op="packing", device=device, dtype="float32", shape=shape, ours=lambda: step(packed),
                 baselines={"padded": lambda: step(padded)}, bytes_moved=real_tokens, tolerance=1e-5)]


# ---- linear_cross_entropy -------------------------------------------------------------------------
def linear_cross_entropy_inputs(N=4096, V=152000, D=1024, dtype=torch.float32, device="cpu", seed=0):
    """Hidden states ~N(0, 1), an LM head with logits of std ~1, labels uniform over the vocabulary
    with 1/8 of them ignored (prompt tokens), all requiring grad as in training."""
    g = torch.Generator().manual_seed(seed)
    dev = _generator_on(device, g, seed)  # the 152000 x 1024 head: ~2 s per case on the host
    hidden = torch.empty(N, D, device=device).normal_(generator=dev).to(dtype).requires_grad_()
    weight = torch.empty(V, D, device=device).normal_(0.0, D ** -0.5, generator=dev).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=g)
    labels[torch.randperm(N, generator=g)[:N // 8]] = -100
    return hidden, weight, labels.to(device)


def _lce_step(impl: str, hidden, weight, labels, chunk_size=None) -> torch.Tensor:
    """One training step's LM head + loss + backward; returns the loss. Clearing .grad first
    keeps every call's memory the same (no accumulation into an existing gradient)."""
    import torch.nn.functional as F
    from .ops import linear_cross_entropy
    hidden.grad = weight.grad = None
    if impl == "ours":
        loss = linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)
    else:  # "pytorch": the full [N, V] logits, as transformers' Qwen2ForCausalLM.loss_function
        loss = F.cross_entropy(hidden @ weight.T, labels)
    loss.backward()
    return loss.detach()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def linear_cross_entropy_peak_child(argv: list[str]) -> None:
    """In a fresh process: inputs, then one step of `impl`, printing the step's peak memory.

    CPU peak memory is the process's resident-set high-water mark (VmHWM) during the step minus the
    resident set before it: torch's CPU allocator is invisible to tracemalloc and has no counters,
    and writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0). A fresh
    process per implementation means no pages freed by another implementation are reused (glibc
    keeps some freed memory resident). Includes the gradients the step leaves in .grad."""
    import gc
    impl, N, V, D, dtype, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4], int(argv[5])
    chunk_size = int(argv[6]) if argv[6] != "None" else None
    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype)
    # A small step first faults in the code pages and thread pools both implementations need,
    # which would otherwise count as tens of MiB of "peak".
    _lce_step(impl, *linear_cross_entropy_inputs(64, 512, D, dtype), chunk_size=16)
    hidden, weight, labels = linear_cross_entropy_inputs(N, V, D, dtype)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS")
    _lce_step(impl, hidden, weight, labels, chunk_size)
    print(json.dumps({"peak_bytes": (_rss_kib("VmHWM") - before) * 1024}))


def linear_cross_entropy_peak(impl: str, N: int, V: int, D: int, dtype: torch.dtype, device: str,
                              chunk_size=None) -> int:
    """Peak bytes of one step above what the inputs hold. CUDA: torch.cuda.max_memory_allocated
    (the caching allocator's exact count) in this process; CPU: a fresh subprocess (see above)."""
    if device == "cuda":
        hidden, weight, labels = linear_cross_entropy_inputs(N, V, D, dtype, device)
        _lce_step(impl, hidden, weight, labels, chunk_size)  # warm: cuBLAS workspaces, Triton compile
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _lce_step(impl, hidden, weight, labels, chunk_size)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del hidden, weight, labels
        torch.cuda.empty_cache()
        return peak
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys; from interleave.bench import linear_cross_entropy_peak_child as f; f(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, impl, str(N), str(V), str(D),
                        str(dtype).replace("torch.", ""), str(torch.get_num_threads()), str(chunk_size)],
                       capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"linear_cross_entropy peak memory child failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_bytes"]


def _available_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def linear_cross_entropy_errors(N=4096, V=152000, D=1024, dtype=torch.float32, device="cpu",
                                chunk_size=None, reference_chunk=256) -> dict:
    """DESIGN.md's 2x rule at benchmark scale: max abs error of ours and of the full-logits PyTorch
    step against a float64 reference, for the loss and both gradients: {name: (ours, pytorch)}.
    The float64 reference goes through F.cross_entropy's own autograd a block of rows at a time
    (reduction="sum", divided by the count), so it never holds [N, V] either."""
    import torch.nn.functional as F
    hidden, weight, labels = linear_cross_entropy_inputs(N, V, D, dtype, device)
    results = {}
    for impl in ("ours", "pytorch"):
        loss = _lce_step(impl, hidden, weight, labels, chunk_size if impl == "ours" else None)
        results[impl] = [loss.double().cpu(), hidden.grad.double().cpu(), weight.grad.double().cpu()]
        hidden.grad = weight.grad = None
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    count = int((labels != -100).sum())
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, N, reference_chunk):
        rows = slice(start, start + reference_chunk)
        part = F.cross_entropy(h64[rows] @ w64.T, labels[rows], reduction="sum") / max(count, 1)
        part.backward()
        total += part.detach()
    exact = [total.cpu(), h64.grad.cpu(), w64.grad.cpu()]
    return {name: tuple(float((results[impl][i] - exact[i]).abs().max()) for impl in ("ours", "pytorch"))
            for i, name in enumerate(("loss", "grad_hidden", "grad_weight"))}


def linear_cross_entropy_cases(device: str, quick: bool = False, compile_reference: bool = True) -> list[Case]:
    """LM head + loss + backward over N tokens, Qwen's V=152000, D=1024: ours against
    F.cross_entropy over the full [N, V] logits. Reports time and peak memory of each."""
    configs = [(4096, torch.float32), (16384, torch.float32)]
    if device == "cuda":
        configs = [(4096, torch.bfloat16), (16384, torch.bfloat16), (4096, torch.float32), (16384, torch.float32)]
    V, D, chunk = 152000, 1024, None  # chunk None: the op's default
    if quick:  # small, but still several chunks
        configs, V, D, chunk = [(512, torch.float32)], 8192, 128, 64
    cases = []
    for N, dtype in configs:
        es = torch.tensor([], dtype=dtype).element_size()
        hidden, weight, labels = linear_cross_entropy_inputs(N, V, D, dtype, device)
        baselines, memory, notes = {}, {}, []
        # The reference holds about three [N, V] tensors at once (log_softmax's output, its
        # gradient, the logits' gradient; measured 3.0x at N=4096), plus grad_weight.
        need = 3 * N * V * es + V * D * es
        free = _available_bytes(device)
        if need < 0.8 * free:
            baselines["pytorch"] = lambda h=hidden, w=weight, y=labels: _lce_step("pytorch", h, w, y)
        else:
            notes.append(f"pytorch baseline skipped: needs ~{need / 2**30:.1f} GiB for its logits and "
                         f"their gradients, {free / 2**30:.1f} GiB available")
        impls = ["ours"] + list(baselines)
        for impl in impls:
            memory[impl] = lambda i=impl, n=N, dt=dtype: linear_cross_entropy_peak(i, n, V, D, dt, device, chunk)
        cases.append(Case(
            op="linear_cross_entropy", device=device, shape=f"N={N} V={V} D={D}",
            dtype=str(dtype).replace("torch.", ""),
            ours=lambda h=hidden, w=weight, y=labels: _lce_step("ours", h, w, y, chunk),
            baselines=baselines,
            # At least: read hidden and weight, write both gradients (the FLOPs dominate).
            bytes_moved=2 * (N * D + V * D) * es,
            tolerance=1e-5, memory=memory, warmup=1, min_reps=3, notes=notes))
    return cases


CASES: dict[str, Callable[..., list[Case]]] = {"merge_tokens": merge_tokens_cases,
                                               "anyres_tiles": anyres_tiles_cases,
                                               "image_processor": image_processor_cases,
                                               "pack_tokens": pack_tokens_cases,
                                               "patch_embed": patch_embed_cases,
                                               "model": model_cases,
                                               "train_step": train_step_cases,
                                               "packing": packing_cases,
                                               "linear_cross_entropy": linear_cross_entropy_cases}
# Run only when named with --op (minutes on a CPU): not part of the default main job.
HEAVY_OPS = ("train_step", "packing")


# ---- timing ------------------------------------------------------------------------------------
class _Flush:
    def __init__(self, device):
        self.buf = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device == "cuda" else None

    def __call__(self):
        if self.buf is not None:
            self.buf.zero_()


# device_only timing: a GPU sleep queued ahead of the start event keeps the stream busy while the
# host runs the call's Python and launches, so the events bracket the kernels alone. 2 ms covers the
# host side of every CUDA case here; a call whose host side takes longer is timed without it (below).
_SLEEP_S = 2e-3


def _sleep_cycles() -> int:
    try:
        clock_mhz = torch.cuda.get_device_properties(torch.cuda.current_device()).clock_rate / 1e3
    except (AttributeError, RuntimeError):
        clock_mhz = 2000.0
    return int(_SLEEP_S * clock_mhz * 1e6)


def time_fn(fn: Callable[[], object], device: str, reps: int, warmup: int = 3,
            budget_s: float = 4.0, min_reps: int = 5, device_only: bool = False) -> float:
    """Median seconds per call, over `reps` calls or as many as fit in `budget_s` (at least
    `min_reps`), so slow baselines (Pillow on 16 frames) do not dominate a run.

    On CUDA the time is from a start event to an end event around the call: host time the GPU
    waits for (Python, launches, a host sync inside the call) counts. With device_only, a GPU
    sleep queued before the start event hides the host's launches behind it, so the time is the
    device's (kernels and the gaps between them once the host has caught up); a call that syncs
    the host inside still shows the wait. Returns NaN for device_only off CUDA.

    A `reps` below `min_reps` wins and caps the warm-up too (`--reps 2` is a smoke run: the quick
    bench's model case made 8 calls of each side where it asked for 2)."""
    if device_only and device != "cuda":
        return float("nan")
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    min_reps, warmup = min(min_reps, reps), min(warmup, reps)
    reps = max(min_reps, min(reps, int(budget_s / max(first, 1e-9))))
    for _ in range(warmup - 1):
        fn()
    times = []
    if device == "cuda":
        flush = _Flush(device)
        cycles = 0
        if device_only:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()  # the host side alone (nothing waits for the GPU here unless the call syncs)
            host_s = time.perf_counter() - t0
            torch.cuda.synchronize()
            cycles = int(_sleep_cycles() * max(1.0, 2 * host_s / _SLEEP_S))
        for _ in range(reps):
            flush()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if cycles:
                torch.cuda._sleep(cycles)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int = 1 << 30, reps: int = 20, device_only: bool = False) -> float:
    """Device-copy bandwidth in GB/s (read + write counted), the ceiling for data-movement ops."""
    return _copy_rates(device, nbytes, reps, (device_only,))[0]


def _copy_rates(device: str, nbytes: int, reps: int, device_only_modes) -> list[float]:
    """copy_bandwidth for each timing mode in turn, over one pair of buffers."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    return [2 * nbytes / time_fn(lambda: dst.copy_(src), device, reps=reps, device_only=mode) / 1e9
            for mode in device_only_modes]


# Dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity) from the vendor's data sheets, by a
# substring of torch.cuda.get_device_name(): the compute roofline of GEMM-like cases (issue 4's bar
# is 50% of whichever roofline binds). PCIe H100s have a lower peak: matched first.
TENSOR_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


def roofline_fraction(seconds: float, flops: int, bytes_moved: int, peak_tflops: float, copy_gbps: float) -> float:
    """The time the binding roofline allows (the larger of flops at the tensor-core peak and bytes at
    the measured copy bandwidth) over the time taken: 1.0 is on the roofline."""
    bound = max(flops / (peak_tflops * 1e12), bytes_moved / (copy_gbps * 1e9))
    return bound / seconds


def tensor_peak_tflops(device_name: str) -> Optional[float]:
    return next((peak for key, peak in TENSOR_PEAK_TFLOPS if key in device_name), None)


# Data-movement ops whose CUDA bars are a fraction of device bandwidth: each case is also held
# against one device copy moving the same bytes (read + write), timed the same way in the same run.
# At tens of MB a copy's launch and tail take a visible share of its time, so the 1 GiB copy rate
# (environment.copy_gbps) understates what a transfer of that size can reach; both are reported.
SAME_SIZE_COPY_OPS = ("merge_tokens", "pack_tokens", "anyres_tiles")


def _max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if ours.shape != ref.shape:
        return float("inf")
    return float((ours.double() - ref.double()).abs().max()) if ours.numel() else 0.0


def run_case(case: Case, reps: int) -> dict:
    if not case.baselines:  # every baseline skipped (e.g. it does not fit in memory): time ours only
        return _run_case_without_reference(case, reps)
    return _time_case(case, reps, check_case(case))


def check_case(case: Case) -> dict:
    """Ours against the first baseline (the semantic reference): equality, error, tolerance."""
    reference_name = next(iter(case.baselines))  # the first baseline is the semantic reference
    out, ref = case.ours(), case.baselines[reference_name]()
    result = {
        "op": case.op, "device": case.device, "shape": case.shape, "dtype": case.dtype,
        "reference": reference_name, "bitwise_equal": bool(torch.equal(out.cpu(), ref.cpu())), "max_abs_error": _max_error(out.cpu(), ref.cpu()),
        "bytes_moved": case.bytes_moved, "median_ms": {},
    }
    if case.tolerance is None:
        result["matches_reference"] = result["bitwise_equal"]
        if case.truth is None and case.variants:
            # Variants of a bitwise op (other kernels or call paths for the same result) must be
            # bitwise equal too: a benchmark of a wrong kernel is worthless.
            equal = {name: bool(torch.equal(fn().cpu(), ref.cpu())) for name, fn in case.variants.items()}
            result["variants_bitwise_equal"] = equal
            result["matches_reference"] = result["bitwise_equal"] and all(equal.values())
    else:
        scale = max(1.0, float(ref.double().abs().max())) if ref.numel() else 1.0
        result["tolerance"] = case.tolerance * scale
        result["matches_reference"] = result["max_abs_error"] <= result["tolerance"]
    if case.truth is not None:
        # Error against float64: ours at most 2x the reference's (floor: one rounding of the
        # output's largest value in the output dtype, for when the reference happens to be exact).
        truth = case.truth().cpu()
        err_ours, err_ref = _max_error(out.cpu(), truth), _max_error(ref.cpu(), truth)
        floor = float(truth.abs().max()) * torch.finfo(out.dtype).eps / 2
        result.update(error_vs_float64=err_ours, reference_error_vs_float64=err_ref,
                      within_2x_reference_error=err_ours <= 2 * max(err_ref, floor))
        # Variants (other inputs or kernels computing the same op) are held to the same rule.
        variant_errors = {name: _max_error(fn().cpu(), truth) for name, fn in case.variants.items()}
        if variant_errors:
            result["variants_error_vs_float64"] = variant_errors
            result["variants_within_2x_reference_error"] = all(
                e <= 2 * max(err_ref, floor) for e in variant_errors.values())
        del truth
        result["matches_reference"] = result["within_2x_reference_error"] and \
            result.get("variants_within_2x_reference_error", True)
    del out, ref
    return result


def _run_case_without_reference(case: Case, reps: int) -> dict:
    result = {"op": case.op, "device": case.device, "shape": case.shape, "dtype": case.dtype,
              "reference": None, "bitwise_equal": False, "max_abs_error": None,
              "matches_reference": None, "bytes_moved": case.bytes_moved, "median_ms": {}}
    return _time_case(case, reps, result)


def _time_case(case: Case, reps: int, result: dict) -> dict:
    if case.memory:
        result["peak_memory_bytes"] = {name: fn() for name, fn in case.memory.items()}
    if case.notes:
        result["notes"] = list(case.notes)
    for name, fn in {"ours": case.ours, **case.variants, **case.baselines}.items():
        result["median_ms"][name] = time_fn(fn, case.device, reps, warmup=case.warmup,
                                            min_reps=case.min_reps) * 1e3
    if case.device == "cuda":
        # Our kernels' device time (host launches hidden behind a GPU sleep, see time_fn): what the
        # bandwidth bars are about, where a call of tens of microseconds can be host-bound.
        result["device_ms"] = {name: time_fn(fn, "cuda", reps, warmup=1, min_reps=case.min_reps,
                                             device_only=True) * 1e3
                               for name, fn in {"ours": case.ours, **case.variants}.items()}
    ms = result["median_ms"]
    result["ours_gbps"] = case.bytes_moved / (ms["ours"] / 1e3) / 1e9
    result["variants_gbps"] = {name: case.bytes_moved / (ms[name] / 1e3) / 1e9 for name in case.variants}
    result["speedup_vs"] = {name: ms[name] / ms["ours"] for name in case.baselines}
    if case.flops:
        result["flops"] = case.flops
        result["tflops"] = {name: case.flops / (t / 1e3) / 1e12 for name, t in ms.items()}
    return result


def result_ok(r: dict) -> bool:
    """Bitwise equal to the reference, or within its tolerance (interpolating ops), or (GEMM-like
    ops) within 2x its float64 error; a result without a reference (skipped, with a note) passes."""
    return r.get("matches_reference", r["bitwise_equal"]) is not False


# ---- pytest-benchmark suites (bench/bench_*.py) --------------------------------------------------
def suite_params(cases_fn: Callable[..., list[Case]]) -> list:
    """pytest params (one per case and visible device) for a suite's module-scoped `case` fixture."""
    import pytest
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [pytest.param(case, id=f"{device}-{case.dtype}-{case.shape.replace(' ', '_')}")
            for device in devices for case in cases_fn(device)]


def suite_call(case: Case, impl: str) -> Callable[[], object]:
    """The implementation `impl` of `case` as a timed call: CUDA calls synchronize so the timer sees
    the kernels, not the launches."""
    fn = {"ours": case.ours, **case.variants, **case.baselines}[impl]
    if case.device != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    return call


def suite_benchmark(benchmark, case: Case, impl: str, **pedantic) -> None:
    """Times `impl` under pytest-benchmark, grouped with the case's other implementations (so the
    ratios print side by side), with the bytes and flops the op moves in extra_info."""
    benchmark.group = f"{case.op} {case.device} {case.dtype} {case.shape}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    if case.flops:
        benchmark.extra_info["flops"] = case.flops
    call = suite_call(case, impl)
    out = benchmark.pedantic(call, **pedantic) if pedantic else benchmark(call)
    del out


def suite_check(case: Case) -> None:
    """Ours against the case's reference, as `python -m interleave bench` judges it (not timed)."""
    if case.baselines:
        assert result_ok(check_case(case)), case.shape


# ---- reporting -----------------------------------------------------------------------------------
def environment(devices: list[str]) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interleave": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "commit": _commit(), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "extension": _extension.backend_reason("cpu"),
    }
    if "cuda" in devices:
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cuda_extension"] = _extension.backend_reason("cuda")
        # Paths that bench/gpu_preflight.py ruled out for this run (their variants are left out).
        env["preflight_skipped"] = preflight_skipped()
    return env


def _commit() -> str:
    if os.environ.get("INTERLEAVE_COMMIT"):  # the GPU machine's copy of the tree may carry a stale .git
        return os.environ["INTERLEAVE_COMMIT"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("INTERLEAVE_COMMIT", "unknown")


def format_table(results: list[dict]) -> str:
    baselines = list(dict.fromkeys(b for r in results for b in r["speedup_vs"]))
    with_flops = any("tflops" in r for r in results)
    with_device = any("device_ms" in r for r in results)
    with_copy = any("same_size_copy_gbps" in r for r in results)
    head = ["op", "device", "shape", "dtype", "ours ms"] + (["device ms"] if with_device else [])
    head += ["GB/s"] + (["TFLOP/s"] if with_flops else [])
    head += ["% same-size copy (call / device)"] if with_copy else []
    head += [f"{b} ms (ratio)" for b in baselines] + ["equal"]
    rows = [tuple(head)]
    for r in results:
        ms = r["median_ms"]
        row = [r["op"], r["device"], r["shape"], r["dtype"], f"{ms['ours']:.3f}"]
        if with_device:
            row.append(f"{r['device_ms']['ours']:.3f}" if "device_ms" in r else "-")
        row.append(f"{r['ours_gbps']:.1f}")
        if with_flops:
            row.append(f"{r['tflops']['ours']:.2f}" if "tflops" in r else "-")
        if with_copy:
            dev = r.get("device_fraction_of_same_size_copy", {}).get("ours", float("nan"))
            row.append(f"{100 * r['fraction_of_same_size_copy']:.0f} / {100 * dev:.0f}"
                       if "fraction_of_same_size_copy" in r else "-")
        row += [f"{ms[b]:.3f} ({r['speedup_vs'][b]:.2f}x)" if b in ms else "-" for b in baselines]
        if r["bitwise_equal"]:
            row.append("yes")
        elif "within_2x_reference_error" in r:
            row.append(f"{'ok' if r['within_2x_reference_error'] else 'FAIL'}: err {r['error_vs_float64']:.1e} "
                       f"(ref {r['reference_error_vs_float64']:.1e}) vs float64")
        elif r["reference"] is None:
            row.append("-")
        else:
            row.append(("~" if r.get("matches_reference") else "NO ") + f"err {r['max_abs_error']:.2e}")
        rows.append(tuple(row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    memory = [r for r in results if r.get("peak_memory_bytes")]
    if memory:
        lines += ["", _format_memory_table(memory)]
    for r in results:
        lines += [f"note ({r['op']} {r['shape']}): {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def _format_memory_table(results: list[dict]) -> str:
    """Peak memory of one call per implementation, and each baseline's peak over ours."""
    names = list(dict.fromkeys(n for r in results for n in r["peak_memory_bytes"]))
    rows = [tuple(["op", "device", "shape", "dtype"] + [f"{n} peak MiB" + ("" if n == "ours" else " (ratio)")
                                                       for n in names])]
    for r in results:
        mem = r["peak_memory_bytes"]
        row = [r["op"], r["device"], r["shape"], r["dtype"]]
        for n in names:
            if n not in mem:
                row.append("-")
            elif n == "ours":
                row.append(f"{mem[n] / 2**20:.0f}")
            else:
                row.append(f"{mem[n] / 2**20:.0f} ({mem[n] / max(mem['ours'], 1):.1f}x)")
        rows.append(tuple(row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _add_gpu_fractions(result: dict, case: Case, env: dict, reps: int) -> None:
    """A CUDA result against the device: the 1 GiB copy rate, the roofline (bf16/fp16 GEMM-like
    cases) and, for the data-movement ops, one copy of the same bytes timed both ways."""
    copy = env["copy_gbps"]
    result["fraction_of_copy_bw"] = result["ours_gbps"] / copy
    result["variants_fraction_of_copy_bw"] = {k: v / copy for k, v in result["variants_gbps"].items()}
    peak = tensor_peak_tflops(env.get("gpu", ""))
    if result.get("flops") and peak and case.dtype in ("bfloat16", "float16"):
        times = {**result["median_ms"], **{f"{k} (device)": v for k, v in result.get("device_ms", {}).items()}}
        result["roofline"] = {"peak_tflops": peak, "copy_gbps": copy, "fraction": {
            k: roofline_fraction(t / 1e3, result["flops"], result["bytes_moved"], peak, copy)
            for k, t in times.items()}}
    if case.op in SAME_SIZE_COPY_OPS and result.get("bytes_moved"):
        same, same_dev = _copy_rates("cuda", max(result["bytes_moved"] // 2, 1 << 16), reps, (False, True))
        result["same_size_copy_gbps"] = same
        result["fraction_of_same_size_copy"] = result["ours_gbps"] / same
        result["variants_fraction_of_same_size_copy"] = {k: v / same for k, v in result["variants_gbps"].items()}
        # Device times against the same copy's device time.
        dev_gbps = {k: result["bytes_moved"] / (t / 1e3) / 1e9 for k, t in result.get("device_ms", {}).items()}
        result["same_size_copy_device_gbps"] = same_dev
        result["device_gbps"] = dev_gbps
        result["device_fraction_of_same_size_copy"] = {k: v / same_dev for k, v in dev_gbps.items()}


def run(devices: list[str], ops: list[str], quick: bool, reps: int, compile_reference: bool,
        progress=print, checkpoint: Callable[[dict], None] = lambda report: None) -> dict:
    """Runs every case; `checkpoint(report)` after each one, so a run cut short keeps its results."""
    report = {"environment": environment(devices), "results": []}
    for device in devices:
        if device == "cuda":
            report["environment"]["copy_gbps"] = copy_bandwidth("cuda")
        for op in ops:
            # Seconds spent per op's inputs and per case (the GPU check budgets its minutes by them)
            t0 = time.perf_counter()
            cases = CASES[op](device, quick=quick, compile_reference=compile_reference)
            report["environment"].setdefault("setup_seconds", {})[f"{op} {device}"] = round(time.perf_counter() - t0, 3)
            for i, case in enumerate(cases, 1):
                progress(f"[{op} {device} {i}/{len(cases)}] {case.shape} {case.dtype} ...")
                t0 = time.perf_counter()
                result = run_case(case, reps)
                if device == "cuda":
                    _add_gpu_fractions(result, case, report["environment"], reps)
                result["seconds"] = round(time.perf_counter() - t0, 3)
                report["results"].append(result)
                checkpoint(report)
            del cases
    return report


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m interleave bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    p.add_argument("--op", action="append", choices=sorted(CASES), help="default: every op")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per implementation")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--json", default="interleave-bench.json", help="where to write the results")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads); default: torch's (the issues' CPU bars use 2). "
                        "One thread gives steadier CPU timings on a shared machine")
    p.add_argument("--tests-rc", type=int, default=None, help=argparse.SUPPRESS)  # gpu_check.sh
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            p.error("--device cuda: no CUDA device is visible")
        devices.remove("cuda")
    reps = args.reps or (5 if args.quick else 30)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)

    def write(report):
        if args.tests_rc is not None:
            report["environment"]["cuda_tests_passed"] = args.tests_rc == 0
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)

    report = run(devices, args.op or [op for op in sorted(CASES) if op not in HEAVY_OPS], args.quick, reps, not args.no_compile,
                 progress=lambda s: print(s, file=sys.stderr, flush=True), checkpoint=write)
    write(report)
    env = report["environment"]
    print(f"interleave {env['interleave']}, torch {env['torch']}, commit {env['commit']}, "
          f"{env['threads']} CPU threads" + (f", {env['gpu']} (copy {env['copy_gbps']:.0f} GB/s)"
                                             if "gpu" in env else ""))
    print(format_table(report["results"]))
    print(f"wrote {args.json}")
    # A result without a reference (its baseline skipped, with a note) does not fail the run.
    return 0 if all(r.get("matches_reference", r["bitwise_equal"]) is not False
                    for r in report["results"]) else 1
