// Launchers of the patch_embed CUDA kernels. Raw pointers and sizes only: this header is included by
// the torch glue (patch_embed_cuda.cpp) and by patch_embed_kernels.cu, which must stay free of torch
// headers to keep its compile time low.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../common/patch_embed.h"

namespace interleave {
namespace cuda {

enum class PixelType : int { kUInt8 = 0, kFloat32 = 1, kFloat64 = 2, kBFloat16 = 3, kFloat16 = 4 };
enum class OutType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };
// The GEMM: tensor cores with bf16 or fp16 operands (fp32 accumulate), or an fp32/fp64 SIMT path.
enum class GemmType : int { kBFloat16 = 0, kFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

struct PatchEmbedArgs {
  const void* pixels;      // uint8 [N, H, W, Cin] or float [N, Cin, H, W], contiguous
  PixelType pixel_type;
  PatchGeometry geometry;
  int64_t rows;            // M = N * T
  int64_t k;               // K = Cin * p * p (real columns)
  int64_t k_padded;        // Kp: columns of `weight`, a multiple of kPatchKAlign, zeros past K
  int64_t dim;             // C
  const void* weight;      // [C, Kp] in the GemmType's element type, PatchGeometry's K order
  float alpha;             // out = alpha * (A W^T) + bias + pos_embed (1, or 1/255 for fp16, see glue)
  const void* bias;        // [C]    float (double for GemmType::kFloat64)
  const void* pos_embed;   // [T, C] float (double for GemmType::kFloat64)
  void* out;               // [M, C]
  OutType out_type;
};

void launch_patch_embed(const PatchEmbedArgs& args, GemmType gemm, cudaStream_t stream);

// The cuBLAS path's A operand: rows [row0, row0 + rows) of the im2col of the pixels, [rows, lda] in
// bf16 (gemm kBFloat16) or fp16 (kFloat16), the K order of PatchGeometry; columns [k, k + ones) are
// 1 (they carry the bias through the GEMM) and the rest up to lda are 0. lda: a multiple of 8.
// staged: take the shared-memory kernel for uint8 HWC pixels where it applies (the default; off
// only to compare with the generic kernel, patch_embed_im2col_staged()).
void launch_patch_im2col(const void* pixels, PixelType pixel_type, const PatchGeometry& geometry,
                         int64_t row0, int64_t rows, int64_t k, int64_t lda, int ones, GemmType gemm,
                         bool staged, void* a, cudaStream_t stream);
// Whether launch_patch_im2col takes its shared-memory kernel for uint8 HWC pixels (im2col_u8_kernel)
// rather than the generic one: even runs, strides and base pointer (16-bit loads), a small K.
bool im2col_u8_applies(const void* pixels, PixelType pixel_type, const PatchGeometry& geometry, int64_t k);

// dst[m] = src[m % period] for rows m in [0, rows), rows of row_bytes: a multiple of 16, both
// pointers 16-byte aligned (the glue checks; it copies through ATen otherwise), rows / 8 < 2^31.
void launch_broadcast_rows(const void* src, int64_t period, int64_t row_bytes, int64_t rows, void* dst,
                           cudaStream_t stream);

// ---- the Hopper wgmma kernel (patch_embed_wgmma.cu; sm_90a builds only) ---------------------------
// uint8 HWC tiles only, bf16/fp16 output. One CTA = one panel of kWgmmaN channels, resident in shared
// memory; kWgmmaGroups warpgroups take kWgmmaRows-token tiles in turn.
constexpr int kWgmmaN = 128, kWgmmaRows = 64, kWgmmaGroups = 2, kWgmmaThreads = 128 * kWgmmaGroups;
constexpr int kWgmmaChunk = 8;        // k-steps per group of MMAs; two chunks of pixel pairs per thread
constexpr int kWgmmaStepBytes = 256;  // one k-step (16 k) of one 8-channel group: two 128-byte core matrices
constexpr int kWgmmaMaxSmem = 227 * 1024;
// The epilogue's stage: per warpgroup a 64 x 128 fp32 tile, rows padded by 8 floats so that the
// fragment-layout writes (8 rows x 4 lanes x 8 bytes per warp) hit 32 different banks per phase.
constexpr int kWgmmaStageStride = kWgmmaN + 8;
// Shared memory of a CTA: the panel (k_steps * 16 groups * 256 bytes), the k-pair offsets, the stages.
constexpr size_t patch_embed_wgmma_smem_bytes(int k_steps) {
  return static_cast<size_t>(k_steps) * (kWgmmaStepBytes * (kWgmmaN / 8) + 8 * sizeof(int32_t)) +
         static_cast<size_t>(kWgmmaGroups) * kWgmmaRows * kWgmmaStageStride * sizeof(float);
}
// 39 k-steps (K <= 624: SigLIP's 588 takes 37).
constexpr int kWgmmaMaxSteps = static_cast<int>((kWgmmaMaxSmem - patch_embed_wgmma_smem_bytes(0)) /
                                                (patch_embed_wgmma_smem_bytes(1) - patch_embed_wgmma_smem_bytes(0)));

// The staged variant (cuda_gemm("wgmma_staged")): each warpgroup copies its tile's patch rows into
// shared memory with 4-byte cp.async (a run of p * Cin bytes from its 4-byte-aligned start: `shift`
// 0 or 2 bytes into its first word, run_words words), then reads the A fragments from there: no
// global load in the k-loop. Per CTA: the panel, two A regions of kWgmmaRows x token_stride bytes
// (the epilogue's fp32 stage reuses its warpgroup's), the tile's row offsets (int64) and the k-pair
// offsets inside a token's staged bytes (int16). token_stride / 4 is 2 mod 4 words, so the 8 rows
// of a fragment load fall in 8 different bank pairs. ok: the geometry allows it (uint8 HWC, even
// runs, strides multiples of 4 bytes) and it fits shared memory (SigLIP: 232,016 bytes).
struct WgmmaStagedLayout {
  bool ok = false;
  int32_t run_words = 0, token_stride = 0;
  int64_t region = 0;
  size_t smem = 0;
};
inline WgmmaStagedLayout patch_embed_wgmma_staged_layout(const PatchGeometry& g, int k_steps) {
  WgmmaStagedLayout l;
  if (g.outer != 1 || g.run % 2 != 0 || g.middle_stride % 4 != 0 || g.row_stride % 4 != 0 ||
      g.image_stride % 4 != 0 || g.col_stride % 2 != 0 || k_steps < 1)
    return l;
  l.run_words = static_cast<int32_t>((g.run + 2 + 3) / 4);
  int64_t words = g.middle * l.run_words;
  while (words % 4 != 2) ++words;
  l.token_stride = static_cast<int32_t>(words * 4);
  const int64_t stage = static_cast<int64_t>(kWgmmaRows) * kWgmmaStageStride * sizeof(float);
  l.region = std::max<int64_t>(static_cast<int64_t>(kWgmmaRows) * l.token_stride, stage);
  const int64_t bytes = static_cast<int64_t>(k_steps) * kWgmmaStepBytes * (kWgmmaN / 8) + kWgmmaGroups * l.region +
                        kWgmmaGroups * kWgmmaRows * static_cast<int64_t>(sizeof(int64_t)) +
                        static_cast<int64_t>(k_steps) * 8 * static_cast<int64_t>(sizeof(int16_t));
  l.smem = static_cast<size_t>((bytes + 15) / 16 * 16);
  l.ok = l.smem <= static_cast<size_t>(kWgmmaMaxSmem) && l.token_stride < 32768;
  return l;
}

struct PatchEmbedWgmmaArgs {
  const uint8_t* pixels;   // uint8 [N, H, W, Cin], contiguous; every patch row offset even (glue)
  PatchGeometry geometry;  // channels last
  int32_t rows;            // M = N * T (< 2^31)
  int32_t k;               // K = p * p * Cin
  int32_t k_steps;         // ceil(K / 16), at most kWgmmaMaxSteps
  int32_t dim;             // C, a multiple of 4
  const uint4* panels;     // fp16 panels, [ceil(C / 128)][k_steps * 4096 bytes], the layout below
  const float* alpha;      // device scalar 1 / s: the panels hold W' * s (s a power of two, glue)
  const float* bias;       // [ceil(C / 128) * 128] fp32 (zeros past C)
  const void* pos_embed;   // [T, C] in the output dtype, 8-byte aligned
  void* out;               // [M, C] bf16 or fp16
  OutType out_type;        // kBFloat16 or kFloat16
  WgmmaStagedLayout layout;  // the staged variant's (set by the launcher)
};

// Panel layout (the glue builds it with tensor ops): fp16 weight element (channel c, column k), c in
// panel P = c / 128, n = c % 128, sits at element
//   P * (Kp * 128) + (n / 8) * (Kp * 8) + (k / 8) * 64 + (n % 8) * 8 + (k % 8),   Kp = 16 * k_steps,
// wgmma's no-swizzle K-major layout ((8, m), (8, 2k)) : ((8, SBO), (1, LBO)) with LBO = 64 elements
// and SBO = Kp * 8 elements.
// Launches the staged variant where its layout is ok (and `staged` asks for it), else the gathered one.
void launch_patch_embed_wgmma(const PatchEmbedWgmmaArgs& args, bool staged, cudaStream_t stream);
// True when `device` is compute capability 9.0 and this build carries the kernel for it (an sm_90a
// target in TORCH_CUDA_ARCH_LIST). Reads a device flag once per device (one synchronizing copy).
bool patch_embed_wgmma_compiled(int device);

}  // namespace cuda
}  // namespace interleave
