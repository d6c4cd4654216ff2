// Host emulation of patch_embed's CUDA kernels in csrc/cuda/patch_embed_kernels.cu (without its
// launchers) under tests/emulate/cuda_emu.h; see tests/test_cuda_emulated.py: the im2col of the
// cuBLAS path, the position-embedding broadcast, the fp32 SIMT GEMM and the bf16/fp16 mma.sync GEMM
// (its MMAs through the emulator's il_mma_*_16816, with the PTX ISA's fragment layout).
#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>

#include <cstdint>
#include <cstring>

#include "cuda_emu.h"

static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

#include EMU_KERNEL_SOURCE

using namespace interleave;
using namespace interleave::cuda;

// pixels: uint8 [N, H, W, C] (channels_last) or float32 [N, C, H, W]; a: [rows, lda] 16-bit values
// (bf16 when bf16 != 0, else fp16), written for rows [row0, row0 + rows). staged: the uint8 kernel
// that stages through shared memory (im2col_u8_kernel, launched as launch_patch_im2col does; returns
// 2 where im2col_u8_applies says it does not apply), else the generic one.
extern "C" int emu_patch_im2col(const void* pixels, int channels_last, int64_t n, int64_t channels, int64_t height,
                                int64_t width, int64_t patch, int64_t row0, int64_t rows, int64_t lda, int ones,
                                int bf16, int staged, void* a) {
  const PatchGeometry g = make_patch_geometry(channels_last != 0, channels, height, width, patch);
  const int64_t k = patch_k(g);
  if (lda % 8 != 0 || lda < k + ones || row0 + rows > n * g.tokens) return 1;
  const PixelType type = channels_last ? PixelType::kUInt8 : PixelType::kFloat32;
  if (staged) {
    if (!im2col_u8_applies(pixels, type, g, k)) return 2;
    const unsigned blocks = static_cast<unsigned>((rows + kIm2colRows - 1) / kIm2colRows);
    const size_t smem = static_cast<size_t>(kIm2colRows) * static_cast<size_t>((k + 7) / 8 * 8);
    const auto* u8 = static_cast<const uint8_t*>(pixels);
    emu::launch(blocks, 256, smem, [&] {
      if (bf16)
        im2col_u8_kernel<__nv_bfloat16>(u8, g, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k),
                                        static_cast<int32_t>(lda), ones, static_cast<__nv_bfloat16*>(a));
      else
        im2col_u8_kernel<__half>(u8, g, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k),
                                 static_cast<int32_t>(lda), ones, static_cast<__half*>(a));
    });
    return 0;
  }
  const int64_t threads = rows * (lda / 8);
  const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
  if (bf16)
    emu::launch(blocks, 256, 0, [&] {
      im2col_kernel<__nv_bfloat16>(pixels, type, g, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k),
                                   static_cast<int32_t>(lda), ones, static_cast<__nv_bfloat16*>(a));
    });
  else
    emu::launch(blocks, 256, 0, [&] {
      im2col_kernel<__half>(pixels, type, g, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k),
                            static_cast<int32_t>(lda), ones, static_cast<__half*>(a));
    });
  return 0;
}

// The GEMM kernels' arguments for uint8 HWC tiles [n, height, width, channels], as patch_embed_cuda
// fills them.
static PatchEmbedArgs uint8_tile_args(const uint8_t* tiles, int64_t n, int64_t height, int64_t width,
                                      int64_t channels, int64_t patch, const void* weight, int64_t k_padded,
                                      float alpha, const void* bias, const void* pos, int64_t dim, void* out,
                                      OutType out_type) {
  PatchEmbedArgs args{};
  args.pixels = tiles;
  args.pixel_type = PixelType::kUInt8;
  args.geometry = make_patch_geometry(true, channels, height, width, patch);
  args.rows = n * args.geometry.tokens;
  args.k = patch_k(args.geometry);
  args.k_padded = k_padded;
  args.dim = dim;
  args.weight = weight;
  args.alpha = alpha;
  args.bias = bias;
  args.pos_embed = pos;
  args.out = out;
  args.out_type = out_type;
  return args;
}

// The SIMT GEMM kernel (float32 outputs) on uint8 HWC tiles, as patch_embed_cuda launches it:
// weight [C, Kp] float in the K order of PatchGeometry (zeros past K), bias [C], pos [T, C].
extern "C" int emu_patch_embed_simt(const uint8_t* tiles, int64_t n, int64_t height, int64_t width, int64_t channels,
                                    int64_t patch, const float* weight, int64_t k_padded, const float* bias,
                                    const float* pos, int64_t dim, float* out) {
  const PatchEmbedArgs args =
      uint8_tile_args(tiles, n, height, width, channels, patch, weight, k_padded, 1.0f, bias, pos, dim, out,
                      OutType::kFloat32);
  if (k_padded % kSK != 0 || k_padded < args.k) return 1;
  emu::launch2d(blocks_for(dim, kSN), blocks_for(args.rows, kSM), kSimtThreads, 0,
                [&] { simt_kernel<float>(args); });
  return 0;
}

// The position-embedding broadcast of the cuBLAS path: dst row m = src row (m % period), rows of
// row_bytes (a multiple of 16), as launch_broadcast_rows launches it (8 rows per 256-thread block).
extern "C" int emu_broadcast_rows(const void* src, int64_t period, int64_t row_bytes, int64_t rows, void* dst) {
  if (row_bytes % 16 != 0) return 1;
  emu::launch(static_cast<unsigned>((rows + 7) / 8), 256, 0, [&] {
    broadcast_rows_kernel(static_cast<const uint4*>(src), static_cast<int32_t>(period),
                          static_cast<int32_t>(row_bytes / 16), rows, static_cast<uint4*>(dst));
  });
  return 0;
}

// The tensor-core GEMM kernel (bf16/fp16 outputs below the cuBLAS threshold), as patch_embed_cuda
// launches it: weight [C, Kp] in the operand type (bf16 when bf16 != 0, else fp16), K order of
// PatchGeometry, zeros past K; bias [C] and pos [T, C] fp32; out [N * T, C] in the operand type.
extern "C" int emu_patch_embed_mma(const uint8_t* tiles, int64_t n, int64_t height, int64_t width, int64_t channels,
                                   int64_t patch, const void* weight, int64_t k_padded, float alpha, const float* bias,
                                   const float* pos, int64_t dim, int bf16, void* out) {
  const PatchEmbedArgs args =
      uint8_tile_args(tiles, n, height, width, channels, patch, weight, k_padded, alpha, bias, pos, dim, out,
                      bf16 ? OutType::kBFloat16 : OutType::kFloat16);
  if (k_padded % kBK != 0 || k_padded < args.k) return 1;
  if (bf16)
    emu::launch2d(blocks_for(dim, kBN), blocks_for(args.rows, kBM), kMmaThreads, 0,
                  [&] { mma_kernel<__nv_bfloat16>(args); });
  else
    emu::launch2d(blocks_for(dim, kBN), blocks_for(args.rows, kBM), kMmaThreads, 0,
                  [&] { mma_kernel<__half>(args); });
  return 0;
}
