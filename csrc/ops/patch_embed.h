// Torch-facing entry points of patch_embed: argument checks shared by both backends, and the
// per-backend implementations registered in bindings.cpp.
//
// The op computes out[n, t, c] = sum_k pixels(n, t, k) * weight[c, k] + bias[c] + pos_embed[t, c]
// with the weight and bias as given: for uint8 tiles the caller (interleave.ops.patch_embed) passes
// the normalization-folded W' = W / (255 * std) and b' = b - sum(W * mean / std), so raw byte values
// go straight into the GEMM; for float pixel_values it passes W and b unchanged.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

#include "../common/patch_embed.h"

namespace interleave {

struct PatchEmbedShape {
  int64_t batch, height, width, channels, patch, dim;  // N, H, W, Cin, p, C
  bool channels_last;                                  // uint8 [N, H, W, Cin] vs float [N, Cin, H, W]
  PatchGeometry geometry;
  at::ScalarType out_dtype;
  int64_t rows() const { return batch * geometry.tokens; }  // M = N * T
};

// Checks shapes, dtypes, devices and contiguity (nothing reads tensor data) and raises
// ValueError/TypeError naming the problem.
PatchEmbedShape check_patch_embed_args(const at::Tensor& tiles, const at::Tensor& weight,
                                       const at::Tensor& bias, const at::Tensor& pos_embed,
                                       std::optional<at::ScalarType> out_dtype);

at::Tensor patch_embed_cpu(const at::Tensor& tiles, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& pos_embed, std::optional<at::ScalarType> out_dtype);

#ifdef INTERLEAVE_WITH_CUDA
at::Tensor patch_embed_cuda(const at::Tensor& tiles, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& pos_embed, std::optional<at::ScalarType> out_dtype);
// Whether CUDA device `device` can run the wgmma kernel with this build (PatchEmbedGemm::kWgmma).
bool patch_embed_wgmma_available(int device);
// Empty where the cuBLAS path can put the position embedding into a cuBLASLt GEMM's C operand
// (csrc/cuda/cublaslt_gemm.h), else why not (no header at build time, library not loadable).
std::string patch_embed_cublaslt_status();
// Marks a folded weight and bias made by interleave.ops.patch_embed's fold cache: private tensors,
// never changed in place (the fold cache replaces them when the model's weights change), so the
// GEMM operands derived from them are cached. Operands of any other weight are rebuilt per call: a
// caller's own weight may change through `.data` without a new version (gradcheck, EMA updates).
void patch_embed_register_folded(const at::Tensor& weight, const at::Tensor& bias);
#endif

// Which GEMM the CUDA path uses for bf16/fp16 outputs (float32/float64 always use the SIMT kernel):
//   kAuto: the cuBLAS path at every size: our im2col + a cuBLASLt GEMM batched over the images,
//     the position embedding as its shared C operand below kPatchEmbedLtMaxRows tokens (as kCublas)
//     and copied into the output first from there (as kCublasCopy). The 12ae393 H100 run timed
//     these fastest at N=1 / 16 / 64 SigLIP tiles, ahead of the wgmma kernel (auto's choice below
//     4096 tokens until then: 2x slower at N=1) and the mma kernel
//     (bench/results/2026-11-27-NVIDIA-H100-80GB-HBM3-12ae393.json);
//   kCublas: the cuBLAS path with the position embedding as cuBLASLt's C operand at every size
//     where cuBLASLt takes it, else as kCublasCopy;
//   kCublasCopy: the cuBLAS path with the position embedding copied into the output first and
//     addmm adding onto it (kCublas's fallback);
//   kMma: our mma.sync kernel at every size;
//   kWgmma: the Hopper wgmma kernel (patch_embed_wgmma.cu) where it applies (uint8 tiles, an sm_90a
//     build on a compute-capability-9.0 device, even patch rows, K <= 16 * kWgmmaMaxSteps, C even)
//     at every size, kAuto's choice elsewhere;
//   kWgmmaStaged: the wgmma kernel's staged variant (A copied into shared memory with cp.async per
//     tile, fragments read from there) where it applies, else as kWgmma.
// kCublas, kCublasCopy, kMma, kWgmma and kWgmmaStaged are set by tests and the benchmark's variants.
enum class PatchEmbedGemm : int { kAuto = 0, kCublas = 1, kMma = 2, kWgmma = 3, kCublasCopy = 4, kWgmmaStaged = 5 };
constexpr int64_t kPatchEmbedLtMaxRows = 4096;
PatchEmbedGemm& patch_embed_gemm_mode();
// Whether the cuBLAS path's im2col of uint8 HWC tiles stages through shared memory
// (im2col_u8_kernel in csrc/cuda/patch_embed_kernels.cu) or runs the generic kernel: true unless
// the environment has INTERLEAVE_IM2COL_STAGED=0 (bench/gpu_preflight.sh sets it when,
// with PREFLIGHT_ALL=1, bench/gpu_preflight.py finds the staged kernel failing); the preflight flips it to compare both.
bool& patch_embed_im2col_staged();
// Whether the cuBLAS path's cuBLASLt GEMM times the heuristic's first 8 algorithms on a shape's
// first call and keeps the fastest (host syncs on that call; csrc/cuda/cublaslt_gemm.cpp): false
// unless the environment has INTERLEAVE_CUBLASLT_TUNE=1; a benchmark variant waiting for a GPU run.
bool& patch_embed_cublaslt_tune();

// The wgmma kernel's weight (csrc/cuda/patch_embed_kernels.h, PatchEmbedWgmmaArgs::panels): `weight`
// (the conv weight [C, Cin, p, p], any float dtype) times `scale`, in fp16, K order of PatchGeometry,
// zero-padded to k_steps * 16 columns and to whole panels of `panel_width` channels, each panel in
// wgmma's no-swizzle K-major core-matrix order: [panels, k_steps * 16 * panel_width] fp16. Tensor
// ops only (runs on any device; the emulated kernel tests read it on the CPU).
at::Tensor patch_embed_wgmma_layout(const at::Tensor& weight, bool channels_last, double scale, int64_t k_steps,
                                    int64_t panel_width);

// The weight as the kernels read it: [C, K] in the K order of PatchGeometry (see
// csrc/common/patch_embed.h), dtype `dtype`, zero-padded to `padded_k` columns.
at::Tensor patch_embed_weight_order(const at::Tensor& weight, bool channels_last,
                                    at::ScalarType dtype, int64_t padded_k);

}  // namespace interleave
