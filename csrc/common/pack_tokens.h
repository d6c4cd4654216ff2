// pack_tokens index math, shared by the CPU and CUDA kernels. Header-only, no torch includes.
//
// The layout: a table of segments (int64 rows of kNumFields), built on the host from the plans
// (interleave/ops/pack_tokens.py build_layout) and validated by csrc/ops/pack_tokens_checks.cpp.
// A segment is either one newline row, or a "map": `repeat` consecutive feature maps (the frames
// of a video; 1 for an image) each made of tiles_r x tiles_c tiles of side x side feature rows
// (the base tile is a 1x1 map, the anyres grid a rows x cols map), cropped to
// [crop_top, +crop_h) x [crop_left, +crop_w) (transformers' unpad_image), resampled to
// out_h x out_w (copy, bilinear, or 2x2 avg/max pooling in floor mode) and written row-major,
// optionally with the newline after every output row (LLaVA-NeXT's image_newline column).
//
// Forward: every output row computes its taps (output_taps) and reads them. Backward: every input
// row computes the output rows it fed (for_each_contribution) and gathers their gradients, so
// nothing is accumulated with atomics and the sum order is fixed (deterministic).
#pragma once

#include <math.h>
#include <stdint.h>

#include "macros.h"

namespace interleave {
namespace pack {

enum Field : int {
  kKind = 0, kOutStart, kOutRows, kSrcStart, kRepeat, kTilesR, kTilesC, kCropTop, kCropLeft,
  kCropH, kCropW, kResample, kOutH, kOutW, kNewlineCol, kReserved, kNumFields
};
enum Kind : int { kKindMap = 0, kKindNewline = 1 };
enum Resample : int { kCopy = 0, kBilinear = 1, kAvg2 = 2, kMax2 = 3 };

struct Segment {
  int64_t kind, out_start, out_rows, src_start, repeat, tiles_r, tiles_c, crop_top, crop_left,
      crop_h, crop_w, resample, out_h, out_w, newline_col;
};

IL_HD Segment load_segment(const int64_t* f) {
  Segment s;
  s.kind = f[kKind];
  s.out_start = f[kOutStart];
  s.out_rows = f[kOutRows];
  s.src_start = f[kSrcStart];
  s.repeat = f[kRepeat];
  s.tiles_r = f[kTilesR];
  s.tiles_c = f[kTilesC];
  s.crop_top = f[kCropTop];
  s.crop_left = f[kCropLeft];
  s.crop_h = f[kCropH];
  s.crop_w = f[kCropW];
  s.resample = f[kResample];
  s.out_h = f[kOutH];
  s.out_w = f[kOutW];
  s.newline_col = f[kNewlineCol];
  return s;
}

IL_HD int64_t row_width(const Segment& s) { return s.out_w + s.newline_col; }
IL_HD int64_t out_rows_per_map(const Segment& s) { return s.out_h * row_width(s); }
IL_HD int64_t src_rows_per_map(const Segment& s, int64_t side) {
  return s.tiles_r * s.tiles_c * side * side;
}

// The flat feature row of map `rep` at map coordinate (fy, fx): the map is the tiles laid out
// row-major, each tile's side*side rows row-major (transformers' view(rows, cols, side, side, H)
// .permute(4, 0, 2, 1, 3)).
IL_HD int64_t map_source_row(const Segment& s, int64_t side, int64_t rep, int64_t fy, int64_t fx) {
  const int64_t ty = fy / side, tx = fx / side;
  return s.src_start + rep * src_rows_per_map(s, side) + (ty * s.tiles_c + tx) * side * side +
         (fy - ty * side) * side + (fx - tx * side);
}

// One axis of bilinear interpolation with align_corners=False, in float as ATen computes it
// (UpSample.h area_pixel_compute_scale / area_pixel_compute_source_index / guard_index_and_lambda):
// scale = in/out, src = fma(scale, dst+0.5, -0.5) clamped at 0, i0 = floor(src) (at most in-1),
// i1 = i0+1 unless at the edge, w1 = src-i0, w0 = 1-w1.
// A is ATen's opmath type: float for float/bfloat16/float16 features, double for double.
template <typename A>
struct LinearTap {
  int64_t i0, i1;
  A w0, w1;
};
IL_HD float il_floor(float x) { return floorf(x); }
IL_HD double il_floor(double x) { return floor(x); }
IL_HD float il_fma(float a, float b, float c) { return fmaf(a, b, c); }
IL_HD double il_fma(double a, double b, double c) { return fma(a, b, c); }
template <typename A>
IL_HD LinearTap<A> linear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const A scale = static_cast<A>(in_size) / static_cast<A>(out_size);
  // A fused multiply-add, as ATen's compiled `scale * (dst + 0.5) - 0.5` is on both devices (gcc
  // and nvcc contract it): for a 27 -> 14 frame this moves src by an ulp (~2e-6 at src ~ 25), which
  // would change outputs by ~1e-5 instead of the last bit.
  A src = il_fma(scale, static_cast<A>(dst) + A(0.5), A(-0.5));
  if (src < A(0)) src = A(0);
  int64_t i0 = static_cast<int64_t>(il_floor(src));
  if (i0 > in_size - 1) i0 = in_size - 1;
  A lambda = src - static_cast<A>(i0);
  lambda = lambda < A(0) ? A(0) : (lambda > A(1) ? A(1) : lambda);
  LinearTap<A> t;
  t.i0 = i0;
  t.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  t.w1 = lambda;
  t.w0 = A(1) - lambda;
  return t;
}

// The weight with which input index `c` feeds output index `dst` along one axis (both taps may
// be `c` at the edge). 0 when it does not.
template <typename A>
IL_HD A linear_weight(int64_t dst, int64_t c, int64_t in_size, int64_t out_size) {
  const LinearTap<A> t = linear_tap<A>(dst, in_size, out_size);
  A w = A(0);
  if (t.i0 == c) w += t.w0;
  if (t.i1 == c) w += t.w1;
  return w;
}

// The output indices along one axis whose taps can include input index c: a superset, tested
// exactly with linear_weight. Any scale works (upsampling gives a wider range).
IL_HD void linear_candidates(int64_t c, int64_t in_size, int64_t out_size, int64_t* lo, int64_t* hi) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  int64_t a = static_cast<int64_t>(floor((static_cast<double>(c) - 0.5) / scale - 0.5)) - 1;
  int64_t b = static_cast<int64_t>(ceil((static_cast<double>(c) + 1.5) / scale - 0.5)) + 1;
  *lo = a < 0 ? 0 : a;
  *hi = b > out_size - 1 ? out_size - 1 : b;
}

enum TapKind : int { kTapCopy = 0, kTapNewline, kTapBilinear, kTapAvg, kTapMax };

// What one output row reads. copy: src[0]. bilinear: src = (y0,x0), (y0,x1), (y1,x0), (y1,x1),
// combined as (x00*wx0 + x01*wx1)*wy0 + (x10*wx0 + x11*wx1)*wy1 (ATen's separable order).
// avg/max: the 2x2 window row-major (avg: ((x0+x1)+x2)+x3 then /4; max: the first maximum, NaN
// wins, as ATen's max_pool2d).
template <typename A>
struct OutputTaps {
  int kind;
  int64_t src[4];
  A wy0, wy1, wx0, wx1;
};

template <typename A>
IL_HD OutputTaps<A> output_taps(const Segment& s, int64_t side, int64_t local) {
  OutputTaps<A> t;
  t.kind = kTapNewline;
  t.src[0] = t.src[1] = t.src[2] = t.src[3] = 0;
  t.wy0 = t.wy1 = t.wx0 = t.wx1 = A(0);
  if (s.kind != kKindMap) return t;
  const int64_t per = out_rows_per_map(s), width = row_width(s);
  const int64_t rep = local / per, r = local - rep * per;
  const int64_t y = r / width, x = r - y * width;
  if (x >= s.out_w) return t;  // the newline column
  if (s.resample == kCopy) {
    t.kind = kTapCopy;
    t.src[0] = map_source_row(s, side, rep, s.crop_top + y, s.crop_left + x);
  } else if (s.resample == kBilinear) {
    t.kind = kTapBilinear;
    const LinearTap<A> ty = linear_tap<A>(y, s.crop_h, s.out_h), tx = linear_tap<A>(x, s.crop_w, s.out_w);
    const int64_t y0 = s.crop_top + ty.i0, y1 = s.crop_top + ty.i1;
    const int64_t x0 = s.crop_left + tx.i0, x1 = s.crop_left + tx.i1;
    t.src[0] = map_source_row(s, side, rep, y0, x0);
    t.src[1] = map_source_row(s, side, rep, y0, x1);
    t.src[2] = map_source_row(s, side, rep, y1, x0);
    t.src[3] = map_source_row(s, side, rep, y1, x1);
    t.wy0 = ty.w0;
    t.wy1 = ty.w1;
    t.wx0 = tx.w0;
    t.wx1 = tx.w1;
  } else {
    t.kind = s.resample == kAvg2 ? kTapAvg : kTapMax;
    const int64_t y0 = s.crop_top + 2 * y, x0 = s.crop_left + 2 * x;
    t.src[0] = map_source_row(s, side, rep, y0, x0);
    t.src[1] = map_source_row(s, side, rep, y0, x0 + 1);
    t.src[2] = map_source_row(s, side, rep, y0 + 1, x0);
    t.src[3] = map_source_row(s, side, rep, y0 + 1, x0 + 1);
  }
  return t;
}

// Where input row `src_row` (inside map segment s) sits: its map index and crop coordinates.
// inside=false when the crop cut it away (it then gets a zero gradient).
struct InputPlace {
  bool inside;
  int64_t rep, cy, cx;
};
IL_HD InputPlace input_place(const Segment& s, int64_t side, int64_t src_row) {
  InputPlace p;
  const int64_t per = src_rows_per_map(s, side), area = side * side;
  const int64_t off = src_row - s.src_start;
  p.rep = off / per;
  const int64_t in_map = off - p.rep * per;
  const int64_t tile = in_map / area, pos = in_map - tile * area;
  const int64_t ty = tile / s.tiles_c, tx = tile - ty * s.tiles_c;
  const int64_t py = pos / side, px = pos - py * side;
  p.cy = ty * side + py - s.crop_top;
  p.cx = tx * side + px - s.crop_left;
  p.inside = p.cy >= 0 && p.cx >= 0 && p.cy < s.crop_h && p.cx < s.crop_w;
  return p;
}

IL_HD int64_t output_row(const Segment& s, int64_t rep, int64_t oy, int64_t ox) {
  return s.out_start + rep * out_rows_per_map(s) + oy * row_width(s) + ox;
}

// Calls f(output_row, weight) for every output row fed by the input at `p` (copy and avg:
// at most one; bilinear: ascending (oy, ox), the order in which ATen's backward adds them),
// with the weight the forward applied. Max pooling is not handled here (its gradient depends on
// the values; see the kernels).
template <typename A, typename F>
IL_HD void for_each_contribution(const Segment& s, const InputPlace& p, F&& f) {
  if (!p.inside) return;
  if (s.resample == kCopy) {
    f(output_row(s, p.rep, p.cy, p.cx), A(1));
  } else if (s.resample == kAvg2) {
    const int64_t oy = p.cy / 2, ox = p.cx / 2;
    if (oy < s.out_h && ox < s.out_w) f(output_row(s, p.rep, oy, ox), A(0.25));
  } else if (s.resample == kBilinear) {
    int64_t ylo, yhi, xlo, xhi;
    linear_candidates(p.cy, s.crop_h, s.out_h, &ylo, &yhi);
    linear_candidates(p.cx, s.crop_w, s.out_w, &xlo, &xhi);
    for (int64_t oy = ylo; oy <= yhi; ++oy) {
      const A wy = linear_weight<A>(oy, p.cy, s.crop_h, s.out_h);
      if (wy == A(0)) continue;
      for (int64_t ox = xlo; ox <= xhi; ++ox) {
        const A wx = linear_weight<A>(ox, p.cx, s.crop_w, s.out_w);
        if (wx == A(0)) continue;
        f(output_row(s, p.rep, oy, ox), wy * wx);
      }
    }
  }
}

// Max pooling backward: the output window holding the input at `p` (false if floor mode drops
// it), and the input's position k in the window (row-major 0..3). The gradient goes to it in a
// channel iff the window's first maximum (NaN wins) is at k.
IL_HD bool max_window(const Segment& s, const InputPlace& p, int64_t* out_row, int* k,
                      int64_t window_src[4], int64_t side) {
  if (!p.inside) return false;
  const int64_t oy = p.cy / 2, ox = p.cx / 2;
  if (oy >= s.out_h || ox >= s.out_w) return false;
  *out_row = output_row(s, p.rep, oy, ox);
  *k = static_cast<int>((p.cy - 2 * oy) * 2 + (p.cx - 2 * ox));
  const int64_t y0 = s.crop_top + 2 * oy, x0 = s.crop_left + 2 * ox;
  window_src[0] = map_source_row(s, side, p.rep, y0, x0);
  window_src[1] = map_source_row(s, side, p.rep, y0, x0 + 1);
  window_src[2] = map_source_row(s, side, p.rep, y0 + 1, x0);
  window_src[3] = map_source_row(s, side, p.rep, y0 + 1, x0 + 1);
  return true;
}

// Index (0..3) of the 2x2 window's maximum as ATen's max_pool2d picks it: scanning row-major from
// max = -inf and index 0, an element replaces the max when `val > max || isnan(val)` (so the first
// maximum wins, and the last NaN).
template <typename A>
IL_HD int argmax4(A v0, A v1, A v2, A v3) {
  const A v[4] = {v0, v1, v2, v3};
  int k = 0;
  A m = -INFINITY;
  for (int i = 0; i < 4; ++i) {
    if (v[i] > m || v[i] != v[i]) {
      m = v[i];
      k = i;
    }
  }
  return k;
}

// Binary search: the segment (index into `starts`, ascending) whose range holds `row`.
IL_HD int64_t find_range(const int64_t* starts, int64_t count, int64_t row) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (starts[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace pack
}  // namespace interleave
