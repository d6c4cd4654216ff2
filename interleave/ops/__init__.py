"""The ops, one module each. Every op dispatches to the compiled kernel for its tensors' device
when interleave._C has one, else to its reference in interleave.reference. linear_cross_entropy
is the exception: matmuls plus a Triton kernel on CUDA and PyTorch ops on CPU, no interleave._C."""
import importlib.util

from .. import _extension
from .anyres_tiles import Tiles, anyres_tiles
from .linear_cross_entropy import linear_cross_entropy
from .merge_tokens import merge_tokens
from .pack_tokens import pack_tokens
from .patch_embed import patch_embed, set_fold_cache

OPS = ("merge_tokens", "anyres_tiles", "pack_tokens", "patch_embed", "linear_cross_entropy")


def backend(op: str, device_type: str) -> str:
    """Which backend `op` uses for tensors on `device_type`, and why (for `python -m interleave info`)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if op == "linear_cross_entropy":
        if device_type == "cuda":
            if importlib.util.find_spec("triton") is None:
                return "unavailable (triton is not installed)"
            return "cuBLAS matmuls + Triton loss-and-gradient kernel (interleave.triton_kernels)"
        return f"chunked PyTorch matmuls and in-place loss-and-gradient step ({device_type})"
    return _extension.backend_reason(device_type, f"interleave::{op}")


__all__ = ["merge_tokens", "anyres_tiles", "pack_tokens", "patch_embed", "set_fold_cache", "linear_cross_entropy",
           "Tiles", "backend", "OPS"]
