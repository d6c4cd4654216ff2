"""The CUDA fp32 patch_embed kernel's arithmetic, emulated on the CPU (no GPU needed).

csrc/cuda/patch_embed_kernels.cu simt_kernel<float> computes out = sum_k u8[k] * W'[c, k] + bias' +
pos with fp32 FMAs. This script replays that arithmetic in float64 with a rounding to fp32 after
every FMA/add (the product of two fp32 values is exact in float64), for one SigLIP tile (N=1, the
bench's random inputs), and prints the max error against float64 for: one running sum over K (the
kernel before blocked summation), per-16-term blocks (the kernel now), and both with the pixels
centred (u8 - 128). The fp32 conv reference's error is printed first, for the 2x rule.

    python bench/emulate_patch_embed_fp32.py
"""
import torch
from interleave.bench import patch_embed_inputs
from interleave import reference
from interleave.ops.patch_embed import fold_normalization
tiles, w, b, pos = patch_embed_inputs(N=1)
mean = std = [0.5] * 3
exact = reference.patch_embed_tiles(tiles, w.double(), b.double(), pos.double())  # float64 truth
ref32 = reference.patch_embed_tiles(tiles, w, b, pos)
print("fp32 reference (CPU conv) err", float((ref32.double() - exact).abs().max()))
fw, fb = fold_normalization(w, b, mean, std)           # channels_last: [C, p, p, Cin]
C = fw.shape[0]
W = fw.permute(0, 2, 3, 1).reshape(C, -1).double()      # fp32 values, K order p,p,Cin
S, p = 384, 14
A = tiles[0, :378, :378].reshape(27, p, 27, p, 3).permute(0, 2, 1, 3, 4).reshape(-1, p * p * 3).double()  # [T, K]
def f32(x): return x.float().double()
def run(center, block):
    a = A - 128 if center else A
    bias = fb.double() + (128 * W.sum(1) if center else 0)
    bias = f32(bias)
    acc = torch.zeros(A.shape[0], C, dtype=torch.float64)
    tile = torch.zeros_like(acc)
    K = A.shape[1]
    for k in range(K):
        if block:
            tile = f32(tile + a[:, k:k + 1] * W[:, k][None])   # fma in fp32 (exact product in f64)
            if (k + 1) % block == 0 or k == K - 1:
                acc = f32(acc + tile); tile.zero_()
        else:
            acc = f32(acc + a[:, k:k + 1] * W[:, k][None])
    out = f32(f32(acc + bias[None]) + pos.double())
    return float((out - exact[0]).abs().max())
for center in (False, True):
    for block in (0, 16):
        print("center", center, "block", block, "err", run(center, block))
