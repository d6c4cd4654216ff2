"""Loads the compiled extension `interleave._C`, or explains why the reference is used instead.

Importing never fails because the extension is missing or stale: every op falls back to its
pure-PyTorch reference and one warning names the cause and the fix. Nothing here touches CUDA.
"""
from __future__ import annotations

import contextlib
import importlib
import warnings

import torch

from . import nvtx

REBUILD = "rebuild it with `pip install --no-build-isolation -e .` in the repository"


class ExtensionWarning(UserWarning):
    """The compiled kernels are unavailable; ops run their PyTorch references."""


def _load():
    try:
        info = importlib.import_module("interleave._build_info")
    except ImportError:
        return None, f"the compiled extension interleave._C is not built; {REBUILD}"
    if info.torch_version != torch.__version__:
        return None, (f"interleave._C was built for torch {info.torch_version} but torch "
                      f"{torch.__version__} is installed; {REBUILD}")
    try:
        module = importlib.import_module("interleave._C")
    except (ImportError, OSError) as exc:
        return None, f"interleave._C failed to load ({exc}); {REBUILD}"
    return module, None


module, unavailable_reason = _load()
if module is None:
    warnings.warn(f"interleave: using PyTorch reference ops: {unavailable_reason}",
                  ExtensionWarning, stacklevel=2)


def has_kernel(device_type: str) -> bool:
    """Whether the extension holds a kernel for tensors on `device_type` ('cpu' or 'cuda')."""
    if module is None:
        return False
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return bool(module.with_cuda)
    return False


def has_op_kernel(op: str, device_type: str) -> bool:
    """Whether the extension registered a kernel of `op` ("interleave::name") for `device_type`:
    an op can have a CPU kernel before its CUDA kernel lands."""
    if not has_kernel(device_type):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
    except (AttributeError, RuntimeError):  # a private API: assume every op has both kernels
        return True


def backend_reason(device_type: str, op: str | None = None) -> str:
    """One line: which backend a tensor on `device_type` uses, and why."""
    if has_kernel(device_type):
        if op is None or has_op_kernel(op, device_type):
            return f"{device_type} kernel (interleave._C)"
        return f"reference (interleave._C has no {device_type} kernel of {op} yet)"
    if module is None:
        return f"reference ({unavailable_reason})"
    return f"reference (interleave._C was built without {device_type} kernels)"


@contextlib.contextmanager
def native_setting(setter: str, value: int):
    """Sets one of the extension's tuning knobs for the duration of the block: `setter` is a
    function of interleave._C that takes the new value and returns the old one."""
    if module is None:
        raise RuntimeError(f"{setter}: the compiled extension is not loaded")
    old = getattr(module, setter)(value)
    try:
        yield
    finally:
        getattr(module, setter)(old)


def native_setting_value(setter: str):
    """The current value of a boolean knob whose setter (as for native_setting) only exchanges it:
    set and put back."""
    if module is None:
        raise RuntimeError(f"{setter}: the compiled extension is not loaded")
    value = getattr(module, setter)(True)
    getattr(module, setter)(value)
    return value


_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd
_FUNCTORCH_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_NULL_CONTEXT = contextlib.nullcontext()


def skip_autograd_layer(*tensors) -> contextlib.AbstractContextManager:
    """A context for calling one of our torch.library ops that enters the dispatcher below its
    autograd layer when that layer has nothing to record: grad mode off, or no input requiring grad.
    The layer is Python (torch.library's autograd registration, ~5 us a call on this project's CPU),
    a visible share of a CUDA op whose kernels take ~30 us. Not under torch.compile (which traces
    the op through that layer) nor under torch.func transforms (whose wrapped tensors must see it)."""
    if needs_autograd(*tensors):
        return _NULL_CONTEXT
    return _BELOW_AUTOGRAD()


def op_scope(name: str, *tensors) -> contextlib.AbstractContextManager:
    """`nvtx.range(name)` and `skip_autograd_layer(*tensors)` in one context, for the call of one of
    our ops. The common case (no profiler, not compiling, nothing for autograd to record) costs a
    few flag checks: the host time in front of a CUDA op's first launch delays it (the GPU check's
    call times count it), and the two contexts separately cost ~2 us here."""
    if torch.compiler.is_compiling():
        return _NULL_CONTEXT  # traced through the autograd layer; the graph has its own names
    below = not needs_autograd(*tensors)
    if not nvtx.enabled():
        return _BELOW_AUTOGRAD() if below else _NULL_CONTEXT
    return _profiled_scope(name, below)


def _any_requires_grad(tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


@contextlib.contextmanager
def _profiled_scope(name: str, below: bool):
    with nvtx.range(name):
        if below:
            with _BELOW_AUTOGRAD():
                yield
        else:
            yield


def needs_autograd(*tensors) -> bool:
    """Whether a call on these tensors must go through autograd: grad mode on and an input requiring
    grad, or under torch.compile / torch.func transforms (see skip_autograd_layer)."""
    return torch.compiler.is_compiling() or _FUNCTORCH_ACTIVE() or _any_requires_grad(tensors)
