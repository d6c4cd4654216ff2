"""Cross-entropy and its gradient over a chunk of logits, in place: one Triton program per row.

    row_loss = cross_entropy_rows(logits, labels, inv_count, ignore_index)
    # logits [n, V] (fp32/bf16/fp16/fp64, rows contiguous), labels [n] int64, inv_count 0-dim tensor
    # -> row_loss [n] in the compute dtype; logits now hold (softmax - onehot) * inv_count

Two passes over each row: the first keeps a running max and a running sum of exp (online
log-sum-exp, rescaling the sum when the max grows), the second overwrites the logits with the
gradient. The compute dtype is float32 (float64 for float64 logits), whatever the storage dtype.
`inv_count` (1 / number of non-ignored labels) is read from device memory, so the caller never
reads the count back to the host. Ignored rows get loss 0 and gradient 0. A label outside [0, V)
is never dereferenced (its target load is masked); the caller validates labels.

Runs on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported), which is how the CPU
test suite checks it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cross_entropy_rows_kernel(logits_ptr, row_stride, labels_ptr, loss_ptr, inv_count_ptr,
                               vocab, ignore_index, COMPUTE: tl.constexpr, WRITE_GRAD: tl.constexpr,
                               BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    in_range = (label >= 0) & (label < vocab)

    # Pass 1: running max m and running sum s of exp(x - m). One exp per element: the block's max
    # is taken first, and the old sum is rescaled by exp(m_old - m_new) (0 on the first block).
    m = tl.full((), float("-inf"), COMPUTE)
    s = tl.zeros((), COMPUTE)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < vocab, other=float("-inf")).to(COMPUTE)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    # Read before pass 2 overwrites the row.
    target = tl.load(base + label, mask=valid & in_range, other=0.0).to(COMPUTE)
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0).to(COMPUTE))

    if WRITE_GRAD:
        # Pass 2: d loss / d logit = (softmax - onehot) / count, zero on ignored rows.
        scale = tl.where(valid, tl.load(inv_count_ptr).to(COMPUTE), 0.0)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < vocab
            x = tl.load(base + offs, mask=mask, other=0.0).to(COMPUTE)
            g = tl.exp(x - lse) * scale
            g = tl.where(offs == label, g - scale, g)
            tl.store(base + offs, g.to(logits_ptr.dtype.element_ty), mask=mask)


_COMPUTE = {torch.float64: tl.float64}


def cross_entropy_rows(logits: torch.Tensor, labels: torch.Tensor, inv_count: torch.Tensor,
                       ignore_index: int, write_grad: bool = True, block: int = 4096) -> torch.Tensor:
    """Per-row loss [n]; with `write_grad`, `logits` is overwritten by the scaled gradient."""
    n, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("cross_entropy_rows: logits rows must be contiguous")
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = torch.empty(n, dtype=compute, device=logits.device)
    if n == 0:
        return loss
    block = min(block, triton.next_power_of_2(vocab))
    _cross_entropy_rows_kernel[(n,)](
        logits, logits.stride(0), labels, loss, inv_count.to(compute), vocab, ignore_index,
        COMPUTE=_COMPUTE.get(logits.dtype, tl.float32), WRITE_GRAD=write_grad, BLOCK=block,
        num_warps=8 if block >= 2048 else 4)
    return loss
