"""patch_embed and FusedSiglipPatchEmbedding against transformers' SiglipVisionEmbeddings.

Accuracy rule (DESIGN.md): against a float64 reference, our error is at most 2x the error of the
PyTorch reference computed in the same dtype. The float64 reference of the uint8 path normalizes
exactly (u8 / 255 - mean) / std in float64; HF's own fp32 pixel_values carry one rounding more.
"""
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interleave import _extension, reference
from interleave.ops import anyres_tiles, patch_embed

from conftest import poison_allocator

patch_embed_module = importlib.import_module("interleave.ops.patch_embed")

HAS_EXT = _extension.module is not None
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built")
SIGLIP = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ---- helpers --------------------------------------------------------------------------------------
def truth64(pixels, weight, bias, pos, mean=reference.SIGLIP_MEAN, std=reference.SIGLIP_STD):
    """The float64 reference: exact normalization of uint8 tiles (or the given float pixels), conv,
    flatten/transpose, + position embedding, all in float64."""
    if pixels.dtype == torch.uint8:
        m = torch.tensor(mean, dtype=torch.float64, device=pixels.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float64, device=pixels.device).view(1, -1, 1, 1)
        x = (pixels.permute(0, 3, 1, 2).double() / 255 - m) / s
    else:
        x = pixels.double()
    return reference.patch_embed(x, weight.double(), bias.double(), pos.double())


def max_err(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max())


def assert_within_2x(ours, ref, truth, dtype, roundings=1):
    """ours' error <= 2 x the reference's, with a floor of `roundings` roundings of the output's
    scale (one for an output; more for a gradient summed over rounded inputs, see its caller)."""
    truth = truth.detach()
    eps = 2.0 ** -24 if dtype in (torch.float32, torch.float64) else 2.0 ** -9
    floor = float(truth.abs().max()) * eps * roundings
    e_ours, e_ref = max_err(ours, truth), max_err(ref, truth)
    assert e_ours <= 2 * max(e_ref, floor), f"ours {e_ours:.3e} vs reference {e_ref:.3e} (floor {floor:.1e})"


def random_params(C, p, T, *, dtype=torch.float32, device="cpu", seed=0, cin=3):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(C, cin, p, p, generator=g) / (cin * p * p) ** 0.5).to(dtype)
    bias = (torch.randn(C, generator=g) * 0.1).to(dtype)
    pos = torch.randn(T, C, generator=g).to(dtype)
    return weight.to(device), bias.to(device), pos.to(device)


def random_tiles(N, S, device="cpu", seed=0, cin=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (N, S, S, cin), generator=g, dtype=torch.uint8).to(device)


# ---- the op against the reference on random data ---------------------------------------------------
SHAPES = [
    # N, S, p, C
    (1, 28, 14, 8),      # 2x2 tokens, N = 1
    (2, 30, 14, 24),     # 2 pixels past the last patch are ignored
    (3, 17, 4, 5),       # 4x4 tokens, odd channel count
    (1, 14, 14, 7),      # one token
    (2, 384, 14, 40),    # SigLIP's 27x27 grid, 6 pixels ignored
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_uint8(device, shape, dtype):
    N, S, p, C = shape
    T = (S // p) ** 2
    tiles = random_tiles(N, S, device)
    weight, bias, pos = random_params(C, p, T, dtype=dtype, device=device)
    poison_allocator(N * T * C * 4, device)
    out = patch_embed(tiles, weight, bias, pos)
    assert out.shape == (N, T, C) and out.dtype == dtype
    ref = reference.patch_embed_tiles(tiles, weight, bias, pos)
    assert_within_2x(out, ref, truth64(tiles, weight, bias, pos), dtype)


@pytest.mark.parametrize("shape", SHAPES[1:3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_pixel_values(device, shape, dtype):
    N, S, p, C = shape
    T = (S // p) ** 2
    pixel_values = reference.normalize_tiles(random_tiles(N, S, device, seed=1))
    weight, bias, pos = random_params(C, p, T, dtype=dtype, device=device, seed=1)
    out = patch_embed(pixel_values, weight, bias, pos)
    assert out.shape == (N, T, C) and out.dtype == dtype
    ref = reference.patch_embed(pixel_values, weight, bias, pos)
    # HF casts the pixels to the weight dtype first: the float64 reference starts from those.
    assert_within_2x(out, ref, truth64(pixel_values.to(dtype), weight, bias, pos), dtype)


# ---- CUDA: every GEMM for bf16/fp16 (the cuBLAS path is the default at every size) ---------------
@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("mode", ["cublas", "cublas_copy", "mma", "wgmma", "wgmma_staged"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_gemm_choice_matches_reference(mode, shape, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.patch_embed import cuda_gemm
    with cuda_gemm(mode):
        test_forward_uint8("cuda", shape, dtype)
        if shape in SHAPES[1:3]:
            test_forward_pixel_values("cuda", shape, dtype)


@pytest.mark.cuda
@needs_ext
def test_cuda_cublas_path_in_chunks():
    """160 SigLIP tiles: the cuBLAS path's im2col buffer holds 77 images at a time (64 MiB), so the
    GEMM runs in three chunks; images on both sides of each chunk border match the reference."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.patch_embed import cuda_gemm
    tiles = random_tiles(160, 384, "cuda", seed=11)
    weight, bias, pos = random_params(1152, 14, 729, dtype=torch.bfloat16, device="cuda", seed=11)
    pick = torch.tensor([0, 76, 77, 153, 154, 159], device="cuda")
    ref = reference.patch_embed_tiles(tiles[pick], weight, bias, pos)
    for mode in ("cublas", "cublas_copy"):  # cuBLASLt batched over a chunk's images (77, 77, 6); copy + addmm
        with cuda_gemm(mode):
            out = patch_embed(tiles, weight, bias, pos)
        assert_within_2x(out[pick], ref, truth64(tiles[pick], weight, bias, pos), torch.bfloat16)


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_cublas_path_takes_pos_embed_into_cublaslt(dtype):
    """Where cuBLASLt loads (cublaslt_status() == ""), cuda_gemm("cublas") at the SigLIP shape runs
    no broadcast of the position embedding (it is the GEMM's shared C operand; a silent fallback
    would hide a cuBLASLt refusal here), and both it and the copy + addmm path meet the 2x rule, also
    on an odd grid (S = 30: 4 tokens per image) with a pos_embed that is a view at an offset (its
    pointer 2 bytes past an allocation's alignment: the alignment cuBLASLt is told must be right)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.patch_embed import cublaslt_status, cuda_gemm
    status = cublaslt_status()
    if status:
        pytest.skip(f"cuBLASLt unavailable: {status}")
    for n, S, C, offset in [(8, 384, 1152, 0), (7, 30, 64, 1)]:
        tiles = random_tiles(n, S, "cuda", seed=n)
        weight, bias, pos = random_params(C, 14, (S // 14) ** 2, dtype=dtype, device="cuda", seed=n)
        if offset:
            pos = torch.cat([torch.zeros(offset, dtype=dtype, device="cuda"), pos.flatten()])[offset:].view(pos.shape)
        with cuda_gemm("cublas"):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                out = patch_embed(tiles, weight, bias, pos)
                torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        if not offset:  # a 2-byte-aligned C may be refused by every cuBLASLt kernel: then copy + addmm
            assert not any("broadcast_rows" in name for name in names), (n, sorted(set(names))[:20])
        with cuda_gemm("cublas_copy"):
            copied = patch_embed(tiles, weight, bias, pos)
        ref = reference.patch_embed_tiles(tiles, weight, bias, pos)
        truth = truth64(tiles, weight, bias, pos)
        assert_within_2x(out, ref, truth, dtype)
        assert_within_2x(copied, ref, truth, dtype)


def test_cublaslt_status_says_why_not():
    """cublaslt_status() is "" or a reason; a CPU-only build or a machine without CUDA kernels says so."""
    from interleave import _extension
    from interleave.ops.patch_embed import cublaslt_status
    status = cublaslt_status()
    assert isinstance(status, str)
    if not _extension.has_kernel("cuda"):
        assert status


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("mode", ["cublas", "mma"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_gemm_operand_cache_follows_weight_changes(mode, dtype):
    """The cuBLAS and mma paths keep the weight in K order (and, for cuBLAS, the bias columns) for
    the folded tensors of the fold cache only. Through the public op on uint8 tiles: in-place
    changes of the weight, then of the bias, and a second weight of the same shape each give the
    new result. Through the raw op on pixel_values with the caller's own weight: a change through
    `.data` (no new version, as gradcheck perturbs) is seen too (the e857c2a run cached those)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.patch_embed import cuda_gemm
    tiles = random_tiles(6, 56, "cuda", seed=7)
    pixel_values = reference.normalize_tiles(tiles)
    weight, bias, pos = random_params(64, 14, 16, dtype=dtype, device="cuda", seed=7)
    other_weight, _, _ = random_params(64, 14, 16, dtype=dtype, device="cuda", seed=8)

    def check_tiles(w, b):
        out = patch_embed(tiles, w, b, pos)
        assert_within_2x(out, reference.patch_embed_tiles(tiles, w, b, pos), truth64(tiles, w, b, pos), dtype)

    def check_raw(w, b):
        out = torch.ops.interleave.patch_embed(pixel_values, w, b, pos, None)
        assert_within_2x(out, reference.patch_embed(pixel_values, w, b, pos),
                         truth64(pixel_values.to(dtype), w, b, pos), dtype)

    with cuda_gemm(mode):
        check_tiles(weight, bias)
        check_tiles(weight, bias)  # the cached operand
        with torch.no_grad():
            weight.mul_(-0.5)
        check_tiles(weight, bias)
        with torch.no_grad():
            bias.add_(0.25)
        check_tiles(weight, bias)
        check_tiles(other_weight, bias)
        check_tiles(weight, bias)
        check_raw(weight, bias)
        weight.data.mul_(-2.0)
        bias.data.sub_(0.5)
        check_raw(weight, bias)


@pytest.mark.cuda
@needs_ext
def test_cuda_wgmma_kernel_runs_and_follows_weight_changes():
    """On a compute-capability-9.0 GPU with an sm_90a build (bench/gpu_check.sh builds 9.0a), the
    wgmma kernel is available, is the kernel that runs under cuda_gemm("wgmma") (profiler), meets
    the 2x rule at the SigLIP shape over many 64-token tiles (14580 tokens: several per warpgroup),
    rebuilds its cached weight panels when the weight changes in place, and runs under
    torch.inference_mode (same result)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave import _extension
    from interleave.ops.patch_embed import cuda_gemm, wgmma_available
    if torch.cuda.get_device_capability() != (9, 0):
        assert not wgmma_available()
        pytest.skip("the wgmma kernel needs a compute-capability-9.0 GPU (H100/H200)")
    assert wgmma_available() == ("9.0a" in _extension.module.arch_list.replace(";", " ").split())
    if not wgmma_available():
        pytest.skip("this build has no sm_90a target (TORCH_CUDA_ARCH_LIST=9.0a)")
    tiles = random_tiles(20, 384, "cuda", seed=5)
    weight, bias, pos = random_params(1152, 14, 729, dtype=torch.bfloat16, device="cuda", seed=5)
    with cuda_gemm("wgmma"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = patch_embed(tiles, weight, bias, pos)
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        assert any("wgmma_patch_kernel" in n for n in names), sorted(set(names))[:20]
        assert_within_2x(out, reference.patch_embed_tiles(tiles, weight, bias, pos),
                         truth64(tiles, weight, bias, pos), torch.bfloat16)
        with torch.no_grad():
            weight.mul_(-0.5)
        out2 = patch_embed(tiles, weight, bias, pos)
        from interleave.ops.patch_embed import set_fold_cache
        old = set_fold_cache(False)  # a fresh fold per call, made in inference mode: an inference
        try:                         # tensor, which has no version counter
            with torch.inference_mode():
                out3 = patch_embed(tiles, weight, bias, pos)
                out4 = patch_embed(tiles, weight, bias, pos)
        finally:
            set_fold_cache(old)
    assert_within_2x(out2, reference.patch_embed_tiles(tiles, weight, bias, pos),
                     truth64(tiles, weight, bias, pos), torch.bfloat16)
    assert torch.equal(out3, out2) and torch.equal(out4, out2)


@pytest.mark.cuda
@needs_ext
def test_cuda_auto_gemm_is_cublas_lt_below_4096_tokens_and_copy_from_there():
    """The default ("auto") runs the cuBLAS path at every size: with the position embedding as
    cuBLASLt's C operand for a few bf16 SigLIP tiles (2 tiles: 1458 tokens; no broadcast kernel)
    and copied into the output first from 4096 tokens on (6 tiles: the broadcast kernel runs),
    bit for bit what forcing that path gives."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.patch_embed import cublaslt_status, cuda_gemm
    weight, bias, pos = random_params(1152, 14, 729, dtype=torch.bfloat16, device="cuda", seed=9)
    lt = cublaslt_status() == ""
    for n, forced in [(2, "cublas" if lt else "cublas_copy"), (6, "cublas_copy")]:
        tiles = random_tiles(n, 384, "cuda", seed=n)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = patch_embed(tiles, weight, bias, pos)
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        assert any("im2col" in name for name in names), (n, sorted(set(names))[:20])
        assert not any("interleave::" in name and "mma" in name for name in names), sorted(set(names))  # our (w)mma kernels
        assert any("broadcast_rows" in name for name in names) == (forced == "cublas_copy"), (n, sorted(set(names)))
        with cuda_gemm(forced):
            assert torch.equal(out, patch_embed(tiles, weight, bias, pos))


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("n", [1, 6])
def test_cuda_cublaslt_tune_matches_reference(n):
    """cublaslt_tune(): the shape's first call times the heuristic's candidate algorithms and keeps
    the fastest; that call and the next (on the kept algorithm) are within 2x the reference's error
    against float64, as the untuned GEMM is."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.patch_embed import cublaslt_status, cublaslt_tune, cuda_gemm
    if cublaslt_status():
        pytest.skip(f"no cuBLASLt: {cublaslt_status()}")
    weight, bias, pos = random_params(1152, 14, 729, dtype=torch.bfloat16, device="cuda", seed=4)
    tiles = random_tiles(n, 384, "cuda", seed=n + 20)
    with cuda_gemm("cublas"), cublaslt_tune(True):
        outs = [patch_embed(tiles, weight, bias, pos) for _ in range(2)]
    truth = truth64(tiles, weight, bias, pos)
    ref = reference.patch_embed_tiles(tiles, weight, bias, pos)
    for out in outs:
        assert_within_2x(out, ref, truth, torch.bfloat16)


@needs_ext
def test_cublaslt_tune_setting_round_trips():
    from interleave import _extension
    from interleave.ops.patch_embed import cublaslt_tune
    before = _extension.module._set_patch_embed_cublaslt_tune(False)
    _extension.module._set_patch_embed_cublaslt_tune(before)
    with cublaslt_tune(True):
        assert _extension.module._set_patch_embed_cublaslt_tune(True) is True
    assert _extension.module._set_patch_embed_cublaslt_tune(before) is before


@pytest.mark.cuda
@needs_ext
def test_cuda_wgmma_staged_variant_runs_and_matches_gathered():
    """cuda_gemm("wgmma_staged") runs the staged instantiation of the wgmma kernel (profiler: its
    template argument `true`) at the SigLIP shape over several tiles per warpgroup, bit for bit the
    gathered kernel's output (same operands, same MMAs in the same order); a 90-byte image row
    (S = 30) falls back to the gathered kernel."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.patch_embed import cuda_gemm, wgmma_available
    if not wgmma_available():
        pytest.skip("the wgmma kernel needs an sm_90a build on a compute-capability-9.0 GPU")
    for n, S, C in [(20, 384, 1152), (3, 30, 64)]:
        tiles = random_tiles(n, S, "cuda", seed=n)
        weight, bias, pos = random_params(C, 14, (S // 14) ** 2, dtype=torch.bfloat16, device="cuda", seed=n)
        with cuda_gemm("wgmma"):
            gathered = patch_embed(tiles, weight, bias, pos)
        with cuda_gemm("wgmma_staged"):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                staged = patch_embed(tiles, weight, bias, pos)
                torch.cuda.synchronize()
        names = [e.name for e in prof.events() if "wgmma_patch_kernel" in e.name]
        assert names and all(("true>" in name) == (S == 384) for name in names), names
        assert torch.equal(staged, gathered)


def test_cuda_gemm_rejects_unknown_mode():
    from interleave.ops.patch_embed import cuda_gemm
    with pytest.raises(ValueError, match="mode must be one of"):
        with cuda_gemm("cutlass"):
            pass


def test_forward_other_mean_std_and_out_dtype(device):
    tiles = random_tiles(2, 30, device, seed=2)
    weight, bias, pos = random_params(16, 14, 4, device=device, seed=2)
    out = patch_embed(tiles, weight, bias, pos, CLIP_MEAN, CLIP_STD)
    ref = reference.patch_embed_tiles(tiles, weight, bias, pos, CLIP_MEAN, CLIP_STD)
    assert_within_2x(out, ref, truth64(tiles, weight, bias, pos, CLIP_MEAN, CLIP_STD), torch.float32)
    # A bf16 output means bf16 arithmetic (as a bf16 model's): within 2x of the reference run with
    # the weights cast to bf16, both against the float64 result of the float32 weights.
    out16 = patch_embed(tiles, weight, bias, pos, CLIP_MEAN, CLIP_STD, out_dtype=torch.bfloat16)
    assert out16.dtype == torch.bfloat16
    ref16 = reference.patch_embed_tiles(tiles, weight.bfloat16(), bias.bfloat16(), pos.bfloat16(), CLIP_MEAN, CLIP_STD)
    assert_within_2x(out16, ref16, truth64(tiles, weight, bias, pos, CLIP_MEAN, CLIP_STD), torch.bfloat16)


def test_float64(device):
    tiles = random_tiles(2, 30, device, seed=3)
    weight, bias, pos = random_params(6, 14, 4, dtype=torch.float64, device=device, seed=3)
    out = patch_embed(tiles, weight, bias, pos)
    assert out.dtype == torch.float64
    assert max_err(out, truth64(tiles, weight, bias, pos)) < 1e-12


# ---- transformers' SiglipVisionEmbeddings on real photos through the HF processor ------------------
def _hf_embeddings(hidden, image_size, patch, device, seed):
    siglip = pytest.importorskip("transformers.models.siglip.modeling_siglip")
    config = siglip.SiglipVisionConfig(hidden_size=hidden, image_size=image_size, patch_size=patch,
                                       num_channels=3)
    torch.manual_seed(seed)
    return siglip.SiglipVisionEmbeddings(config).to(device)


def _photos():
    data = pytest.importorskip("skimage.data")
    return [data.astronaut(), data.coffee(), data.chelsea()]


def _processed(size, device):
    """(uint8 tiles, HF pixel_values) of the photos at size x size: transformers' PIL SigLIP processor
    for pixel_values, anyres_tiles (Pillow-exact squash) for the tiles."""
    pytest.importorskip("transformers")
    pytest.importorskip("PIL")
    from interleave.transformers_compat import pil_image_processor_class
    processor = pil_image_processor_class("siglip")(size={"height": size, "width": size}, **SIGLIP)
    images = _photos()
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    tiles = anyres_tiles([torch.from_numpy(np.ascontiguousarray(im)) for im in images], "llava", tile=size).tiles
    # The chain is exact: normalizing our uint8 tiles gives HF's pixel_values bit for bit.
    assert torch.equal(reference.normalize_tiles(tiles), pixel_values)
    return tiles.to(device), pixel_values.to(device)


HF_CONFIGS = [(32, 30, 14), (1152, 384, 14)]  # tiny (odd S), SigLIP so400m-patch14-384


@pytest.mark.parametrize("config", HF_CONFIGS, ids=["tiny", "siglip384"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_transformers(device, config, dtype):
    from interleave.nn import FusedSiglipPatchEmbedding
    hidden, size, patch = config
    hf = _hf_embeddings(hidden, size, patch, device, seed=0).to(dtype)
    ours = FusedSiglipPatchEmbedding.from_hf(hf)
    tiles, pixel_values = _processed(size, device)
    w, b, pos = hf.patch_embedding.weight, hf.patch_embedding.bias, hf.position_embedding.weight
    with torch.no_grad():
        theirs = hf(pixel_values)
        from_tiles, from_pixels = ours(tiles), ours(pixel_values)
    assert from_tiles.dtype == theirs.dtype == from_pixels.dtype and from_tiles.shape == theirs.shape
    # uint8 tiles: truth from exact normalization; pixel_values: truth from the same (cast) pixels.
    assert_within_2x(from_tiles, theirs, truth64(tiles, w, b, pos), dtype)
    assert_within_2x(from_pixels, theirs, truth64(pixel_values.to(dtype), w, b, pos), dtype)


@pytest.mark.parametrize("config", HF_CONFIGS, ids=["tiny", "siglip384"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_transformers(device, config, dtype):
    from interleave.nn import FusedSiglipPatchEmbedding
    hidden, size, patch = config
    hf = _hf_embeddings(hidden, size, patch, device, seed=1).to(dtype)
    ours = FusedSiglipPatchEmbedding.from_hf(hf)
    tiles, pixel_values = _processed(size, device)
    g = torch.Generator().manual_seed(1)
    T = (size // patch) ** 2
    upstream = torch.randn(tiles.shape[0], T, hidden, generator=g).to(device)
    params = [hf.patch_embedding.weight, hf.patch_embedding.bias, hf.position_embedding.weight]

    def grads(fn):
        for p in params:
            p.grad = None
        (fn().float() * upstream).sum().backward()
        return [p.grad.clone() for p in params]

    theirs = grads(lambda: hf(pixel_values))
    ours_tiles = grads(lambda: ours(tiles))
    ours_pixels = grads(lambda: ours(pixel_values))
    leaves = [p.detach().double().requires_grad_(True) for p in params]
    for inputs, ours_g in ((tiles, ours_tiles), (pixel_values.to(dtype), ours_pixels)):
        for leaf in leaves:
            leaf.grad = None
        (truth64(inputs, *leaves) * upstream.double()).sum().backward()
        for name, o, t, leaf in zip(("weight", "bias", "pos_embed"), ours_g, theirs, leaves):
            assert o.dtype == dtype, name
            # A floor of 4 roundings: the weight gradient sums products of normalized pixels that
            # ours (one fused scale and shift from uint8) and the reference (rescale, then
            # normalize) round independently. The H100 (404b09f) saw fp32 1.5e-6 vs cuDNN's
            # 7.0e-7 on a weight of scale 7 (4 ulps), i.e. the two roundings, not a wrong sum.
            assert_within_2x(o, t, leaf.grad, dtype, roundings=4)


@needs_ext
def test_gradcheck_float64(device, monkeypatch):
    # gradcheck perturbs the weights through .data, which the fold cache cannot see.
    monkeypatch.setattr(patch_embed_module, "cache_folded_weights", False)
    tiles = random_tiles(2, 9, device, seed=4)
    weight, bias, pos = (t.requires_grad_(True) for t in random_params(3, 4, 4, dtype=torch.float64,
                                                                        device=device, seed=4))
    assert torch.autograd.gradcheck(lambda w, b, p: patch_embed(tiles, w, b, p, CLIP_MEAN, CLIP_STD),
                                    (weight, bias, pos))
    pixel_values = reference.normalize_tiles(tiles).double()
    assert torch.autograd.gradcheck(lambda w, b, p: patch_embed(pixel_values, w, b, p), (weight, bias, pos))


@needs_ext
@pytest.mark.parametrize("pixels", ["uint8", "float32"])
def test_opcheck(device, pixels):
    tiles = random_tiles(2, 9, device, seed=5)
    if pixels == "float32":
        tiles = reference.normalize_tiles(tiles)
    weight, bias, pos = (t.requires_grad_(True) for t in random_params(5, 4, 4, device=device, seed=5))
    torch.library.opcheck(torch.ops.interleave.patch_embed.default, (tiles, weight, bias, pos, None))
    torch.library.opcheck(torch.ops.interleave.patch_embed.default, (tiles, weight, bias, pos, torch.bfloat16))


@needs_ext
def test_torch_compile_fullgraph(device):
    tiles = random_tiles(2, 30, device, seed=6)
    weight, bias, pos = random_params(8, 14, 4, device=device, seed=6)
    torch._dynamo.reset()

    def step(tiles, weight, bias, pos):
        return patch_embed(tiles, weight, bias, pos) * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # raises on a graph break
    w = weight.clone().requires_grad_(True)
    out = compiled(tiles, w, bias, pos)
    out.sum().backward()
    expected = step(tiles, weight, bias, pos)
    assert max_err(out, expected) <= 1e-5 * float(expected.abs().max())
    assert w.grad is not None and w.grad.shape == weight.shape


# ---- the folded-weight cache ------------------------------------------------------------------------
@needs_ext
def test_fold_is_cached_and_invalidated(device, monkeypatch):
    calls = []
    real_fold = patch_embed_module.fold_normalization
    monkeypatch.setattr(patch_embed_module, "fold_normalization",
                        lambda *a: calls.append(1) or real_fold(*a))
    tiles = random_tiles(1, 28, device, seed=7)
    weight, bias, pos = (torch.nn.Parameter(t) for t in random_params(8, 14, 4, device=device, seed=7))
    first = patch_embed(tiles, weight, bias, pos)
    second = patch_embed(tiles, weight, bias, pos)
    assert len(calls) == 1 and torch.equal(first, second)
    # An optimizer step changes the weights in place (a new _version): the fold is recomputed.
    first.sum().backward()
    torch.optim.SGD([weight, bias, pos], lr=0.1).step()
    after = patch_embed(tiles, weight, bias, pos)
    assert len(calls) == 2
    truth = truth64(tiles, weight.detach(), bias.detach(), pos.detach())
    assert max_err(after, truth) <= 1e-5 * float(truth.abs().max())
    with torch.no_grad():
        bias.add_(1.0)  # the bias alone changing invalidates too
    shifted = patch_embed(tiles, weight, bias, pos)
    assert len(calls) == 3 and max_err(shifted, after + 1) < 1e-4


def test_module_state_dict_is_hf_compatible():
    from interleave.nn import FusedSiglipPatchEmbedding
    hf = _hf_embeddings(16, 28, 14, "cpu", seed=8)
    ours = FusedSiglipPatchEmbedding(hidden_size=16, patch_size=14, image_size=28)
    assert set(ours.state_dict()) == set(hf.state_dict()) == {
        "patch_embedding.weight", "patch_embedding.bias", "position_embedding.weight"}
    ours.load_state_dict(hf.state_dict())
    shared = FusedSiglipPatchEmbedding.from_hf(hf)
    assert shared.patch_embedding.weight is hf.patch_embedding.weight
    tiles = random_tiles(2, 28, seed=8)
    assert torch.equal(ours(tiles), shared(tiles))


# ---- errors -----------------------------------------------------------------------------------------
BAD = [
    ("wrong channels (uint8, 4 channels)", lambda t, w, b, p: (t[..., :1].expand(-1, -1, -1, 4).contiguous(), w, b, p), "channels last"),
    ("uint8 channels first", lambda t, w, b, p: (t.permute(0, 3, 1, 2).contiguous(), w, b, p), "channels last"),
    ("float channels last", lambda t, w, b, p: (t.float(), w, b, p), "channels first"),
    ("image smaller than a patch", lambda t, w, b, p: (t[:, :10, :10].contiguous(), w, b, p[:0]), "smaller than one patch"),
    ("non-contiguous tiles", lambda t, w, b, p: (t.transpose(1, 2), w, b, p), "contiguous"),
    ("pos_embed of another grid", lambda t, w, b, p: (t, w, b, torch.cat([p, p[:1]])), "pos_embed must be"),
    ("pos_embed of another width", lambda t, w, b, p: (t, w, b, p[:, :-1]), "pos_embed must be"),
    ("bias of another width", lambda t, w, b, p: (t, w, b[:-1], p), "bias must be"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("entry", ["python", "op"])
def test_bad_input_raises(device, case, entry):
    if entry == "op" and not HAS_EXT:
        pytest.skip("compiled extension not built")
    _, make, message = case
    tiles = random_tiles(2, 28, device, seed=9)
    args = make(tiles, *random_params(8, 14, 4, device=device, seed=9))
    fn = patch_embed if entry == "python" else torch.ops.interleave.patch_embed
    with pytest.raises(ValueError, match=message):
        fn(*args)


def test_bad_dtype_raises(device):
    tiles = random_tiles(1, 28, device)
    weight, bias, pos = random_params(8, 14, 4, device=device)
    with pytest.raises(TypeError, match="uint8"):
        patch_embed(tiles.int(), weight, bias, pos)
    with pytest.raises(TypeError, match="weight"):
        patch_embed(tiles, weight.int(), bias, pos)


@needs_ext
def test_inference_path_equals_the_autograd_path(device):
    # Without anything to differentiate, uint8 tiles go straight to the op with the cached fold (no
    # autograd.Function, below torch.library's autograd layer): the same bits, no graph.
    tiles = random_tiles(2, 28, device, seed=11)
    weight, bias, pos = random_params(8, 14, 4, device=device, seed=11)
    trained = [t.clone().requires_grad_(True) for t in (weight, bias, pos)]
    with_grad = patch_embed(tiles, *trained)
    assert with_grad.grad_fn is not None
    plain = patch_embed(tiles, weight, bias, pos)
    assert plain.grad_fn is None and torch.equal(plain, with_grad.detach())
    with torch.no_grad():
        assert torch.equal(patch_embed(tiles, *trained), plain)
    pixel_values = reference.normalize_tiles(tiles)
    assert patch_embed(pixel_values, weight, bias, pos).grad_fn is None
