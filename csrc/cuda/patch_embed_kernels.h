// Launchers of the patch_embed CUDA kernels. Raw pointers and sizes only: this header is included by
// the torch glue (patch_embed_cuda.cpp) and by patch_embed_kernels.cu, which must stay free of torch
// headers to keep its compile time low.
#pragma once

#include <cuda_runtime_api.h>

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
void launch_patch_im2col(const void* pixels, PixelType pixel_type, const PatchGeometry& geometry,
                         int64_t row0, int64_t rows, int64_t k, int64_t lda, int ones, GemmType gemm,
                         void* a, cudaStream_t stream);

// dst[m] = src[m % period] for rows m in [0, rows), rows of row_bytes: a multiple of 16, both
// pointers 16-byte aligned (the glue checks; it copies through ATen otherwise), rows / 8 < 2^31.
void launch_broadcast_rows(const void* src, int64_t period, int64_t row_bytes, int64_t rows, void* dst,
                           cudaStream_t stream);

}  // namespace cuda
}  // namespace interleave
