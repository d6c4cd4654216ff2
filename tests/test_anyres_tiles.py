"""anyres_tiles against Pillow itself (interleave.reference.anyres_tiles), bit for bit."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interleave import _extension, plan, reference
from interleave.ops import anyres_tiles
from interleave.ops.anyres_tiles import build_jobs

from conftest import poison_allocator

HAS_EXT = _extension.module is not None
MODES = ["anyres_max_9", "anyres", "llava", "pad"]


def random_image(h, w, seed=0, smooth=False):
    rng = np.random.default_rng(seed)
    if smooth:  # gradients and edges, like photos
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) % 64) * 4], -1)
        return torch.from_numpy(img.astype(np.uint8))
    return torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def check(images, mode, device="cpu", pinpoints=plan.ONEVISION_PINPOINTS):
    poison_allocator(16 << 20, device)
    result = anyres_tiles([im.to(device) for im in images], mode, pinpoints=pinpoints)
    expected = reference.anyres_tiles(images, result.plans)
    assert result.tiles.dtype == torch.uint8 and result.tiles.device.type == device
    assert result.tiles.shape == expected.shape
    assert torch.equal(result.tiles.cpu(), expected), (mode, [tuple(i.shape) for i in images])
    assert result.tile_offsets[-1] == result.tiles.shape[0]
    assert [b - a for a, b in zip(result.tile_offsets, result.tile_offsets[1:])] == [p.num_patches for p in result.plans]


SIZES = [(1, 1), (1, 2), (2, 1), (3, 3), (7, 5000), (5000, 7), (300, 200), (383, 385), (384, 384),
         (899, 1024), (1080, 1920), (2000, 37)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_equals_pillow(device, size, mode):
    check([random_image(*size, seed=size[0] * 7 + size[1])], mode, device)


@pytest.mark.parametrize("mode", MODES)
def test_batch_of_different_sizes_in_one_call(device, mode):
    images = [random_image(480, 640, 1), random_image(1, 1, 2), random_image(1411, 1411, 3, smooth=True),
              random_image(20, 900, 4), random_image(384, 384, 5)]
    check(images, mode, device)


def test_lmms_grid(device):
    images = [random_image(384, 384, 6), random_image(1080, 1920, 7, smooth=True), random_image(1000, 1000, 8)]
    check(images, "anyres", device, pinpoints=plan.LMMS_INTERLEAVE_PINPOINTS)


def test_video_frames_squash(device):
    frames = [random_image(360, 640, s) for s in range(16)]
    check(frames, "llava", device)


def _extreme_image(h, w):
    """0/255 stripes of 1, 2 and 3 pixels: the largest positive and negative partial sums Pillow's
    kernel can meet (every tap of a lobe at 255 while the other lobe's taps are 0)."""
    x = np.arange(w)
    row = np.stack([(x // 1) % 2, (x // 2) % 2, (x // 3) % 2], -1) * 255
    img = np.broadcast_to(row, (h, w, 3)).copy()
    img[::2] = 255 - img[::2]
    return torch.from_numpy(img.astype(np.uint8))


# The CUDA kernel's first pass runs on tensor cores where that is exact (fp16 operands, fp32 sums;
# anyres_tiles_kernels.h): video frames (21 taps), a 7.7x shrink (30-31 taps, near the 32 limit),
# an 8.3x one (33-34 taps: the SIMT path), pad-to-square, upscales; noise, photo-like and
# extreme stripes. Both paths must give Pillow's bytes on the GPU itself.
@pytest.mark.cuda
@pytest.mark.parametrize("tensor_cores", [True, False, "rows4", "imma", "imma_unfused", "imma_staged"],
                         ids=["mma", "simt", "simt_rows4", "integer", "integer_unfused", "integer_staged"])
@pytest.mark.parametrize("sizes,mode", [
    ([(1080, 1920)] * 3, "llava"), ([(1080, 1920)], "anyres_max_9"), ([(45, 2955), (21, 3190)], "llava"),
    ([(333, 517), (517, 333)], "pad"), ([(100, 70), (70, 100), (1, 1)], "anyres"),
], ids=["frames", "anyres_max_9", "near-32-taps", "pad", "upscale"])
def test_cuda_tensor_core_pass_equals_pillow(sizes, mode, tensor_cores):
    """rows4: the SIMT pass 1 with 4 intermediate rows per block (cuda_simt_rows(4)); integer: pass 1
    on integer tensor cores (cuda_integer_tensor_cores()), the vertical pass in the same blocks;
    integer_unfused: the same with the intermediate in global memory (cuda_fused_passes(False));
    integer_staged: fused, each warp's source rows staged by cp.async (cuda_integer_staged_rows(): the
    1920-wide frames; the other widths load directly beside them)."""
    from interleave.ops.anyres_tiles import (cuda_fused_passes, cuda_integer_staged_rows, cuda_integer_tensor_cores,
                                             cuda_simt_rows, cuda_tensor_cores)
    if not _extension.has_op_kernel("interleave::anyres_tiles", "cuda"):
        pytest.skip("no CUDA kernel of anyres_tiles")
    images = [random_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    images += [random_image(h, w, 9, smooth=True) for h, w in sizes[:1]] + [_extreme_image(*sizes[0])]
    with cuda_tensor_cores(tensor_cores is True), cuda_simt_rows(4 if tensor_cores == "rows4" else 1), \
            cuda_integer_tensor_cores(str(tensor_cores).startswith("imma")), \
            cuda_fused_passes(tensor_cores != "imma_unfused"), cuda_integer_staged_rows(tensor_cores == "imma_staged"):
        check(images, mode, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("imma", [False, True], ids=["simt", "integer"])
def test_cuda_coefficients_reused_across_calls_and_streams(imma):
    """The device copy of a batch's coefficients is kept per arena key (device_arena in
    csrc/cuda/anyres_tiles_cuda.cpp): a first call uploads it on a side stream, and calls with the
    same sizes on that stream, on the default stream right after, and again on the side stream
    read it without uploading; every result equals Pillow's. A new size in between changes the key."""
    from interleave.ops.anyres_tiles import cuda_integer_tensor_cores
    if not _extension.has_op_kernel("interleave::anyres_tiles", "cuda"):
        pytest.skip("no CUDA kernel of anyres_tiles")
    sizes = [(1080, 1920), (721, 1283)]  # a size no other test uses: the first call uploads
    images = [random_image(h, w, 30 + i) for i, (h, w) in enumerate(sizes)]
    expected = {}
    side = torch.cuda.Stream()
    with cuda_integer_tensor_cores(imma):
        for stream in (side, side, torch.cuda.current_stream(), None, side):
            batch = images if stream is not None else images[:1]  # None: another key in between
            with torch.cuda.stream(stream if stream is not None else torch.cuda.current_stream()):
                result = anyres_tiles([im.cuda(non_blocking=True) for im in batch], "llava")
                tiles = result.tiles.cpu()
            key = len(batch)
            if key not in expected:
                expected[key] = reference.anyres_tiles(batch, result.plans)
            assert torch.equal(tiles, expected[key]), (key, stream)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), mode=st.sampled_from(MODES), seed=st.integers(0, 9))
def test_property_random_sizes_cpu(h, w, mode, seed):
    check([random_image(h, w, seed)], mode)


def test_cuda_fused_passes_is_a_scoped_switch():
    """Fusing the vertical pass into tensor-core pass-1 blocks is on by default (plan_tile_batch's
    allow_fused in the glue) and cuda_fused_passes(False) turns it off for its block only."""
    from interleave.ops.anyres_tiles import cuda_fused_passes
    if _extension.module is None:
        pytest.skip("compiled extension not built")
    assert _extension.native_setting_value("_set_anyres_fused") is True
    with cuda_fused_passes(False):
        assert _extension.native_setting_value("_set_anyres_fused") is False
        with cuda_fused_passes():
            assert _extension.native_setting_value("_set_anyres_fused") is True
        assert _extension.native_setting_value("_set_anyres_fused") is False
    assert _extension.native_setting_value("_set_anyres_fused") is True


@pytest.mark.parametrize("switch,setter,env", [
    ("cuda_integer_tensor_cores", "_set_anyres_imma", "INTERLEAVE_ANYRES_IMMA"),
    ("cuda_integer_staged_rows", "_set_anyres_imma_staged", "INTERLEAVE_ANYRES_IMMA_STAGED"),
], ids=["integer_pass", "staged_rows"])
def test_cuda_integer_switches_are_scoped(switch, setter, env):
    """The integer tensor-core pass 1 and the staging of its source rows are off by default (until a
    GPU run has timed them; the environment variable turns them on for a process) and each context
    manager turns its switch on (or off) for its block only."""
    import importlib
    if _extension.module is None:
        pytest.skip("compiled extension not built")
    scoped = getattr(importlib.import_module("interleave.ops.anyres_tiles"), switch)

    def current():
        return _extension.native_setting_value(setter)

    before = current()
    assert before is (os.environ.get(env) == "1")
    with scoped():
        assert current() is True
        with scoped(False):
            assert current() is False
        assert current() is True
    assert current() is before


def test_cuda_arena_cache_is_on_unless_the_environment_says_0():
    """The CUDA glue keeps its coefficient arenas on the device by default; INTERLEAVE_ANYRES_ARENA_CACHE=0
    (what bench/gpu_preflight.sh exports when its check fails) uploads them every call."""
    if _extension.module is None:
        pytest.skip("compiled extension not built")
    assert _extension.native_setting_value("_set_anyres_arena_cache") is \
        (os.environ.get("INTERLEAVE_ANYRES_ARENA_CACHE") != "0")


def test_cuda_simt_rows_rejects_other_values():
    from interleave.ops.anyres_tiles import cuda_simt_rows
    with pytest.raises(ValueError, match="cuda_simt_rows: rows must be 1 or 4, got 2"):
        with cuda_simt_rows(2):
            pass


def test_numpy_input_and_single_image():
    image = random_image(50, 70, 9)
    result = anyres_tiles(image.numpy(), "llava")
    assert result.tiles.shape == (1, 384, 384, 3)
    assert torch.equal(result.tiles, anyres_tiles(image, "llava").tiles)


def test_bad_images():
    with pytest.raises(TypeError, match=r"images\[0\] must be uint8"):
        anyres_tiles([torch.zeros(4, 4, 3)], "llava")
    with pytest.raises(ValueError, match=r"must be \[H, W, 3\]"):
        anyres_tiles([torch.zeros(4, 4, 4, dtype=torch.uint8)], "llava")
    with pytest.raises(ValueError, match=r"must be \[H, W, 3\]"):
        anyres_tiles([torch.zeros(0, 4, 3, dtype=torch.uint8)], "llava")
    with pytest.raises(TypeError, match="PIL images"):
        anyres_tiles([[1, 2, 3]], "llava")
    with pytest.raises(ValueError, match="unknown mode"):
        anyres_tiles([torch.zeros(4, 4, 3, dtype=torch.uint8)], "tiles")


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built")
def test_job_table_checks():
    image = random_image(10, 10)
    plans = [plan.plan_image(10, 10, "anyres_max_9")]
    jobs, offsets = build_jobs(plans, 384)
    op = torch.ops.interleave.anyres_tiles
    with pytest.raises(ValueError, match=r"job 1 writes tiles \[1, 2\) outside \[0, 1\)"):
        op([image], jobs, offsets[-1] - 1, 384)
    overlap = jobs.clone()
    overlap[1, 13] = 0
    with pytest.raises(ValueError, match="written by two jobs"):
        op([image], overlap, offsets[-1], 384)
    bad = jobs.clone()
    bad[0, 0] = 3
    with pytest.raises(ValueError, match="names image 3 of 1"):
        op([image], bad, offsets[-1], 384)
    bad = jobs.clone()
    bad[1, 10] = 5000  # dst_top past the canvas
    with pytest.raises(ValueError, match="does not fit the canvas"):
        op([image], bad, offsets[-1], 384)
    with pytest.raises(ValueError, match=r"jobs must be a CPU tensor \[J, 15\]"):
        op([image], jobs[:, :5], offsets[-1], 384)


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built")
def test_opcheck(device):
    images = [random_image(30, 50, 1).to(device), random_image(700, 20, 2).to(device)]
    plans = [plan.plan_image(30, 50, "anyres_max_9"), plan.plan_image(700, 20, "anyres_max_9")]
    jobs, offsets = build_jobs(plans, 384)
    if not _extension.has_op_kernel("interleave::anyres_tiles", device):
        pytest.skip(f"no {device} kernel of anyres_tiles yet")
    torch.library.opcheck(torch.ops.interleave.anyres_tiles.default, (images, jobs, offsets[-1], 384))


def test_pass_order_of_each_pillow_release():
    """Pillow < 12.2: horizontal first; 12.2/12.3: vertical first for images over 100x taller than
    wide that shrink in height (Image.resize, python-pillow/Pillow#9524); 13: the C rule. Checked
    against Image.resize of Pillow 12.1.1, 12.3.0 and 13.0.0 (installed one at a time) with this
    file's tests; the H100 run's 5000x7 mismatch was a 12.x Pillow there against the 13.0 rule."""
    from interleave.ops.anyres_tiles import pillow_pass_order, vertical_first
    assert [pillow_pass_order(v) for v in ("11.3.0", "12.1.1", "12.2.0", "12.3.0", "13.0.0", "14.1")] == \
        ["horizontal", "horizontal", "tall100", "tall100", "pillow13", "pillow13"]
    assert vertical_first(5000, 7, 384, 384, "tall100") and vertical_first(5000, 7, 384, 384, "pillow13")
    assert not vertical_first(2000, 37, 384, 384, "tall100") and vertical_first(2000, 37, 384, 384, "pillow13")
    assert not vertical_first(5000, 7, 6000, 384, "tall100") and not vertical_first(5000, 7, 384, 384, "horizontal")


@pytest.mark.parametrize("h,w,oh,ow", [(1000, 1000, 100, 200), (1000, 1000, 100, 600), (1000, 500, 100, 100),
                                       (5000, 7, 384, 384), (2000, 37, 384, 384), (37, 2000, 384, 384)])
def test_pillow_pass_order(h, w, oh, ow):
    # A single resize job (tile = 1) against the installed Image.resize in its pass order: both
    # orders of Pillow 13 occur here, and the 100x-taller rule of Pillow 12.2/12.3.
    from PIL import Image
    from interleave.ops.anyres_tiles import _installed_pillow_order, vertical_first

    image = random_image(h, w, seed=h + w)
    jobs = torch.tensor([[0, h, w, 0, 0, 0, oh, ow, oh, ow, 0, 0, 0, 0,
                          vertical_first(h, w, oh, ow, _installed_pillow_order())]])
    if not HAS_EXT:
        pytest.skip("compiled extension not built")
    ours = torch.ops.interleave.anyres_tiles([image], jobs, oh * ow, 1).reshape(oh, ow, 3)
    expected = np.asarray(Image.fromarray(image.numpy()).resize((ow, oh), Image.BICUBIC))
    assert torch.equal(ours, torch.from_numpy(expected.copy()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalized_output_is_a_lookup_of_the_tiles(device, dtype):
    from interleave.ops.anyres_tiles import normalization_table

    images = [random_image(300, 500, 1).to(device), random_image(40, 41, 2).to(device)]
    table = normalization_table([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711],
                                dtype=dtype)
    tiles = anyres_tiles(images, "anyres_max_9").tiles.cpu()
    values = anyres_tiles(images, "anyres_max_9", normalize=table).tiles
    assert values.shape == (tiles.shape[0], 3, 384, 384) and values.dtype == dtype
    expected = table[torch.arange(3).view(1, 3, 1, 1), tiles.permute(0, 3, 1, 2).long()]
    assert torch.equal(values.cpu(), expected)


def test_normalization_table_matches_transformers_arithmetic():
    from interleave.ops.anyres_tiles import normalization_table

    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    table = normalization_table(mean, std)
    u8 = np.arange(256, dtype=np.uint8)
    x = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)  # transformers rescale
    expected = (x - np.float32(0.5)) / np.float32(0.5)           # transformers normalize
    assert np.array_equal(table[0].numpy(), expected)
    assert table[0, 0] == -1.0 and table[0, 255] == 1.0


def test_pad_mode_with_per_channel_color(device):
    check_images = [random_image(200, 120, 3)]
    result = anyres_tiles([im.to(device) for im in check_images], "pad", pad_color=(122, 116, 104))
    assert result.plans[0].pad_value == (122, 116, 104)
    expected = reference.anyres_tiles(check_images, result.plans)
    assert torch.equal(result.tiles.cpu(), expected)


# The CPU kernel's inner loops exist per instruction-set level (csrc/cpu/resample_simd.h): the
# portable loops, AVX2, and AVX-512 (vpdpbusd horizontal pass with 3-digit weights, vpermb table
# lookup). Each level must give Pillow's bytes: widths that are not a multiple of 4 pixels and rows
# shorter than one 16-byte load (the transpose's bounce buffer), extreme stripes (the largest partial
# sums), every table width, and tiles that are not a multiple of 64 pixels (the lookup's tail).
@pytest.mark.skipif(not HAS_EXT, reason="needs the compiled extension")
@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
def test_cpu_simd_levels_equal_pillow(level):
    from interleave.ops.anyres_tiles import CPU_SIMD_LEVELS, cpu_simd, cpu_simd_level, cpu_simd_supported, normalization_table

    if CPU_SIMD_LEVELS.index(level) > CPU_SIMD_LEVELS.index(cpu_simd_supported()):
        pytest.skip(f"this CPU does not support {level}")
    sizes = [(1, 1), (2, 5), (3, 4), (9, 6), (7, 3000), (3000, 7), (333, 517), (1080, 1920), (45, 2955)]
    images = [random_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    images += [_extreme_image(300, 1001), _extreme_image(1001, 300), random_image(899, 1024, 9, smooth=True)]
    before = cpu_simd_level()
    with cpu_simd(level):
        assert cpu_simd_level() == level
        for mode in MODES:
            check(images, mode)
        for tile in (100, 384):
            result = anyres_tiles(images, "llava", tile=tile)
            assert torch.equal(result.tiles, reference.anyres_tiles(images, result.plans, tile=tile)), tile
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                table = normalization_table([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711],
                                            dtype=dtype)
                values = anyres_tiles(images, "llava", tile=tile, normalize=table).tiles
                expected = table[torch.arange(3).view(1, 3, 1, 1), result.tiles.permute(0, 3, 1, 2).long()]
                assert torch.equal(values, expected), (tile, dtype)
    assert cpu_simd_level() == before


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
def test_channels_first_images_equal_channels_last(device, level):
    """A channels-first image ([3, H, W] viewed as [H, W, 3]: what torchvision's decoders return),
    which the CPU kernel reads in place (interleaving each source row at the given instruction-set
    level): the same tiles as the channels-last copy, in every mode (pad mode's padded source rows,
    a width kept as is, Pillow 13's vertical-first order for 5000x7), with a normalized output too,
    and mixed with channels-last images, a batch slice and 1-pixel-wide ones in one call."""
    from interleave.ops.anyres_tiles import CPU_SIMD_LEVELS, cpu_simd, cpu_simd_supported, normalization_table
    if device == "cuda" and level != "generic":
        pytest.skip("the SIMD level is a CPU setting")
    if CPU_SIMD_LEVELS.index(level) > CPU_SIMD_LEVELS.index(cpu_simd_supported()):
        pytest.skip(f"this CPU does not support {level}")
    sizes = [(1080, 1920), (383, 385), (384, 384), (5000, 7), (2000, 37), (7, 3000), (1, 9), (9, 1), (300, 200)]
    images = [random_image(h, w, i, smooth=i % 2 == 1) for i, (h, w) in enumerate(sizes)]
    video = torch.stack([im.permute(2, 0, 1) for im in (images[1], random_image(383, 385, 99))])  # [T, 3, H, W]
    planar = [im.permute(2, 0, 1).contiguous().permute(1, 2, 0) for im in images] + [video[1].permute(1, 2, 0)]
    images = images + [random_image(383, 385, 99)]
    assert not planar[0].is_contiguous() and planar[0].stride() == (1920, 1, 1080 * 1920)
    table = normalization_table([0.5] * 3, [0.5] * 3, dtype=torch.float32)
    with cpu_simd(level):
        for mode in MODES:
            want = anyres_tiles(images, mode)
            got = anyres_tiles([p.to(device) for p in planar], mode)
            assert torch.equal(got.tiles.cpu(), want.tiles), mode
        mixed = [planar[i] if i % 2 else images[i] for i in range(len(images))]
        want = anyres_tiles(images, "anyres_max_9", normalize=table).tiles
        got = anyres_tiles([m.to(device) for m in mixed], "anyres_max_9", normalize=table.to(device)).tiles
        assert torch.equal(got.cpu(), want)


def test_cpu_simd_rejects_unknown_level():
    from interleave.ops.anyres_tiles import cpu_simd

    with pytest.raises(ValueError, match="level must be"):
        with cpu_simd("sse9"):
            pass


@pytest.mark.skipif(not HAS_EXT, reason="needs the compiled extension")
def test_cpu_simd_environment_variable_caps_the_level():
    import os
    import subprocess
    import sys

    from interleave.ops.anyres_tiles import cpu_simd_supported

    code = "from interleave.ops.anyres_tiles import cpu_simd_level; print(cpu_simd_level())"
    for value, expected in (("generic", "generic"), ("bogus", None)):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "INTERLEAVE_CPU_SIMD": value})
        assert r.returncode == 0, r.stderr
        if expected is not None:
            assert r.stdout.strip() == expected
        else:  # an unknown value warns and keeps the best level
            assert r.stdout.strip() == cpu_simd_supported() and "INTERLEAVE_CPU_SIMD=bogus" in r.stderr


# Tiles no job writes are zero (batch padding, transformers' [images, max patches] layout): the op
# writes that layout in place (batch=True), on poisoned memory, for every table dtype.
@pytest.mark.parametrize("dtype", [None, torch.float32, torch.bfloat16, torch.float16])
def test_batch_layout_zero_pads_unwritten_tiles(device, dtype):
    from interleave.ops.anyres_tiles import normalization_table

    images = [random_image(300, 500, 1), random_image(40, 41, 2), random_image(1080, 1920, 3, smooth=True)]
    modes = ["anyres_max_9", "pad", "anyres"]
    table = None if dtype is None else normalization_table([0.5] * 3, [0.5] * 3, dtype=dtype).to(device)
    poison_allocator(64 << 20, device)
    packed = anyres_tiles([im.to(device) for im in images], modes, normalize=table)
    # Large CPU outputs come from a cache of freed mappings (csrc/cpu/output_alloc.cpp), so first
    # leave a same-size output whose every tile is written (and not zero) for the call to reuse.
    full = anyres_tiles([images[2].to(device)] * 3, "anyres", normalize=table, batch=True).tiles
    assert full.shape[1] == 16 and full.flatten(1).ne(0).any(1).all()
    del full
    poison_allocator(64 << 20, device)
    batched = anyres_tiles([im.to(device) for im in images], modes, normalize=table, batch=True)
    counts = [p.num_patches for p in packed.plans]
    assert batched.tiles.shape == (3, max(counts), *packed.tiles.shape[1:])
    assert batched.tile_offsets == [0, max(counts), 2 * max(counts), 3 * max(counts)]
    for i, n in enumerate(counts):
        a, b = packed.tile_offsets[i], packed.tile_offsets[i + 1]
        assert torch.equal(batched.tiles[i, :n].cpu(), packed.tiles[a:b].cpu())
        assert not batched.tiles[i, n:].cpu().any()
    # Per-image modes equal one call per mode.
    for i, m in enumerate(modes):
        alone = anyres_tiles([images[i].to(device)], m, normalize=table).tiles
        assert torch.equal(alone.cpu(), batched.tiles[i, :counts[i]].cpu())


def test_batch_layout_rejects_a_mode_count_mismatch():
    with pytest.raises(ValueError, match="2 modes for 1 images"):
        anyres_tiles([random_image(10, 10)], ["anyres", "pad"])
