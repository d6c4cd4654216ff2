// CUDA kernels of anyres_tiles: the same Pillow arithmetic as the CPU kernel (coefficients come
// from the host, see csrc/common/resample.h), in two launches for a whole batch of jobs:
//   pass 1: the first resize pass of every job into a uint8 intermediate (only the rows the second
//           pass reads), one block per intermediate row, the source row staged in shared memory;
//   pass 2: the second pass, padding and tiling, one block per canvas row, one thread per pixel.
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../common/resample.h"
#include "anyres_tiles_kernels.h"
#include "dispatch.cuh"
#include "ptx_primitives.cuh"

namespace interleave {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The job owning flattened row `row` of a pass (jobs are few: a linear scan is enough).
__device__ __forceinline__ int find_job(const TileJobDevice* jobs, int num_jobs, int64_t row,
                                        bool second_pass) {
  int j = 0;
  while (j + 1 < num_jobs &&
         (second_pass ? jobs[j + 1].pass2_begin : jobs[j + 1].pass1_begin) <= row)
    ++j;
  return j;
}

// Pixel channel of the (virtual, padded) source canvas.
__device__ __forceinline__ int32_t source_px(const TileJobDevice& J, int64_t sy, int64_t sx, int c) {
  const int64_t y = sy - J.src_top, x = sx - J.src_left;
  if (y < 0 || y >= J.img_h || x < 0 || x >= J.img_w) return pad_channel(J.src_pad, c);
  return J.image[(y * J.img_w + x) * 3 + c];
}

// Pass 1, one block per intermediate row. Index math in 32 bits where it divides (a 64-bit
// division is a long software sequence on the GPU); each thread computes all three channels of a
// pixel, so a pixel's coefficients are read once, not three times. kStagedRow: the horizontal pass
// first copies its source canvas row into shared memory (one 32-bit word per pixel, the padding
// resolved once), then every tap is one shared-memory load; rows wider than the launcher's
// shared-memory limit take the direct path, which reads each tap from global memory (source_px).
// The intermediate (and pass 1's staged row) hold one 32-bit word per pixel, r | g << 8 | b << 16:
// one load or store per pixel instead of three byte accesses.
__device__ __forceinline__ uint32_t pack_rgb(uint32_t r, uint32_t g, uint32_t b) { return r | g << 8 | b << 16; }
__device__ __forceinline__ int32_t channel(uint32_t px, int c) { return static_cast<int32_t>((px >> (8 * c)) & 255u); }

// One output pixel of a resampling pass: `count` taps of packed pixels `step` words apart, weights
// k[0], k[kstep], ... (Pillow's fixed point), all three channels, clipped and packed again.
__device__ __forceinline__ uint32_t resample_px(const uint32_t* p, int64_t step, const int32_t* k, int64_t kstep,
                                                int32_t count) {
  int32_t a0 = kResampleHalf, a1 = kResampleHalf, a2 = kResampleHalf;
  // ~21 taps for 1920 -> 384: unrolled, the loop's own counter and pointer updates stop being a
  // third of the instructions of a tap (one load, one weight, three extracts, three multiply-adds).
#pragma unroll 4
  for (int32_t i = 0; i < count; ++i, p += step, k += kstep) {
    const int32_t w = *k;
    const uint32_t px = *p;
    a0 += channel(px, 0) * w;
    a1 += channel(px, 1) * w;
    a2 += channel(px, 2) * w;
  }
  return pack_rgb(resample_clip8(a0), resample_clip8(a1), resample_clip8(a2));
}

// ---- pass 1 on tensor cores (kMmaRows in anyres_tiles_kernels.h) --------------------------------
// The tensor-core primitives (il_prmt, il_hsub2, il_int2_to_half2, il_mma_f16_16816) are in
// ptx_primitives.cuh, shared with patch_embed's wgmma kernel and emulated by tests/emulate/cuda_emu.h.

// Staged words of the tensor-core path: r | g << 8 | b << 16 | 0x64 << 24. The top byte makes a
// prmt of two words' channel-c bytes, each beside a 0x64, two fp16 values 1024 + v (0x6400 is
// 1024, whose fp16 step is 1); one sub.f16x2 of 1024 then leaves v exactly.
constexpr uint32_t kHalfBias = 0x64000000u;
__device__ __forceinline__ uint32_t pixels_half2(uint32_t w0, uint32_t w1, uint32_t c) {
  return il_hsub2(il_prmt(w0, w1, c | 3u << 4 | (4u + c) << 8 | 7u << 12), 0x64006400u);
}

// Stages the source rows of intermediate rows [r0, r0 + 16) (rows from r_end on: the pad word;
// they feed no stored output), source pixels [cs, cs + stride), into staged[row * stride + x] in
// the tensor-core word format. Where the image's rows and the window start are 4-byte aligned
// (width a multiple of 4: 1920, 1080, ...), a thread reads 4 pixels as three 32-bit words, four
// rows at a time (48 bytes in flight per thread); other pixels (the image's edges, the padding of
// a pad-to-square canvas, unaligned images) are read byte by byte.
__device__ __forceinline__ uint32_t staged_source_px(const TileJobDevice& J, int32_t r, int32_t r_end, int32_t sx) {
  const int32_t y = static_cast<int32_t>(J.row_first + r - J.src_top), xi = sx - static_cast<int32_t>(J.src_left);
  if (r < r_end && y >= 0 && y < J.img_h && xi >= 0 && xi < J.img_w && sx < J.src_w) {
    const uint8_t* p = J.image + (static_cast<int64_t>(y) * J.img_w + xi) * 3;
    return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 | kHalfBias;
  }
  return static_cast<uint32_t>(J.src_pad) | kHalfBias;
}

__device__ __forceinline__ void mma_stage_rows(const TileJobDevice& J, uint32_t* staged, int32_t cs, int32_t stride,
                                               int32_t r0, int32_t r_end) {
  const int32_t img_w = static_cast<int32_t>(J.img_w), img_h = static_cast<int32_t>(J.img_h);
  const int32_t left = static_cast<int32_t>(J.src_left), top = static_cast<int32_t>(J.src_top);
  const bool words = img_w % 4 == 0 && ((cs - left) & 3) == 0 && (reinterpret_cast<uintptr_t>(J.image) & 3) == 0;
  if (words) {  // block-uniform; stride is a multiple of 4 (mma_stride: 8 mod 32)
    constexpr int kRows = 4;
    const uint32_t pad = static_cast<uint32_t>(J.src_pad) | kHalfBias;
    for (int32_t x = 4 * threadIdx.x; x < stride; x += 4 * blockDim.x) {
      const int32_t xi = cs + x - left;
      if (!(xi >= 0 && xi + 3 < img_w && cs + x + 3 < J.src_w)) {  // an edge: pixel by pixel
#pragma unroll 1
        for (int32_t i = 0; i < 4 * kMmaRows; ++i)
          staged[(i >> 2) * stride + x + (i & 3)] = staged_source_px(J, r0 + (i >> 2), r_end, cs + x + (i & 3));
        continue;
      }
      const uint8_t* col = J.image + static_cast<int64_t>(xi) * 3;
#pragma unroll 1
      for (int32_t rr = 0; rr < kMmaRows; rr += kRows) {
        uint32_t w[kRows][3];
#pragma unroll
        for (int u = 0; u < kRows; ++u) {
          const int32_t r = r0 + rr + u, y = static_cast<int32_t>(J.row_first) + r - top;
          const bool in = r < r_end && y >= 0 && y < img_h;
          const uint32_t* p = reinterpret_cast<const uint32_t*>(col + static_cast<int64_t>(in ? y : 0) * img_w * 3);
          w[u][0] = in ? p[0] : 0u;
          w[u][1] = in ? p[1] : 0u;
          w[u][2] = in ? p[2] : 0u;
        }
#pragma unroll
        for (int u = 0; u < kRows; ++u) {
          const int32_t r = r0 + rr + u, y = static_cast<int32_t>(J.row_first) + r - top;
          const bool in = r < r_end && y >= 0 && y < img_h;
          uint4 v{pad, pad, pad, pad};  // r g b r | g b r g | b r g b
          if (in) {
            v.x = (w[u][0] & 0xFFFFFFu) | kHalfBias;
            v.y = (w[u][0] >> 24 | (w[u][1] & 0xFFFFu) << 8) | kHalfBias;
            v.z = (w[u][1] >> 16 | (w[u][2] & 0xFFu) << 16) | kHalfBias;
            v.w = (w[u][2] >> 8) | kHalfBias;
          }
          *reinterpret_cast<uint4*>(staged + (rr + u) * stride + x) = v;  // x and stride: multiples of 4
        }
      }
    }
    return;
  }
  for (int32_t x = threadIdx.x; x < stride; x += blockDim.x) {
#pragma unroll 1  // both halves unrolled, 16 loads' addresses in flight spill at 80 registers
    for (int half = 0; half < 2; ++half) {
      uint32_t v[kMmaRows / 2];
#pragma unroll
      for (int u = 0; u < kMmaRows / 2; ++u) v[u] = staged_source_px(J, r0 + half * (kMmaRows / 2) + u, r_end, cs + x);
#pragma unroll
      for (int u = 0; u < kMmaRows / 2; ++u) staged[(half * (kMmaRows / 2) + u) * stride + x] = v[u];
    }
  }
}

// The horizontal pass of the 16 staged rows for outputs [x_begin, x_end) (at most kMmaChunk) on
// tensor cores, bit-equal to resample_px (see kMmaRows): each warp one group of 8 outputs at a
// time from x_begin on. sink(row in [0, 16), output x, packed pixel) for every output in range.
template <typename Sink>
__device__ __forceinline__ void mma_resample_rows(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                  const uint32_t* staged, int32_t cs, int32_t stride,
                                                  int32_t x_begin, int32_t x_end, Sink&& sink) {
  const int32_t mid_w = static_cast<int32_t>(J.mid_width), h_outputs = static_cast<int32_t>(J.h_outputs);
  const int32_t* first = coeffs + J.h_first;
  const int32_t* count = coeffs + J.h_count;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;  // fragment row group and thread-in-group
  for (int32_t x0 = x_begin + warp * 8; x0 < x_end; x0 += warps * 8) {
    // The group's window: from its first output's first pixel (rounded down to even) to its last
    // output's last pixel, in steps of 16 (warp-uniform).
    const int32_t xl = min(x0 + 7, mid_w - 1);
    const int32_t s = first[x0] & ~1, steps = (first[xl] + count[xl] - s + 15) >> 4;
    // This lane's B column: output x0 + g (none past the row's end: zero weights).
    const int32_t xn = x0 + g;
    const bool n_in = xn < mid_w;
    const int32_t fn = n_in ? first[xn] : 0, cn = n_in ? count[xn] : 0;
    const int32_t* kn = coeffs + J.h_weights + (n_in ? xn : 0);  // tap-major: tap i at kn[i * h_outputs]
    float acc[3][2][4] = {};  // [channel][high, low part][fragment element]
    const uint32_t* row_g = staged + g * stride + (s - cs) + 2 * t;  // A rows g and g + 8
#pragma unroll 1
    for (int32_t step = 0; step < steps; ++step) {
      // B: weights of source pixels s + 16 step + {2t, 2t + 1, 2t + 8, 2t + 9} for output xn, split.
      int32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int32_t i = s + step * 16 + 2 * t + (e & 1) + (e >> 1) * 8 - fn;
        w[e] = (i >= 0 && i < cn) ? kn[i * h_outputs] : 0;
      }
      const uint32_t b_hi[2] = {il_int2_to_half2(w[0] >> 11, w[1] >> 11), il_int2_to_half2(w[2] >> 11, w[3] >> 11)};
      const uint32_t b_lo[2] = {il_int2_to_half2(w[0] & 2047, w[1] & 2047), il_int2_to_half2(w[2] & 2047, w[3] & 2047)};
      // A: the staged words (two 8-byte loads per row), channel by channel.
      const uint32_t* p = row_g + step * 16;
      const uint2 g_lo = *reinterpret_cast<const uint2*>(p), g_hi = *reinterpret_cast<const uint2*>(p + 8);
      const uint2 g8_lo = *reinterpret_cast<const uint2*>(p + 8 * stride);
      const uint2 g8_hi = *reinterpret_cast<const uint2*>(p + 8 * stride + 8);
#pragma unroll
      for (uint32_t c = 0; c < 3; ++c) {
        const uint32_t a[4] = {pixels_half2(g_lo.x, g_lo.y, c), pixels_half2(g8_lo.x, g8_lo.y, c),
                               pixels_half2(g_hi.x, g_hi.y, c), pixels_half2(g8_hi.x, g8_hi.y, c)};
        il_mma_f16_16816(acc[c][0], a, b_hi);
        il_mma_f16_16816(acc[c][1], a, b_lo);
      }
    }
    // c0, c1: row g, outputs 2t, 2t + 1; c2, c3: row g + 8. Pillow's sum = hi * 2^11 + lo.
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int32_t row = g + (e >> 1) * 8, x = x0 + 2 * t + (e & 1);
      uint32_t ch[3];
#pragma unroll
      for (int c = 0; c < 3; ++c)
        ch[c] = resample_clip8(kResampleHalf + static_cast<int32_t>(acc[c][0][e]) * 2048 +
                               static_cast<int32_t>(acc[c][1][e]));
      if (x < x_end) sink(row, x, pack_rgb(ch[0], ch[1], ch[2]));
    }
  }
}

// One block of the tensor-core pass 1: intermediate rows [band * 16, +16) x outputs
// [chunk * 64, +64) of job J, into the global intermediate.
__device__ __forceinline__ void mma_pass1_block(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                uint8_t* __restrict__ mid, uint32_t* staged, int64_t block) {
  const int32_t band = static_cast<int32_t>(block / J.mma_chunks);
  const int32_t chunk = static_cast<int32_t>(block - static_cast<int64_t>(band) * J.mma_chunks);
  const int32_t r0 = band * kMmaRows, x_chunk = chunk * kMmaChunk;
  const int32_t mid_w = static_cast<int32_t>(J.mid_width), mid_rows = static_cast<int32_t>(J.mid_rows);
  const int32_t cs = coeffs[J.h_first + x_chunk] & ~3;  // source x of staged word 0 (mma_stride's rule)
  mma_stage_rows(J, staged, cs, J.mma_stride, r0, mid_rows);
  __syncthreads();
  uint32_t* dst = reinterpret_cast<uint32_t*>(mid + J.mid_offset);
  mma_resample_rows(J, coeffs, staged, cs, J.mma_stride, x_chunk, min(x_chunk + kMmaChunk, mid_w),
                    [&](int32_t row, int32_t x, uint32_t px) {
    if (r0 + row < mid_rows) dst[static_cast<int64_t>(r0 + row) * mid_w + x] = px;
  });
}

// ---- pass 1 on integer tensor cores (TileJobDevice::imma_pass1, kImmaBand) -----------------------
// Pillow's horizontal sum, sum_i w_i p_i in int32 with 22-bit fixed-point weights, as three
// byte-plane products on mma.m16n8k32 (uint8 pixels times weight bytes, int32 accumulation): with
// w = 2^16 hi + 2^8 mid + lo (hi = w >> 16 signed, mid and lo unsigned bytes), sum w p =
// 2^16 S_hi + 2^8 S_mid + S_lo, each plane's sum far inside int32 (imma_axis_ok) and the
// combination taken modulo 2^32, where Pillow's own int32 sum lies. The fp16 tensor-core pass above
// rebuilt its weight fragments from the tap table for every 16 rows (4 scattered loads and 8
// int->fp16 conversions per 16 pixels) and staged its source rows behind block barriers; here a warp
// owns one group of 8 outputs and keeps its weights in registers (B: 3 planes x 2 k-chunks x 2
// registers) for a whole band of kImmaBand rows, and per 16 rows loads each row's window straight
// from global memory as three aligned 32-bit words per 4 pixels (no shared memory, no barrier),
// takes a channel out of them with 2 byte permutes, and runs 18 MMAs (3 channels x 3 planes x 2
// k-chunks of 32 pixels). Its sm_90a SASS is ~280 instructions per warp per 16 rows x 8 outputs
// (about 80 of them loads and their addresses, 48 byte permutes, 18 MMAs, ~80 combining the planes),
// where the SIMT pass issues ~13 per row-tap per thread (~1100 warp instructions for the same 128
// outputs of 21 taps).

// Channel c (0 r, 1 g, 2 b) of 4 packed RGB pixels (12 bytes in w[0..2], memory order) as 4 bytes:
// bytes c, c + 3, c + 6, c + 9.
template <int C>
__device__ __forceinline__ uint32_t quad_channel(const uint32_t (&w)[3]) {
  constexpr uint32_t kFirst = C == 0 ? 0x0630u : C == 1 ? 0x0741u : 0x0052u;   // 2 or 3 bytes of w[0..1]
  constexpr uint32_t kSecond = C == 0 ? 0x5210u : C == 1 ? 0x6210u : 0x7410u;  // the rest from w[2]
  return il_prmt(il_prmt(w[0], w[1], kFirst), w[2], kSecond);
}

// 4 source canvas pixels from x = sx on (the padding resolved) as three words in memory order
// (r0 g0 b0 r1 | g1 b1 r2 g2 | b2 r3 g3 b3), byte by byte: the window's groups at the image's edges,
// in the padding, or of images whose rows are not 4-byte aligned (imma_pass1_block loads every
// other group as three aligned 32-bit words).
__device__ __forceinline__ void imma_load_quad_bytes(const TileJobDevice& J, const uint8_t* img_row, bool row_in,
                                                  int32_t sx, uint32_t (&w)[3]) {
  const int32_t xi = sx - static_cast<int32_t>(J.src_left), img_w = static_cast<int32_t>(J.img_w);
  w[0] = w[1] = w[2] = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t px = static_cast<uint32_t>(J.src_pad);
    if (row_in && xi + i >= 0 && xi + i < img_w) {
      const uint8_t* q = img_row + (xi + i) * 3;
      px = static_cast<uint32_t>(q[0]) | static_cast<uint32_t>(q[1]) << 8 | static_cast<uint32_t>(q[2]) << 16;
    }
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      const int byte = 3 * i + c;
      w[byte >> 2] |= ((px >> (8 * c)) & 255u) << (8 * (byte & 3));
    }
  }
}

// One output's weights as the byte planes of an m16n8k32 B fragment (this lane's column): the weight
// of tap j = window start + 32q + 16r + 4t + i (zero outside the output's taps) split into its
// signed high byte (bits 16-23; |w| < 2^23) and two unsigned bytes: register [q][r], byte i.
struct WeightPlanes {
  uint32_t hi[2][2], mid[2][2], lo[2][2];
};

// Output n's planes for lane t from a table made on the host (imma_horizontal_planes,
// imma_vertical_planes in anyres_tiles_batch.h: kImmaPlaneWords words per output, lane t's 12 at
// 12 t as [plane][q][r]): three 16-byte loads. Zero where !n_in (outputs past the group's end).
__device__ __forceinline__ WeightPlanes load_weight_planes(const int32_t* planes, int32_t n, bool n_in, int t) {
  WeightPlanes b = {};
  if (n_in) {
    const uint4* w = reinterpret_cast<const uint4*>(planes + static_cast<int64_t>(n) * kImmaPlaneWords) + 3 * t;
    const uint4 hi = __ldg(w), md = __ldg(w + 1), lo = __ldg(w + 2);
    b.hi[0][0] = hi.x; b.hi[0][1] = hi.y; b.hi[1][0] = hi.z; b.hi[1][1] = hi.w;
    b.mid[0][0] = md.x; b.mid[0][1] = md.y; b.mid[1][0] = md.z; b.mid[1][1] = md.w;
    b.lo[0][0] = lo.x; b.lo[0][1] = lo.y; b.lo[1][0] = lo.z; b.lo[1][1] = lo.w;
  }
  return b;
}

// The three planes' products for k-chunk q (3 MMAs), and Pillow's clipped byte from their sums:
// 2^16 hi + 2^8 mid + lo modulo 2^32, Pillow's rounding term 2^21 entering as kHalfHi * 2^16
// through the high plane's accumulator (PlaneSums' initial values).
constexpr int32_t kHalfHi = kResampleHalf >> 16;
static_assert(kHalfHi << 16 == kResampleHalf, "the rounding term is a multiple of 2^16");

struct PlaneSums {
  int32_t hi[4] = {kHalfHi, kHalfHi, kHalfHi, kHalfHi}, mid[4] = {0, 0, 0, 0}, lo[4] = {0, 0, 0, 0};
};

__device__ __forceinline__ void imma_planes(PlaneSums& acc, const uint32_t (&a)[4], const WeightPlanes& b, int q) {
  il_imma_u8s8_16832(acc.hi, a, b.hi[q]);
  il_imma_u8u8_16832(acc.mid, a, b.mid[q]);
  il_imma_u8u8_16832(acc.lo, a, b.lo[q]);
}

__device__ __forceinline__ uint32_t plane_sums_byte(const PlaneSums& acc, int e) {
  const uint32_t sum = static_cast<uint32_t>(acc.hi[e]) * 65536u + static_cast<uint32_t>(acc.mid[e]) * 256u +
                       static_cast<uint32_t>(acc.lo[e]);
  return static_cast<uint32_t>(resample_clip8(static_cast<int32_t>(sum)));
}

// The staged source of imma_group_rows (TileJobDevice::imma_stage): rows [lo, hi) of 16 source rows
// into buf (row i at i * kImmaStageRowBytes) as 16-byte cp.async copies, then one commit (a group
// per call, empty where no row is copied). Lane (half, chunk) copies chunk `chunk` (16 bytes of the
// window from its 16-byte-aligned start; `copies`: that chunk is below kImmaStageChunks and inside
// the image row) of rows half, half + 2, ...; `src` is that chunk in row `half` (never dereferenced
// for rows outside [lo, hi)). Rows outside the image or past the pass' end are not copied; their
// lanes take the pad colour instead.
__device__ __forceinline__ void imma_stage_rows(const uint8_t* src, uint32_t row_bytes, int32_t lo, int32_t hi,
                                                bool copies, int half, int chunk, uint8_t* buf) {
  uint8_t* dst = buf + half * kImmaStageRowBytes + 16 * chunk;
  const uint32_t two_rows = 2 * row_bytes;  // a 32-bit offset per copy: one 64-bit add, no multiply
  if (copies && lo == 0 && hi == 16) {  // every row (all but a pass' first and last steps)
#pragma unroll
    for (int k = 0; k < 8; ++k) il_cp_async16(dst + 2 * k * kImmaStageRowBytes, src + k * two_rows);
  } else if (copies) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int row = 2 * k + half;
      if (row >= lo && row < hi) il_cp_async16(dst + 2 * k * kImmaStageRowBytes, src + k * two_rows);
    }
  }
  il_cp_async_commit();
}

// The integer horizontal pass of intermediate rows [r_begin, r_end) for this warp's group of outputs
// [x0, x_end) (at most 8; imma_axis_ok checked that their taps lie in the kImmaWindow pixels from
// the group's window start), 16 rows per step: sink(r, x, packed pixel) for each of them.
// stage: this warp's kImmaStageWarpBytes of shared memory (16-byte aligned) for the staged source
// (J.imma_stage), or nullptr: A then comes straight from global memory, where each 32-bit load of
// the warp touches 8 rows' cache lines (8-16 L1 wavefronts for 128 bytes). Staged, the warp's rows
// arrive as coalesced 16-byte copies, the next step's in flight while this one computes, and the
// fragments come from shared memory (one wavefront per load: kImmaStageRowBytes).
template <typename Sink>
__device__ __forceinline__ void imma_group_rows(const TileJobDevice& J, const int32_t* __restrict__ coeffs, int32_t x0,
                                                int32_t x_end, int32_t r_begin, int32_t r_end, uint8_t* stage,
                                                Sink&& sink) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int32_t* first = coeffs + J.h_first;
  const int32_t left = static_cast<int32_t>(J.src_left);
  const int32_t s = static_cast<int32_t>(imma_window_start(first[x0], left));
  // B, once per warp: weights of output x0 + g (zero past the group's end) at source pixels
  // s + 32q + 16r + 4t + i, split into byte planes: register [q][r], byte i (made on the host:
  // imma_horizontal_planes).
  const int32_t xn = x0 + g;
  const WeightPlanes b = load_weight_planes(coeffs + J.h_planes, xn, xn < x_end, t);
  // This lane's four groups of 4 pixels per row start at s + 4t + 16m (m = 2q + upper k half), image
  // column xi0 + 16m. Where the image's rows are 4-byte aligned, a group wholly inside the image is
  // three aligned words (xi0 is a multiple of 4), at fixed offsets from one pointer per row; which
  // groups are is the same for every row.
  const int32_t img_w = static_cast<int32_t>(J.img_w), xi0 = s + 4 * t - left;
  const bool words = img_w % 4 == 0 && (reinterpret_cast<uintptr_t>(J.image) & 3) == 0;
  bool inside[4], all_inside = true;
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    inside[m] = words && xi0 + 16 * m >= 0 && xi0 + 16 * m + 3 < img_w;
    all_inside = all_inside && inside[m];
  }
  const int32_t img_h = static_cast<int32_t>(J.img_h), top = static_cast<int32_t>(J.src_top);
  const int64_t row_bytes = J.img_w * 3;
  // Staged where the whole window lies inside the image (warp-uniform): lane t's groups m then sit
  // at bytes delta + 12 t + 48 m of a staged row.
  const int32_t xw = s - left;  // the window's first pixel in the image (a multiple of 4)
  const bool staged = stage != nullptr && xw >= 0 && xw + kImmaWindow <= img_w;
  const int64_t a0 = (static_cast<int64_t>(xw) * 3) & ~int64_t{15};
  const int32_t delta = static_cast<int32_t>(static_cast<int64_t>(xw) * 3 - a0);
  // Source row of intermediate row r: y = r + dy. Staged copies (imma_stage_rows): this lane's chunk
  // and row parity, and whether its chunk is one to copy (the window lies inside the image, so the
  // chunks past the row's end hold none of its bytes).
  const int32_t dy = static_cast<int32_t>(J.row_first) - top;
  const int half = lane >> 4, chunk = lane & 15;
  const bool copies = chunk < kImmaStageChunks && a0 + 16 * chunk + 16 <= row_bytes;
  const uint8_t* image = J.image;
  // The copies of the 16 rows from r0: rows [lo, hi) of them are in the image and before r_end.
  const auto stage_step = [&](int32_t r0, uint8_t* buf) {
    const int32_t y0 = r0 + dy;
    imma_stage_rows(image + (static_cast<int64_t>(y0) + half) * row_bytes + a0 + 16 * chunk,
                    static_cast<uint32_t>(row_bytes), max(0, -y0), min(min(16, img_h - y0), r_end - r0), copies, half,
                    chunk, buf);
  };
  // The loop twice (staged or not: a warp-uniform choice), so that neither carries the other's
  // registers (one loop with both: 128 registers and a spill at the 2-blocks-per-SM bound).
  const auto rows_loop = [&](auto staged_tag) {
    constexpr bool kStaged = decltype(staged_tag)::value;
    if constexpr (kStaged) stage_step(r_begin, stage);
    for (int32_t r0 = r_begin, step = 0; r0 < r_end; r0 += 16, ++step) {
      // A: rows r0 + g (h = 0) and r0 + g + 8 (h = 1); rows outside the image or past r_end take
      // the pad colour (the latter are never stored).
      uint32_t raw[2][4][3];
      if constexpr (kStaged) {
        // The next step's rows into the other buffer once every lane has read it (the step
        // before); then this step's (the older group) have landed, for every lane after the warp
        // barrier.
        const uint8_t* cur = stage + (step & 1) * 16 * kImmaStageRowBytes;
        __syncwarp();
        if (r0 + 16 < r_end)
          stage_step(r0 + 16, stage + ((step + 1) & 1) * 16 * kImmaStageRowBytes);
        else
          il_cp_async_commit();  // an empty group: wait_group<1> below still means this step's
        il_cp_async_wait_group<1>();
        __syncwarp();
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int32_t r = r0 + g + 8 * h, y = r + dy;
          if (r < r_end && y >= 0 && y < img_h) {
            const uint32_t* p =
                reinterpret_cast<const uint32_t*>(cur + (g + 8 * h) * kImmaStageRowBytes + delta + 12 * t);
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
              for (int i = 0; i < 3; ++i) raw[h][m][i] = p[12 * m + i];
          } else {
#pragma unroll
            for (int m = 0; m < 4; ++m) imma_load_quad_bytes(J, image, false, s + 4 * t + 16 * m, raw[h][m]);
          }
        }
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int32_t r = r0 + g + 8 * h, y = r + dy;
          const bool row_in = r < r_end && y >= 0 && y < img_h;
          const uint8_t* img_row = image + (row_in ? y : 0) * row_bytes;
          // group m's words at p + 12m (only dereferenced where inside[m])
          const uint32_t* p = reinterpret_cast<const uint32_t*>(img_row + static_cast<int64_t>(xi0) * 3);
          if (row_in && all_inside) {
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
              for (int i = 0; i < 3; ++i) raw[h][m][i] = __ldg(p + 12 * m + i);
          } else {
#pragma unroll
            for (int m = 0; m < 4; ++m) {
              if (row_in && inside[m]) {
#pragma unroll
                for (int i = 0; i < 3; ++i) raw[h][m][i] = __ldg(p + 12 * m + i);
              } else {
                imma_load_quad_bytes(J, img_row, row_in, s + 4 * t + 16 * m, raw[h][m]);
              }
            }
          }
        }
      }
      uint32_t px[4] = {0u, 0u, 0u, 0u};  // c0, c1: row g, outputs 2t, 2t + 1; c2, c3: row g + 8
      const auto channel_pass = [&](auto channel_tag) {
        constexpr int C = decltype(channel_tag)::value;
        PlaneSums acc;
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const uint32_t a[4] = {quad_channel<C>(raw[0][2 * q]), quad_channel<C>(raw[1][2 * q]),
                                 quad_channel<C>(raw[0][2 * q + 1]), quad_channel<C>(raw[1][2 * q + 1])};
          imma_planes(acc, a, b, q);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) px[e] |= plane_sums_byte(acc, e) << (8 * C);
      };
      channel_pass(std::integral_constant<int, 0>{});
      channel_pass(std::integral_constant<int, 1>{});
      channel_pass(std::integral_constant<int, 2>{});
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int32_t r = r0 + g + 8 * (e >> 1), x = x0 + 2 * t + (e & 1);
        if (r < r_end && x < x_end) sink(r, x, px[e]);
      }
    }
  };
  if (staged)
    rows_loop(std::true_type{});
  else
    rows_loop(std::false_type{});
}

// This warp's stage buffers (the first kImmaStageBlockBytes of the launch's shared memory) where
// job J stages its source rows, else nullptr.
__device__ __forceinline__ uint8_t* imma_warp_stage(const TileJobDevice& J, uint8_t* smem) {
  return J.imma_stage ? smem + (threadIdx.x >> 5) * kImmaStageWarpBytes : nullptr;
}

// One block: intermediate rows [band * kImmaBand, +kImmaBand) x outputs [chunk * 64, +64) of job J,
// into the global intermediate; warp w takes the 8 outputs from chunk * 64 + 8w.
__device__ __forceinline__ void imma_pass1_block(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                 uint8_t* __restrict__ mid, uint8_t* smem, int64_t block) {
  const int32_t band = static_cast<int32_t>(block / J.mma_chunks);
  const int32_t chunk = static_cast<int32_t>(block - static_cast<int64_t>(band) * J.mma_chunks);
  const int32_t mid_w = static_cast<int32_t>(J.mid_width), mid_rows = static_cast<int32_t>(J.mid_rows);
  const int32_t x0 = chunk * kMmaChunk + (threadIdx.x >> 5) * 8;
  if (x0 >= mid_w) return;  // warp-uniform; this path has no block barrier
  const int32_t r_begin = band * kImmaBand, r_end = min(r_begin + kImmaBand, mid_rows);
  uint32_t* dst = reinterpret_cast<uint32_t*>(mid + J.mid_offset);
  imma_group_rows(J, coeffs, x0, min(x0 + 8, mid_w), r_begin, r_end, imma_warp_stage(J, smem),
                  [&](int32_t r, int32_t x, uint32_t px) { dst[static_cast<int64_t>(r) * mid_w + x] = px; });
}

// The output element types of a launch: uint8 tiles without a lut, else its entries' bit patterns
// (uint32 for float32, uint16 for bfloat16/float16). Calls f(Out{}).
template <typename F>
__device__ __forceinline__ void with_out_type(const void* lut, int lut_bytes, F&& f) {
  if (lut == nullptr) f(uint8_t{});
  else if (lut_bytes == 4) f(uint32_t{});
  else f(uint16_t{});
}

// One pixel's three channels at o[0], o[plane], o[2 * plane]: the bytes themselves (uint8 tiles,
// plane 1: interleaved) or their lut entries (one plane per channel).
template <typename Out>
__device__ __forceinline__ void put_px(Out* o, int64_t plane, const Out* lut, uint32_t px) {
  const uint32_t v0 = channel(px, 0), v1 = channel(px, 1), v2 = channel(px, 2);
  if constexpr (std::is_same_v<Out, uint8_t>) {
    o[0] = static_cast<uint8_t>(v0); o[plane] = static_cast<uint8_t>(v1); o[2 * plane] = static_cast<uint8_t>(v2);
  } else {
    o[0] = lut[v0]; o[plane] = lut[256 + v1]; o[2 * plane] = lut[512 + v2];
  }
}

// Pixel (y, x) of a job's canvas into its tile: uint8 [P, T, T, 3], or [P, 3, T, T] lut entries.
template <typename Out>
__device__ __forceinline__ void store_canvas_px(const TileJobDevice& J, Out* out, const Out* lut, int32_t tile,
                                                int32_t y, int32_t x, uint32_t px) {
  const int32_t cols = static_cast<int32_t>(J.canvas_w) / tile;
  const int32_t ty = y / tile, tx = x / tile, iy = y - ty * tile, ix = x - tx * tile;
  const int64_t t = J.first_tile + static_cast<int64_t>(ty) * cols + tx;
  if constexpr (std::is_same_v<Out, uint8_t>) {
    put_px(out + ((t * tile + iy) * tile + ix) * 3, 1, lut, px);
  } else {
    const int64_t plane = static_cast<int64_t>(tile) * tile;
    put_px(out + t * 3 * plane + static_cast<int64_t>(iy) * tile + ix, plane, lut, px);
  }
}

// The part of a job's canvas that one block of a fused job (TileJobDevice::fused: both passes in
// one block, no intermediate in global memory) covers: canvas rows [cy0, cy1) x columns
// [cx0, cx0 + 64), of which resized rows [ya, yb) x columns [xa, xb) (block-uniform; maybe none),
// which read intermediate rows [m_lo, m_hi).
struct FusedBlock {
  int32_t cy0, cy1, cx0, ya, yb, xa, xb, m_lo, m_hi;
  bool resized;
};

__device__ __forceinline__ FusedBlock fused_block_extent(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                         int64_t block) {
  FusedBlock f;
  const int32_t band = static_cast<int32_t>(block / J.mma_chunks);
  const int32_t chunk = static_cast<int32_t>(block - static_cast<int64_t>(band) * J.mma_chunks);
  f.cy0 = band * J.fused_band;
  f.cx0 = chunk * kMmaChunk;
  f.cy1 = min(f.cy0 + J.fused_band, static_cast<int32_t>(J.canvas_h));
  const int32_t top = static_cast<int32_t>(J.dst_top), left = static_cast<int32_t>(J.dst_left);
  const int32_t* v_first = coeffs + J.v_first;
  const int32_t* v_count = coeffs + J.v_count;
  f.ya = max(f.cy0 - top, 0);
  f.yb = min(f.cy1 - top, static_cast<int32_t>(J.resize_h));
  f.xa = max(f.cx0 - left, 0);
  f.xb = min(f.cx0 + kMmaChunk - left, static_cast<int32_t>(J.resize_w));
  f.resized = f.ya < f.yb && f.xa < f.xb;
  // Both ends of a resized row's vertical taps are monotone in y.
  const int32_t row_first = static_cast<int32_t>(J.row_first);
  f.m_lo = f.resized ? v_first[f.ya] - row_first : 0;
  f.m_hi = f.resized ? v_first[f.yb - 1] + v_count[f.yb - 1] - row_first : 0;
  return f;
}

// A fused block's pixels into its tiles: pixels(put) calls put(canvas row - cy0, canvas column - cx0,
// packed pixel) for each pixel this thread holds in registers (rows past the band's end and columns
// past the canvas' are skipped). Tiles that are not a multiple of 64 wide (a chunk may cross tiles):
// each thread stores its pixels. Otherwise the block's 64 columns are 16-byte aligned runs of one
// tile's rows: after a barrier (obuf may overlap the shared memory the pixels were computed from)
// they go to obuf in the output's layout (uint8: [row][64 pixels x 3]; lut: [channel][row][64]),
// then the block writes obuf with 16-byte stores.
template <typename Pixels>
__device__ __forceinline__ void fused_block_write(const TileJobDevice& J, const FusedBlock& f, uint8_t* obuf,
                                                  void* out, const void* lut, int lut_bytes, int32_t tile,
                                                  Pixels&& pixels) {
  const int32_t cy0 = f.cy0, cx0 = f.cx0, rows = f.cy1 - f.cy0, canvas_w = static_cast<int32_t>(J.canvas_w);
  if (tile % kMmaChunk != 0) {
    with_out_type(lut, lut_bytes, [&](auto tag) {
      using Out = decltype(tag);
      pixels([&](int32_t row, int32_t xx, uint32_t px) {
        if (row < rows && cx0 + xx < canvas_w)
          store_canvas_px(J, static_cast<Out*>(out), static_cast<const Out*>(lut), tile, cy0 + row, cx0 + xx, px);
      });
    });
    return;
  }
  __syncthreads();
  const int32_t cols = canvas_w / tile, tx = cx0 / tile, ix0 = cx0 - tx * tile;
  with_out_type(lut, lut_bytes, [&](auto tag) {
    using Out = decltype(tag);
    constexpr bool kBytes = std::is_same_v<Out, uint8_t>;
    pixels([&](int32_t row, int32_t xx, uint32_t px) {
      if (row < rows)
        put_px(reinterpret_cast<Out*>(obuf) + (row * kMmaChunk + xx) * (kBytes ? 3 : 1), kBytes ? 1 : rows * kMmaChunk,
               static_cast<const Out*>(lut), px);
    });
  });
  __syncthreads();
  const int64_t plane = static_cast<int64_t>(tile) * tile;
  if (lut == nullptr) {
    const int32_t per_row = kMmaChunk * 3 / 16;  // 16-byte vectors of one output row's run
    for (int32_t i = threadIdx.x; i < rows * per_row; i += blockDim.x) {
      const int32_t row = i / per_row, v = i - row * per_row, y = cy0 + row, ty = y / tile, iy = y - ty * tile;
      const int64_t t = J.first_tile + static_cast<int64_t>(ty) * cols + tx;
      reinterpret_cast<uint4*>(static_cast<uint8_t*>(out) + ((t * tile + iy) * tile + ix0) * 3)[v] =
          reinterpret_cast<const uint4*>(obuf + row * kMmaChunk * 3)[v];
    }
  } else {
    const int32_t per_row = kMmaChunk * lut_bytes / 16;
    for (int32_t i = threadIdx.x; i < 3 * rows * per_row; i += blockDim.x) {
      const int32_t cr = i / per_row, v = i - cr * per_row, c = cr / rows, row = cr - c * rows;
      const int32_t y = cy0 + row, ty = y / tile, iy = y - ty * tile;
      const int64_t t = J.first_tile + static_cast<int64_t>(ty) * cols + tx;
      const int64_t at = (t * 3 + c) * plane + static_cast<int64_t>(iy) * tile + ix0;  // in entries
      reinterpret_cast<uint4*>(static_cast<uint8_t*>(out) + at * lut_bytes)[v] =
          reinterpret_cast<const uint4*>(obuf + (c * rows + row) * kMmaChunk * lut_bytes)[v];
    }
  }
}

// The rest of a fused block, once buf holds intermediate rows [f.m_lo, f.m_hi) x the block's 64
// canvas columns (word (m - m_lo) * 64 + canvas column - cx0) and the block has synchronized: each
// thread takes canvas pixels (the vertical pass over buf, or the pad colour outside the resized
// image), and the block stores them into the tiles, through obuf (shared memory that may overlap
// buf: it is written only after a barrier).
// kMaxBand: the most canvas rows a block of this path takes (kFusedRows, kImmaFusedRows).
template <int kMaxBand>
__device__ __forceinline__ void fused_block_store(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                  const FusedBlock& f, const uint32_t* buf, uint8_t* obuf,
                                                  void* out, const void* lut, int lut_bytes, int32_t tile) {
  const int32_t cy0 = f.cy0, cy1 = f.cy1, cx0 = f.cx0, ya = f.ya, yb = f.yb, xa = f.xa, xb = f.xb, m_lo = f.m_lo;
  const int32_t top = static_cast<int32_t>(J.dst_top), left = static_cast<int32_t>(J.dst_left);
  const int32_t row_first = static_cast<int32_t>(J.row_first);
  const int32_t* v_first = coeffs + J.v_first;
  const int32_t* v_count = coeffs + J.v_count;
  const uint32_t pad = static_cast<uint32_t>(J.dst_pad);
  // Canvas pixel (cy, cx0 + xx): resized, from buf, or the pad colour.
  auto canvas_px = [&](int32_t cy, int32_t xx) -> uint32_t {
    const int32_t y = cy - top, x = cx0 + xx - left;
    if (!(y >= ya && y < yb && x >= xa && x < xb)) return pad;
    return resample_px(buf + (v_first[y] - row_first - m_lo) * kMmaChunk + xx, kMmaChunk,
                       coeffs + J.v_weights + static_cast<int64_t>(y) * J.v_ksize, 1, v_count[y]);
  };
  // Each thread's pixels (kFusedPx, in registers), then fused_block_write.
  constexpr int kFusedPx = kMaxBand * kMmaChunk / kMmaThreads;
  uint32_t px[kFusedPx];
#pragma unroll
  for (int k = 0; k < kFusedPx; ++k) {
    const int32_t i = threadIdx.x + k * kMmaThreads, cy = cy0 + i / kMmaChunk;
    px[k] = cy < cy1 ? canvas_px(cy, i % kMmaChunk) : 0u;
  }
  fused_block_write(J, f, obuf, out, lut, lut_bytes, tile, [&](auto&& put) {
#pragma unroll
    for (int k = 0; k < kFusedPx; ++k) {
      const int32_t i = threadIdx.x + k * kMmaThreads;
      put(i / kMmaChunk, i % kMmaChunk, px[k]);
    }
  });
}

// One block of a fused fp16 tensor-core job: the intermediate rows that the resized pixels of
// the block read are made 16 at a time on tensor cores into shared memory (after the staged
// source: fused_rows x kMmaChunk words, column = canvas column - chunk * 64), then
// fused_block_store.
__device__ __forceinline__ void fused_block(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                            uint32_t* staged, int64_t block, void* out, const void* lut,
                                            int lut_bytes, int32_t tile) {
  const FusedBlock f = fused_block_extent(J, coeffs, block);
  const int32_t left = static_cast<int32_t>(J.dst_left), m_lo = f.m_lo, m_hi = f.m_hi, cx0 = f.cx0;
  const int32_t stride = J.mma_stride;
  uint32_t* buf = staged + kMmaRows * stride;  // [m_hi - m_lo <= fused_rows][kMmaChunk]
  if (f.resized) {
    const int32_t cs = coeffs[J.h_first + f.xa] & ~3;
    for (int32_t sub = 0; sub < m_hi - m_lo; sub += kMmaRows) {
      mma_stage_rows(J, staged, cs, stride, m_lo + sub, m_hi);
      __syncthreads();
      mma_resample_rows(J, coeffs, staged, cs, stride, f.xa, f.xb, [&](int32_t row, int32_t x, uint32_t px) {
        if (sub + row < m_hi - m_lo) buf[(sub + row) * kMmaChunk + (x + left - cx0)] = px;
      });
      __syncthreads();  // the next round restages the source rows; the last one publishes buf
    }
  }
  fused_block_store<kFusedRows>(J, coeffs, f, buf, reinterpret_cast<uint8_t*>(staged), out, lut, lut_bytes, tile);
}

// The vertical pass of a fused integer block on integer tensor cores, as the transposed product
// out^T = I^T W^T per channel: A = the intermediate, 16 canvas columns x 32 intermediate rows
// (column-major bytes in shared memory: a fragment register is one word, 4 consecutive rows of one
// column), B = the vertical weights' byte planes for 8 output rows (the same split as pass 1's:
// signed high byte, two unsigned ones), two k-chunks of 32 rows from the row tile's window start
// (its first resized row's first tap, rounded down to 4; imma_vertical_stride checked that the
// tile's taps lie within 64 rows of it). Warp w takes the column tile [16 (w & 3), +16) and the
// row tiles (w >> 2) + 2u of 8 canvas rows; px[u][e] gets the canvas pixel at row 8 rt + 2t + (e & 1)
// (from cy0) and column 16 ct + g + 8 (e >> 1): resized, or the pad colour. Per row tile: 3 16-byte
// weight loads (the B fragments, made on the host), 24 shared-memory loads, 18 MMAs, where
// the SIMT pass takes ~130 instructions per pixel.
constexpr int kImmaRowTiles = kImmaFusedRows / 8 / 2;  // row tiles per warp, at most

__device__ __forceinline__ void imma_vertical_pixels(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                     const FusedBlock& f, const uint8_t* cm,
                                                     uint32_t (&px)[kImmaRowTiles][4]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int32_t vstride = J.imma_vstride, ct = warp & 3;
  const int32_t top = static_cast<int32_t>(J.dst_top), left = static_cast<int32_t>(J.dst_left);
  const int32_t row_first = static_cast<int32_t>(J.row_first), m_lo = f.m_lo;
  const int32_t* v_first = coeffs + J.v_first;
  const uint32_t pad = static_cast<uint32_t>(J.dst_pad);
  // This lane's two A columns (g and g + 8 of the column tile) and whether they are resized.
  const int32_t xx0 = 16 * ct + g;
  const bool x_in[2] = {f.cx0 + xx0 - left >= f.xa && f.cx0 + xx0 - left < f.xb,
                        f.cx0 + xx0 + 8 - left >= f.xa && f.cx0 + xx0 + 8 - left < f.xb};
#pragma unroll
  for (int u = 0; u < kImmaRowTiles; ++u) {
#pragma unroll
    for (int e = 0; e < 4; ++e) px[u][e] = pad;
    const int32_t rt = (warp >> 2) + 2 * u, cy = f.cy0 + 8 * rt;  // the row tile's first canvas row
    const int32_t y_lo = max(cy - top, f.ya), y_hi = min(cy + 8 - top, f.yb);  // its resized rows
    if (!f.resized || y_lo >= y_hi) continue;  // warp-uniform
    const int32_t kbase = (v_first[y_lo] - row_first - m_lo) & ~3;
    // B: the weights of output row yn = cy - top + g (none outside [y_lo, y_hi)) at intermediate row
    // kbase + 32q + 16r + 4t + i (from m_lo), byte planes: register [q][r], byte i; made on the host
    // (imma_vertical_planes: words [t][plane][q][r] per row), three 16-byte loads.
    const int32_t yn = cy - top + g;
    const WeightPlanes b = load_weight_planes(coeffs + J.v_planes, yn, yn >= y_lo && yn < y_hi, t);
    // A: words of columns xx0 (rows g of the fragment) and xx0 + 8 (rows g + 8) at k = kbase + 4t
    // (+16, +32, +48), channel c's plane at c * 64 * vstride.
    const uint8_t* col_g = cm + xx0 * vstride + kbase + 4 * t;
    const int32_t col8 = 8 * vstride;
    uint32_t out[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      PlaneSums acc;
      const uint8_t* p = col_g + c * kMmaChunk * vstride;
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(p + 32 * q),
                               *reinterpret_cast<const uint32_t*>(p + col8 + 32 * q),
                               *reinterpret_cast<const uint32_t*>(p + 32 * q + 16),
                               *reinterpret_cast<const uint32_t*>(p + col8 + 32 * q + 16)};
        imma_planes(acc, a, b, q);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) out[e] |= plane_sums_byte(acc, e) << (8 * c);
    }
    // Element e: column xx0 + 8 (e >> 1), output row cy - top + 2t + (e & 1).
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int32_t y = cy - top + 2 * t + (e & 1);
      if (x_in[e >> 1] && y >= y_lo && y < y_hi) px[u][e] = out[e];
    }
  }
}

// One block of a fused integer tensor-core job: warp w makes the block's intermediate rows for the
// resized columns [xa + 8w, +8) (imma_group_rows, straight from global memory) into shared memory,
// then the vertical pass: on integer tensor cores from a column-major copy (J.imma_vstride > 0:
// imma_vertical_pixels), else SIMT from a row-major one (fused_rows x kMmaChunk words, column =
// canvas column - chunk * 64; fused_block_store). imma_axis_ok(.., dst_left, canvas_w) checked the
// windows of exactly these groups.
__device__ __forceinline__ void imma_fused_block(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                 uint8_t* shared, int64_t block, void* out, const void* lut,
                                                 int lut_bytes, int32_t tile) {
  const FusedBlock f = fused_block_extent(J, coeffs, block);
  const int32_t x0 = f.xa + (threadIdx.x >> 5) * 8, col = static_cast<int32_t>(J.dst_left) - f.cx0, m_lo = f.m_lo;
  const int32_t vstride = J.imma_vstride;  // job-uniform
  uint8_t* stage = imma_warp_stage(J, shared);
  // The intermediate (and later the output staging) after the stage buffers, where there are any.
  uint8_t* cm = shared + (J.imma_stage ? kImmaStageBlockBytes : 0);
  uint32_t* smem = reinterpret_cast<uint32_t*>(cm);
  if (f.resized && x0 < f.xb) {  // warp-uniform
    if (vstride > 0) {
      const int32_t plane = kMmaChunk * vstride;
      imma_group_rows(J, coeffs, x0, min(x0 + 8, f.xb), m_lo, f.m_hi, stage, [&](int32_t r, int32_t x, uint32_t px) {
        uint8_t* p = cm + (x + col) * vstride + (r - m_lo);
        p[0] = static_cast<uint8_t>(px);
        p[plane] = static_cast<uint8_t>(px >> 8);
        p[2 * plane] = static_cast<uint8_t>(px >> 16);
      });
    } else {
      imma_group_rows(J, coeffs, x0, min(x0 + 8, f.xb), m_lo, f.m_hi, stage,
                      [&](int32_t r, int32_t x, uint32_t px) { smem[(r - m_lo) * kMmaChunk + x + col] = px; });
    }
  }
  __syncthreads();  // publishes the intermediate rows
  if (vstride == 0) {
    fused_block_store<kImmaFusedRows>(J, coeffs, f, smem, cm, out, lut, lut_bytes, tile);
    return;
  }
  uint32_t px[kImmaRowTiles][4];
  imma_vertical_pixels(J, coeffs, f, cm, px);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t xx0 = 16 * (warp & 3) + (lane >> 2), r0 = 8 * (warp >> 2) + 2 * (lane & 3);
  auto each_px = [&](auto&& put) {  // (canvas row - cy0, canvas column - cx0, pixel) of px
#pragma unroll
    for (int u = 0; u < kImmaRowTiles; ++u)
#pragma unroll
      for (int e = 0; e < 4; ++e) put(r0 + 16 * u + (e & 1), xx0 + 8 * (e >> 1), px[u][e]);
  };
  fused_block_write(J, f, cm, out, lut, lut_bytes, tile, each_px);
}

// Copies source canvas row sy (J.src_w pixels; the padding resolved) into staged as one 32-bit word
// per pixel (r | g << 8 | b << 16, the packing of src_pad): a tap is then one shared-memory load
// instead of three byte loads. The caller synchronizes.
__device__ __forceinline__ void stage_source_row(const TileJobDevice& J, int64_t sy, uint32_t* staged) {
  const int64_t y = sy - J.src_top;
  const bool row_in = y >= 0 && y < J.img_h;
  const uint8_t* img_row = J.image + (row_in ? y : 0) * J.img_w * 3;
  const int32_t left = static_cast<int32_t>(J.src_left), img_w = static_cast<int32_t>(J.img_w);
  const int32_t n = static_cast<int32_t>(J.src_w);
  // kStageUnroll pixels per thread per round, all loads issued before any store: one pixel at a
  // time, a block had ~1 KB of loads in flight and pass 1 read its 99.5 MB (16 1080p frames) at
  // ~0.56 TB/s on the H100 (c6aacb5 profile), latency-bound.
  constexpr int kStageUnroll = 8;
  for (int32_t x0 = threadIdx.x; x0 < n; x0 += blockDim.x * kStageUnroll) {
    uint32_t v[kStageUnroll];
#pragma unroll
    for (int u = 0; u < kStageUnroll; ++u) {
      const int32_t x = x0 + u * static_cast<int32_t>(blockDim.x), xi = x - left;
      v[u] = static_cast<uint32_t>(J.src_pad);
      if (x < n && row_in && xi >= 0 && xi < img_w) {
        const uint8_t* p = img_row + xi * 3;
        v[u] = static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16;
      }
    }
#pragma unroll
    for (int u = 0; u < kStageUnroll; ++u) {
      const int32_t x = x0 + u * static_cast<int32_t>(blockDim.x);
      if (x < n) staged[x] = v[u];
    }
  }
}

// Pass 1's SIMT horizontal pass over kSimtRows intermediate rows per block
// (TileJobDevice::rows_per_block): the rows are staged one after another, then each thread computes
// its output x for every row, so a tap's weight (a global load and a 64-bit pointer step) serves
// kSimtRows rows instead of one, and the channels come out of a staged word with one byte permute
// each. The one-row loop is 52 SASS instructions per 4 taps (12 of them multiply-adds): in the
// 12ae393 H100 profile pass 1 was issue-bound (70% of issue slots). `block`: the job's block index.
__device__ __forceinline__ int32_t channel_prmt(uint32_t px, uint32_t c) {
  return static_cast<int32_t>(il_prmt(px, 0u, 0x4440u | c));  // byte c, zero-extended
}

__device__ __forceinline__ void simt_rows_block(const TileJobDevice& J, const int32_t* __restrict__ coeffs,
                                                uint8_t* __restrict__ mid, uint32_t* staged, int64_t block) {
  const int32_t r0 = static_cast<int32_t>(block * kSimtRows);
  const int32_t rows = static_cast<int32_t>(min(static_cast<int64_t>(kSimtRows), J.mid_rows - r0));
  const int32_t n = static_cast<int32_t>(J.src_w);
  for (int i = 0; i < rows; ++i) stage_source_row(J, J.row_first + r0 + i, staged + i * n);
  __syncthreads();
  const int32_t mid_w = static_cast<int32_t>(J.mid_width);
  uint32_t* dst = reinterpret_cast<uint32_t*>(mid + J.mid_offset) + static_cast<int64_t>(r0) * mid_w;
  for (int32_t xx = threadIdx.x; xx < mid_w; xx += blockDim.x) {
    const int32_t first = coeffs[J.h_first + xx], count = coeffs[J.h_count + xx];
    const int32_t* k = coeffs + J.h_weights + xx;  // tap-major: tap t at k[t * h_outputs]
    int32_t acc[kSimtRows][3];
#pragma unroll
    for (int i = 0; i < kSimtRows; ++i) acc[i][0] = acc[i][1] = acc[i][2] = kResampleHalf;
    const uint32_t* p = staged + first;
    // Rows past `rows` (the job's last block) read the staged words of earlier launches' or rows'
    // leftovers: inside the buffer, never stored.
#pragma unroll 2
    for (int32_t t = 0; t < count; ++t, k += J.h_outputs) {
      const int32_t w = *k;
#pragma unroll
      for (int i = 0; i < kSimtRows; ++i) {
        const uint32_t px = p[i * n + t];
        acc[i][0] += static_cast<int32_t>(px & 255u) * w;
        acc[i][1] += channel_prmt(px, 1) * w;
        acc[i][2] += channel_prmt(px, 2) * w;
      }
    }
#pragma unroll
    for (int i = 0; i < kSimtRows; ++i)
      if (i < rows)
        dst[static_cast<int64_t>(i) * mid_w + xx] =
            pack_rgb(resample_clip8(acc[i][0]), resample_clip8(acc[i][1]), resample_clip8(acc[i][2]));
  }
}

// kTensorPath: kMmaPath when some job of the launch takes the fp16 tensor-core path (J.mma_pass1,
// J.fused), kImmaPath when some takes the integer one (J.imma_pass1; plan_tile_batch never mixes
// the two); separate instantiations, so that launches without them keep the SIMT path's smaller
// register budget and each tensor-core path its own.
constexpr int kSimtPath = 0, kMmaPath = 1, kImmaPath = 2;
template <bool kStagedRow, int kTensorPath = kSimtPath>
__global__ void __launch_bounds__(kThreads, kTensorPath == kMmaPath ? 3 : kTensorPath == kImmaPath ? 2 : 1)
    anyres_pass1_kernel(const TileJobDevice* __restrict__ jobs, int num_jobs,
                        const int32_t* __restrict__ coeffs, uint8_t* __restrict__ mid, void* __restrict__ out,
                        const void* __restrict__ lut, int lut_bytes, int32_t tile) {
  IL_DYNAMIC_SMEM(uint32_t, staged);  // kStagedRow: the source row, one word per pixel
  const int64_t row = blockIdx.x;
  const TileJobDevice& J = jobs[find_job(jobs, num_jobs, row, false)];
  if constexpr (kStagedRow && kTensorPath == kMmaPath) {
    if (J.fused) {  // block-uniform: the whole block takes one path
      fused_block(J, coeffs, staged, row - J.pass1_begin, out, lut, lut_bytes, tile);
      return;
    }
    if (J.mma_pass1) {
      mma_pass1_block(J, coeffs, mid, staged, row - J.pass1_begin);
      return;
    }
  }
  if constexpr (kStagedRow && kTensorPath == kImmaPath) {
    if (J.fused) {  // block-uniform: the whole block takes one path
      imma_fused_block(J, coeffs, reinterpret_cast<uint8_t*>(staged), row - J.pass1_begin, out, lut, lut_bytes, tile);
      return;
    }
    if (J.imma_pass1) {  // block-uniform
      imma_pass1_block(J, coeffs, mid, reinterpret_cast<uint8_t*>(staged), row - J.pass1_begin);
      return;
    }
  }
  if constexpr (kStagedRow) {
    if (J.rows_per_block > 1) {  // block-uniform
      simt_rows_block(J, coeffs, mid, staged, row - J.pass1_begin);
      return;
    }
  }
  const int32_t r = static_cast<int32_t>(row - J.pass1_begin);
  const int32_t mid_w = static_cast<int32_t>(J.mid_width);
  uint32_t* dst = reinterpret_cast<uint32_t*>(mid + J.mid_offset) + static_cast<int64_t>(r) * mid_w;
  if (J.vertical_first) {
    // Vertical pass of output row r over all source columns (the source is the image itself).
    const int32_t first = coeffs[J.v_first + r], count = coeffs[J.v_count + r];
    const int32_t* k = coeffs + J.v_weights + static_cast<int64_t>(r) * J.v_ksize;
    const int64_t stride = J.img_w * 3;
    const uint8_t* src = J.image + first * stride;
    for (int32_t x = threadIdx.x; x < mid_w; x += blockDim.x) {
      int32_t a0 = kResampleHalf, a1 = kResampleHalf, a2 = kResampleHalf;
      const uint8_t* p = src + x * 3;
      for (int32_t y = 0; y < count; ++y, p += stride) {
        const int32_t w = k[y];
        a0 += p[0] * w;
        a1 += p[1] * w;
        a2 += p[2] * w;
      }
      dst[x] = pack_rgb(resample_clip8(a0), resample_clip8(a1), resample_clip8(a2));
    }
    return;
  }
  const int64_t sy = J.row_first + r;
  if (!J.need_horizontal) {
    for (int32_t x = threadIdx.x; x < mid_w; x += blockDim.x)
      dst[x] = pack_rgb(source_px(J, sy, x, 0), source_px(J, sy, x, 1), source_px(J, sy, x, 2));
    return;
  }
  if constexpr (kStagedRow) {
    stage_source_row(J, sy, staged);
    __syncthreads();
  }
  for (int32_t xx = threadIdx.x; xx < mid_w; xx += blockDim.x) {
    const int32_t first = coeffs[J.h_first + xx], count = coeffs[J.h_count + xx];
    const int32_t* k = coeffs + J.h_weights + xx;  // tap-major: tap x at k[x * h_outputs]
    if constexpr (kStagedRow) {
      dst[xx] = resample_px(staged + first, 1, k, J.h_outputs, count);
    } else {
      int32_t a0 = kResampleHalf, a1 = kResampleHalf, a2 = kResampleHalf;
      for (int32_t x = 0; x < count; ++x) {
        const int32_t w = k[x * J.h_outputs];
        a0 += source_px(J, sy, first + x, 0) * w;
        a1 += source_px(J, sy, first + x, 1) * w;
        a2 += source_px(J, sy, first + x, 2) * w;
      }
      dst[xx] = pack_rgb(resample_clip8(a0), resample_clip8(a1), resample_clip8(a2));
    }
  }
}

// Resized pixel (y, x) from the intermediate (one word per pixel), packed as r | g << 8 | b << 16.
__device__ __forceinline__ uint32_t second_pass_px(const TileJobDevice& J, const int32_t* coeffs,
                                                   const uint32_t* m, int32_t y, int32_t x) {
  if (J.vertical_first) {  // horizontal pass over intermediate row y
    const uint32_t* row = m + static_cast<int64_t>(y) * J.mid_width;
    if (!J.need_horizontal) return row[x];
    const int32_t first = coeffs[J.h_first + x], count = coeffs[J.h_count + x];
    return resample_px(row + first, 1, coeffs + J.h_weights + x, J.h_outputs, count);
  }
  const int64_t stride = J.mid_width;
  if (!J.need_vertical) return m[(y - J.row_first) * stride + x];
  const int32_t first = coeffs[J.v_first + y], count = coeffs[J.v_count + y];
  return resample_px(m + (first - J.row_first) * stride + x, stride,
                     coeffs + J.v_weights + static_cast<int64_t>(y) * J.v_ksize, 1, count);
}

// Pass 2, one block per canvas row, one thread per canvas pixel (all three channels).
// Out = uint8_t: [P, T, T, 3] tiles. Out = uint32_t / uint16_t: [P, 3, T, T] entries of the lut.
// kStagedOut: the row's pixels go to shared memory first, then the block writes each tile's row
// (T * 3 bytes, or T entries per channel plane) with 16-byte stores; the launcher picks it when
// those rows are multiples of 16 bytes and the canvas row fits. Otherwise each thread stores its
// pixel's bytes (or lut entries) directly.
template <typename Out, bool kStagedOut>
__global__ void __launch_bounds__(kThreads)
    anyres_pass2_kernel(const TileJobDevice* __restrict__ jobs, int num_jobs,
                        const int32_t* __restrict__ coeffs, const uint8_t* __restrict__ mid,
                        Out* __restrict__ out, const Out* __restrict__ lut, int32_t tile) {
  IL_DYNAMIC_SMEM(uint8_t, row_px);  // kStagedOut: the canvas row, canvas_w * 3 bytes
  const int64_t row = blockIdx.x;
  const TileJobDevice& J = jobs[find_job(jobs, num_jobs, row, true)];
  const int32_t cy = static_cast<int32_t>(row - J.pass2_begin);
  const int32_t y = cy - static_cast<int32_t>(J.dst_top);
  const bool in_rows = y >= 0 && y < J.resize_h;
  const int32_t canvas_w = static_cast<int32_t>(J.canvas_w), cols = canvas_w / tile;
  const int32_t tile_row = cy / tile, in_tile = cy - tile_row * tile;
  const int32_t dst_left = static_cast<int32_t>(J.dst_left), resize_w = static_cast<int32_t>(J.resize_w);
  const uint32_t* m = reinterpret_cast<const uint32_t*>(mid + J.mid_offset);
  const int64_t plane = static_cast<int64_t>(tile) * tile;
  for (int32_t cx = threadIdx.x; cx < canvas_w; cx += blockDim.x) {
    const int32_t x = cx - dst_left;
    const uint32_t px = (in_rows && x >= 0 && x < resize_w) ? second_pass_px(J, coeffs, m, y, x)
                                                           : static_cast<uint32_t>(J.dst_pad);
    if constexpr (kStagedOut) {
      put_px(row_px + cx * 3, 1, static_cast<const uint8_t*>(nullptr), px);
    } else {
      store_canvas_px(J, out, lut, tile, cy, cx, px);
    }
  }
  if constexpr (kStagedOut) {
    __syncthreads();
    const int64_t first_t = J.first_tile + static_cast<int64_t>(tile_row) * cols;
    if constexpr (std::is_same_v<Out, uint8_t>) {
      // Tile tcol's row: row_px[tcol * T * 3, +T * 3) -> out[((t * T + in_tile) * T) * 3, +T * 3).
      const int32_t per_tile = tile * 3 / 16, n = cols * per_tile;
      for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int32_t tcol = i / per_tile, j = i - tcol * per_tile;
        const uint4* src = reinterpret_cast<const uint4*>(row_px + tcol * tile * 3) + j;
        uint4* dst = reinterpret_cast<uint4*>(out + ((first_t + tcol) * tile + in_tile) * tile * 3) + j;
        *dst = *src;
      }
    } else {
      // Channel c of tile tcol's row: T lut entries, E = 16 / sizeof(Out) per 16-byte store.
      constexpr int kE = 16 / sizeof(Out);
      const int32_t per_row = tile / kE, n = 3 * cols * per_row;
      for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int32_t c = i / (cols * per_row), rest = i - c * cols * per_row;
        const int32_t tcol = rest / per_row, j = rest - tcol * per_row;
        const uint8_t* px = row_px + (tcol * tile + j * kE) * 3 + c;
        union {
          uint4 v;
          Out e[kE];
        } pack;
#pragma unroll
        for (int e = 0; e < kE; ++e) pack.e[e] = lut[c * 256 + px[e * 3]];
        uint4* dst = reinterpret_cast<uint4*>(out + ((first_t + tcol) * 3 + c) * plane +
                                              static_cast<int64_t>(in_tile) * tile) + j;
        *dst = pack.v;
      }
    }
  }
}

// Pass 1's block size (shared with the host emulation): the widest intermediate row of the batch in
// as few rounds of at most kThreads as possible, split evenly and rounded up to whole warps. For
// 1920 -> 384 that is 192 threads in two full rounds, where 256 ran a second round half idle.
int pass1_threads(int64_t widest_row) {
  if (widest_row <= 0) return kThreads;
  const int64_t rounds = (widest_row + kThreads - 1) / kThreads;
  const int64_t even = ((widest_row + rounds - 1) / rounds + 31) / 32 * 32;
  return static_cast<int>(even < 64 ? 64 : even > kThreads ? kThreads : even);
}

// Which pass-2 kernel a launch uses (shared with the host emulation, tests/emulate): staged
// 16-byte stores when a tile row is a whole number of 16-byte vectors (T = 384: 1152 bytes of
// uint8, 96 float32 or 48 bf16 vectors) and the canvas row fits the shared memory.
bool pass2_staged_out(int64_t tile, const void* lut, int lut_bytes, int64_t canvas_row_bytes) {
  const int64_t out_bytes = lut == nullptr ? 1 : lut_bytes;
  return canvas_row_bytes > 0 && canvas_row_bytes <= kMaxStagedRowBytes &&
         (tile * (lut == nullptr ? 3 : 1) * out_bytes) % 16 == 0;
}

// Calls f(Out{}, std::bool_constant<staged>{}) with the output element type of the launch.
template <typename F>
void with_pass2_kernel(const void* lut, int lut_bytes, bool staged, F&& f) {
  auto by_stage = [&](auto out_tag) {
    if (staged) f(out_tag, std::true_type{});
    else f(out_tag, std::false_type{});
  };
  if (lut == nullptr) by_stage(uint8_t{});
  else if (lut_bytes == 4) by_stage(uint32_t{});
  else by_stage(uint16_t{});
}

}  // namespace

void launch_anyres_tiles(const TileJobDevice* jobs, int num_jobs, int64_t pass1_rows,
                         int64_t pass2_rows, const int32_t* coeffs, uint8_t* mid, void* out,
                         const void* lut, int lut_bytes, int64_t tile, int64_t staged_row_bytes,
                         int64_t canvas_row_bytes, int64_t pass1_width, bool pass1_mma, bool pass1_imma,
                         int64_t imma_stage_bytes, cudaStream_t stream) {
  if (num_jobs == 0) return;
  if (pass1_rows > 0) {
    const unsigned blocks = static_cast<unsigned>(pass1_rows);
    const int threads = pass1_mma || pass1_imma ? kMmaThreads : pass1_threads(pass1_width);
    if (pass1_imma) {
      // The stage buffers (imma_stage jobs) come first; past the default 48 KiB the kernel opts in.
      const size_t smem = static_cast<size_t>(staged_row_bytes + imma_stage_bytes);
      if (smem > static_cast<size_t>(kMaxStagedRowBytes)) {
        static std::atomic<bool> opted_in[64] = {};
        int device = 0;
        cudaGetDevice(&device);
        opt_in_dynamic_smem(opted_in, device, static_cast<int>(kMaxStagedRowBytes + kImmaStageBlockBytes),
                            anyres_pass1_kernel<true, kImmaPath>);
      }
      anyres_pass1_kernel<true, kImmaPath><<<blocks, threads, smem, stream>>>(jobs, num_jobs, coeffs, mid, out, lut,
                                                                               lut_bytes, static_cast<int32_t>(tile));
    } else if (pass1_mma)
      anyres_pass1_kernel<true, kMmaPath><<<blocks, threads, static_cast<size_t>(staged_row_bytes), stream>>>(
          jobs, num_jobs, coeffs, mid, out, lut, lut_bytes, static_cast<int32_t>(tile));
    else if (pass1_staged_row(staged_row_bytes))
      anyres_pass1_kernel<true><<<blocks, threads, static_cast<size_t>(staged_row_bytes), stream>>>(
          jobs, num_jobs, coeffs, mid, out, lut, lut_bytes, static_cast<int32_t>(tile));
    else
      anyres_pass1_kernel<false><<<blocks, threads, 0, stream>>>(jobs, num_jobs, coeffs, mid, out, lut, lut_bytes,
                                                                 static_cast<int32_t>(tile));
  }
  if (pass2_rows <= 0) return;
  const unsigned blocks = static_cast<unsigned>(pass2_rows);
  const int32_t t = static_cast<int32_t>(tile);
  const bool staged = pass2_staged_out(tile, lut, lut_bytes, canvas_row_bytes);
  const size_t smem = staged ? static_cast<size_t>(canvas_row_bytes) : 0;
  with_pass2_kernel(lut, lut_bytes, staged, [&](auto out_tag, auto staged_tag) {
    using Out = decltype(out_tag);
    anyres_pass2_kernel<Out, decltype(staged_tag)::value><<<blocks, kThreads, smem, stream>>>(
        jobs, num_jobs, coeffs, mid, static_cast<Out*>(out), static_cast<const Out*>(lut), t);
  });
}

}  // namespace cuda
}  // namespace interleave
