"""merge_tokens against transformers' embedding + masked_scatter (interleave.reference)."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import interleave
from interleave import _extension, reference
from interleave.ops import merge_tokens

from conftest import CUDA, poison_allocator

IMAGE, VIDEO = 151, 152  # placeholder ids inside a small vocabulary
HAS_EXT = _extension.module is not None
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built")


def make_inputs(B, L, D, V, n_placeholders_per_row, *, dtype=torch.float32, visual_dtype=None,
                ids=(IMAGE,), device="cpu", seed=0):
    """Random ids in [0, V) avoiding the placeholder ids, then placeholders at random positions
    (cycling over `ids`), random embedding table and visual rows of the right count."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V, (B, L), generator=g)
    for token_id in ids:
        input_ids[input_ids == token_id] = 0
    for b, count in enumerate(n_placeholders_per_row):
        pos = torch.randperm(L, generator=g)[:count]
        input_ids[b, pos] = torch.tensor([ids[i % len(ids)] for i in range(count)], dtype=torch.long)
    K = int(reference.placeholder_mask(input_ids, list(ids)).sum())
    weight = torch.randn(V, D, generator=g).to(dtype)
    visual = torch.randn(K, D, generator=g).to(visual_dtype or dtype)
    return input_ids.to(device), weight.to(device), visual.to(device)


SHAPES = [
    # B, L, D, V, placeholders per row
    (1, 1, 1, 200, [1]),            # one token, which is a placeholder; D = 1
    (1, 5, 3, 200, [1]),            # K = 1
    (1, 9, 1, 200, [0]),            # no placeholder at all (K = 0)
    (3, 37, 5, 200, [4, 0, 11]),    # B > 1, placeholders spread over rows, one row without
    (2, 730, 24, 300, [729, 1]),    # a 27x27 image (+ newline) in row 0
    (1, 1000, 130, 1000, [600]),    # non-power-of-two width, several chunks
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ids", [(IMAGE,), (IMAGE, VIDEO)])
def test_forward_bitwise(device, shape, ids):
    B, L, D, V, per_row = shape
    input_ids, weight, visual = make_inputs(B, L, D, V, per_row, ids=ids, device=device)
    poison_allocator(B * L * D * 4, device)
    out = merge_tokens(input_ids, weight, visual, list(ids))
    expected = reference.merge_tokens(input_ids, weight, visual, ids)
    assert out.shape == (B, L, D) and out.dtype == weight.dtype
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("visual_dtype", [None, torch.float32, torch.bfloat16])
def test_forward_dtypes(device, dtype, visual_dtype):
    input_ids, weight, visual = make_inputs(2, 300, 40, 400, [50, 77], dtype=dtype,
                                            visual_dtype=visual_dtype, device=device, seed=1)
    out = merge_tokens(input_ids, weight, visual, IMAGE)
    expected = reference.merge_tokens(input_ids, weight, visual, [IMAGE])
    assert out.dtype == dtype
    assert torch.equal(out, expected)


def test_forward_large_many_chunks(device):
    # n = 40000 positions: chunk > 32, more than one tile of 256 positions per chunk on CUDA.
    input_ids, weight, visual = make_inputs(4, 10000, 16, 5000, [3000, 0, 9999, 1], device=device, seed=2)
    poison_allocator(4 * 10000 * 16 * 4, device)
    out = merge_tokens(input_ids, weight, visual, IMAGE)
    assert torch.equal(out, reference.merge_tokens(input_ids, weight, visual, [IMAGE]))


@pytest.mark.cuda
@pytest.mark.parametrize("chunk", [1, 8, 100])
def test_cuda_chunk_sizes_forward_and_backward(chunk):
    """The CUDA kernels with other positions-per-block than the default (the benchmark's
    variants): forward bitwise, both paths, and the fp32 gradients bitwise."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from interleave.ops.merge_tokens import cuda_min_chunk
    input_ids, weight, visual = make_inputs(3, 700, 24, 300, [200, 0, 31], device="cuda", seed=7)
    expected = reference.merge_tokens(input_ids, weight, visual, [IMAGE])
    grad_out = torch.randn(3, 700, 24, device="cuda")
    rw, rv = _grads(lambda w, v: reference.merge_tokens(input_ids.cpu(), w, v, [IMAGE]), weight.cpu(),
                    visual.cpu(), grad_out.cpu())
    with cuda_min_chunk(chunk):
        assert torch.equal(merge_tokens(input_ids, weight, visual, IMAGE), expected)
        assert torch.equal(merge_tokens(input_ids, weight, visual, IMAGE, num_placeholders=visual.shape[0]), expected)
        gw, gv = _grads(lambda w, v: merge_tokens(input_ids, w, v, IMAGE), weight, visual, grad_out)
    assert torch.equal(gw.cpu(), rw) and torch.equal(gv.cpu(), rv)


def test_cuda_min_chunk_rejects_out_of_range():
    from interleave.ops.merge_tokens import cuda_min_chunk
    with pytest.raises(ValueError, match="positions must be in"):
        with cuda_min_chunk(0):
            pass


def test_placeholder_id_outside_vocabulary(device):
    # Placeholders never read the table, so their id may lie past its end.
    input_ids, weight, visual = make_inputs(1, 20, 4, 100, [0], device=device)
    input_ids[0, 3] = 100000
    visual = torch.randn(1, 4, device=device)
    out = merge_tokens(input_ids, weight, visual, 100000)
    assert torch.equal(out, reference.merge_tokens(input_ids, weight, visual, [100000]))


def test_non_contiguous_inputs(device):
    input_ids, weight, visual = make_inputs(2, 64, 10, 300, [5, 9], device=device, seed=3)
    ids_t = input_ids.t().contiguous().t()  # same values, column-major strides
    weight_t = weight.t().contiguous().t()
    out = merge_tokens(ids_t, weight_t, visual, IMAGE)
    assert torch.equal(out, reference.merge_tokens(input_ids, weight, visual, [IMAGE]))


# ---- backward ----------------------------------------------------------------------------
def _grads(fn, weight, visual, grad_out):
    weight = weight.detach().requires_grad_(True)
    visual = visual.detach().requires_grad_(True)
    out = fn(weight, visual)
    return torch.autograd.grad(out, (weight, visual), grad_out)


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("ids", [(IMAGE,), (IMAGE, VIDEO)])
def test_backward_fp32_bitwise_cpu(shape, ids):
    # Repeated text ids (small vocabularies) make the sum order matter: it must be ATen's.
    B, L, D, V, per_row = shape
    input_ids, weight, visual = make_inputs(B, L, D, min(V, 40) if L > 30 else V, per_row, ids=ids)
    grad_out = torch.randn(B, L, D)
    ours = _grads(lambda w, v: merge_tokens(input_ids, w, v, list(ids)), weight, visual, grad_out)
    ref = _grads(lambda w, v: reference.merge_tokens(input_ids, w, v, ids), weight, visual, grad_out)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@pytest.mark.parametrize("dtype,visual_dtype", [(torch.bfloat16, torch.bfloat16),
                                                (torch.float16, torch.float32),
                                                (torch.bfloat16, torch.float32)])
def test_backward_low_precision_cpu(dtype, visual_dtype):
    # The CPU reference accumulates in the embedding dtype; so do we, in the same order.
    input_ids, weight, visual = make_inputs(2, 500, 33, 50, [100, 3], dtype=dtype,
                                            visual_dtype=visual_dtype, seed=4)
    grad_out = torch.randn(2, 500, 33).to(dtype)
    ours = _grads(lambda w, v: merge_tokens(input_ids, w, v, IMAGE), weight, visual, grad_out)
    ref = _grads(lambda w, v: reference.merge_tokens(input_ids, w, v, [IMAGE]), weight, visual, grad_out)
    assert ours[1].dtype == visual_dtype
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_cuda(dtype):
    # Deterministic sorted-segment sum: each row sums its positions in ascending order from zero,
    # in float, so fp32 equals the CPU reference bitwise; bf16 is checked against float64.
    input_ids, weight, visual = make_inputs(3, 700, 96, 60, [200, 0, 31], dtype=dtype, seed=5)
    grad_out = torch.randn(3, 700, 96).to(dtype)
    gw, gv = _grads(lambda w, v: merge_tokens(input_ids.cuda(), w, v, IMAGE),
                    weight.cuda(), visual.cuda(), grad_out.cuda())
    if dtype == torch.float32:
        rw, rv = _grads(lambda w, v: reference.merge_tokens(input_ids, w, v, [IMAGE]), weight, visual, grad_out)
        assert torch.equal(gw.cpu(), rw) and torch.equal(gv.cpu(), rv)
    else:
        rw, rv = _grads(lambda w, v: reference.merge_tokens(input_ids, w, v, [IMAGE]),
                        weight.double(), visual.double(), grad_out.double())
        assert torch.equal(gv.cpu().double(), rv)  # a gather is exact
        ref_err = (_grads(lambda w, v: reference.merge_tokens(input_ids.cuda(), w, v, [IMAGE]),
                          weight.cuda(), visual.cuda(), grad_out.cuda())[0].double().cpu() - rw).abs().max()
        assert (gw.double().cpu() - rw).abs().max() <= 2 * ref_err + 1e-6
    # Run twice: deterministic.
    gw2, _ = _grads(lambda w, v: merge_tokens(input_ids.cuda(), w, v, IMAGE),
                    weight.cuda(), visual.cuda(), grad_out.cuda())
    assert torch.equal(gw, gw2)


def test_backward_padding_idx(device):
    input_ids, weight, visual = make_inputs(1, 200, 8, 20, [10], device=device, seed=6)
    grad_out = torch.randn(1, 200, 8, device=device)
    pad = int(input_ids[0, 0]) if int(input_ids[0, 0]) != IMAGE else int(input_ids[0, 1])
    ours = _grads(lambda w, v: merge_tokens(input_ids, w, v, IMAGE, padding_idx=pad), weight, visual, grad_out)
    # The reference runs on the CPU: its summation order is the one both our backends follow.
    ref = _grads(lambda w, v: reference.merge_tokens(input_ids.cpu(), w, v, [IMAGE], padding_idx=pad),
                 weight.cpu(), visual.cpu(), grad_out.cpu())
    assert torch.all(ours[0][pad] == 0)
    assert torch.equal(ours[0].cpu(), ref[0]) and torch.equal(ours[1].cpu(), ref[1])


def test_backward_only_visual(device):
    input_ids, weight, visual = make_inputs(2, 30, 6, 100, [4, 2], device=device)
    v = visual.clone().requires_grad_(True)
    out = merge_tokens(input_ids, weight, v, IMAGE)
    (gv,) = torch.autograd.grad(out.sum(), v)
    assert torch.equal(gv, torch.ones_like(v))


@needs_ext
def test_gradcheck_float64(device):
    input_ids, weight, visual = make_inputs(2, 7, 3, 9, [2, 1], dtype=torch.float64, ids=(5,), device=device)
    w = weight.clone().requires_grad_(True)
    v = visual.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, v: merge_tokens(input_ids, w, v, 5), (w, v))


# ---- torch.library --------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    input_ids, weight, visual = make_inputs(2, 40, 8, 100, [6, 3], dtype=dtype, device=device)
    weight.requires_grad_(True)
    visual.requires_grad_(True)
    torch.library.opcheck(torch.ops.interleave.merge_tokens.default,
                          (input_ids, weight, visual, [IMAGE], None, -1))
    torch.library.opcheck(torch.ops.interleave.merge_tokens.default,
                          (input_ids, weight, visual, [IMAGE], visual.shape[0], -1))


@needs_ext
def test_torch_compile_fullgraph(device):
    input_ids, weight, visual = make_inputs(2, 50, 8, 100, [6, 3], device=device)
    torch._dynamo.reset()

    def step(input_ids, weight, visual):
        return merge_tokens(input_ids, weight, visual, IMAGE, num_placeholders=visual.shape[0]) * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # raises on a graph break
    w = weight.clone().requires_grad_(True)
    out = compiled(input_ids, w, visual)
    out.sum().backward()
    assert torch.equal(out, step(input_ids, weight, visual))
    assert w.grad is not None


# ---- errors ---------------------------------------------------------------------------------
def test_count_mismatch_names_both_numbers(device):
    input_ids, weight, visual = make_inputs(2, 30, 4, 100, [3, 2], device=device)
    snapshot = [t.clone() for t in (input_ids, weight, visual)]
    with pytest.raises(ValueError, match=r"5 placeholder tokens.*4 rows"):
        merge_tokens(input_ids, weight, visual[:4], IMAGE)
    with pytest.raises(ValueError, match=r"5 placeholder tokens.*6 rows"):
        merge_tokens(input_ids, weight, torch.cat([visual, visual[:1]]), IMAGE)
    for before, after in zip(snapshot, (input_ids, weight, visual)):
        assert torch.equal(before, after)  # the caller's tensors are untouched


@pytest.mark.parametrize("bad", [-1, 100, 10**12])
def test_text_id_out_of_range(device, bad):
    input_ids, weight, visual = make_inputs(2, 30, 4, 100, [3, 2], device=device)
    input_ids[1, 7] = bad if int(input_ids[1, 7]) != IMAGE else input_ids[1, 7]
    if int(input_ids[1, 7]) == IMAGE:
        input_ids[1, 8] = bad
    with pytest.raises(ValueError, match=rf"= {bad} is a text token outside the embedding table \[0, 100\)"):
        merge_tokens(input_ids, weight, visual, IMAGE)


def test_bad_arguments(device):
    input_ids, weight, visual = make_inputs(1, 10, 4, 100, [2], device=device)
    with pytest.raises(TypeError, match="input_ids must be int64"):
        merge_tokens(input_ids.int(), weight, visual, IMAGE)
    with pytest.raises(TypeError, match="embed_weight must be float"):
        merge_tokens(input_ids, weight.long(), visual, IMAGE)
    with pytest.raises(ValueError, match=r"input_ids must be \[B, L\]"):
        merge_tokens(input_ids[0], weight, visual, IMAGE)
    with pytest.raises(ValueError, match="visual has D=3 but embed_weight has D=4"):
        merge_tokens(input_ids, weight, visual[:, :3], IMAGE)
    with pytest.raises(ValueError, match="num_placeholders=3 but visual has 2 rows"):
        merge_tokens(input_ids, weight, visual, IMAGE, num_placeholders=3)
    with pytest.raises(ValueError, match="1..8 ints"):
        merge_tokens(input_ids, weight, visual, [])
    with pytest.raises(ValueError, match="1..8 ints"):
        merge_tokens(input_ids, weight, visual, list(range(9)))


@needs_ext
def test_op_checks_without_wrapper():
    # torch.ops.interleave.merge_tokens called directly repeats the checks in C++.
    input_ids, weight, visual = make_inputs(1, 10, 4, 100, [2])
    with pytest.raises(ValueError, match="visual has D=3"):
        torch.ops.interleave.merge_tokens(input_ids, weight, visual[:, :3], [IMAGE], None, -1)
    with pytest.raises(TypeError, match="input_ids must be int64"):
        torch.ops.interleave.merge_tokens(input_ids.int(), weight, visual, [IMAGE], None, -1)
    with pytest.raises(ValueError, match="2 placeholder tokens but visual has 1 rows"):
        torch.ops.interleave.merge_tokens(input_ids, weight, visual[:1], [IMAGE], None, -1)


@pytest.mark.cuda
def test_device_mismatch():
    input_ids, weight, visual = make_inputs(1, 10, 4, 100, [2])
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        merge_tokens(input_ids, weight.cuda(), visual.cuda(), IMAGE)


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("L,lookback", [(4100, True), (4096, False), (4100, False)],
                         ids=["lookback", "self-count", "count-kernel"])  # 2 x L vs kMergeSelfCountMax
def test_sync_free_path_does_not_sync(L, lookback):
    from interleave.ops.merge_tokens import cuda_lookback
    input_ids, weight, visual = make_inputs(2, L, 64, 1000, [729, 1458], device="cuda")
    with cuda_lookback(lookback):
        merge_tokens(input_ids, weight, visual, IMAGE, num_placeholders=visual.shape[0])  # allocates the state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = merge_tokens(input_ids, weight, visual, IMAGE, num_placeholders=visual.shape[0])
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(out, reference.merge_tokens(input_ids, weight, visual, [IMAGE]))


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("B,L,D,chunk", [(1, 8192, 256, 32), (4, 70000, 8, 32), (1, 300, 16, 1), (3, 5, 4, 32)],
                         ids=["bench-shape", "1024-chunks", "300-chunks-of-1", "one-chunk"])
def test_lookback_equals_reference_repeatedly(B, L, D, chunk):
    """The decoupled look-back (cuda_lookback): the reference's bits at up to kMaxChunks blocks,
    many times in a row on one stream (each launch must leave its state zeroed for the next) and on
    a second stream, two placeholder ids."""
    from interleave.ops.merge_tokens import cuda_lookback, cuda_min_chunk
    per_row = [L * 7 // 10 + b for b in range(B)]
    input_ids, weight, visual = make_inputs(B, L, D, 3000, per_row, ids=(IMAGE, VIDEO), device="cuda")
    want = reference.merge_tokens(input_ids, weight, visual, [IMAGE, VIDEO])
    side = torch.cuda.Stream()
    with cuda_min_chunk(chunk), cuda_lookback(True):
        outs = [merge_tokens(input_ids, weight, visual, [IMAGE, VIDEO], num_placeholders=visual.shape[0])
                for _ in range(5)]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outs += [merge_tokens(input_ids, weight, visual, [IMAGE, VIDEO], num_placeholders=visual.shape[0])
                     for _ in range(3)]
        torch.cuda.current_stream().wait_stream(side)
    for out in outs:
        assert torch.equal(out, want)


@pytest.mark.cuda
@needs_ext
def test_lookback_states_across_many_streams():
    """More streams than the look-back's state pool holds (csrc/cuda/state_pool.h, 16 per device),
    each with a launch held in flight behind a GPU sleep, then again on the same streams: every output
    equals the reference (two launches in flight on one state would corrupt each other's prefixes),
    and the states are reused rather than one per stream."""
    from interleave.ops.merge_tokens import cuda_lookback, cuda_min_chunk
    input_ids, weight, visual = make_inputs(2, 6000, 32, 3000, [3000, 4100], device="cuda")
    want = reference.merge_tokens(input_ids, weight, visual, [IMAGE])
    streams = [torch.cuda.Stream() for _ in range(24)]
    outs = []
    with cuda_min_chunk(32), cuda_lookback(True):
        for rnd in range(2):
            for i, st in enumerate(streams):
                st.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(st):
                    torch.cuda._sleep(200_000 if (i + rnd) % 3 == 0 else 1_000)
                    outs.append(merge_tokens(input_ids, weight, visual, IMAGE, num_placeholders=visual.shape[0]))
        for st in streams:
            torch.cuda.current_stream().wait_stream(st)
    torch.cuda.synchronize()
    for out in outs:
        assert torch.equal(out, want)


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("setting", ["lookback", "two-launch", "rotated", "chunk16", "loads16", "lookback-loads16",
                                     "default-path-loads16"])
def test_sync_free_settings_equal_reference(setting):
    """The benchmark's sync-free variants (the look-back, the count kernel first, 16 loads per
    thread in the row copy, alone and with the look-back) and earlier ones (rotated count walks,
    16-position chunks), and the default path with 16 loads, give the reference's bits, at the
    benchmark's shape on a smaller table."""
    import contextlib
    from interleave.ops.merge_tokens import (cuda_count_rotation, cuda_flat_loads, cuda_lookback, cuda_min_chunk,
                                             cuda_self_count_max)
    settings = {"lookback": [cuda_lookback(True)],
                "two-launch": [cuda_self_count_max(0)],
                "rotated": [cuda_count_rotation(True)],
                "chunk16": [cuda_min_chunk(16)],
                "loads16": [cuda_flat_loads(16)],
                "lookback-loads16": [cuda_lookback(True), cuda_flat_loads(16)],
                "default-path-loads16": [cuda_flat_loads(16)]}[setting]
    input_ids, weight, visual = make_inputs(1, 8192, 256, 5000, [7290], device="cuda")
    known = None if setting.startswith("default-path") else visual.shape[0]
    with contextlib.ExitStack() as stack:
        for ctx in settings:
            stack.enter_context(ctx)
        out = merge_tokens(input_ids, weight, visual, IMAGE, num_placeholders=known)
    assert torch.equal(out, reference.merge_tokens(input_ids, weight, visual, [IMAGE]))


def test_sync_free_settings_reject_bad_values():
    from interleave.ops.merge_tokens import cuda_flat_loads, cuda_self_count_max
    with pytest.raises(ValueError, match="cuda_self_count_max: positions must be in"):
        with cuda_self_count_max(-1):
            pass
    with pytest.raises(ValueError, match="cuda_flat_loads: loads must be 8 or 16, got 12"):
        with cuda_flat_loads(12):
            pass


_SYNC_FREE_MISMATCH = """
import sys, torch
from interleave.ops import merge_tokens
L = int(sys.argv[1])
ids = torch.zeros(1, L, dtype=torch.long, device="cuda")
ids[0, 5:8] = 7  # three placeholders
merge_tokens(ids, torch.randn(10, 16, device="cuda"), torch.randn(2, 16, device="cuda"), 7, num_placeholders=2)
torch.cuda.synchronize()
print("no error")
"""


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("L,lookback", [(100, "1"), (9000, "1"), (100, "0"), (9000, "0")],
                         ids=["lookback", "lookback-long", "self-count", "count-kernel"])
def test_sync_free_mismatch_is_a_device_assertion(L, lookback):
    """The sync-free path cannot raise ValueError (that would need the count on the host): a wrong
    num_placeholders is a device-side assertion, in a subprocess because it ends the CUDA context."""
    r = subprocess.run([sys.executable, "-c", _SYNC_FREE_MISMATCH, str(L)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "INTERLEAVE_MERGE_LOOKBACK": lookback})
    assert r.returncode != 0 and "no error" not in r.stdout, (r.stdout, r.stderr[-2000:])
    assert "device-side assert" in r.stderr or "placeholder count != visual rows" in r.stderr, r.stderr[-2000:]


# ---- property test --------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 300), D=st.integers(1, 20), data=st.data())
def test_property_random_shapes_cpu(B, L, D, data):
    per_row = [data.draw(st.integers(0, L)) for _ in range(B)]
    two = data.draw(st.booleans())
    ids = (IMAGE, VIDEO) if two else (IMAGE,)
    input_ids, weight, visual = make_inputs(B, L, D, 200, per_row, ids=ids, seed=data.draw(st.integers(0, 99)))
    out = merge_tokens(input_ids, weight, visual, list(ids))
    assert torch.equal(out, reference.merge_tokens(input_ids, weight, visual, ids))


# ---- import behaviour -------------------------------------------------------------------------
def _run(code, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_import_does_not_initialize_cuda():
    r = _run("import torch, interleave; assert not torch.cuda.is_initialized(); print('ok')")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_stale_extension_falls_back_with_one_warning():
    code = (
        "import sys, types, warnings\n"
        "info = types.ModuleType('interleave._build_info'); info.torch_version = '0.0.0'\n"
        "sys.modules['interleave._build_info'] = info\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import interleave, torch\n"
        "msgs = [str(x.message) for x in w if issubclass(x.category, interleave.ExtensionWarning)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'built for torch 0.0.0' in msgs[0] and 'pip install --no-build-isolation -e .' in msgs[0]\n"
        "assert interleave.ops.backend('merge_tokens', 'cpu').startswith('reference')\n"
        "ids = torch.tensor([[1, 7, 2]]); w_ = torch.randn(10, 3); v = torch.randn(1, 3)\n"
        "out = interleave.ops.merge_tokens(ids, w_, v, 7)\n"
        "assert torch.equal(out[0, 1], v[0])\n"
        "try:\n"
        "    interleave.ops.merge_tokens(ids, w_, v[:0], 7)\n"
        "except ValueError as e:\n"
        "    assert '1 placeholder tokens' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('ok')\n"
    )
    r = _run(code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@needs_ext
def test_info_command():
    r = subprocess.run([sys.executable, "-m", "interleave", "info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "merge_tokens" in r.stdout
    assert "cpu kernel" in r.stdout
    from importlib import metadata
    try:
        torchvision = f"torchvision {metadata.version('torchvision')} ("
    except metadata.PackageNotFoundError:
        torchvision = "torchvision not installed ("
    assert torchvision in r.stdout, r.stdout
    assert "optional packages: transformers " in r.stdout and "; av " in r.stdout
    from interleave import _extension
    if _extension.has_kernel("cuda"):  # auto's GEMM choice, from the arch list (no CUDA init)
        sm90a = "9.0a" in _extension.module.arch_list.replace(";", " ").split()
        assert "our im2col + cuBLAS at every size" in r.stdout, r.stdout
        assert ("the wgmma kernel (this build has sm_90a)" in r.stdout) == sm90a, r.stdout
        assert "anyres_tiles tensor-core passes" in r.stdout
        assert "CUDA merge_tokens sync-free path: one launch, each block counting" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "interleave", "info"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "INTERLEAVE_MERGE_LOOKBACK": "1"})
    if _extension.has_kernel("cuda"):
        assert "CUDA merge_tokens sync-free path: one launch, decoupled look-back" in r.stdout, r.stdout


def test_empty_sequence(device):
    weight = torch.randn(10, 4, device=device)
    input_ids = torch.empty(2, 0, dtype=torch.long, device=device)
    out = merge_tokens(input_ids, weight, torch.empty(0, 4, device=device), 7)
    assert out.shape == (2, 0, 4)
    for n in (None, 1):
        with pytest.raises(ValueError, match="0 placeholder tokens but visual has 1 rows"):
            merge_tokens(input_ids, weight, torch.randn(1, 4, device=device), 7, num_placeholders=n)


def test_large_outputs_reuse_cached_memory_correctly():
    # Outputs >= 4 MiB come from a cache of freed mappings (csrc/cpu/output_alloc.cpp): a reused
    # buffer still holds the previous output, so every element must be written again.
    first = make_inputs(1, 4096, 512, 1000, [3000], seed=11)
    out = merge_tokens(*first, IMAGE)
    ptr = out.data_ptr()
    del out
    second = make_inputs(1, 4096, 512, 1000, [1234], seed=12)
    again = merge_tokens(*second, IMAGE)
    assert torch.equal(again, reference.merge_tokens(*second, [IMAGE]))
    if os.environ.get("INTERLEAVE_HUGEPAGES", "1") != "0":
        assert again.data_ptr() == ptr  # the freed mapping was handed out again


def test_skip_autograd_layer_only_when_nothing_to_record():
    # merge_tokens and pack_tokens enter the dispatcher below torch.library's (Python) autograd layer
    # when it has nothing to record; with an input that needs grad they must go through it.
    from interleave import _extension
    plain, leaf = torch.randn(2), torch.randn(2, requires_grad=True)
    below = type(torch._C._AutoDispatchBelowAutograd())
    assert isinstance(_extension.skip_autograd_layer(plain, None), below)
    assert not isinstance(_extension.skip_autograd_layer(plain, leaf), below)
    with torch.no_grad():
        assert isinstance(_extension.skip_autograd_layer(leaf), below)
    ids, weight = torch.tensor([[1, 5, 5, 2]]), torch.randn(10, 4, requires_grad=True)
    visual = torch.randn(2, 4)
    out = merge_tokens(ids, weight, visual, 5)
    assert out.grad_fn is not None  # through the autograd layer: trainable
    out.sum().backward()
    assert weight.grad is not None
    with torch.no_grad():
        assert merge_tokens(ids, weight, visual, 5).grad_fn is None
    assert torch.equal(merge_tokens(ids, weight.detach(), visual, 5), out.detach())
