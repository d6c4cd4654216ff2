"""linear_cross_entropy against F.cross_entropy(hidden @ weight.T + bias): float64 to 1e-10,
float32/bfloat16 by DESIGN.md's 2x rule (error against a float64 reference at most twice PyTorch's
at the same dtype), for the loss and every gradient; the Triton kernel runs here on CPU through
TRITON_INTERPRET=1 in a subprocess (triton reads the variable when it is imported)."""
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from interleave.ops import linear_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_inputs(N=37, D=64, V=1001, bias=True, ignored=(3, 10, 11), seed=0):
    """float64 inputs (cast per test): logits of std ~2, a few ignored labels."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g, dtype=torch.float64)
    weight = torch.randn(V, D, generator=g, dtype=torch.float64) * (2 / D ** 0.5)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[list(i for i in ignored if i < N)] = -100
    return hidden, weight, b, labels


def run(fn, hidden, weight, bias, labels, dtype, device, grad_output=1.0, **kw):
    """Loss and gradients (hidden, weight, bias) of fn at `dtype`, all returned in float64 on CPU."""
    h = hidden.to(device, dtype, copy=True).requires_grad_()
    w = weight.to(device, dtype, copy=True).requires_grad_()
    b = bias.to(device, dtype, copy=True).requires_grad_() if bias is not None else None
    loss = fn(h, w, labels.to(device), b, **kw)
    loss.backward(torch.tensor(grad_output, dtype=loss.dtype, device=device))
    grads = [h.grad, w.grad] + ([b.grad] if b is not None else [])
    return [loss.detach().double().cpu()] + [t.double().cpu() for t in grads]


def ours(h, w, y, b, **kw):
    return linear_cross_entropy(h, w, y, bias=b, **kw)


def torch_ref(h, w, y, b, ignore_index=-100):
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    return F.cross_entropy(logits, y, ignore_index=ignore_index)


NAMES = ["loss", "grad_hidden", "grad_weight", "grad_bias"]


def assert_2x_rule(dtype, device, hidden, weight, bias, labels, grad_output=1.0, **kw):
    exact = run(torch_ref, hidden.to(dtype).double(), weight.to(dtype).double(),
                None if bias is None else bias.to(dtype).double(), labels, torch.float64, "cpu", grad_output)
    mine = run(ours, hidden, weight, bias, labels, dtype, device, grad_output, **kw)
    theirs = run(torch_ref, hidden, weight, bias, labels, dtype, device, grad_output)
    eps = torch.finfo(dtype).eps
    for name, e, m, t in zip(NAMES, exact, mine, theirs):
        assert torch.isfinite(m).all(), name
        err_mine, err_theirs = float((m - e).abs().max()), float((t - e).abs().max())
        # One ulp of the largest value as a floor, for a PyTorch error that happens to be ~0.
        floor = eps * float(e.abs().max())
        assert err_mine <= 2 * err_theirs + floor, (name, err_mine, err_theirs)


# ---- float64: exact ---------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [None, 1, 5, 37, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_float64_matches_reference(device, chunk_size, bias):
    hidden, weight, b, labels = make_inputs(bias=bias)
    expect = run(torch_ref, hidden, weight, b, labels, torch.float64, device)
    got = run(ours, hidden, weight, b, labels, torch.float64, device, chunk_size=chunk_size)
    for name, e, g in zip(NAMES, expect, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("grad_output", [2.5, -0.3, 0.0])
def test_grad_output_scales_gradients(device, grad_output):
    hidden, weight, b, labels = make_inputs()
    expect = run(torch_ref, hidden, weight, b, labels, torch.float64, device, grad_output)
    got = run(ours, hidden, weight, b, labels, torch.float64, device, grad_output, chunk_size=8)
    for name, e, g in zip(NAMES, expect, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("ignore_index", [0, 1000, -1])
def test_ignore_index_values(device, ignore_index):
    """A valid class id as ignore_index (0, V-1) excludes exactly those labels."""
    hidden, weight, b, labels = make_inputs(ignored=())
    labels[::4] = ignore_index
    expect = run(lambda *a: torch_ref(*a, ignore_index=ignore_index), hidden, weight, b, labels,
                 torch.float64, device)
    got = run(ours, hidden, weight, b, labels, torch.float64, device, ignore_index=ignore_index,
              chunk_size=6)
    for name, e, g in zip(NAMES, expect, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)


def test_batched_hidden_and_labels(device):
    hidden, weight, b, labels = make_inputs(N=3 * 11)
    expect = run(torch_ref, hidden, weight, b, labels, torch.float64, device)
    got = run(lambda h, w, y, bb: linear_cross_entropy(h.view(3, 11, -1), w, y.view(3, 11), bias=bb,
                                                       chunk_size=4),
              hidden, weight, b, labels, torch.float64, device)
    for name, e, g in zip(NAMES, expect, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)


def test_mostly_ignored_rows_skip_the_head(device):
    """Multimodal fine-tuning: most rows ignored (visual tokens, prompt, padding). Only the labelled
    rows go through the head; the ignored rows' grad_hidden is exactly 0, as the reference's."""
    N, V, chunk = 60, 1001, 4
    hidden, weight, b, labels = make_inputs(N=N, V=V)
    labels[:] = -100
    labels[[7, 8, 30, 59]] = torch.tensor([3, 1000, 0, 17])
    expect = run(torch_ref, hidden, weight, b, labels, torch.float64, device)
    got = run(ours, hidden, weight, b, labels, torch.float64, device, chunk_size=chunk)
    for name, e, g in zip(NAMES, expect, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)
    ignored = labels == -100
    assert not got[1][ignored].any() and got[1][~ignored].abs().min() > 0
    h = hidden.float().to(device).requires_grad_()
    w = weight.float().to(device).requires_grad_()
    with _LargestTensor(vocab=V) as mode:  # logits exist only for the 4 labelled rows
        linear_cross_entropy(h, w, labels.to(device), chunk_size=16).backward()
    assert mode.largest_logits == 4 * V  # not [16, V]: a chunk of all rows


def test_all_ignored_gives_zero_not_nan(device):
    hidden, weight, b, labels = make_inputs(N=9)
    labels[:] = -100
    loss, gh, gw, gb = run(ours, hidden, weight, b, labels, torch.float32, device, chunk_size=4)
    assert float(loss) == 0.0
    assert not gh.any() and not gw.any() and not gb.any()


def test_empty_batch(device):
    hidden, weight, b, labels = make_inputs(N=0)
    loss, gh, gw, gb = run(ours, hidden, weight, b, labels, torch.float32, device)
    assert float(loss) == 0.0 and gh.shape == (0, 64) and not gw.any() and not gb.any()


def test_partial_requires_grad_and_no_grad(device):
    hidden, weight, b, labels = make_inputs()
    h, w, y = hidden.to(device), weight.to(device).requires_grad_(), labels.to(device)
    loss = linear_cross_entropy(h, w, y, chunk_size=7)
    loss.backward()
    ref_w = weight.to(device).requires_grad_()
    torch_ref(h, ref_w, y, None).backward()
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, y, bias=b.to(device)),
                                   torch_ref(h, w, y, b.to(device)), rtol=1e-10, atol=1e-10)


def test_backward_twice_raises(device):
    hidden, weight, _, labels = make_inputs()
    w = weight.to(device).requires_grad_()
    loss = linear_cross_entropy(hidden.to(device), w, labels.to(device))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


# ---- float32 / bfloat16: the 2x rule ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_2x_rule(device, dtype, chunk_size, bias):
    hidden, weight, b, labels = make_inputs(bias=bias, seed=1)
    assert_2x_rule(dtype, device, hidden, weight, b, labels, chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_2x_rule_grad_output(device, dtype):
    hidden, weight, b, labels = make_inputs(N=64, V=517, seed=2)
    assert_2x_rule(dtype, device, hidden, weight, b, labels, grad_output=3.0, chunk_size=9)


def test_2x_rule_larger_vocab(device):
    """More chunks and a longer row: the fp32 accumulation of a bfloat16 grad_weight matters."""
    hidden, weight, b, labels = make_inputs(N=256, D=128, V=4099, seed=3)
    assert_2x_rule(torch.bfloat16, device, hidden, weight, b, labels, chunk_size=16)
    assert_2x_rule(torch.float32, device, hidden, weight, b, labels, chunk_size=16)


# ---- memory: no [N, V] tensor ever exists ----------------------------------------------------
class _LargestTensor(TorchDispatchMode):
    """The largest tensor any op creates, and the largest [n, vocab] one (logits)."""

    def __init__(self, vocab=None):
        super().__init__()
        self.largest = self.largest_logits = 0
        self.vocab = vocab

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.interleave.linear_cross_entropy.default:
            # The custom op is one opaque call here; run its implementation under this mode to see
            # every tensor it allocates.
            lce_module = importlib.import_module("interleave.ops.linear_cross_entropy")
            with self:
                return lce_module._op_impl(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        # A new tensor: not a view, not an in-place or out= result (those alias an input).
        fresh = not func.is_view and all(r.alias_info is None for r in func._schema.returns)
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if fresh and t.dim() == 2 and t.shape[1] == self.vocab:
                    self.largest_logits = max(self.largest_logits, t.numel())
        return out


def test_never_materializes_logits(device):
    N, D, V, chunk = 64, 16, 1001, 8
    hidden, weight, b, labels = make_inputs(N=N, D=D, V=V)
    h = hidden.float().to(device).requires_grad_()
    w = weight.float().to(device).requires_grad_()
    with _LargestTensor() as mode:
        linear_cross_entropy(h, w, labels.to(device), bias=b.float().to(device), chunk_size=chunk).backward()
    # The largest tensors are grad_weight [V, D] and one chunk of logits [chunk, V].
    assert mode.largest <= max(V * D, chunk * V) < N * V


# ---- bad inputs -------------------------------------------------------------------------------
def test_bad_labels_raise(device):
    hidden, weight, _, labels = make_inputs(ignored=())
    h, w = hidden.float().to(device), weight.float().to(device)
    for bad in (1001, -1, 10 ** 9):
        y = labels.clone()
        y[7] = bad
        with pytest.raises(ValueError, match=rf"label {bad} at position 7 is outside \[0, 1001\)"):
            linear_cross_entropy(h, w, y.to(device))
    y = labels.clone()
    y[7] = -1  # allowed when it is the ignore_index
    linear_cross_entropy(h, w, y.to(device), ignore_index=-1)


def test_bad_arguments_raise(device):
    hidden, weight, b, labels = make_inputs()
    h, w, y, bb = hidden.float().to(device), weight.float().to(device), labels.to(device), b.float().to(device)
    cases = [
        (TypeError, "labels must be int64", lambda: linear_cross_entropy(h, w, y.int())),
        (ValueError, r"hidden must be \[N, D\]", lambda: linear_cross_entropy(h[0], w, y)),
        (ValueError, r"weight must be \[V, D\]", lambda: linear_cross_entropy(h, w[0], y)),
        (ValueError, "hidden has D=64 but weight has D=63", lambda: linear_cross_entropy(h, w[:, :63], y)),
        (ValueError, "labels must be", lambda: linear_cross_entropy(h, w, y[:-1])),
        (TypeError, "weight is torch.float64 but hidden is torch.float32",
         lambda: linear_cross_entropy(h, w.double(), y)),
        (TypeError, "hidden must be float32", lambda: linear_cross_entropy(h.int(), w.int(), y)),
        (TypeError, "bias is torch.float64", lambda: linear_cross_entropy(h, w, y, bias=bb.double())),
        (ValueError, r"bias must be \[V\]", lambda: linear_cross_entropy(h, w, y, bias=bb[:-1])),
        (ValueError, "chunk_size must be >= 1", lambda: linear_cross_entropy(h, w, y, chunk_size=0)),
        (TypeError, "chunk_size must be an int", lambda: linear_cross_entropy(h, w, y, chunk_size=2.5)),
        (TypeError, "ignore_index must be an int", lambda: linear_cross_entropy(h, w, y, ignore_index=None)),
        (ValueError, "backend must be", lambda: linear_cross_entropy(h, w, y, backend="cuda")),
    ]
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        cases.append((ValueError, "TRITON_INTERPRET=1", lambda: linear_cross_entropy(h, w, y, backend="triton")))
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_mixed_devices_raise():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    hidden, weight, _, labels = make_inputs()
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        linear_cross_entropy(hidden.cuda(), weight, labels)


# ---- the Triton kernel on CPU through the interpreter -----------------------------------------
_INTERPRETED = textwrap.dedent("""
    import os, sys
    assert os.environ["TRITON_INTERPRET"] == "1"
    sys.path.insert(0, os.getcwd())
    import torch
    sys.path.insert(0, "tests")
    from test_linear_cross_entropy import make_inputs, run, ours, assert_2x_rule, NAMES
    from interleave.ops.linear_cross_entropy import _cross_entropy_rows_torch
    from interleave.triton_kernels.cross_entropy import cross_entropy_rows

    # 1. The kernel itself against the PyTorch step: several 64-wide blocks per row and a ragged
    # last block (V=301), ignored rows, a label in the last block, loss-only mode.
    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        logits = (torch.randn(9, 301, generator=g, dtype=torch.float64) * 3).to(dtype)
        labels = torch.randint(0, 301, (9,), generator=g)
        labels[2], labels[5], labels[6] = -100, 300, -100
        inv = torch.tensor(1 / 7, dtype=torch.float64)
        a, b = logits.clone(), logits.clone()
        loss_k = cross_entropy_rows(a, labels, inv, -100, block=64)
        loss_t = _cross_entropy_rows_torch(b, labels, inv, -100, True)
        torch.testing.assert_close(loss_k, loss_t, rtol=tol, atol=tol)
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)
        assert not a[2].any() and not a[6].any() and loss_k[2] == 0
        c = logits.clone()
        torch.testing.assert_close(cross_entropy_rows(c, labels, inv, -100, write_grad=False), loss_t,
                                   rtol=tol, atol=tol)
        assert torch.equal(c, logits)

    # 2. The whole op through the kernel: float64 exact, fp32/bf16 by the 2x rule, grad_output != 1,
    # all ignored.
    hidden, weight, bias, labels = make_inputs(N=13, D=16, V=301)
    exp = run(lambda h, w, y, b: torch.nn.functional.cross_entropy(h @ w.T + b, y),
              hidden, weight, bias, labels, torch.float64, "cpu", 1.5)
    got = run(ours, hidden, weight, bias, labels, torch.float64, "cpu", 1.5, chunk_size=5, backend="triton")
    for name, e, o in zip(NAMES, exp, got):
        torch.testing.assert_close(o, e, rtol=1e-10, atol=1e-10, msg=name)
    for dtype in (torch.float32, torch.bfloat16):
        assert_2x_rule(dtype, "cpu", hidden, weight, bias, labels, chunk_size=5, backend="triton")
    labels[:] = -100
    loss, gh, gw, gb = run(ours, hidden, weight, bias, labels, torch.float32, "cpu", chunk_size=5,
                           backend="triton")
    assert float(loss) == 0 and not gh.any() and not gw.any() and not gb.any()
    print("interpreted ok")
""")


def test_triton_kernel_interpreted_on_cpu():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _INTERPRETED], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "interpreted ok" in r.stdout, r.stdout + r.stderr


# ---- CUDA only ---------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_triton_large_vocab(dtype):
    """The kernel at a Qwen-sized vocabulary (several 4096-wide blocks per row)."""
    hidden, weight, b, labels = make_inputs(N=300, D=256, V=152000 // 8 + 3, seed=4)
    assert_2x_rule(dtype, "cuda", hidden, weight, b, labels, chunk_size=128)


# ---- torch.library -----------------------------------------------------------------------------
def test_opcheck():
    """interleave::linear_cross_entropy: schema, fake implementation, autograd registration and AOT
    dispatch (torch.library.opcheck), with and without bias and with some gradients not needed."""
    hidden, weight, b, labels = make_inputs()
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    for bias, needs in ((None, (True, True, False)), (b.requires_grad_(), (True, True, True)),
                        (b, (False, True, True))):
        torch.library.opcheck(torch.ops.interleave.linear_cross_entropy.default,
                              (h, w, bias, labels, -100, 8, False, *needs))


def test_compile_fullgraph_no_graph_break():
    """torch.compile(fullgraph=True) of a loss through the op: one graph, eager's values."""
    hidden, weight, _, labels = make_inputs()
    fn = lambda h, w, y: linear_cross_entropy(h, w, y, chunk_size=8)  # noqa: E731
    assert torch._dynamo.explain(fn)(hidden, weight, labels).graph_break_count == 0
    expect = run(torch_ref, hidden, weight, None, labels, torch.float64, "cpu")
    got = run(lambda h, w, y, b: torch.compile(fn, fullgraph=True)(h, w, y), hidden, weight, None, labels,
              torch.float64, "cpu")
    for name, e, g in zip(NAMES, expect, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)
