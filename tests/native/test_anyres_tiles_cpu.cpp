// The CPU kernel of anyres_tiles (row blocks, transposition, threads) against a naive two-pass
// Pillow resize written here from the same coefficients, one job at a time; under ASan/UBSan this
// is also the memory-safety check of the kernel's 4-byte pixel moves and intermediate rows.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/randint.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <vector>

#include "check.h"
#include "common/resample.h"
#include "cpu/resample_simd.h"
#include "ops/anyres_tiles.h"

namespace {

using Image = std::vector<uint8_t>;  // [h, w, 3]

// One resize pass along rows (horizontal) or columns (vertical), the plain Pillow loop.
Image resize_axis(const Image& in, int h, int w, int out_len, bool horizontal) {
  const interleave::AxisCoeffs c = interleave::pil_bicubic_coeffs(horizontal ? w : h, out_len);
  const int oh = horizontal ? h : out_len, ow = horizontal ? out_len : w;
  Image out(static_cast<size_t>(oh) * ow * 3);
  for (int y = 0; y < oh; ++y)
    for (int x = 0; x < ow; ++x)
      for (int ch = 0; ch < 3; ++ch) {
        const int o = horizontal ? x : y;
        int32_t acc = interleave::kResampleHalf;
        for (int i = 0; i < c.count[o]; ++i) {
          const int s = c.first[o] + i;
          const uint8_t v = horizontal ? in[(static_cast<size_t>(y) * w + s) * 3 + ch]
                                       : in[(static_cast<size_t>(s) * w + x) * 3 + ch];
          acc += v * c.weights[static_cast<size_t>(o) * c.ksize + i];
        }
        out[(static_cast<size_t>(y) * ow + x) * 3 + ch] = interleave::resample_clip8(acc);
      }
  return out;
}

Image naive_resize(const Image& in, int h, int w, int oh, int ow, bool vertical_first) {
  Image cur = in;
  int ch = h, cw = w;
  auto horizontal = [&] { if (ow != cw) { cur = resize_axis(cur, ch, cw, ow, true); cw = ow; } };
  auto vertical = [&] { if (oh != ch) { cur = resize_axis(cur, ch, cw, oh, false); ch = oh; } };
  if (vertical_first) { vertical(); horizontal(); } else { horizontal(); vertical(); }
  return cur;
}

void check_case(int h, int w, int oh, int ow, bool vertical_first) {
  at::Tensor image = at::randint(0, 256, {h, w, 3}, at::kByte);
  // tile = 1: every output pixel is its own tile, so the output is the resized image itself.
  std::vector<int64_t> job = {0, h, w, 0, 0, 0, oh, ow, oh, ow, 0, 0, 0, 0, vertical_first ? 1 : 0};
  at::Tensor jobs = at::from_blob(job.data(), {1, interleave::kJobFields}, at::kLong);
  // The same image channels-first ([3, H, W] viewed as [H, W, 3]), read in place by the kernel
  // (a separate allocation of exactly 3 * h * w bytes, so ASan sees any read past a plane).
  const at::Tensor planar = image.permute({2, 0, 1}).contiguous().permute({1, 2, 0});
  const uint8_t* src = image.const_data_ptr<uint8_t>();
  const Image expected = naive_resize(Image(src, src + image.numel()), h, w, oh, ow, vertical_first);
  for (const at::Tensor& input : {image, planar}) {
    at::Tensor out = interleave::anyres_tiles_cpu({input}, jobs, int64_t(oh) * ow, 1, std::nullopt);
    const uint8_t* got = out.const_data_ptr<uint8_t>();
    for (size_t i = 0; i < expected.size(); ++i) {
      if (got[i] != expected[i]) {
        std::fprintf(stderr, "mismatch %dx%d -> %dx%d vertical_first=%d planar=%d at byte %zu\n", h, w, oh, ow,
                     int(vertical_first), int(!input.is_contiguous()), i);
        IL_CHECK(false);
      }
    }
  }
}

// A square output of side `tile` through a [3, 256] float32 table: equal to the table looked up
// at the uint8 tiles of the same job (64-pixel chunks plus a tail when tile % 64 != 0).
void check_lut_case(int h, int w, int tile) {
  at::Tensor image = at::randint(0, 256, {h, w, 3}, at::kByte);
  std::vector<int64_t> job = {0, h, w, 0, 0, 0, tile, tile, tile, tile, 0, 0, 0, 0, 0};
  at::Tensor jobs = at::from_blob(job.data(), {1, interleave::kJobFields}, at::kLong);
  std::vector<float> table(3 * 256);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<float>(i) * 0.37f - 100.0f;
  at::Tensor lut = at::from_blob(table.data(), {3, 256}, at::kFloat);
  at::Tensor tiles = interleave::anyres_tiles_cpu({image}, jobs, 1, tile, std::nullopt);
  at::Tensor values = interleave::anyres_tiles_cpu({image}, jobs, 1, tile, lut);
  const uint8_t* t = tiles.const_data_ptr<uint8_t>();
  const float* v = values.const_data_ptr<float>();
  for (int c = 0; c < 3; ++c)
    for (int64_t i = 0; i < int64_t(tile) * tile; ++i)
      if (v[c * tile * tile + i] != table[c * 256 + t[i * 3 + c]]) {
        std::fprintf(stderr, "lut mismatch %dx%d tile %d channel %d at %lld\n", h, w, tile, c, (long long)i);
        IL_CHECK(false);
      }
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int sizes[][4] = {{1, 1, 5, 7},     {1, 2, 1, 1},     {9, 17, 9, 4},   {17, 9, 4, 9},
                          {33, 70, 8, 24},  {70, 33, 24, 8},  {8, 300, 16, 3}, {300, 8, 3, 16},
                          {64, 64, 64, 64}, {40, 1000, 40, 37}, {123, 45, 67, 89}};
  const int best = static_cast<int>(interleave::anyres_cpu_simd_supported());
  for (int level = 0; level <= best; ++level) {
    interleave::set_anyres_cpu_simd(level);
    for (const auto& s : sizes)
      for (bool vf : {false, true}) check_case(s[0], s[1], s[2], s[3], vf);
    for (int tile : {64, 100, 130}) check_lut_case(57, 211, tile);
    std::printf("test_anyres_tiles_cpu: instruction-set level %d ok\n", level);
  }
  interleave::set_anyres_cpu_simd(-1);
  std::printf("test_anyres_tiles_cpu: ok\n");
  return 0;
}
