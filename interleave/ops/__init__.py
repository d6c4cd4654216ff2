"""The ops, one module each. Every op dispatches to the compiled kernel for its tensors' device
when interleave._C has one, else to its reference in interleave.reference."""
from .. import _extension
from .anyres_tiles import Tiles, anyres_tiles
from .merge_tokens import merge_tokens
from .patch_embed import patch_embed, set_fold_cache

OPS = ("merge_tokens", "anyres_tiles", "patch_embed")


def backend(op: str, device_type: str) -> str:
    """Which backend `op` uses for tensors on `device_type`, and why (for `python -m interleave info`)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    return _extension.backend_reason(device_type, f"interleave::{op}")


__all__ = ["merge_tokens", "anyres_tiles", "patch_embed", "set_fold_cache", "Tiles", "backend", "OPS"]
