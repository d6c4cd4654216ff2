"""patch_embed: SigLIP's patch embedding from uint8 tiles, with the normalization folded in.

    embeddings = patch_embed(tiles, weight, bias, pos_embed, mean, std)
    # tiles uint8 [N, S, S, 3] (as anyres_tiles writes them) or float pixel_values [N, 3, S, S]
    # weight [C, 3, p, p], bias [C], pos_embed [T, C], T = (S // p)^2   ->  [N, T, C]

Computes transformers' SiglipVisionEmbeddings.forward (conv p x p / p, flatten + transpose, plus the
position embedding) on the pixels its image processor would produce (`x / 255`, then
`(x - mean) / std`), in one pass: the normalization is affine per channel, so it is folded into the
weights, W' = W / (255 * std_c) and b' = b - sum(W * mean_c / std_c), and the kernel multiplies raw
bytes. W' and b' are computed once per weight version and cached (keyed on the tensors themselves,
their `_version` and data pointer: an optimizer step or `load_state_dict` invalidates them; an
in-place change through `.data` does not bump the version and is not seen: call
`interleave.ops.set_fold_cache(False)` in code that does that). Float pixel_values are
already normalized: the weights are used as they are.

Output dtype: the weight's, or `out_dtype`. Gradients flow to weight, bias and pos_embed (none to the
pixels), with respect to the real W and b: from uint8 tiles the weight gradient is taken over the
normalized patches (under torch.compile, through the traced fold).
"""
from __future__ import annotations

import collections
import contextlib
import weakref
from typing import Optional, Sequence

import torch

from .. import _extension, reference

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_OP = "interleave::patch_embed"
# Which devices have a compiled kernel, looked up once (see merge_tokens.py).
_KERNELS = {dev: _extension.has_op_kernel(_OP, dev) for dev in ("cpu", "cuda")}
SIGLIP_MEAN = reference.SIGLIP_MEAN
SIGLIP_STD = reference.SIGLIP_STD


def _check_args(tiles, weight, bias, pos_embed, mean, std, out_dtype):
    """The C++ op's checks, for the reference fallback and for errors that name the Python call."""
    if tiles.dtype != torch.uint8 and tiles.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"patch_embed: tiles must be uint8 [N, S, S, 3] or float [N, 3, S, S], got {tiles.dtype}")
    if tiles.dim() != 4:
        raise ValueError(f"patch_embed: tiles must be 4-D (uint8 [N, S, S, 3] or float [N, 3, S, S]), "
                         f"got shape {tuple(tiles.shape)}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"patch_embed: weight must be the conv weight [C, Cin, p, p], got shape {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("pos_embed", pos_embed)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"patch_embed: {name} must be float32/float64/bfloat16/float16, got {t.dtype}")
    C, cin, p = weight.shape[0], weight.shape[1], weight.shape[2]
    if tiles.dtype == torch.uint8:
        if tiles.shape[3] != cin:
            raise ValueError(f"patch_embed: uint8 tiles must be [N, S, S, {cin}] (channels last, as "
                             f"anyres_tiles writes them), got shape {tuple(tiles.shape)}")
        H, W = tiles.shape[1], tiles.shape[2]
        if len(mean) != cin or len(std) != cin:
            raise ValueError(f"patch_embed: mean and std need {cin} values, got {len(mean)} and {len(std)}")
        if any(s == 0 for s in std):
            raise ValueError(f"patch_embed: std must be nonzero, got {tuple(std)}")
    else:
        if tiles.shape[1] != cin:
            raise ValueError(f"patch_embed: float pixel_values must be [N, {cin}, S, S] (channels first, "
                             f"as HF processors return them), got shape {tuple(tiles.shape)}")
        H, W = tiles.shape[2], tiles.shape[3]
    if H < p or W < p:
        raise ValueError(f"patch_embed: the image ({H}x{W}) is smaller than one patch ({p}x{p})")
    if not tiles.is_contiguous():
        raise ValueError(f"patch_embed: tiles must be contiguous (got strides {tiles.stride()} for shape "
                         f"{tuple(tiles.shape)}); call .contiguous() first, and pass uint8 tiles channels "
                         f"last [N, S, S, 3], not a permuted view")
    T = (H // p) * (W // p)
    if tuple(bias.shape) != (C,):
        raise ValueError(f"patch_embed: bias must be [{C}], got shape {tuple(bias.shape)}")
    if tuple(pos_embed.shape) != (T, C):
        raise ValueError(f"patch_embed: pos_embed must be [T, C] = [{T}, {C}] for {H}x{W} pixels and patch "
                         f"{p} (T = ({H} // {p}) * ({W} // {p})), got shape {tuple(pos_embed.shape)}")
    if not (tiles.device == weight.device == bias.device == pos_embed.device):
        raise ValueError(f"patch_embed: all tensors must be on one device, got tiles on {tiles.device}, "
                         f"weight on {weight.device}, bias on {bias.device}, pos_embed on {pos_embed.device}")
    if out_dtype is not None and out_dtype not in _FLOAT_DTYPES:
        raise TypeError(f"patch_embed: out_dtype must be float32/float64/bfloat16/float16, got {out_dtype}")


# ---- which GEMM the CUDA kernel uses -----------------------------------------------------------------
_GEMM_MODES = {"auto": 0, "cublas": 1, "mma": 2, "wgmma": 3, "cublas_copy": 4, "wgmma_staged": 5}


@contextlib.contextmanager
def cuda_gemm(mode: str):
    """Within the block, CUDA patch_embed with bf16/fp16 output uses `mode`'s GEMM: "cublas" (our
    im2col kernel + one cuBLASLt GEMM batched over the images, the bias through extra K columns and
    the position embedding as the GEMM's C operand shared by every image; see
    `cublaslt_status`), "cublas_copy" (the same with the position embedding copied into the output
    first and cuBLAS adding onto it: the fallback where cuBLASLt refuses), "mma" (our
    implicit-GEMM tensor-core kernel, one launch), "wgmma" (the Hopper warpgroup-MMA kernel, one
    launch, uint8 tiles on an sm_90a build and a compute-capability-9.0 GPU, see
    `wgmma_available`; "auto"'s choice where it does not apply), "wgmma_staged" (the same kernel
    with each tile's pixels copied into shared memory first: no global loads among its MMAs;
    "wgmma" where its layout does not apply), or "auto" (the default: the cuBLAS path at every
    size, as "cublas" below 4096 tokens and as "cublas_copy" from there: the fastest at 1, 16 and
    64 SigLIP tiles on an H100, the 12ae393 run). float32/float64 outputs always use the SIMT
    kernel. For tests and benchmarks."""
    if mode not in _GEMM_MODES:
        raise ValueError(f"cuda_gemm: mode must be one of {sorted(_GEMM_MODES)}, got {mode!r}")
    with _extension.native_setting("_set_patch_embed_gemm", _GEMM_MODES[mode]):
        yield


@contextlib.contextmanager
def cublaslt_tune(enabled: bool = True):
    """Within the block, the cuBLAS path's cuBLASLt GEMM (the position embedding as its C operand:
    "cublas", and "auto" below 4096 tokens) times the heuristic's first 8 algorithms on each
    shape's first call and keeps the fastest for that shape (that call syncs the host; off by
    default, `INTERLEAVE_CUBLASLT_TUNE=1` starts it on). The chosen algorithm may sum in another
    order: results agree with the untuned GEMM to bf16/fp16 rounding, not bit for bit. For tests and
    benchmarks."""
    with _extension.native_setting("_set_patch_embed_cublaslt_tune", bool(enabled)):
        yield


def cublaslt_status() -> str:
    """"" where the cuBLAS path ("cublas", auto's choice below 4096 tokens) can put the position
    embedding into a batched cuBLASLt GEMM's C operand; else why not (a build without cublasLt.h, the
    library not loadable, a CPU-only build). Where cuBLASLt refuses a problem at run time that path
    falls back to "cublas_copy" by itself."""
    if not _extension.has_kernel("cuda"):
        return "no CUDA kernels in this build"
    return str(_extension.module._patch_embed_cublaslt_status())


def wgmma_available(device=None) -> bool:
    """Whether cuda_gemm("wgmma") runs the wgmma kernel on `device` (default: the current CUDA
    device): this build has it (TORCH_CUDA_ARCH_LIST with 9.0a) and the GPU is compute capability
    9.0 (H100/H200). Initializes CUDA."""
    C = _extension.module
    if not _extension.has_kernel("cuda") or not torch.cuda.is_available():
        return False
    index = torch.device(device if device is not None else "cuda").index
    return bool(C._patch_embed_wgmma_available(torch.cuda.current_device() if index is None else index))


# ---- the folded normalization ---------------------------------------------------------------------
def _fold_dtype(weight: torch.Tensor) -> torch.dtype:
    # W' is kept in float32 (float64 for a float64 weight): the CPU kernel computes in it and the
    # CUDA kernel rounds it once to its operand type.
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _fold_factors(mean, std, device):
    """scale_c = 1 / (255 * std_c) and shift_c = mean_c / std_c in float64, so that
    W * scale * u8 + (b - sum(W * shift)) = W * ((u8 / 255 - mean) / std) + b in real arithmetic."""
    std64 = torch.tensor(std, dtype=torch.float64, device=device)
    mean64 = torch.tensor(mean, dtype=torch.float64, device=device)
    return 1.0 / (255.0 * std64), mean64 / std64


def fold_normalization(weight: torch.Tensor, bias: torch.Tensor, mean: Sequence[float],
                       std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') for uint8 pixels, differentiable with ordinary torch ops (used under torch.compile;
    the eager path caches the same values). Computed in float64, returned in _fold_dtype."""
    scale, shift = _fold_factors(mean, std, weight.device)
    w64 = weight.double()
    folded_w = w64 * scale.view(1, -1, 1, 1)
    folded_b = bias.double() - (w64 * shift.view(1, -1, 1, 1)).sum((1, 2, 3))
    dtype = _fold_dtype(weight)
    # channels_last memory = [C, p, p, Cin] order, the kernels' K order for HWC tiles
    # (csrc/common/patch_embed.h): the op then reads W' in place instead of permuting it per call.
    return folded_w.to(dtype).contiguous(memory_format=torch.channels_last), folded_b.to(dtype)


_FOLD_CACHE: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_FOLD_CACHE_SIZE = 8
# Set to False to fold on every call: needed when weights are changed in place through `.data`
# (which keeps the version counter), as torch.autograd.gradcheck's perturbations are.
cache_folded_weights = True


def set_fold_cache(enabled: bool) -> bool:
    """Turns the folded-weight cache on or off (off: fold on every call); returns the old setting."""
    global cache_folded_weights
    old, cache_folded_weights = cache_folded_weights, bool(enabled)
    if not enabled:
        _FOLD_CACHE.clear()
    return old


def _cached_fold(weight, bias, mean, std):
    if not cache_folded_weights:
        with torch.no_grad():
            return fold_normalization(weight, bias, mean, std)
    key = (id(weight), id(bias), tuple(mean), tuple(std))
    state = (weight._version, bias._version, weight.data_ptr(), bias.data_ptr(), weight.dtype,
             weight.device)
    entry = _FOLD_CACHE.get(key)
    # The weakrefs make a recycled id() (a freed tensor's address reused) a miss, not a stale hit.
    if entry is not None and entry[0]() is weight and entry[1]() is bias and entry[2] == state:
        _FOLD_CACHE.move_to_end(key)
        return entry[3], entry[4]
    with torch.no_grad():
        folded_w, folded_b = fold_normalization(weight, bias, mean, std)
    if _extension.has_kernel(folded_w.device.type):
        # The CUDA op then keeps the GEMM operands it derives from these two (K order, bias
        # columns, wgmma panels) instead of rebuilding them per call: they are never changed in
        # place. A no-op on the CPU, called there too so that CPU tests exercise the call.
        torch.ops.interleave._patch_embed_register_folded(folded_w, folded_b)
    _FOLD_CACHE[key] = (weakref.ref(weight), weakref.ref(bias), state, folded_w, folded_b)
    while len(_FOLD_CACHE) > _FOLD_CACHE_SIZE:
        _FOLD_CACHE.popitem(last=False)
    return folded_w, folded_b


class _PatchEmbedFromBytes(torch.autograd.Function):
    """The eager uint8 path: the forward runs the op on the cached W' and b'; the backward computes
    the gradients of the real W, b and pos_embed on normalized patches, dW = g^T ((x * scale) - shift),
    db = sum g. Going back through the fold instead (dW = dW' * scale - db * shift) subtracts two sums
    of about the same size: in fp32 on the H100 that lost ~2 bits (weight gradient error 2.4e-6 vs
    the conv's 7.0e-7, bench/results/2026-11-27-H100-5fd0fd1-rerun-patch_embed.txt)."""

    @staticmethod
    def forward(ctx, tiles, weight, bias, pos_embed, mean, std, out_dtype):
        folded_w, folded_b = _cached_fold(weight, bias, mean, std)
        ctx.save_for_backward(tiles)
        ctx.normalize = (mean, std)
        ctx.weight_shape = tuple(weight.shape)
        ctx.dtypes = (weight.dtype, bias.dtype, pos_embed.dtype)
        return torch.ops.interleave.patch_embed(tiles, folded_w, folded_b, pos_embed, out_dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (tiles,) = ctx.saved_tensors
        gw, gb, gp = _param_grads(tiles, grad_output, ctx.needs_input_grad[1:4], ctx.weight_shape,
                                  ctx.dtypes, ctx.normalize)
        return None, gw, gb, gp, None, None, None


# ---- the op --------------------------------------------------------------------------------------
def patch_embed(tiles: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos_embed: torch.Tensor,
                mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """SigLIP patch embedding [N, T, C] of uint8 tiles [N, S, S, 3] (normalized with mean/std, SigLIP's
    0.5/0.5 by default) or of float pixel_values [N, 3, S, S] (already normalized; mean/std unused).
    Pixels past the last full patch are ignored (a valid conv). out_dtype defaults to weight.dtype."""
    mean = tuple(SIGLIP_MEAN if mean is None else (float(v) for v in mean))
    std = tuple(SIGLIP_STD if std is None else (float(v) for v in std))
    _check_args(tiles, weight, bias, pos_embed, mean, std, out_dtype)
    out_dtype = weight.dtype if out_dtype is None else out_dtype
    if not _KERNELS.get(tiles.device.type, False):
        if tiles.dtype == torch.uint8:
            return reference.patch_embed_tiles(tiles, weight, bias, pos_embed, mean, std).to(out_dtype)
        return reference.patch_embed(tiles, weight, bias, pos_embed).to(out_dtype)
    if tiles.dtype == torch.uint8:
        if not torch.compiler.is_compiling():
            if _extension.needs_autograd(weight, bias, pos_embed):
                return _PatchEmbedFromBytes.apply(tiles, weight, bias, pos_embed, mean, std, out_dtype)
            # Inference: the cached fold straight into the op, no autograd.Function to set up.
            folded_w, folded_b = _cached_fold(weight, bias, mean, std)
            with _extension.skip_autograd_layer():
                return torch.ops.interleave.patch_embed(tiles, folded_w, folded_b, pos_embed, out_dtype)
        # Under torch.compile the fold is traced as ordinary ops (differentiable, not cached).
        weight, bias = fold_normalization(weight, bias, mean, std)
    with _extension.skip_autograd_layer(weight, bias, pos_embed):
        return torch.ops.interleave.patch_embed(tiles, weight, bias, pos_embed, out_dtype)


# ---- torch.library: fake implementation and autograd for the compiled op -------------------------
def _patches(tiles: torch.Tensor, p: int, dtype: torch.dtype, normalize=None) -> torch.Tensor:
    """im2col [n * T, Cin * p * p] in the conv weight's (ch, i, j) order, token order row-major.
    normalize=(mean, std): uint8 pixels become (x / 255 - mean) / std, computed as x * scale - shift."""
    if tiles.dtype == torch.uint8:  # [n, H, W, Cin]
        n, H, W, cin = tiles.shape
        gh, gw = H // p, W // p
        x = tiles[:, :gh * p, :gw * p, :]
        if normalize is not None:
            scale, shift = _fold_factors(*normalize, tiles.device)
            x = x.to(dtype) * scale.to(dtype) - shift.to(dtype)
        x = x.reshape(n, gh, p, gw, p, cin).permute(0, 1, 3, 5, 2, 4)
    else:  # [n, Cin, H, W]
        n, cin, H, W = tiles.shape
        gh, gw = H // p, W // p
        x = tiles[:, :, :gh * p, :gw * p].reshape(n, cin, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n * gh * gw, cin * p * p).to(dtype)


def _weight_grad(tiles: torch.Tensor, grad: torch.Tensor, weight_shape, normalize=None) -> torch.Tensor:
    """sum over tokens of grad[m, c] * patch[m, k], in chunks of images so that the im2col copy
    stays around 64 MiB; plain matmuls and a fixed chunk order, so the result is deterministic."""
    C, cin, p, _ = weight_shape
    N, T = grad.shape[0], grad.shape[1]
    per_image = max(1, T * cin * p * p * grad.element_size())
    chunk = max(1, (64 << 20) // per_image)
    out = grad.new_zeros((C, cin * p * p))
    for n0 in range(0, N, chunk):
        g = grad[n0:n0 + chunk].reshape(-1, C)
        out += g.t() @ _patches(tiles[n0:n0 + chunk], p, grad.dtype, normalize)
    return out.view(C, cin, p, p)


def _param_grads(tiles, grad_output, needs, weight_shape, dtypes, normalize=None):
    """Gradients of (weight, bias, pos_embed) for upstream grad_output [N, T, C], accumulated in
    float32 (float64 when the weight or the gradient is float64); None where not needed."""
    weight_dtype, bias_dtype, pos_dtype = dtypes
    acc = torch.float64 if torch.float64 in (weight_dtype, grad_output.dtype) else torch.float32
    grad = grad_output.to(acc)
    gw = _weight_grad(tiles, grad, weight_shape, normalize).to(weight_dtype) if needs[0] else None
    gb = grad.sum((0, 1)).to(bias_dtype) if needs[1] else None
    gp = grad.sum(0).to(pos_dtype) if needs[2] else None
    return gw, gb, gp


if _extension.module is not None:

    @torch.library.register_fake(_OP)
    def _patch_embed_fake(tiles, weight, bias, pos_embed, out_dtype=None):
        return tiles.new_empty((tiles.shape[0], pos_embed.shape[0], weight.shape[0]),
                               dtype=weight.dtype if out_dtype is None else out_dtype)

    def _setup_context(ctx, inputs, output):
        tiles, weight, bias, pos_embed, _out_dtype = inputs
        ctx.save_for_backward(tiles)
        ctx.weight_shape = tuple(weight.shape)
        ctx.dtypes = (weight.dtype, bias.dtype, pos_embed.dtype)

    def _backward(ctx, grad_output):
        (tiles,) = ctx.saved_tensors
        gw, gb, gp = _param_grads(tiles, grad_output, ctx.needs_input_grad[1:4], ctx.weight_shape, ctx.dtypes)
        return None, gw, gb, gp, None

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
