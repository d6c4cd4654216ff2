// Vectorized inner loops of the CPU anyres_tiles kernel (see resample_simd.h). The AVX2 and
// AVX-512 versions are compiled with per-function target attributes and chosen at run time, so
// one build runs on any x86-64 CPU; other architectures get the portable versions only.
#include "resample_simd.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "../common/anyres_jobs.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IL_RESAMPLE_X86 1
#include <immintrin.h>
#else
#define IL_RESAMPLE_X86 0
#endif

namespace interleave {
namespace {

// INTERLEAVE_CPU_SIMD=generic|avx2|avx512 caps the level for the whole process (auto: the best).
int requested_from_environment() {
  const char* v = std::getenv("INTERLEAVE_CPU_SIMD");
  if (!v) return -1;
  if (std::strcmp(v, "generic") == 0) return 0;
  if (std::strcmp(v, "avx2") == 0) return 1;
  if (std::strcmp(v, "avx512") == 0) return 2;
  if (std::strcmp(v, "auto") != 0)
    std::fprintf(stderr, "interleave: INTERLEAVE_CPU_SIMD=%s is not one of auto, generic, avx2, avx512; using auto\n", v);
  return -1;
}

std::atomic<int> g_requested{requested_from_environment()};

CpuSimd detect_cpu_simd() {
#if IL_RESAMPLE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512vbmi"))
    return CpuSimd::kAvx512;
  if (__builtin_cpu_supports("avx2")) return CpuSimd::kAvx2;
#endif
  return CpuSimd::kGeneric;
}

// ---- horizontal pass, 8 rows at a time: 24 int32 lanes (8 rows x 3 channels) ---------------------
// The rows are first transposed so that the 24 values of one source column are contiguous; each
// output pixel is then a fixed 24-lane multiply-accumulate over its window. The 24 lanes are three
// 8 x int32 vectors (GCC/Clang vector extensions): compiled for AVX2 each tap is three
// zero-extending loads, three multiplies and three adds on ymm registers (a plain 24-element loop
// left gcc splitting lanes over xmm registers and a stack slot, about 2x slower).
constexpr int kLanes = kResampleBlockRows * 3;
typedef int32_t Int32x8 __attribute__((vector_size(32)));

// Eight bytes zero-extended to int32 lanes, written lane by lane: gcc 12 turns this into one
// vpmovzxbd, while __builtin_convertvector of a uint8 vector became scalar byte extractions.
__attribute__((always_inline)) inline Int32x8 widen8(const uint8_t* q) {
  Int32x8 v;
  for (int l = 0; l < 8; ++l) v[l] = q[l];
  return v;
}

// The body, inlined into one function per target (an always_inline callee compiles with its
// caller's instruction set).
__attribute__((always_inline)) inline void horizontal_block_lanes(const uint8_t* const* src, uint8_t* const* dst,
                                                                  const AxisCoeffs& c, int64_t in_width,
                                                                  uint8_t* transposed) {
  // 4-byte moves of 3-byte pixels: each store's 4th byte is overwritten by the next one (rows in
  // ascending order, then the next column), so `transposed` has one spare byte at the end. The
  // last column is copied bytewise so that no load reads past the end of a source row.
  for (int64_t x = 0; x + 1 < in_width; ++x)
    for (int r = 0; r < kResampleBlockRows; ++r) {
      uint32_t v;
      std::memcpy(&v, src[r] + x * 3, 4);
      std::memcpy(transposed + x * kLanes + r * 3, &v, 4);
    }
  for (int r = 0; r < kResampleBlockRows; ++r)
    for (int ch = 0; ch < 3; ++ch)
      transposed[(in_width - 1) * kLanes + r * 3 + ch] = src[r][(in_width - 1) * 3 + ch];
  const Int32x8 half = Int32x8{} + kResampleHalf;
  for (int xx = 0; xx < c.out_size; ++xx) {
    const uint8_t* p = transposed + static_cast<int64_t>(c.first[xx]) * kLanes;
    const int32_t* k = c.weights.data() + static_cast<size_t>(xx) * c.ksize;
    Int32x8 a0 = half, a1 = half, a2 = half;
    const int count = c.count[xx];
    for (int x = 0; x < count; ++x) {
      const int32_t w = k[x];
      const uint8_t* q = p + x * kLanes;
      a0 += widen8(q) * w;
      a1 += widen8(q + 8) * w;
      a2 += widen8(q + 16) * w;
    }
    int32_t acc[kLanes];
    std::memcpy(acc, &a0, sizeof(a0));
    std::memcpy(acc + 8, &a1, sizeof(a1));
    std::memcpy(acc + 16, &a2, sizeof(a2));
    for (int r = 0; r < kResampleBlockRows; ++r)
      for (int ch = 0; ch < 3; ++ch) dst[r][xx * 3 + ch] = resample_clip8(acc[r * 3 + ch]);
  }
}

__attribute__((always_inline)) inline void interleave_row_body(const uint8_t* __restrict r, const uint8_t* __restrict g,
                                                               const uint8_t* __restrict b, int64_t n,
                                                               uint8_t* __restrict dst) {
  for (int64_t x = 0; x < n; ++x) {
    dst[3 * x] = r[x];
    dst[3 * x + 1] = g[x];
    dst[3 * x + 2] = b[x];
  }
}

void interleave_row_generic(const uint8_t* const* planes, int64_t n, uint8_t* dst) {
  interleave_row_body(planes[0], planes[1], planes[2], n, dst);
}

void horizontal_block_generic(const uint8_t* const* src, uint8_t* const* dst, const AxisCoeffs& c,
                              int64_t in_width, uint8_t* scratch) {
  horizontal_block_lanes(src, dst, c, in_width, scratch);
}

// Pillow's ImagingResampleVertical_8bpc inner loop for one output row, portable.
void vertical_row_generic(const uint8_t* rows, int64_t row_bytes, const int32_t* k, int count, int32_t* acc,
                          uint8_t* dst) {
  for (int64_t i = 0; i < row_bytes; ++i) acc[i] = kResampleHalf;
  for (int y = 0; y < count; ++y) {
    const uint8_t* r = rows + y * row_bytes;
    const int32_t ky = k[y];
    for (int64_t i = 0; i < row_bytes; ++i) acc[i] += r[i] * ky;
  }
  for (int64_t i = 0; i < row_bytes; ++i) dst[i] = resample_clip8(acc[i]);
}

// The scalar tail of a vertical row, from byte i on.
inline void vertical_tail(const uint8_t* rows, int64_t row_bytes, const int32_t* k, int count, int64_t i,
                          uint8_t* dst) {
  for (; i < row_bytes; ++i) {
    int32_t s = kResampleHalf;
    for (int y = 0; y < count; ++y) s += rows[y * row_bytes + i] * k[y];
    dst[i] = resample_clip8(s);
  }
}

template <typename T>
void lut_row_typed(const uint8_t* src, int64_t n, const T* table, void* const* dst) {
  for (int c = 0; c < 3; ++c) {
    const T* t = table + c * 256;
    T* out = static_cast<T*>(dst[c]);
    for (int64_t x = 0; x < n; ++x) out[x] = t[src[x * 3 + c]];
  }
}

void lut_row_generic(const uint8_t* src, int64_t n, const void* table, int elem_bytes, void* const* dst) {
  switch (elem_bytes) {
    case 2: return lut_row_typed(src, n, static_cast<const uint16_t*>(table), dst);
    case 4: return lut_row_typed(src, n, static_cast<const uint32_t*>(table), dst);
    case 8: return lut_row_typed(src, n, static_cast<const uint64_t*>(table), dst);
    default:
      for (int c = 0; c < 3; ++c)
        for (int64_t x = 0; x < n; ++x)
          std::memcpy(static_cast<uint8_t*>(dst[c]) + x * elem_bytes,
                      static_cast<const uint8_t*>(table) + (c * 256 + src[x * 3 + c]) * elem_bytes, elem_bytes);
  }
}

#if IL_RESAMPLE_X86
__attribute__((target("avx2"))) void horizontal_block_avx2(const uint8_t* const* src, uint8_t* const* dst,
                                                           const AxisCoeffs& c, int64_t in_width,
                                                           uint8_t* scratch) {
  horizontal_block_lanes(src, dst, c, in_width, scratch);
}

__attribute__((target("avx2"))) void interleave_row_avx2(const uint8_t* const* planes, int64_t n, uint8_t* dst) {
  interleave_row_body(planes[0], planes[1], planes[2], n, dst);
}

// 32 bytes of a vertical row per step, four 8 x int32 accumulators held in registers over the taps
// (the portable loop reads and writes an int32 row per tap).
__attribute__((target("avx2"))) void vertical_row_avx2(const uint8_t* rows, int64_t row_bytes, const int32_t* k,
                                                       int count, uint8_t* dst) {
  const __m256i half = _mm256_set1_epi32(kResampleHalf);
  // packs/packus interleave the 128-bit halves; this puts the 8 dwords back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= row_bytes; i += 32) {
    __m256i a0 = half, a1 = half, a2 = half, a3 = half;
    const uint8_t* p = rows + i;
    for (int y = 0; y < count; ++y, p += row_bytes) {
      const __m256i w = _mm256_set1_epi32(k[y]);
      a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), w));
      a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))), w));
      a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 16))), w));
      a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 24))), w));
    }
    // >> 22, then signed saturation to int16 and unsigned saturation to uint8: Pillow's clip8.
    const __m256i s01 = _mm256_packs_epi32(_mm256_srai_epi32(a0, kResamplePrecisionBits),
                                           _mm256_srai_epi32(a1, kResamplePrecisionBits));
    const __m256i s23 = _mm256_packs_epi32(_mm256_srai_epi32(a2, kResamplePrecisionBits),
                                           _mm256_srai_epi32(a3, kResamplePrecisionBits));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(s01, s23), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), bytes);
  }
  vertical_tail(rows, row_bytes, k, count, i, dst);
}

#define IL_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))

IL_AVX512_TARGET void interleave_row_avx512(const uint8_t* const* planes, int64_t n, uint8_t* dst) {
  interleave_row_body(planes[0], planes[1], planes[2], n, dst);
}

// (a0 + half) + (a1 << 8) + (a2 << 16) (modulo 2^32: Pillow's sum; a0 starts at half) >> 22.
// (A function, not a lambda: lambdas do not inherit the target attribute.)
IL_AVX512_TARGET inline __m256i quad_sum(__m256i a0, __m256i a1, __m256i a2) {
  const __m256i s = _mm256_add_epi32(_mm256_add_epi32(a0, _mm256_slli_epi32(a1, 8)), _mm256_slli_epi32(a2, 16));
  return _mm256_srai_epi32(s, kResamplePrecisionBits);
}

// Where lane L (= row * 3 + channel) of one output pixel lands among the 32 bytes that
// packs_epi32(s0, s1) and packs_epi32(s2, s2) followed by packus_epi16 leave (s0: lanes 0-7, s1:
// 8-15, s2: 16-23; both packs work within 128-bit halves). The signed then unsigned saturation is
// Pillow's clip8 on the >> 22 sums.
constexpr int packed_lane_position(int lane) {
  const int v = lane / 8, k = lane % 8, half = k / 4, i = k % 4;
  // half 0 -> bytes 0-15, half 1 -> bytes 16-31; within a half: s0 at 0-3, s1 at 4-7, s2 at 8-11.
  return half * 16 + v * 4 + i;
}

// The horizontal pass of 8 rows with vpdpbusd (QuadAxis). The transpose puts, for each group of 4
// source pixels, the 4 bytes of each of the 24 lanes (row r, channel c) next to each other:
// scratch[(g * 24 + r * 3 + c) * 4 + t] = pixel 4g + t of row r, channel c. Per output pixel and
// group: three 32-byte loads and nine dot products cover 4 taps of 24 lanes (the AVX2 loop needs 36
// instructions for the same work).
IL_AVX512_TARGET void horizontal_block_vnni(const uint8_t* const* src, uint8_t* const* dst, const AxisCoeffs& c,
                                            const QuadAxis& q, int64_t in_width, uint8_t* tr) {
  const int64_t groups = (in_width + 3) / 4, row_bytes = in_width * 3;
  // 12 bytes (4 RGB pixels) -> channel-major: byte c * 4 + t from byte t * 3 + c.
  const __m128i shuffle = _mm_setr_epi8(0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11, -1, -1, -1, -1);
  // Groups whose 16-byte load stays inside the row; the rest go through a zeroed bounce buffer
  // (pixels past the row's end meet zero weights, and are zero). Each 16-byte store's last 4
  // bytes land in the next slot, which is written after it (rows ascending, then groups), so
  // the scratch has 4 spare bytes at the end.
  const int64_t direct = std::min(groups, row_bytes >= 16 ? (row_bytes - 16) / 12 + 1 : int64_t(0));
  for (int64_t g = 0; g < groups; ++g)
    for (int r = 0; r < kResampleBlockRows; ++r) {
      __m128i v;
      if (g < direct) {
        v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[r] + 12 * g));
      } else {
        alignas(16) uint8_t bounce[16] = {};
        std::memcpy(bounce, src[r] + 12 * g, static_cast<size_t>(std::min<int64_t>(12, row_bytes - 12 * g)));
        v = _mm_load_si128(reinterpret_cast<const __m128i*>(bounce));
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(tr + g * 96 + r * 12), _mm_shuffle_epi8(v, shuffle));
    }
  // Four output pixels at a time: each leaves 32 packed bytes (packed_lane_position); one byte
  // permute over the 128 bytes then gives each row its 12 bytes (4 pixels x RGB), written with one
  // masked store. (Per pixel and row, 3-byte copies cost about as much as the dot products.)
  alignas(64) static const auto row_index = [] {
    std::array<std::array<uint8_t, 64>, kResampleBlockRows> index{};
    for (int r = 0; r < kResampleBlockRows; ++r)
      for (int j = 0; j < 4; ++j)
        for (int ch = 0; ch < 3; ++ch)
          index[r][j * 3 + ch] = static_cast<uint8_t>(j * 32 + packed_lane_position(r * 3 + ch));
    return index;
  }();
  const __m256i zero = _mm256_setzero_si256(), half = _mm256_set1_epi32(kResampleHalf);
  for (int x0 = 0; x0 < c.out_size; x0 += 4) {
    const int pixels = std::min(4, c.out_size - x0);
    __m256i packed[4] = {zero, zero, zero, zero};
    for (int j = 0; j < pixels; ++j) {
      const int xx = x0 + j;
      const uint8_t* p = tr + static_cast<int64_t>(q.group0[xx]) * 96;
      const int32_t* d = q.output_digits(xx);
      __m256i a00 = half, a01 = zero, a02 = zero, a10 = half, a11 = zero, a12 = zero, a20 = half, a21 = zero,
              a22 = zero;
      const int ng = q.groups[xx];
      for (int g = 0; g < ng; ++g, p += 96, d += 3) {
        const __m256i w0 = _mm256_set1_epi32(d[0]), w1 = _mm256_set1_epi32(d[1]), w2 = _mm256_set1_epi32(d[2]);
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
        const __m256i v2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64));
        a00 = _mm256_dpbusd_epi32(a00, v0, w0);
        a01 = _mm256_dpbusd_epi32(a01, v0, w1);
        a02 = _mm256_dpbusd_epi32(a02, v0, w2);
        a10 = _mm256_dpbusd_epi32(a10, v1, w0);
        a11 = _mm256_dpbusd_epi32(a11, v1, w1);
        a12 = _mm256_dpbusd_epi32(a12, v1, w2);
        a20 = _mm256_dpbusd_epi32(a20, v2, w0);
        a21 = _mm256_dpbusd_epi32(a21, v2, w1);
        a22 = _mm256_dpbusd_epi32(a22, v2, w2);
      }
      const __m256i s2 = quad_sum(a20, a21, a22);
      packed[j] = _mm256_packus_epi16(_mm256_packs_epi32(quad_sum(a00, a01, a02), quad_sum(a10, a11, a12)),
                                      _mm256_packs_epi32(s2, s2));
    }
    const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(packed[0]), packed[1], 1);
    const __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(packed[2]), packed[3], 1);
    const __mmask16 bytes = static_cast<__mmask16>((1u << (3 * pixels)) - 1);
    for (int r = 0; r < kResampleBlockRows; ++r) {
      const __m512i row = _mm512_permutex2var_epi8(lo, _mm512_load_si512(row_index[r].data()), hi);
      _mm_mask_storeu_epi8(dst[r] + x0 * 3, bytes, _mm512_castsi512_si128(row));
    }
  }
}

// The vertical pass with vpdpbusd, 64 bytes of a row per step: four rows' bytes are interleaved
// on the fly (two rounds of unpacks) so that each int32 lane holds one byte position's 4 taps, then
// three dot products per digit (QuadAxis, groups starting at the output's first row; taps past
// `count` read the last row with zero weight). The unpacks and then packs/packus both work within
// 128-bit lanes, and the two reorders cancel: the packed bytes come out in row order.
IL_AVX512_TARGET void vertical_row_vnni(const uint8_t* rows, int64_t row_bytes, const int32_t* k, int count,
                                        const int32_t* digits, uint8_t* dst) {
  const int groups = (count + 3) / 4;
  const __m512i zero = _mm512_setzero_si512(), half = _mm512_set1_epi32(kResampleHalf);
  int64_t i = 0;
  for (; i + 64 <= row_bytes; i += 64) {
    __m512i a[4][3];
    for (int s = 0; s < 4; ++s) {
      a[s][0] = half;
      a[s][1] = a[s][2] = zero;
    }
    const int32_t* d = digits;
    for (int g = 0; g < groups; ++g, d += 3) {
      __m512i x[4];
      for (int t = 0; t < 4; ++t) {
        const int y = std::min(4 * g + t, count - 1);
        x[t] = _mm512_loadu_si512(rows + y * row_bytes + i);
      }
      const __m512i lo01 = _mm512_unpacklo_epi8(x[0], x[1]), hi01 = _mm512_unpackhi_epi8(x[0], x[1]);
      const __m512i lo23 = _mm512_unpacklo_epi8(x[2], x[3]), hi23 = _mm512_unpackhi_epi8(x[2], x[3]);
      const __m512i q[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                            _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
      for (int j = 0; j < 3; ++j) {
        const __m512i w = _mm512_set1_epi32(d[j]);
        for (int s = 0; s < 4; ++s) a[s][j] = _mm512_dpbusd_epi32(a[s][j], q[s], w);
      }
    }
    __m512i sum[4];
    for (int s = 0; s < 4; ++s)
      sum[s] = _mm512_srai_epi32(_mm512_add_epi32(_mm512_add_epi32(a[s][0], _mm512_slli_epi32(a[s][1], 8)),
                                                  _mm512_slli_epi32(a[s][2], 16)),
                                 kResamplePrecisionBits);
    const __m512i bytes = _mm512_packus_epi16(_mm512_packs_epi32(sum[0], sum[1]), _mm512_packs_epi32(sum[2], sum[3]));
    _mm512_storeu_si512(dst + i, bytes);
  }
  vertical_tail(rows, row_bytes, k, count, i, dst);
}

// Byte permutations of the table lookup (lut_row_vbmi), per element width: which element of a
// 64-pixel chunk each lookup position holds, so that the byte-plane interleave (unpack, which works
// within 128-bit lanes) leaves the values in order. Position P = 16 L + 4 s + m of a 4-byte lookup
// ends up as element 16 s + 4 L + m; of a 2-byte lookup, P = 16 L + 8 s + j as 32 s + 8 L + j.
struct LutShuffle {
  alignas(64) uint8_t low[3][64];   // bytes 0..127 of the 192-byte chunk (two registers)
  alignas(64) uint8_t high[3][64];  // bytes 128..191 (the third register), where `from_high`
  uint64_t from_high[3];
};

LutShuffle make_lut_shuffle(int elem_bytes) {
  LutShuffle s{};
  for (int c = 0; c < 3; ++c)
    for (int p = 0; p < 64; ++p) {
      const int lane = p / 16, in_lane = p % 16;
      const int e = elem_bytes == 4 ? 16 * (in_lane / 4) + 4 * lane + in_lane % 4
                                    : 32 * (in_lane / 8) + 8 * lane + in_lane % 8;
      const int byte = 3 * e + c;
      if (byte < 128) {
        s.low[c][p] = static_cast<uint8_t>(byte);
      } else {
        s.high[c][p] = static_cast<uint8_t>(byte - 128);
        s.from_high[c] |= uint64_t(1) << p;
      }
    }
  return s;
}

// The table lookup of 64 pixels of one channel per step, for 2- and 4-byte values: the channel's
// indices gathered from the 192 RGB bytes with byte permutes, then each byte of the values looked
// up in its own 256-byte plane (two 128-entry vpermi2b and a blend on the index's top bit), and the
// planes interleaved into the values with unpacks. The generic loop is a dependent byte load and
// value load per element. Whole chunks only: returns how many pixels it did; lut_row does the rest.
IL_AVX512_TARGET int64_t lut_row_vbmi(const uint8_t* src, int64_t n, const LutPlanes& planes, void* const* dst) {
  static const LutShuffle shuffle4 = make_lut_shuffle(4), shuffle2 = make_lut_shuffle(2);
  const int e = planes.elem_bytes;
  const LutShuffle& sh = e == 4 ? shuffle4 : shuffle2;
  const int64_t full = n / 64 * 64;
  for (int c = 0; c < 3; ++c) {
    __m512i t[4][4];
    for (int k = 0; k < e; ++k)
      for (int part = 0; part < 4; ++part)
        t[k][part] = _mm512_loadu_si512(planes.bytes.data() + (static_cast<size_t>(c) * e + k) * 256 + part * 64);
    const __m512i low = _mm512_load_si512(sh.low[c]), high = _mm512_load_si512(sh.high[c]);
    const __mmask64 from_high = sh.from_high[c];
    uint8_t* out = static_cast<uint8_t*>(dst[c]);
    for (int64_t x = 0; x < full; x += 64) {
      const uint8_t* s = src + x * 3;
      __m512i ix = _mm512_permutex2var_epi8(_mm512_loadu_si512(s), low, _mm512_loadu_si512(s + 64));
      ix = _mm512_mask_permutexvar_epi8(ix, from_high, high, _mm512_loadu_si512(s + 128));
      const __mmask64 upper = _mm512_movepi8_mask(ix);
      __m512i b[4];
      for (int k = 0; k < e; ++k)
        b[k] = _mm512_mask_blend_epi8(upper, _mm512_permutex2var_epi8(t[k][0], ix, t[k][1]),
                                      _mm512_permutex2var_epi8(t[k][2], ix, t[k][3]));
      uint8_t* o = out + x * e;
      __m512i v[4];
      if (e == 4) {
        const __m512i lo01 = _mm512_unpacklo_epi8(b[0], b[1]), hi01 = _mm512_unpackhi_epi8(b[0], b[1]);
        const __m512i lo23 = _mm512_unpacklo_epi8(b[2], b[3]), hi23 = _mm512_unpackhi_epi8(b[2], b[3]);
        v[0] = _mm512_unpacklo_epi16(lo01, lo23);
        v[1] = _mm512_unpackhi_epi16(lo01, lo23);
        v[2] = _mm512_unpacklo_epi16(hi01, hi23);
        v[3] = _mm512_unpackhi_epi16(hi01, hi23);
      } else {
        v[0] = _mm512_unpacklo_epi8(b[0], b[1]);
        v[1] = _mm512_unpackhi_epi8(b[0], b[1]);
      }
      for (int k = 0; k < e; ++k) _mm512_storeu_si512(o + 64 * k, v[k]);
    }
  }
  return full;
}
#endif

}  // namespace

CpuSimd anyres_cpu_simd_supported() {
  static const CpuSimd supported = detect_cpu_simd();
  return supported;
}

CpuSimd anyres_cpu_simd() {
  const int requested = g_requested.load(std::memory_order_relaxed);
  const int best = static_cast<int>(anyres_cpu_simd_supported());
  return static_cast<CpuSimd>(requested < 0 || requested > best ? best : requested);
}

int set_anyres_cpu_simd(int level) { return g_requested.exchange(level); }

QuadAxis quad_axis(const AxisCoeffs& c, bool aligned) {
  QuadAxis q;
  q.group0.resize(c.out_size);
  q.groups.resize(c.out_size);
  for (int xx = 0; xx < c.out_size; ++xx) {
    q.group0[xx] = aligned ? c.first[xx] / 4 : 0;
    q.groups[xx] = ((aligned ? c.first[xx] % 4 : 0) + c.count[xx] + 3) / 4;
    q.max_groups = std::max(q.max_groups, q.groups[xx]);
  }
  q.digits.assign(static_cast<size_t>(c.out_size) * q.max_groups * 3, 0);
  for (int xx = 0; xx < c.out_size; ++xx) {
    const int offset = aligned ? c.first[xx] % 4 : 0;
    for (int x = 0; x < c.count[xx]; ++x) {
      int32_t w = c.weights[static_cast<size_t>(xx) * c.ksize + x];
      int32_t digit[3];
      for (int k = 0; k < 2; ++k) {
        digit[k] = static_cast<int8_t>(static_cast<uint8_t>(w & 0xFF));  // in [-128, 127]
        w = (w - digit[k]) / 256;                                          // exact
      }
      if (w < -128 || w > 127) return QuadAxis{};
      digit[2] = w;
      const int pos = offset + x;
      for (int k = 0; k < 3; ++k) {
        // Byte t of the little-endian word holds tap t's digit (x86 only uses it).
        int32_t& word = q.digits[(static_cast<size_t>(xx) * q.max_groups + pos / 4) * 3 + k];
        uint32_t u = static_cast<uint32_t>(word);
        u |= static_cast<uint32_t>(static_cast<uint8_t>(digit[k])) << (8 * (pos % 4));
        word = static_cast<int32_t>(u);
      }
    }
  }
  q.ok = true;
  return q;
}

std::shared_ptr<const QuadAxis> cached_quad_axis(int in_size, int out_size, bool aligned) {
  return bounded_memo<std::tuple<int, int, bool>, QuadAxis>(std::make_tuple(in_size, out_size, aligned), [&] {
    return quad_axis(*cached_bicubic_coeffs(in_size, out_size), aligned);
  });
}

size_t horizontal_block_scratch(int64_t in_width) {
  const size_t lanes = static_cast<size_t>(in_width) * kLanes + 1;
  const size_t quads = static_cast<size_t>((in_width + 3) / 4) * 96 + 16;
  return std::max(lanes, quads);
}

void horizontal_block(CpuSimd level, const uint8_t* const* src, uint8_t* const* dst, const AxisCoeffs& c,
                      const QuadAxis* quad, int64_t in_width, uint8_t* scratch) {
#if IL_RESAMPLE_X86
  if (level >= CpuSimd::kAvx512 && quad && quad->ok)
    return horizontal_block_vnni(src, dst, c, *quad, in_width, scratch);
  if (level >= CpuSimd::kAvx2) return horizontal_block_avx2(src, dst, c, in_width, scratch);
#endif
  (void)level;
  (void)quad;
  horizontal_block_generic(src, dst, c, in_width, scratch);
}

void vertical_row(CpuSimd level, const uint8_t* rows, int64_t row_bytes, const int32_t* weights, int count,
                  const int32_t* digits, int32_t* acc, uint8_t* dst) {
#if IL_RESAMPLE_X86
  if (level >= CpuSimd::kAvx512 && digits) return vertical_row_vnni(rows, row_bytes, weights, count, digits, dst);
  if (level >= CpuSimd::kAvx2) return vertical_row_avx2(rows, row_bytes, weights, count, dst);
#endif
  (void)level;
  (void)digits;
  vertical_row_generic(rows, row_bytes, weights, count, acc, dst);
}

void interleave_row(CpuSimd level, const uint8_t* const* planes, int64_t n, uint8_t* dst) {
#if IL_RESAMPLE_X86
  if (level >= CpuSimd::kAvx512) return interleave_row_avx512(planes, n, dst);
  if (level >= CpuSimd::kAvx2) return interleave_row_avx2(planes, n, dst);
#endif
  (void)level;
  interleave_row_generic(planes, n, dst);
}

LutPlanes lut_planes(const void* table, int elem_bytes) {
  LutPlanes p;
  p.elem_bytes = elem_bytes;
  p.bytes.resize(static_cast<size_t>(3) * elem_bytes * 256);
  const auto* t = static_cast<const uint8_t*>(table);
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < elem_bytes; ++k)
      for (int v = 0; v < 256; ++v)
        p.bytes[(static_cast<size_t>(c) * elem_bytes + k) * 256 + v] = t[(c * 256 + v) * elem_bytes + k];
  return p;
}

void lut_row(CpuSimd level, const uint8_t* src, int64_t n, const void* table, const LutPlanes& planes,
             void* const* dst) {
#if IL_RESAMPLE_X86
  if (level >= CpuSimd::kAvx512 && (planes.elem_bytes == 2 || planes.elem_bytes == 4) && n >= 64) {
    const int64_t full = lut_row_vbmi(src, n, planes, dst);
    if (full < n) {
      const int e = planes.elem_bytes;
      void* rest[3];
      for (int c = 0; c < 3; ++c) rest[c] = static_cast<uint8_t*>(dst[c]) + full * e;
      lut_row_generic(src + full * 3, n - full, table, e, rest);
    }
    return;
  }
#endif
  (void)level;
  lut_row_generic(src, n, table, planes.elem_bytes, dst);
}

}  // namespace interleave
