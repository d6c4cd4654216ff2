"""Named ranges for profilers: `with interleave.nvtx.range("pack_tokens"): ...`.

Each range is an NVTX range (Nsight Systems) when CUDA is available and a `record_function` range
(PyTorch profiler / Chrome trace) while the PyTorch profiler runs. With no profiler attached it costs
a flag check: the NVTX push/pop only runs when `INTERLEAVE_NVTX=1` (set it for an `nsys` run) and the
`record_function` only while torch's profiler is enabled. Inside torch.compile it does nothing (the
compiled graph has its own names).
"""
from __future__ import annotations

import contextlib
import os

import torch

_NVTX = os.environ.get("INTERLEAVE_NVTX", "0") == "1"


def _profiler_on() -> bool:
    return torch.autograd.profiler._is_profiler_enabled


@contextlib.contextmanager
def _both(name: str):
    nvtx = _NVTX and torch.cuda.is_available()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        if _profiler_on():
            with torch.profiler.record_function(name):
                yield
        else:
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()


_NULL = contextlib.nullcontext()


def enabled() -> bool:
    """Whether ranges record anything now (INTERLEAVE_NVTX=1, or torch's profiler running)."""
    return _NVTX or _profiler_on()


def range(name: str):  # noqa: A001 (mirrors torch.cuda.nvtx.range)
    """A context manager naming the enclosed work `interleave/<name>` in profiler traces."""
    if torch.compiler.is_compiling() or not enabled():
        return _NULL
    return _both("interleave/" + name)
