// Index math of pack_tokens (csrc/common/pack_tokens.h), without torch: ATen's bilinear taps, the
// backward's candidate ranges (they must cover every output that reads an input), the copy path's
// forward/backward inverse, and max pooling's tie and NaN rules.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <initializer_list>

#include "check.h"
#include "common/pack_tokens.h"

using namespace interleave::pack;

static Segment map_segment(int64_t repeat, int64_t tiles_r, int64_t tiles_c, int64_t top, int64_t left, int64_t ch,
                           int64_t cw, int64_t resample, int64_t oh, int64_t ow, int64_t newline_col) {
  Segment s{};
  s.kind = kKindMap;
  s.out_start = 1000;
  s.src_start = 729;
  s.repeat = repeat;
  s.tiles_r = tiles_r;
  s.tiles_c = tiles_c;
  s.crop_top = top;
  s.crop_left = left;
  s.crop_h = ch;
  s.crop_w = cw;
  s.resample = resample;
  s.out_h = oh;
  s.out_w = ow;
  s.newline_col = newline_col;
  s.out_rows = repeat * oh * (ow + newline_col);
  return s;
}

int main() {
  // OneVision's 27 -> 14 frame pooling: output 0 reads inputs 0 and 1 at 0.5357 / 0.4643
  // (REFERENCE.md section 7); the last output clamps at the edge.
  const LinearTap<float> t0 = linear_tap<float>(0, 27, 14);
  IL_CHECK(t0.i0 == 0 && t0.i1 == 1 && std::fabs(t0.w0 - 0.5357143f) < 1e-6f && std::fabs(t0.w1 - 0.4642857f) < 1e-6f);
  const LinearTap<float> t13 = linear_tap<float>(13, 27, 14);
  IL_CHECK(t13.i0 == 25 && t13.i1 == 26);
  // Same size: a copy (lambda 0). Upsampling clamps the first outputs to input 0.
  for (int64_t d = 0; d < 9; ++d) {
    const LinearTap<double> t = linear_tap<double>(d, 9, 9);
    IL_CHECK(t.i0 == d && t.w0 == 1.0 && t.w1 == 0.0);
  }
  const LinearTap<float> up = linear_tap<float>(0, 2, 8);
  IL_CHECK(up.i0 == 0 && up.w0 == 1.f && up.w1 == 0.f);

  // The candidate range of every input covers every output whose taps include it, and the
  // weights add up to the forward's: sizes 1..40 both ways (down- and upsampling).
  for (int64_t in = 1; in <= 40; ++in) {
    for (int64_t out = 1; out <= 40; ++out) {
      for (int64_t c = 0; c < in; ++c) {
        int64_t lo, hi;
        linear_candidates(c, in, out, &lo, &hi);
        IL_CHECK(lo >= 0 && hi <= out - 1);
        for (int64_t o = 0; o < out; ++o) {
          const float w = linear_weight<float>(o, c, in, out);
          if (w != 0.f) IL_CHECK(o >= lo && o <= hi);
        }
      }
      for (int64_t o = 0; o < out; ++o) {  // each output's weights sum to 1 over its inputs
        float sum = 0.f;
        for (int64_t c = 0; c < in; ++c) sum += linear_weight<float>(o, c, in, out);
        IL_CHECK(std::fabs(sum - 1.f) < 1e-6f);
      }
    }
  }

  // Copy segments: every output row's source maps back to that output row (a 3x5 grid of 27x27
  // tiles cropped to 75x135 with a newline column; a 2-frame map).
  const int64_t side = 27;
  const Segment grid = map_segment(1, 3, 5, 3, 0, 75, 135, kCopy, 75, 135, 1);
  const Segment frames = map_segment(2, 1, 1, 0, 0, 27, 27, kCopy, 27, 27, 0);
  for (const Segment* s : {&grid, &frames}) {
    int64_t newlines = 0;
    for (int64_t local = 0; local < s->out_rows; ++local) {
      const OutputTaps<float> t = output_taps<float>(*s, side, local);
      if (t.kind == kTapNewline) {
        ++newlines;
        continue;
      }
      IL_CHECK(t.kind == kTapCopy);
      IL_CHECK(t.src[0] >= s->src_start && t.src[0] < s->src_start + s->repeat * src_rows_per_map(*s, side));
      const InputPlace p = input_place(*s, side, t.src[0]);
      IL_CHECK(p.inside && output_row(*s, p.rep, p.cy, p.cx) == s->out_start + local);
    }
    IL_CHECK(newlines == s->repeat * s->out_h * s->newline_col);
  }
  // Rows of the grid's padding (rows 0..2 and 78..80 of the 81-row map) are outside the crop.
  IL_CHECK(!input_place(grid, side, grid.src_start + 0).inside);
  IL_CHECK(input_place(grid, side, grid.src_start + 3 * side).inside);

  // 2x2 pooling in floor mode drops the 27th row and column.
  const Segment pool = map_segment(1, 1, 1, 0, 0, 27, 27, kAvg2, 13, 13, 0);
  int64_t fed = 0;
  for (int64_t r = 0; r < 729; ++r) {
    const InputPlace p = input_place(pool, side, pool.src_start + r);
    for_each_contribution<float>(pool, p, [&](int64_t, float w) {
      IL_CHECK(w == 0.25f);
      ++fed;
    });
  }
  IL_CHECK(fed == 26 * 26);

  // Max pooling: first maximum wins ties, the last NaN wins, -inf everywhere picks the first.
  const float nan = NAN, inf = INFINITY;
  IL_CHECK(argmax4<float>(1.f, 3.f, 3.f, 2.f) == 1);
  IL_CHECK(argmax4<float>(1.f, nan, 3.f, nan) == 3);
  IL_CHECK(argmax4<float>(nan, 5.f, 1.f, 2.f) == 0);
  IL_CHECK(argmax4<float>(-inf, -inf, -inf, -inf) == 0);
  IL_CHECK(argmax4<double>(0.0, -0.0, 0.0, 1e-300) == 3);

  // Range search over ascending starts.
  const int64_t starts[] = {0, 729, 11664, 11665};
  IL_CHECK(find_range(starts, 4, 0) == 0 && find_range(starts, 4, 728) == 0 && find_range(starts, 4, 729) == 1);
  IL_CHECK(find_range(starts, 4, 11664) == 2 && find_range(starts, 4, 99999) == 3);
  std::printf("pack_index: ok\n");
  return 0;
}
