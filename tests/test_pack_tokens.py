"""pack_tokens (issue 5): the compiled op against transformers' packing and pooling, the reference,
its gradients, and its errors, on every device the machine has."""
import importlib
import types

import pytest
import torch
import torch.nn.functional as F

from interleave import plan, reference
from interleave.ops import pack_tokens
from interleave.ops.pack_tokens import _KERNELS, build_layout

from conftest import poison_allocator

pack_module = importlib.import_module("interleave.ops.pack_tokens")

ov = pytest.importorskip("transformers.models.llava_onevision.modeling_llava_onevision")
nx = pytest.importorskip("transformers.models.llava_next.modeling_llava_next")
nxv = pytest.importorskip("transformers.models.llava_next_video.modeling_llava_next_video")

# (h, w): shrunk (1080x1920, 2000x3000) and unshrunk OneVision grids, extreme aspect ratios.
SIZES = [(1080, 1920), (384, 384), (300, 200), (899, 1024), (2000, 3000), (47, 846), (5000, 7)]
NEXT_GRID = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _needs_kernel(device):
    if not _KERNELS.get(device, False):
        pytest.skip(f"no compiled pack_tokens kernel for {device}")


def _fake_model(grid, image_size=384, patch=14):
    return types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(image_size=image_size, patch_size=patch), image_grid_pinpoints=grid))


def _hf_onevision(feats, sizes, newline):
    fake = _fake_model([list(p) for p in plan.ONEVISION_PINPOINTS])
    packed, lens = ov.LlavaOnevisionModel.pack_image_features(
        fake, feats, torch.tensor(sizes), image_newline=newline, vision_aspect_ratio="anyres_max_9")
    return torch.cat(packed) if isinstance(packed, (list, tuple)) else packed, lens


def _count(p):
    return p.num_frames if isinstance(p, plan.VideoPlan) else p.num_patches


def _random_features(plans, H, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = sum(_count(p) for p in plans)
    return torch.randn(P, 729, H, generator=g).to(dtype).to(device), torch.randn(H, generator=g).to(dtype).to(device)


# ---- parity with transformers -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onevision_images_match_transformers(device, dtype):
    """Copies (unshrunk images) are bitwise equal; the bilinear shrink is within rounding."""
    _needs_kernel(device)
    plans = [plan.plan_image(h, w, "anyres_max_9") for h, w in SIZES]
    feats, newline = _random_features(plans, 16, dtype, device)
    expected, lens = _hf_onevision(list(feats.cpu().split([p.num_patches for p in plans])), SIZES, newline.cpu())
    poison_allocator(expected.numel() * expected.element_size(), device)
    ours = pack_tokens(feats, plans, newline).cpu()
    assert ours.shape == expected.shape and lens.tolist() == [p.num_tokens for p in plans]
    start = 0
    for p in plans:
        a, b = ours[start:start + p.num_tokens], expected[start:start + p.num_tokens]
        if p.shrunk_features is None:
            assert torch.equal(a, b), p
        else:
            assert torch.equal(a[:729], b[:729])  # the base tile is a copy
            if dtype == torch.float32:
                torch.testing.assert_close(a, b)  # ~1 ulp: ATen's own vectorized order differs
            else:
                # ATen rounds intermediates to bf16; we round the float result once. Against the exact
                # (float64) shrink of the same bf16 inputs, ours is within bf16 rounding and no worse.
                exact = _hf_onevision([f.double() for f in feats.cpu().split([q.num_patches for q in plans])],
                                      SIZES, newline.cpu().double())[0][start:start + p.num_tokens]
                ours_err, hf_err = (a.double() - exact).abs(), (b.double() - exact).abs()
                torch.testing.assert_close(a, exact.to(dtype))
                assert ours_err.max() <= hf_err.max() and ours_err.mean() <= hf_err.mean()
        start += p.num_tokens


def test_llava_next_anyres_bitwise(device):
    """LLaVA-NeXT spatial_unpad with its own grid (336px tiles, 24x24 features): all copies."""
    _needs_kernel(device)
    sizes = [(1080, 1920), (336, 336), (500, 1500), (1000, 333), (7, 5000)]
    plans = [plan.plan_image(h, w, "anyres", pinpoints=NEXT_GRID, tile=336) for h, w in sizes]
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(sum(p.num_patches for p in plans), 576, 8, generator=g)
    newline = torch.randn(8, generator=g)
    fake = _fake_model(NEXT_GRID, 336, 14)
    expected, lens = nx.LlavaNextModel.pack_image_features(
        fake, list(feats.split([p.num_patches for p in plans])), torch.tensor(sizes), "full", newline)
    expected = torch.cat(expected) if isinstance(expected, (list, tuple)) else expected
    ours = pack_tokens(feats.to(device), plans, newline.to(device)).cpu()
    assert lens.tolist() == [p.num_tokens for p in plans]
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_llava_next_video_pooling_bitwise(device, pooling):
    _needs_kernel(device)
    config = types.SimpleNamespace(spatial_pool_mode={"avg": "average", "max": "max"}[pooling], spatial_pool_stride=2,
                                   vision_config=types.SimpleNamespace(image_size=384, patch_size=14, hidden_size=8))
    pooler = nxv.LlavaNextVideoPooler(config)
    frames = torch.randn(5, 729, 8, generator=torch.Generator().manual_seed(4))
    expected = pooler(frames).reshape(-1, 8)
    ours = pack_tokens(frames.to(device), [plan.plan_video(5, pooling)]).cpu()
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onevision_video_pooling(device, dtype):
    """OneVision apply_pooling (bilinear 27 -> 14) and one newline after the video."""
    _needs_kernel(device)
    frames = torch.randn(6, 729, 16, generator=torch.Generator().manual_seed(5)).to(dtype)
    newline = torch.randn(16, dtype=dtype)
    expected = ov.LlavaOnevisionModel.apply_pooling(_fake_model(None), frames).reshape(-1, 16)
    ours = pack_tokens(frames.to(device), [plan.plan_video(6, "bilinear")], newline.to(device)).cpu()
    assert ours.shape == (6 * 196 + 1, 16)
    assert torch.equal(ours[-1], newline)
    torch.testing.assert_close(ours[:-1], expected)


# ---- the reference, every mode in one batch ---------------------------------------------------
def _mixed_plans():
    return [
        plan.plan_image(1080, 1920, "anyres_max_9"), plan.plan_image(300, 200, "llava", newline=True),
        plan.plan_video(3, "bilinear"), plan.plan_image(480, 640, "anyres"),
        plan.plan_image(480, 640, "pad", newline=False), plan.plan_video(2, "avg"), plan.plan_video(2, "max"),
        plan.plan_video(2, "none"), plan.plan_image(1000, 3000, "anyres", rounding="original"),
        plan.plan_image(2000, 3000, "anyres_max_4"), plan.plan_image(5000, 7, "anyres_max_9"),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_newline", [True, False])
def test_mixed_batch_matches_reference(device, dtype, with_newline):
    _needs_kernel(device)
    plans = _mixed_plans()
    feats, newline = _random_features(plans, 24, dtype, device, seed=6)
    newline = newline if with_newline else None
    expected = reference.pack_tokens(feats.cpu(), plans, None if newline is None else newline.cpu())
    ours = pack_tokens(feats, plans, newline)
    assert ours.device.type == device and ours.dtype == dtype
    torch.testing.assert_close(ours.cpu(), expected)
    if with_newline:
        assert ours.shape[0] == sum(p.num_tokens for p in plans)


def test_odd_hidden_size_and_unaligned_rows(device):
    """H whose rows are not 16-byte multiples, and features that are a slice (unaligned start)."""
    _needs_kernel(device)
    plans = _mixed_plans()
    P = sum(_count(p) for p in plans)
    base = torch.randn(P * 729 * 7 + 1, device=device)
    feats = base[1:].view(P, 729, 7)
    newline = torch.randn(7, device=device)
    torch.testing.assert_close(pack_tokens(feats, plans, newline).cpu(),
                               reference.pack_tokens(feats.cpu(), plans, newline.cpu()))


def test_other_grid_sizes(device):
    """The grid side is a parameter: 24x24 (336px/14) and 16x16 features."""
    _needs_kernel(device)
    for tile, side in ((336, 24), (224, 16)):
        plans = [plan.plan_image(700, 1300, "anyres_max_2", pinpoints=[(2 * tile, 2 * tile), (tile, 3 * tile)], tile=tile),
                 plan.plan_video(3, "bilinear", tile=tile), plan.plan_video(2, "max", tile=tile)]
        feats = torch.randn(sum(_count(p) for p in plans), side * side, 8, device=device)
        newline = torch.randn(8, device=device)
        torch.testing.assert_close(pack_tokens(feats, plans, newline).cpu(),
                                   reference.pack_tokens(feats.cpu(), plans, newline.cpu(), side=side))


def test_layout_is_small_and_cached():
    plans = [plan.plan_image(1080, 1920, "anyres_max_9")] * 8 + [plan.plan_video(32, "bilinear")]
    table, rows, features, has_max = build_layout(plans)
    assert table.shape == (2 * 8 + 2, 16) and not has_max
    assert rows == 8 * 7269 + 32 * 196 + 1 and features == 8 * 16 + 32
    assert build_layout(list(plans))[0] is table  # cached by the plans


# ---- autograd -----------------------------------------------------------------------------------
def test_gradients_match_reference_autograd(device):
    """float64: the gather backward equals autograd through the reference up to summation order."""
    _needs_kernel(device)
    plans = _mixed_plans()
    feats, newline = _random_features(plans, 6, torch.float64, device, seed=7)
    grad = torch.randn(sum(p.num_tokens for p in plans), 6, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(8))
    f1, n1 = feats.clone().requires_grad_(), newline.clone().requires_grad_()
    pack_tokens(f1, plans, n1).backward(grad.to(device))
    f2, n2 = feats.cpu().clone().requires_grad_(), newline.cpu().clone().requires_grad_()
    reference.pack_tokens(f2, plans, n2).backward(grad)
    torch.testing.assert_close(f1.grad.cpu(), f2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(n1.grad.cpu(), n2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_low_precision_and_deterministic(device, dtype):
    _needs_kernel(device)
    plans = _mixed_plans()
    feats, newline = _random_features(plans, 32, dtype, device, seed=9)
    grad = torch.randn(sum(p.num_tokens for p in plans), 32, generator=torch.Generator().manual_seed(10)).to(dtype)
    results = []
    for _ in range(2):
        f, n = feats.clone().requires_grad_(), newline.clone().requires_grad_()
        pack_tokens(f, plans, n).backward(grad.to(device))
        results.append((f.grad.cpu(), n.grad.cpu()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    # Against autograd through the reference in float32 (the same opmath: float tap weights).
    f2, n2 = feats.cpu().float().requires_grad_(), newline.cpu().float().requires_grad_()
    reference.pack_tokens(f2, plans, n2).backward(grad.float())
    torch.testing.assert_close(results[0][0], f2.grad.to(dtype))
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=0.1)
    torch.testing.assert_close(results[0][1].float(), n2.grad, **tol)  # a sum of ~900 rows


def test_max_pool_gradient_ties_and_nan(device):
    """Ties go to the first maximum and NaN wins, as ATen's max_pool2d (bitwise gradient)."""
    _needs_kernel(device)
    frames = torch.zeros(1, 729, 4, dtype=torch.float64)
    frames[0, 5, 1] = float("nan")
    frames[0, 28, 2] = 3.0
    frames[0, 29, 2] = 3.0
    f1 = frames.to(device, copy=True).requires_grad_()
    pack_tokens(f1, [plan.plan_video(1, "max")]).sum().backward()
    f2 = frames.clone().requires_grad_()
    reference.pack_tokens(f2, [plan.plan_video(1, "max")]).sum().backward()
    assert torch.equal(f1.grad.cpu(), f2.grad)


def test_gradcheck_small(device):
    _needs_kernel(device)
    plans = [plan.plan_video(1, "bilinear", tile=28), plan.plan_image(30, 50, "anyres_max_1", pinpoints=[(28, 56), (56, 28)],
                                                              tile=28, patch=14)]
    feats = torch.randn(1 + 3, 4, 2, dtype=torch.float64, device=device, requires_grad=True)
    newline = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    assert plans[1].grid == (1, 2)
    torch.autograd.gradcheck(lambda f, n: pack_tokens(f, plans, n), (feats, newline))


def test_opcheck(device):
    _needs_kernel(device)
    plans = _mixed_plans()
    feats, newline = _random_features(plans, 8, torch.float32, device, seed=11)
    table, rows, _, _ = build_layout(plans, 27, True)
    torch.library.opcheck(torch.ops.interleave.pack_tokens, (feats.requires_grad_(), newline, table, rows, 27))
    table, rows, _, _ = build_layout(plans, 27, False)
    torch.library.opcheck(torch.ops.interleave.pack_tokens, (feats, None, table, rows, 27))


# ---- errors -------------------------------------------------------------------------------------
def test_bad_input_raises(device):
    p = plan.plan_image(300, 200, "anyres_max_9")
    with pytest.raises(ValueError, match=r"plans describe 2 tiles/frames but features has 3"):
        pack_tokens(torch.zeros(3, 729, 4, device=device), [p])
    with pytest.raises(ValueError, match=r"square grid per tile"):
        pack_tokens(torch.zeros(2, 700, 4, device=device), [p])
    with pytest.raises(ValueError, match=r"newline must be \[4\]"):
        pack_tokens(torch.zeros(2, 729, 4, device=device), [p], torch.zeros(5, device=device))
    with pytest.raises(TypeError, match=r"features must be a float32"):
        pack_tokens(torch.zeros(2, 729, 4, dtype=torch.int32, device=device), [p])
    with pytest.raises(ValueError, match=r"pools frames to \(13, 13\) but 16x16 features"):
        pack_tokens(torch.zeros(1, 256, 4, device=device), [plan.plan_video(1, "avg")])


def test_corrupt_layout_is_rejected_before_any_kernel(device):
    """Calling the op directly with a bad table raises; nothing is read or written out of bounds."""
    _needs_kernel(device)
    plans = [plan.plan_image(1080, 1920, "anyres_max_9")]
    feats = torch.randn(17, 729, 4, device=device)
    newline = torch.randn(4, device=device)
    table, rows, _, _ = build_layout(plans)
    op = torch.ops.interleave.pack_tokens
    cases = [
        ((1, 9), 243, r"crop \[3, \+243\) x \[0, \+135\) is empty or outside the 81x135 map"),
        ((1, 3), 16 * 729 - 10, r"reads feature rows .* but features has"),
        ((1, 12), 5, r"pooling \(floor mode\) of|bilinear output|out_rows must be"),
        ((0, 1), 3, r"out_start is 3"),
        ((1, 14), 1, None),  # newline column flag in a layout called without a newline
    ]
    for (row, field), value, message in cases:
        bad = table.clone()
        bad[row, field] = value
        if message is None:
            with pytest.raises(ValueError, match="newline column needs the newline tensor"):
                op(feats, None, bad, rows, 27)
            continue
        with pytest.raises(ValueError, match=message):
            op(feats, newline, bad, rows, 27)
    with pytest.raises(ValueError, match=r"num_rows=5 but the layout writes"):
        op(feats, newline, table, 5, 27)
    with pytest.raises(ValueError, match=r"layout must be \[S, 16\]"):
        op(feats, newline, table[:, :15], rows, 27)


def test_fallback_without_kernel_uses_reference(monkeypatch):
    plans = _mixed_plans()
    feats, newline = _random_features(plans, 4, torch.float32, "cpu", seed=12)
    monkeypatch.setitem(pack_module._KERNELS, "cpu", False)
    assert torch.equal(pack_tokens(feats, plans, newline), reference.pack_tokens(feats, plans, newline))


def test_bilinear_taps_match_aten_interpolate_exactly_in_float64():
    """The tap indices and weights are ATen's (float64 leaves no rounding to hide behind)."""
    x = torch.randn(1, 3, 75, 135, dtype=torch.float64)
    expected = F.interpolate(x, size=[60, 108], mode="bilinear")
    feats = x[0].permute(1, 2, 0).reshape(75, 135, 3)
    # A 75x135 map as a 3x5 grid of 27x27 tiles cropped to 75x135 (rows 3.., cols 0..).
    p = plan.plan_image(1080, 1920, "anyres_max_9")
    grid = torch.zeros(3 * 27, 5 * 27, 3, dtype=torch.float64)
    grid[3:78, :135] = feats
    tiles = grid.view(3, 27, 5, 27, 3).permute(0, 2, 1, 3, 4).reshape(15, 729, 3)
    assert p.grid == (3, 5) and p.unpadded_features == (75, 135) and p.shrunk_features == (60, 108)
    out = pack_tokens(torch.cat([torch.zeros(1, 729, 3, dtype=torch.float64), tiles]), [p])[729:]
    torch.testing.assert_close(out, expected[0].permute(1, 2, 0).reshape(-1, 3), rtol=1e-15, atol=1e-15)


@pytest.mark.cuda
@pytest.mark.parametrize("blocks", [1, 3])
def test_cuda_capped_grid_matches(blocks):
    """The row kernels are grid-stride: with the grid capped (the benchmark's variants), forward
    and backward equal the default grid's bit for bit."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.pack_tokens import cuda_max_blocks
    plans = [plan.plan_image(400, 900, "anyres_max_9"), plan.plan_video(4, "bilinear")]
    g = torch.Generator().manual_seed(blocks)
    num_features = build_layout(plans, 27, True)[2]
    feats = torch.randn(num_features, 729, 16, generator=g).cuda().requires_grad_(True)
    newline = torch.randn(16, generator=g).cuda()
    out = pack_tokens(feats, plans, newline)
    grad = torch.randn_like(out)
    (expected_grad,) = torch.autograd.grad(out, feats, grad)
    with cuda_max_blocks(blocks):
        capped = pack_tokens(feats, plans, newline)
        (capped_grad,) = torch.autograd.grad(capped, feats, grad)
    assert torch.equal(capped, out) and torch.equal(capped_grad, expected_grad)


@pytest.mark.cuda
def test_cuda_one_launch_and_no_host_sync():
    """The whole batch is one kernel launch, and the op never synchronizes with the host (the
    layout travels through pinned memory, asynchronously)."""
    from torch.profiler import ProfilerActivity, profile
    _needs_kernel("cuda")
    plans = _mixed_plans()
    feats, newline = _random_features(plans, 64, torch.bfloat16, "cuda", seed=13)
    pack_tokens(feats, plans, newline)  # warm: the layout cache, the allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = pack_tokens(feats, plans, newline)
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    kernels = [e.name for e in prof.events() if "pack_forward" in e.name]
    assert len(kernels) == 1, kernels
    torch.testing.assert_close(out.cpu(), reference.pack_tokens(feats.cpu(), plans, newline.cpu()))
