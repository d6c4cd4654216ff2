// Pillow's bicubic resampling arithmetic (src/libImaging/Resample.c: precompute_coeffs,
// normalize_coeffs_8bpc, clip8), shared by the CPU and CUDA kernels of anyres_tiles.
//
// The coefficients are computed on the host in double precision, exactly as Pillow does, and
// handed to the kernels as 22-bit fixed-point int32 weights. They must never be computed on the
// device: nvcc contracts a*b+c into FMA by default, which changes the doubles Pillow rounds.
// (setup.py compiles host code with -ffp-contract=off for the same reason.)
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "macros.h"

namespace interleave {

constexpr int kResamplePrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS
constexpr int32_t kResampleHalf = int32_t(1) << (kResamplePrecisionBits - 1);

// Pillow's clip8: the accumulator >> 22, clamped to [0, 255].
IL_HD uint8_t resample_clip8(int32_t acc) {
  const int32_t v = acc >> kResamplePrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Bicubic filter with a = -0.5 (Pillow bicubic_filter).
inline double pil_bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Coefficients of one axis: output index o reads inputs [first[o], first[o] + count[o]) with
// weights[o * ksize + i].
struct AxisCoeffs {
  int in_size = 0, out_size = 0, ksize = 0;
  std::vector<int32_t> first, count, weights;
};

// precompute_coeffs(in_size, 0, in_size, out_size, BICUBIC) followed by normalize_coeffs_8bpc.
inline AxisCoeffs pil_bicubic_coeffs(int in_size, int out_size) {
  AxisCoeffs c;
  c.in_size = in_size;
  c.out_size = out_size;
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0f + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = pil_bicubic_filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    for (int x = 0; x < xmax; ++x) {
      const double v = k[x] * (1 << kResamplePrecisionBits);
      c.weights[static_cast<size_t>(xx) * c.ksize + x] =
          k[x] < 0 ? static_cast<int32_t>(-0.5 + v) : static_cast<int32_t>(0.5 + v);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

// One resize job of anyres_tiles: a source image, optionally seen inside a larger canvas filled
// with src_pad (pad-to-square), resized to (resize_h, resize_w), placed at (dst_top, dst_left) in
// a destination canvas filled with dst_pad, which is cut into tile x tile tiles, row-major,
// written from output tile first_tile on. vertical_first selects Pillow's pass order: Pillow 13
// (ImagingResampleInner) runs the vertical pass first when the height shrinks by more than twice
// as many pixels as the width; older Pillow always runs the horizontal pass first. The Python side (interleave/ops/anyres_tiles.py) derives
// jobs from interleave.plan; the job table is int64 [J, kJobFields].
enum JobField : int {
  kJobImage = 0,
  kJobSrcH, kJobSrcW,          // the (virtual) source canvas
  kJobSrcTop, kJobSrcLeft,     // where the image sits in it
  kJobSrcPad,                  // packed RGB: r | g << 8 | b << 16
  kJobResizeH, kJobResizeW,
  kJobCanvasH, kJobCanvasW,    // destination canvas, multiples of the tile size
  kJobDstTop, kJobDstLeft,
  kJobDstPad,                  // packed RGB
  kJobFirstTile,
  kJobVerticalFirst,           // 0: horizontal pass first, 1: vertical pass first
  kJobFields
};

// Channel c of a packed RGB pad value.
IL_HD uint8_t pad_channel(int64_t packed_rgb, int c) {
  return static_cast<uint8_t>((packed_rgb >> (8 * c)) & 0xFF);
}

}  // namespace interleave
