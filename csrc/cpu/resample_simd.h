// The vectorized inner loops of the CPU anyres_tiles kernel, one set per instruction-set level,
// chosen at run time (CpuSimd). Every level computes Pillow's integer arithmetic exactly (integer
// sums in another order, or modulo 2^32, give the same int32), so all levels give the same bytes;
// tests run each level against Pillow (interleave.ops.anyres_tiles.cpu_simd).
//
// This file and resample_simd.cpp include no torch headers: they build in seconds.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "../common/resample.h"

namespace interleave {

enum class CpuSimd : int {
  kGeneric = 0,  // portable C++ (the compiler's baseline ISA)
  kAvx2 = 1,     // 8 x int32 lanes
  kAvx512 = 2,   // AVX-512 F/BW/VL + VNNI (vpdpbusd) + VBMI (vpermb): Zen 4, Ice Lake and later
};

// The level in use: the requested one (default: the best), capped at what this CPU supports.
CpuSimd anyres_cpu_simd();
// Requests a level (-1: the best the CPU supports); returns the previous request.
int set_anyres_cpu_simd(int level);
// The best level this CPU (and this build) supports.
CpuSimd anyres_cpu_simd_supported();

// Rows per block of the blocked horizontal passes.
constexpr int kResampleBlockRows = 8;

// An axis regrouped for vpdpbusd, which sums 4 products of unsigned bytes (pixels) and signed
// bytes per int32 lane: each output's taps in groups of 4. Horizontally (aligned) each output's
// window is widened to start on a multiple of 4 source pixels, so that groups are fixed columns
// of the transposed block; vertically the groups start at the output's first row. Missing taps
// have zero weights. Each 22-bit weight w is split into balanced
// base-256 digits, w = d0 + 256 d1 + 65536 d2 with every d in [-128, 127]: three dot products per
// 4 taps, recombined as a0 + (a1 << 8) + (a2 << 16). All of it is exact modulo 2^32, and Pillow's
// sum itself fits in int32, so the result is Pillow's sum.
struct QuadAxis {
  bool ok = false;           // false where a weight does not fit three digits (never for bicubic)
  int max_groups = 0;        // the widest output's number of 4-pixel groups
  std::vector<int32_t> group0;   // per output: first 4-pixel group (aligned)
  std::vector<int32_t> groups;   // per output: number of groups
  std::vector<int32_t> digits;   // [out][max_groups][3]: 4 taps' digit k as 4 signed bytes
  const int32_t* output_digits(int out) const { return digits.data() + static_cast<size_t>(out) * max_groups * 3; }
};
QuadAxis quad_axis(const AxisCoeffs& c, bool aligned);
// quad_axis of Pillow's bicubic coefficients for (in_size, out_size), memoized as they are
// (cached_bicubic_coeffs): ~37 us per job for both axes of a 1080x1920 -> 384 squash.
std::shared_ptr<const QuadAxis> cached_quad_axis(int in_size, int out_size, bool aligned);

// The horizontal pass of kResampleBlockRows rows of in_width RGB pixels. scratch: at least
// horizontal_block_scratch(in_width) bytes.
size_t horizontal_block_scratch(int64_t in_width);
void horizontal_block(CpuSimd level, const uint8_t* const* src, uint8_t* const* dst, const AxisCoeffs& c,
                      const QuadAxis* quad, int64_t in_width, uint8_t* scratch);

// Pillow's vertical pass, one output row of row_bytes bytes: rows[y * row_bytes] for the
// output's taps (rows points at its first tap); acc: row_bytes int32 of scratch (generic level);
// digits: the output's QuadAxis digits (quad_axis(c, false)), used at the AVX-512 level, or null.
void vertical_row(CpuSimd level, const uint8_t* rows, int64_t row_bytes, const int32_t* weights, int count,
                  const int32_t* digits, int32_t* acc, uint8_t* dst);

// One RGB row from three channel planes (a channels-first image, e.g. torchvision's decoders'
// [3, H, W], read in place): dst[x * 3 + c] = planes[c][x] for x in [0, n). The compiler's
// vectorized interleave at the AVX2/AVX-512 levels (~0.2-0.3 ms for a 1080x1920 image on one core
// here, against ~6 ms for ATen's channels-first to channels-last copy).
void interleave_row(CpuSimd level, const uint8_t* const* planes, int64_t n, uint8_t* dst);

// Normalized CHW values through a [3, 256] table of elem_bytes-wide values: for pixels x in
// [0, n) of one RGB row, dst[c][x] = table[c][src[x * 3 + c]] (bytes copied as they are).
// planes: lut_planes(table) (AVX-512 level) or unused.
struct LutPlanes {
  int elem_bytes = 0;
  std::vector<uint8_t> bytes;  // [3][elem_bytes][256]: byte b of every entry of channel c
};
LutPlanes lut_planes(const void* table, int elem_bytes);
void lut_row(CpuSimd level, const uint8_t* src, int64_t n, const void* table, const LutPlanes& planes,
             void* const* dst);

}  // namespace interleave
