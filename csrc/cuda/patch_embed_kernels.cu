// CUDA kernels of patch_embed. No torch headers here (compile time); see patch_embed_kernels.h.
//
// An implicit GEMM out[M, C] = A[M, K] * W[C, K]^T + bias[c] + pos_embed[m % T, c], M = N * T tokens,
// K = Cin * p * p (588 for SigLIP, padded to Kp = 608 with zero weights), A never stored: each block
// gathers its [BM, BK] slice of A straight from the pixels into shared memory (uint8 -> bf16/fp16 is
// exact, so the folded normalization loses nothing on the pixel side). This mirrors transformers'
// SiglipVisionEmbeddings.forward (conv + flatten/transpose + position embedding) in one launch.
//
// Two kernels (four instantiations in all, to keep compile time low):
//  * mma_kernel<T>, T = bf16 or fp16: 128x128 block tile, 8 warps of 64x32, BK = 32, mma.sync
//    m16n8k16 with fp32 accumulators; used for bf16/fp16 outputs.
//  * simt_kernel<T>, T = float or double: 64x64 tile, 4x4 outputs per thread, plain FMA; used for
//    float32/float64 outputs, so an fp32 model gets fp32 arithmetic (with bf16 operands the error
//    against float64 was 8.9e-3 vs 3.3e-6 for the fp32 reference, emulated on the CPU).
// Both stage the next K slice in registers while the current one is multiplied (one shared buffer,
// loads in flight during the math; the tensor-core kernel converts the pixels only after the MMAs).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "dispatch.cuh"
#include "patch_embed_kernels.h"
#include "ptx_primitives.cuh"

namespace interleave {
namespace cuda {
namespace {

// ---- conversions -----------------------------------------------------------------------------
// Pixel `index` of the pixel tensor as T (uint8 and the float types; double only reaches the
// double GEMM, everything else goes through float, which is exact for uint8/bf16/fp16 sources).
template <typename T>
__device__ __forceinline__ T load_pixel(const void* pixels, PixelType type, int64_t index) {
  if constexpr (std::is_same_v<T, double>) {
    switch (type) {
      case PixelType::kUInt8: return static_cast<double>(static_cast<const uint8_t*>(pixels)[index]);
      case PixelType::kFloat64: return static_cast<const double*>(pixels)[index];
      case PixelType::kFloat32: return static_cast<double>(static_cast<const float*>(pixels)[index]);
      case PixelType::kBFloat16:
        return static_cast<double>(__bfloat162float(static_cast<const __nv_bfloat16*>(pixels)[index]));
      default: return static_cast<double>(__half2float(static_cast<const __half*>(pixels)[index]));
    }
  } else {
    float v;
    switch (type) {
      case PixelType::kUInt8: v = static_cast<float>(static_cast<const uint8_t*>(pixels)[index]); break;
      case PixelType::kFloat32: v = static_cast<const float*>(pixels)[index]; break;
      case PixelType::kFloat64: v = static_cast<float>(static_cast<const double*>(pixels)[index]); break;
      case PixelType::kBFloat16: v = __bfloat162float(static_cast<const __nv_bfloat16*>(pixels)[index]); break;
      default: v = __half2float(static_cast<const __half*>(pixels)[index]); break;
    }
    return from_float<T>(v);
  }
}

// The tensor-core kernel stages raw pixel bits in registers and converts them only when it stores
// the next slice to shared memory, after the MMAs of the current one, so the global-load latency
// overlaps the math (a conversion right after the load would wait for it). uint8 is zero-extended,
// bf16/fp16 keep their 16-bit pattern, float32 its bits; float64 (rare) is narrowed at load time.
__device__ __forceinline__ uint32_t stage_pixel(const void* pixels, PixelType type, int64_t index) {
  switch (type) {
    case PixelType::kUInt8: return static_cast<const uint8_t*>(pixels)[index];
    case PixelType::kFloat32: return static_cast<const uint32_t*>(pixels)[index];
    case PixelType::kBFloat16:
    case PixelType::kFloat16: return static_cast<const uint16_t*>(pixels)[index];
    default: return __float_as_uint(static_cast<float>(static_cast<const double*>(pixels)[index]));
  }
}

// Staged bits -> float, per pixel type (0 bits are +0 in every type: the zero padding).
struct FromUInt8 {
  __device__ float operator()(uint32_t raw) const { return static_cast<float>(raw); }
};
struct FromBFloat16 {  // bf16 is the upper half of a float32
  __device__ float operator()(uint32_t raw) const { return __uint_as_float(raw << 16); }
};
struct FromFloat16 {
  __device__ float operator()(uint32_t raw) const {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(raw)));
  }
};
struct FromFloat32 {  // float32, and float64 narrowed at load
  __device__ float operator()(uint32_t raw) const { return __uint_as_float(raw); }
};

// Epilogue store of one output element (the output dtype is uniform across the grid).
template <typename Acc>
__device__ __forceinline__ void store_out(void* out, OutType type, int64_t index, Acc v) {
  switch (type) {
    case OutType::kFloat32: static_cast<float*>(out)[index] = static_cast<float>(v); break;
    case OutType::kFloat64: static_cast<double*>(out)[index] = static_cast<double>(v); break;
    case OutType::kBFloat16:
      static_cast<__nv_bfloat16*>(out)[index] = __float2bfloat16_rn(static_cast<float>(v));
      break;
    case OutType::kFloat16: static_cast<__half*>(out)[index] = __float2half_rn(static_cast<float>(v)); break;
  }
}

// Walks `count` consecutive GEMM columns from k0 in PatchGeometry's (outer, middle, run) order
// without a division per element: f(e, offset) for k0 + e < K, f(e, -1) for the zero padding.
template <typename F>
__device__ __forceinline__ void for_each_k(const PatchGeometry& g, int64_t k, int64_t k0, int count,
                                           F f) {
  const int64_t per_outer = g.middle * g.run;
  int64_t o = k0 / per_outer;
  int64_t rem = k0 - o * per_outer;
  int64_t mi = rem / g.run;
  int64_t r = rem - mi * g.run;
#pragma unroll
  for (int e = 0; e < count; ++e) {
    const bool valid = k0 + e < k;
    f(e, valid ? o * g.outer_stride + mi * g.middle_stride + r : int64_t(-1));
    if (++r == g.run) {
      r = 0;
      if (++mi == g.middle) {
        mi = 0;
        ++o;
      }
    }
  }
}

// ---- tensor-core kernel (bf16 / fp16 operands, fp32 accumulate) ------------------------------
constexpr int kMmaThreads = 256;
constexpr int kBM = 128, kBN = 128, kBK = 32;
constexpr int kLds = kBK + 8;  // shared row stride in elements: 80 bytes, fragment loads conflict-free

template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    il_mma_bf16_16816(c, a, b);
  else
    il_mma_f16_16816(c, a, b);
}

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) mma_kernel(PatchEmbedArgs args) {
  __shared__ __align__(16) T As[kBM * kLds];  // [row][k]
  __shared__ __align__(16) T Bs[kBN * kLds];  // [channel][k]
  const PatchGeometry& g = args.geometry;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;  // 2 x 4 warps of 64 x 32
  const int group = lane >> 2, tig = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;

  // A loader: thread -> one row, 16 consecutive k of the 32-wide slice.
  const int a_row = tid >> 1, a_k = (tid & 1) * 16;
  const int64_t a_m = m0 + a_row;
  const bool a_valid = a_m < args.rows;
  const int64_t a_base = a_valid ? patch_row_offset(g, a_m) : 0;
  // B loader: thread -> rows tid/4 and tid/4 + 64, 8 consecutive k (one 16-byte vector each).
  const int b_row = tid >> 2, b_k = (tid & 3) * 8;
  const T* wt = static_cast<const T*>(args.weight);

  uint32_t a_stage[16];  // raw pixel bits (stage_pixel), converted in store_tile
  uint4 b_regs[2];
  auto load_tile = [&](int64_t k0) {
    for_each_k(g, args.k, k0 + a_k, 16, [&](int e, int64_t off) {
      a_stage[e] = (a_valid && off >= 0) ? stage_pixel(args.pixels, args.pixel_type, a_base + off) : 0u;
    });
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + b_row + h * 64;
      b_regs[h] = n < args.dim
                      ? *reinterpret_cast<const uint4*>(wt + n * args.k_padded + k0 + b_k)
                      : make_uint4(0, 0, 0, 0);
    }
  };
  auto store_tile = [&]() {
    uint32_t a_regs[8];
    auto convert = [&](auto to_float) {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        a_regs[e] = pack2(from_float<T>(to_float(a_stage[2 * e])), from_float<T>(to_float(a_stage[2 * e + 1])));
    };
    switch (args.pixel_type) {  // uniform over the grid: one branch per slice, not per element
      case PixelType::kUInt8: convert(FromUInt8{}); break;
      case PixelType::kBFloat16: convert(FromBFloat16{}); break;
      case PixelType::kFloat16: convert(FromFloat16{}); break;
      default: convert(FromFloat32{}); break;
    }
    uint4* a_dst = reinterpret_cast<uint4*>(As + a_row * kLds + a_k);
    a_dst[0] = make_uint4(a_regs[0], a_regs[1], a_regs[2], a_regs[3]);
    a_dst[1] = make_uint4(a_regs[4], a_regs[5], a_regs[6], a_regs[7]);
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<uint4*>(Bs + (b_row + h * 64) * kLds + b_k) = b_regs[h];
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  const int64_t k_tiles = args.k_padded / kBK;
  load_tile(0);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    store_tile();
    __syncthreads();
    if (kt + 1 < k_tiles) load_tile((kt + 1) * kBK);  // loads in flight during the MMAs below
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const T* p = As + (warp_m * 64 + i * 16 + group) * kLds + ks + tig * 2;
        a[i][0] = *reinterpret_cast<const uint32_t*>(p);                 // row g,   k 2t..2t+1
        a[i][1] = *reinterpret_cast<const uint32_t*>(p + 8 * kLds);      // row g+8, k 2t..2t+1
        a[i][2] = *reinterpret_cast<const uint32_t*>(p + 8);             // row g,   k 2t+8..
        a[i][3] = *reinterpret_cast<const uint32_t*>(p + 8 * kLds + 8);  // row g+8, k 2t+8..
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const T* p = Bs + (warp_n * 32 + j * 8 + group) * kLds + ks + tig * 2;
        b[j][0] = *reinterpret_cast<const uint32_t*>(p);      // k 2t..2t+1,   column g
        b[j][1] = *reinterpret_cast<const uint32_t*>(p + 8);  // k 2t+8..2t+9, column g
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_16816<T>(acc[i][j], a[i], b[j]);
    }
    __syncthreads();
  }

  // Epilogue: c0, c1 at (row g, columns 2t, 2t+1), c2, c3 at row g + 8.
  const float* bias = static_cast<const float*>(args.bias);
  const float* pos = static_cast<const float*>(args.pos_embed);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = m0 + warp_m * 64 + i * 16 + group + half * 8;
      if (m >= args.rows) continue;
      const int64_t t = m % g.tokens;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t n = n0 + warp_n * 32 + j * 8 + tig * 2 + e;
          if (n < args.dim)
            store_out(args.out, args.out_type, m * args.dim + n,
                      args.alpha * acc[i][j][half * 2 + e] + bias[n] + pos[t * args.dim + n]);
        }
      }
    }
  }
}

// ---- SIMT kernel (float / double) ------------------------------------------------------------
constexpr int kSimtThreads = 256;
constexpr int kSM = 64, kSN = 64, kSK = 16;

template <typename T>
__global__ void __launch_bounds__(kSimtThreads) simt_kernel(PatchEmbedArgs args) {
  __shared__ T As[kSK][kSM + 4];  // [k][row]
  __shared__ T Bs[kSK][kSN + 4];  // [k][channel]
  const PatchGeometry& g = args.geometry;
  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kSM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSN;
  // Loaders: thread -> row (or channel) tid / 4, 4 consecutive k.
  const int l_row = tid >> 2, l_k = (tid & 3) * 4;
  const int64_t a_m = m0 + l_row;
  const bool a_valid = a_m < args.rows;
  const int64_t a_base = a_valid ? patch_row_offset(g, a_m) : 0;
  const int64_t b_n = n0 + l_row;
  const bool b_valid = b_n < args.dim;
  const T* wt = static_cast<const T*>(args.weight);
  // Compute: thread -> rows ty*4..+3, channels tx*4..+3.
  const int ty = tid >> 4, tx = tid & 15;

  T a_regs[4], b_regs[4];
  auto load_tile = [&](int64_t k0) {
    for_each_k(g, args.k, k0 + l_k, 4, [&](int e, int64_t off) {
      a_regs[e] = (a_valid && off >= 0) ? load_pixel<T>(args.pixels, args.pixel_type, a_base + off)
                                        : T(0);
    });
#pragma unroll
    for (int e = 0; e < 4; ++e)
      b_regs[e] = b_valid ? wt[b_n * args.k_padded + k0 + l_k + e] : T(0);
  };

  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  const int64_t k_tiles = args.k_padded / kSK;
  load_tile(0);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      As[l_k + e][l_row] = a_regs[e];
      Bs[l_k + e][l_row] = b_regs[e];
    }
    __syncthreads();
    if (kt + 1 < k_tiles) load_tile((kt + 1) * kSK);
    // Blocked summation: each K slice (16 terms) is summed on its own, then added to the total.
    // One running sum over all K = 608 terms of raw uint8 x W' (all-positive pixels, so the sum
    // carries a large offset that bias' cancels) had 2x the fp32 reference's error on the H100
    // (5.7e-6 vs 2.8e-6, N=1); emulating this kernel's fp32 arithmetic on the CPU gives 5.7e-6 for
    // the running sum and 1.3e-6 blocked, against 2.9e-6 for the fp32 conv.
    T part[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) part[i][j] = T(0);
#pragma unroll
    for (int k = 0; k < kSK; ++k) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[k][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] = fma(a[i], b[j], part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j];
    __syncthreads();
  }

  const T* bias = static_cast<const T*>(args.bias);
  const T* pos = static_cast<const T*>(args.pos_embed);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= args.rows) continue;
    const int64_t t = m % g.tokens;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      if (n < args.dim)
        store_out(args.out, args.out_type, m * args.dim + n,
                  static_cast<T>(args.alpha) * acc[i][j] + bias[n] + pos[t * args.dim + n]);
    }
  }
}

unsigned blocks_for(int64_t size, int tile) { return static_cast<unsigned>((size + tile - 1) / tile); }

}  // namespace

// ---- im2col for the cuBLAS path ----------------------------------------------------------------
// patch_row_offset of GEMM row gm (< 2^31, checked by the glue) with 32-bit divisions (a 64-bit
// division is a long software sequence on GPUs).
__device__ __forceinline__ int64_t patch_row_offset32(const PatchGeometry& g, int32_t gm) {
  const int32_t tokens = static_cast<int32_t>(g.tokens), n = gm / tokens, t = gm - n * tokens;
  const int32_t gw = static_cast<int32_t>(g.grid_w), py = t / gw, px = t - py * gw;
  return n * g.image_stride + py * g.row_stride + px * g.col_stride;
}

// One thread per 8 consecutive columns of one row: a 16-byte store. Index math in 32 bits (a patch
// has < 2^31 columns, a call < 2^31 rows: checked by the glue); the decomposition of the first
// column k0 = (o * middle + mi) * run + r is stepped, not divided again, for the other seven.
template <typename T>
__global__ void __launch_bounds__(256)
    im2col_kernel(const void* __restrict__ pixels, PixelType type, PatchGeometry g, int64_t row0,
                  int32_t rows, int32_t k, int32_t lda, int32_t ones, T* __restrict__ a) {
  const int32_t groups = lda / 8;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(rows) * groups) return;
  // rows * groups < 2^31 (the glue's chunks of ~64 MiB; checked there): a 32-bit division, not the
  // long 64-bit sequence.
  const int32_t i32 = static_cast<int32_t>(idx);
  const int32_t m = i32 / groups;
  const int32_t k0 = (i32 - m * groups) * 8;
  const int64_t base = patch_row_offset32(g, static_cast<int32_t>(row0 + m));
  const int32_t run = static_cast<int32_t>(g.run), middle = static_cast<int32_t>(g.middle);
  const int32_t per_outer = middle * run;
  int32_t o = k0 / per_outer, rem = k0 - o * per_outer;
  int32_t mi = rem / run, r = rem - mi * run;
  alignas(16) T v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int32_t kk = k0 + i;
    if (kk < k) {
      v[i] = load_pixel<T>(pixels, type, base + o * g.outer_stride + mi * g.middle_stride + r);
      if (++r == run) {
        r = 0;
        if (++mi == middle) { mi = 0; ++o; }
      }
    } else {
      v[i] = from_float<T>(kk < k + ones ? 1.0f : 0.0f);
    }
  }
  *reinterpret_cast<uint4*>(a + static_cast<int64_t>(m) * lda + k0) = *reinterpret_cast<const uint4*>(v);
}

// The same im2col for uint8 HWC tiles (what anyres_tiles writes; the case that matters), staged
// through shared memory. The generic kernel above reads each pixel with its own 1-byte load: 8 load
// instructions per thread, each touching ~7 pixel rows across the warp (0.066 ms for N=64 on the
// H100, e857c2a profile: 83 MB moved at ~1.3 TB/s). Here a block takes kIm2colRows consecutive
// tokens: phase 1 copies their patches' pixel runs into shared memory with 16-bit loads that walk
// memory in order (the runs of consecutive tokens of a patch row are adjacent: token t + 1's run
// starts where token t's ends), phase 2 turns each 8 bytes of a row into one 16-byte store of A.
// Needs (the glue checks) HWC uint8, an even run (p * Cin), even strides and an even base pointer.
// K = middle * run here (outer = 1); the stage row is K rounded up to 8 bytes.
constexpr int kIm2colRows = 8;
constexpr int kIm2colLoads = 8;  // phase 1's loads in flight per thread

template <typename T>
__global__ void __launch_bounds__(256)
    im2col_u8_kernel(const uint8_t* __restrict__ pixels, PatchGeometry g, int64_t row0, int32_t rows,
                     int32_t k, int32_t lda, int32_t ones, T* __restrict__ a) {
  IL_DYNAMIC_SMEM(uint2, stage_vec);  // [kIm2colRows][stage_row / 8]
  __shared__ int64_t row_base[kIm2colRows];
  uint8_t* stage = reinterpret_cast<uint8_t*>(stage_vec);
  const int32_t stage_row = (k + 7) / 8 * 8;
  const int32_t first = static_cast<int32_t>(blockIdx.x) * kIm2colRows;  // rows of this block: first + j
  const int32_t valid = min(kIm2colRows, rows - first);
  const int tid = threadIdx.x;
  if (tid < kIm2colRows)
    row_base[tid] = tid < valid ? patch_row_offset32(g, static_cast<int32_t>(row0 + first + tid)) : -1;
  __syncthreads();

  // Phase 1: halfword idx = (mi * kIm2colRows + j) * half_run + r2 is pixel pair r2 of run mi of
  // row j. Threads step by blockDim.x, carried through (r2, j, mi) instead of divided each time.
  const int32_t half_run = static_cast<int32_t>(g.run) / 2, middle = static_cast<int32_t>(g.middle);
  const int32_t per_mi = kIm2colRows * half_run, step = static_cast<int32_t>(blockDim.x);
  const int32_t step_mi = step / per_mi, step_j = (step - step_mi * per_mi) / half_run,
                step_r2 = step - step_mi * per_mi - step_j * half_run;
  int32_t mi = tid / per_mi, j = (tid - mi * per_mi) / half_run, r2 = tid - mi * per_mi - j * half_run;
  // kIm2colLoads loads in flight per thread before their stores (one at a time, a thread would wait
  // a whole memory latency per 2 bytes).
  while (mi < middle) {
    unsigned short v[kIm2colLoads];
    int32_t dst[kIm2colLoads];
#pragma unroll
    for (int u = 0; u < kIm2colLoads; ++u) {
      dst[u] = -1;
      if (mi < middle) {
        const int64_t base = row_base[j];
        if (base >= 0) {
          v[u] = __ldg(reinterpret_cast<const unsigned short*>(pixels + base + mi * g.middle_stride + 2 * r2));
          dst[u] = j * stage_row + (mi * half_run + r2) * 2;
        }
        r2 += step_r2;
        if (r2 >= half_run) { r2 -= half_run; ++j; }
        j += step_j;
        if (j >= kIm2colRows) { j -= kIm2colRows; ++mi; }
        mi += step_mi;
      }
    }
#pragma unroll
    for (int u = 0; u < kIm2colLoads; ++u)
      if (dst[u] >= 0) *reinterpret_cast<uint16_t*>(stage + dst[u]) = v[u];
  }
  __syncthreads();

  // Phase 2: 8 columns per thread, one 16-byte store each; the columns past K are the bias ones,
  // then zeros.
  const int32_t groups = lda / 8;
  for (int32_t idx = tid; idx < valid * groups; idx += step) {
    const int32_t row = idx / groups, k0 = (idx - row * groups) * 8;
    alignas(16) T v[8];
    if (k0 + 8 <= k) {
      const uint2 raw = *reinterpret_cast<const uint2*>(stage + row * stage_row + k0);
#pragma unroll
      for (int i = 0; i < 8; ++i)
        v[i] = from_float<T>(static_cast<float>(((i < 4 ? raw.x : raw.y) >> (8 * (i & 3))) & 0xFFu));
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int32_t kk = k0 + i;
        v[i] = from_float<T>(kk < k ? static_cast<float>(stage[row * stage_row + kk]) : (kk < k + ones ? 1.0f : 0.0f));
      }
    }
    *reinterpret_cast<uint4*>(a + static_cast<int64_t>(first + row) * lda + k0) = *reinterpret_cast<const uint4*>(v);
  }
}

// ---- the position embedding broadcast for the cuBLAS path ---------------------------------------
// dst row m = src row (m % period), one warp per row in 16-byte vectors. ATen's copy of the expanded
// [N, T, C] view took its generic strided path: 0.10 ms for N=64 on the H100 (c6aacb5 profile), the
// largest cost after the GEMM, for 107 MB that a vectorized copy writes in ~0.04 ms.
__global__ void __launch_bounds__(256)
    broadcast_rows_kernel(const uint4* __restrict__ src, int32_t period, int32_t vecs_per_row, int64_t rows,
                          uint4* __restrict__ dst) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (m >= rows) return;
  const int32_t t = static_cast<int32_t>(m % period);
  const uint4* s = src + static_cast<int64_t>(t) * vecs_per_row;
  uint4* d = dst + m * vecs_per_row;
  for (int32_t v = threadIdx.x % 32; v < vecs_per_row; v += 32) d[v] = __ldg(s + v);
}

void launch_patch_embed(const PatchEmbedArgs& args, GemmType gemm, cudaStream_t stream) {
  if (args.rows == 0 || args.dim == 0) return;
  // grid.x over channels (9 tiles for C = 1152) so that consecutive blocks share their pixel rows
  // in L2; grid.y over token rows (M / 128 = 365 for N = 64; the y limit 65535 means M < 8.3M rows).
  switch (gemm) {
    case GemmType::kBFloat16:
    case GemmType::kFloat16: {
      const dim3 grid(blocks_for(args.dim, kBN), blocks_for(args.rows, kBM));
      if (gemm == GemmType::kBFloat16)
        mma_kernel<__nv_bfloat16><<<grid, kMmaThreads, 0, stream>>>(args);
      else
        mma_kernel<__half><<<grid, kMmaThreads, 0, stream>>>(args);
      break;
    }
    case GemmType::kFloat32:
    case GemmType::kFloat64: {
      const dim3 grid(blocks_for(args.dim, kSN), blocks_for(args.rows, kSM));
      if (gemm == GemmType::kFloat32)
        simt_kernel<float><<<grid, kSimtThreads, 0, stream>>>(args);
      else
        simt_kernel<double><<<grid, kSimtThreads, 0, stream>>>(args);
      break;
    }
  }
}

bool im2col_u8_applies(const void* pixels, PixelType pixel_type, const PatchGeometry& g, int64_t k) {
  const auto even = [](int64_t v) { return v % 2 == 0; };
  return pixel_type == PixelType::kUInt8 && g.outer == 1 && even(g.run) && even(g.middle_stride) &&
         even(g.image_stride) && even(g.row_stride) && even(g.col_stride) &&
         reinterpret_cast<uintptr_t>(pixels) % 2 == 0 && k == g.middle * g.run &&
         kIm2colRows * ((k + 7) / 8 * 8) <= 48 * 1024;
}

void launch_patch_im2col(const void* pixels, PixelType pixel_type, const PatchGeometry& geometry,
                         int64_t row0, int64_t rows, int64_t k, int64_t lda, int ones, GemmType gemm,
                         bool staged, void* a, cudaStream_t stream) {
  if (rows == 0) return;
  if (staged && im2col_u8_applies(pixels, pixel_type, geometry, k)) {
    const unsigned blocks = static_cast<unsigned>((rows + kIm2colRows - 1) / kIm2colRows);
    const size_t smem = static_cast<size_t>(kIm2colRows) * static_cast<size_t>((k + 7) / 8 * 8);
    const auto* u8 = static_cast<const uint8_t*>(pixels);
    if (gemm == GemmType::kBFloat16)
      im2col_u8_kernel<__nv_bfloat16><<<blocks, 256, smem, stream>>>(
          u8, geometry, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k), static_cast<int32_t>(lda), ones,
          static_cast<__nv_bfloat16*>(a));
    else
      im2col_u8_kernel<__half><<<blocks, 256, smem, stream>>>(
          u8, geometry, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k), static_cast<int32_t>(lda), ones,
          static_cast<__half*>(a));
    return;
  }
  const int64_t threads = rows * (lda / 8);
  const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
  if (gemm == GemmType::kBFloat16)
    im2col_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(
        pixels, pixel_type, geometry, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k),
        static_cast<int32_t>(lda), ones, static_cast<__nv_bfloat16*>(a));
  else
    im2col_kernel<__half><<<blocks, 256, 0, stream>>>(
        pixels, pixel_type, geometry, row0, static_cast<int32_t>(rows), static_cast<int32_t>(k),
        static_cast<int32_t>(lda), ones, static_cast<__half*>(a));
}

void launch_broadcast_rows(const void* src, int64_t period, int64_t row_bytes, int64_t rows, void* dst,
                           cudaStream_t stream) {
  if (rows == 0 || row_bytes == 0) return;
  const int64_t blocks = (rows + 7) / 8;  // 8 warps (rows) per block
  broadcast_rows_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      static_cast<const uint4*>(src), static_cast<int32_t>(period), static_cast<int32_t>(row_bytes / 16), rows,
      static_cast<uint4*>(dst));
}

}  // namespace cuda
}  // namespace interleave
