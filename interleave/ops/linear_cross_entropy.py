"""linear_cross_entropy: the LM head and the cross-entropy loss in one op, without the [N, V] logits.

    loss = linear_cross_entropy(hidden, weight, labels, ignore_index=-100, bias=None)
    # hidden [N, D] or [B, T, D], weight [V, D], labels [N] (or [B, T]) int64, bias [V] or None
    # == F.cross_entropy(hidden @ weight.T + bias, labels, ignore_index=ignore_index)   (mean)

Only rows whose label is not ignored go through the head (an ignored row adds nothing to the loss
and gets an exact zero gradient); they go through in chunks of `chunk_size` rows. For each chunk:
its logits [n, V] (one matmul), then in the same pass over them the per-row loss and, when a
gradient is needed, the gradient of those logits, written over them: (softmax - onehot) / count, with a float32 log-sum-exp (float64
for float64 inputs). That gradient is immediately turned into the chunk's rows of grad_hidden
(grad_logits @ weight) and added into grad_weight (grad_logits.T @ hidden_chunk) and grad_bias, and
the chunk's buffer is reused. So the gradients are ready when forward returns: backward only scales
them by grad_output (in place, no recompute), and the memory beyond the inputs is
grad_weight + grad_hidden + one chunk of logits: O(chunk * V), never O(N * V).

Backends: on CUDA the loss-and-gradient step over a chunk is a Triton kernel
(interleave/triton_kernels/cross_entropy.py) between cuBLAS matmuls; on CPU it is a few in-place
PyTorch ops over row blocks small enough to stay in cache. `backend="triton"` forces the kernel
(on CPU tensors only under TRITON_INTERPRET=1, the way the CPU tests run it).

Numerics: the mean is over non-ignored labels, as F.cross_entropy(reduction="mean"); when every
label is ignored the loss is 0 and every gradient is 0 (F.cross_entropy gives NaN). The logits and
their gradient are stored in the input dtype (as the reference rounds them); bfloat16/float16
grad_weight and grad_bias are accumulated over chunks in float32 and rounded once.

Labels: a label outside [0, V) that is not ignore_index raises ValueError. On the CPU it is
checked before any work. On CUDA the check is queued with the chunks and read back once, after the
last chunk is queued; no kernel reads out of bounds meanwhile. Finding the labelled rows is one more
host sync on CUDA, before the chunks are queued.
"""
from __future__ import annotations

import operator
import os
from typing import Optional

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# Bytes of one chunk of logits in the compute dtype: the op's working set beyond its gradients.
# CPU: small enough that the 8x memory bar holds at V=152k, large enough for full-speed GEMMs.
_CHUNK_BYTES = {"cpu": 128 << 20, "cuda": 512 << 20}
# Rows per block of the CPU loss step: the block's logits (float32) stay in the last-level cache
# across the five passes over them.
_CPU_BLOCK_BYTES = 8 << 20


def default_chunk_size(num_tokens: int, vocab: int, device_type: str) -> int:
    rows = _CHUNK_BYTES.get(device_type, _CHUNK_BYTES["cuda"]) // (4 * max(vocab, 1))
    rows = max(16, rows // 16 * 16)  # whole 16-row tiles for the GEMMs
    return max(1, min(rows, num_tokens))


def _check_args(hidden, weight, labels, bias, ignore_index, chunk_size, backend):
    if not all(isinstance(t, torch.Tensor) for t in (hidden, weight, labels)):
        raise TypeError("linear_cross_entropy: hidden, weight and labels must be tensors")
    if hidden.dim() not in (2, 3):
        raise ValueError(f"linear_cross_entropy: hidden must be [N, D] or [B, T, D], got shape "
                         f"{tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"linear_cross_entropy: weight must be [V, D], got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden has D={hidden.shape[-1]} but weight has "
                         f"D={weight.shape[1]}")
    if weight.shape[0] == 0:
        raise ValueError("linear_cross_entropy: weight has no rows (V=0)")
    if labels.dtype != torch.int64:
        raise TypeError(f"linear_cross_entropy: labels must be int64, got {labels.dtype}")
    if labels.shape != hidden.shape[:-1] and tuple(labels.shape) != (hidden.numel() // max(hidden.shape[-1], 1),):
        raise ValueError(f"linear_cross_entropy: labels must be [N] (or hidden's leading shape "
                         f"{tuple(hidden.shape[:-1])}), got shape {tuple(labels.shape)}")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"linear_cross_entropy: hidden must be float32/float64/bfloat16/float16, "
                        f"got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"linear_cross_entropy: weight is {weight.dtype} but hidden is {hidden.dtype}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError("linear_cross_entropy: bias must be a tensor or None")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"linear_cross_entropy: bias is {bias.dtype} but hidden is {hidden.dtype}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"linear_cross_entropy: bias must be [V]=[{weight.shape[0]}], got shape "
                             f"{tuple(bias.shape)}")
    devices = {t.device for t in (hidden, weight, labels) + ((bias,) if bias is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"linear_cross_entropy: all tensors must be on one device, got hidden on "
                         f"{hidden.device}, weight on {weight.device}, labels on {labels.device}"
                         + (f", bias on {bias.device}" if bias is not None else ""))
    try:
        operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"linear_cross_entropy: ignore_index must be an int, got {ignore_index!r}") from None
    if chunk_size is not None:
        try:
            size = operator.index(chunk_size)
        except TypeError:
            raise TypeError(f"linear_cross_entropy: chunk_size must be an int or None, got {chunk_size!r}") from None
        if size < 1:
            raise ValueError(f"linear_cross_entropy: chunk_size must be >= 1, got {size}")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"linear_cross_entropy: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton" and hidden.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("linear_cross_entropy: backend='triton' needs CUDA tensors, or CPU tensors "
                         "with TRITON_INTERPRET=1 set before triton is imported")


def _bad_labels(labels: torch.Tensor, vocab: int, ignore_index: int) -> torch.Tensor:
    return (labels != ignore_index) & ((labels < 0) | (labels >= vocab))


def _raise_bad_labels(labels, bad, vocab, ignore_index):
    pos = int(bad.nonzero()[0, 0])
    raise ValueError(f"linear_cross_entropy: label {int(labels[pos])} at position {pos} is outside "
                     f"[0, {vocab}) and is not ignore_index ({ignore_index})")


# ---- the loss-and-gradient step over one chunk of logits ------------------------------------
def _cross_entropy_rows_torch(logits, labels, inv_count, ignore_index, write_grad):
    """The CPU step: per-row loss [n] in the compute dtype; with `write_grad`, logits become
    (softmax - onehot) * inv_count (0 on ignored rows). In place for float32/float64 logits; half
    precision goes through a float32 copy of one row block at a time."""
    n, vocab = logits.shape
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).unsqueeze(1)
    loss = torch.empty(n, dtype=compute, device=logits.device)
    scale_all = torch.where(valid, inv_count.to(compute), 0.0).unsqueeze(1)
    rows = max(1, _CPU_BLOCK_BYTES // (4 * vocab))
    for start in range(0, n, rows):
        end = min(start + rows, n)
        block = logits[start:end]
        x = block if block.dtype == compute else block.to(compute)
        target = x.gather(1, safe[start:end])
        m = x.amax(1, keepdim=True)
        if not write_grad:
            total = torch.exp(x - m).sum(1, keepdim=True, dtype=torch.float64)
            lse = m + total.log()
        else:
            x.sub_(m).exp_()
            # The row sums and the loss in float64: a reduction's worth of work, and the loss is
            # then as exact as the float32 exponentials allow.
            total = x.sum(1, keepdim=True, dtype=torch.float64)
            lse = m + total.log()
            scale = scale_all[start:end]
            x.mul_((scale / total).to(compute))
            x.scatter_add_(1, safe[start:end], -scale)  # ignored rows add 0 at column 0
            if x is not block:
                block.copy_(x)
        loss[start:end] = torch.where(valid[start:end], (lse - target).squeeze(1), 0.0).to(compute)
    return loss


def _cross_entropy_rows(logits, labels, inv_count, ignore_index, write_grad, use_triton):
    if use_triton:
        from ..triton_kernels.cross_entropy import cross_entropy_rows
        return cross_entropy_rows(logits, labels, inv_count, ignore_index, write_grad)
    return _cross_entropy_rows_torch(logits, labels, inv_count, ignore_index, write_grad)


def _accumulate_grad_weight(acc, grad_logits, hidden_chunk):
    """acc [V, D] += grad_logits.T @ hidden_chunk, with acc in float32 for half-precision inputs."""
    if acc.dtype == grad_logits.dtype:
        acc.addmm_(grad_logits.t(), hidden_chunk)
    elif acc.device.type == "cuda":
        # cuBLAS accumulates half-precision products into a float32 output directly.
        torch.ops.aten.addmm.dtype_out(acc, grad_logits.t(), hidden_chunk, acc.dtype, out=acc)
    else:
        acc.addmm_(grad_logits.t().to(acc.dtype), hidden_chunk.to(acc.dtype))


def _grad_dtypes(hidden: torch.Tensor, weight: torch.Tensor):
    """(compute dtype of the loss and grad_bias, accumulator dtype of grad_weight), as _forward
    produces them; the fake implementation reports the same."""
    compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    acc = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    return compute, acc


def _forward(hidden, weight, labels, bias, ignore_index, chunk_size, use_triton, needs):
    """Loss (0-dim, compute dtype) and the gradients the caller needs (or None), for grad_output 1."""
    num_tokens, vocab = hidden.shape[0], weight.shape[0]
    compute, acc_dtype = _grad_dtypes(hidden, weight)
    need_hidden, need_weight, need_bias = needs
    write_grad = any(needs)
    on_cuda = hidden.device.type == "cuda"

    bad = None
    if on_cuda:
        bad = _bad_labels(labels, vocab, ignore_index).any()  # read after the chunks are queued
    else:
        mask = _bad_labels(labels, vocab, ignore_index)
        if bool(mask.any()):
            _raise_bad_labels(labels, mask, vocab, ignore_index)

    # max(count, 1) makes an all-ignored batch give 0s.
    valid = labels != ignore_index
    count = valid.sum()
    inv_count = 1.0 / count.clamp(min=1).to(compute)
    loss_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)  # float64: N can be 10^5
    # Rows with an ignored label add nothing to the loss and get exactly zero gradient, so only the
    # labelled rows go through the head. In multimodal fine-tuning most rows are ignored (visual
    # tokens, prompts, padding): this is most of the op's GEMM work saved. (On CUDA, finding the
    # rows is a host sync before the chunks are queued.)
    rows = valid.nonzero().squeeze(1)
    full_hidden, full_labels = hidden, labels
    if rows.numel() < num_tokens:
        hidden, labels = hidden.index_select(0, rows), labels.index_select(0, rows)
        num_tokens = rows.numel()
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(vocab, dtype=compute, device=weight.device) if need_bias else None

    weight_t = weight.t()
    # One logits buffer for every chunk: a fresh [chunk, V] tensor per chunk is a fresh mmap on the
    # CPU (glibc returns blocks this large to the kernel on free), whose page faults cost about as
    # much as the chunk's GEMM on this project's machine.
    buffer = torch.empty(max(1, min(chunk_size, num_tokens)), vocab, dtype=hidden.dtype, device=hidden.device)
    for start in range(0, num_tokens, chunk_size):
        end = min(start + chunk_size, num_tokens)
        h = hidden[start:end]
        logits = buffer[:end - start]
        if bias is not None:
            torch.addmm(bias, h, weight_t, out=logits)  # [n, V]
        else:
            torch.mm(h, weight_t, out=logits)
        row_loss = _cross_entropy_rows(logits, labels[start:end], inv_count, ignore_index,
                                       write_grad, use_triton)
        loss_sum += row_loss.sum(dtype=torch.float64)
        if need_hidden:
            torch.mm(logits, weight, out=grad_hidden[start:end])
        if need_weight:
            _accumulate_grad_weight(grad_weight, logits, h)
        if need_bias:
            grad_bias += logits.sum(0, dtype=compute)
    del buffer
    if need_hidden and hidden is not full_hidden:  # back to every row, zeros where ignored
        grad_hidden = torch.zeros_like(full_hidden).index_copy_(0, rows, grad_hidden)

    if bad is not None and bool(bad):
        _raise_bad_labels(full_labels, _bad_labels(full_labels, vocab, ignore_index), vocab, ignore_index)
    return loss_sum * inv_count.double(), grad_hidden, grad_weight, grad_bias


# ---- torch.library: the op, its fake implementation and autograd -----------------------------------
# One custom op (opaque to torch.compile: no graph break) that returns the loss and the gradients it
# computed on the way; autograd hands those over in backward, scaled by grad_output.
_OP = "interleave::linear_cross_entropy"


def _op_impl(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
             ignore_index: int, chunk_size: int, use_triton: bool, need_hidden: bool, need_weight: bool,
             need_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    loss, gh, gw, gb = _forward(hidden, weight, labels, bias, ignore_index, chunk_size, use_triton,
                                (need_hidden, need_weight, need_bias and bias is not None))
    # A distinct empty tensor for each gradient not asked for (outputs may not alias each other).
    return loss.to(hidden.dtype), *(g if g is not None else hidden.new_empty(0) for g in (gh, gw, gb))


# The implementation stays callable as _op_impl (tests run it under a dispatch mode to see the
# tensors it allocates, which the op hides).
_linear_cross_entropy_op = torch.library.custom_op(_OP, mutates_args=())(_op_impl)


@_linear_cross_entropy_op.register_fake
def _linear_cross_entropy_fake(hidden, weight, bias, labels, ignore_index, chunk_size, use_triton,
                               need_hidden, need_weight, need_bias):
    compute, acc = _grad_dtypes(hidden, weight)
    return (hidden.new_empty(()),
            torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
            weight.new_empty(weight.shape, dtype=acc) if need_weight else hidden.new_empty(0),
            weight.new_empty(weight.shape[0], dtype=compute) if need_bias and bias is not None
            else hidden.new_empty(0))


def _setup_context(ctx, inputs, output):
    hidden, weight, bias = inputs[:3]
    need = inputs[7:10]
    # Kept as attributes, not saved tensors: backward drops its references before returning, so
    # autograd can take the tensors as .grad without a copy (a saved grad_weight would be copied:
    # +V*D floats at the peak).
    ctx.grads = [g if n else None for g, n in zip(output[1:], need)]
    ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)


def _backward(ctx, grad_output, *unused):
    if ctx.grads is None:
        raise RuntimeError("linear_cross_entropy: backward ran twice through the same graph; the "
                           "gradients are computed in forward and handed over by the first backward")
    grads, ctx.grads = ctx.grads, None
    # Scaling in place keeps the peak memory; skipped for a CPU grad_output of exactly 1 (the usual
    # loss.backward()), where the check costs no device sync. Traced (torch.compile, make_fx: a
    # tensor subclass, no value to test): always scale.
    traced = type(grad_output) is not torch.Tensor or torch.compiler.is_compiling()
    skip = not traced and grad_output.device.type == "cpu" and bool(grad_output == 1)
    out = []
    for grad, dtype in zip(grads, ctx.dtypes):
        if grad is not None:
            if traced:
                grad = grad * grad_output.to(grad.dtype)
            elif not skip:
                grad.mul_(grad_output.to(grad.dtype))
            grad = grad.to(dtype)  # float32 accumulators of half-precision weights: round once
        out.append(grad)
    grads.clear()
    return out[0], out[1], out[2], None, None, None, None, None, None, None


_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = -100, bias: Optional[torch.Tensor] = None,
                         chunk_size: Optional[int] = None, *, backend: str = "auto") -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` against `labels`, without the logits.

    hidden [N, D] or [B, T, D] (flattened to N = B*T tokens); weight [V, D]; labels [N] or [B, T]
    int64, `ignore_index` entries excluded from the mean; bias [V] or None. Returns a 0-dim tensor
    in hidden's dtype. chunk_size: tokens per chunk (default: a chunk of logits is ~128 MiB on CPU,
    ~512 MiB on CUDA in float32). backend: "auto" (Triton kernel on CUDA, PyTorch on CPU),
    "triton" or "torch".
    """
    _check_args(hidden, weight, labels, bias, ignore_index, chunk_size, backend)
    # reshape is differentiable: autograd maps grad_hidden [N, D] back to hidden's shape.
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    labels1d = labels.reshape(-1)
    device_type = hidden.device.type
    chunk = chunk_size if chunk_size is not None else default_chunk_size(
        hidden2d.shape[0], weight.shape[0], device_type)
    use_triton = backend == "triton" or (backend == "auto" and device_type == "cuda")
    if not (weight.stride(1) == 1 or weight.stride(0) == 1):
        weight = weight.contiguous()
    grad = torch.is_grad_enabled()
    loss, *_ = _linear_cross_entropy_op(hidden2d, weight, bias, labels1d, int(ignore_index), int(chunk),
                                        use_triton, grad and hidden.requires_grad, grad and weight.requires_grad,
                                        grad and bias is not None and bias.requires_grad)
    return loss
