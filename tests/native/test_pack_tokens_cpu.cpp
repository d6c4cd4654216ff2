// The CPU kernels of pack_tokens through their torch entry points, under ASan/UBSan in CI: a
// layout with every segment kind against naive loops, odd widths, and rejected layouts (which
// must raise before any kernel touches memory).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "check.h"
#include "ops/pack_tokens.h"

using namespace interleave;

namespace {

constexpr int64_t kSide = 4;  // 4x4 features per tile keeps the naive loops small

std::vector<int64_t> map_row(int64_t out_start, int64_t src_start, int64_t repeat, int64_t tr, int64_t tc,
                             int64_t top, int64_t left, int64_t ch, int64_t cw, int64_t resample, int64_t oh,
                             int64_t ow, int64_t nl) {
  return {pack::kKindMap, out_start, repeat * oh * (ow + nl), src_start, repeat, tr, tc, top, left, ch, cw,
          resample, oh, ow, nl, 0};
}

at::Tensor table_of(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return at::tensor(flat, at::kLong).view({static_cast<int64_t>(rows.size()), pack::kNumFields});
}

// Feature value of map coordinate (y, x) of a tiles_c-wide grid starting at tile `first`.
float at_map(const float* f, int64_t dim, int64_t first, int64_t tc, int64_t y, int64_t x, int64_t d) {
  const int64_t tile = first + (y / kSide) * tc + x / kSide;
  return f[(tile * kSide * kSide + (y % kSide) * kSide + x % kSide) * dim + d];
}

}  // namespace

int main() {
  for (const int64_t dim : {1, 3, 16}) {
    // Tiles: 0 base (copy), 1..6 a 2x3 grid cropped to rows 1..6, cols 2..9 and shrunk 6x8 -> 3x5
    // with a newline column, 7..8 two frames avg-pooled 4x4 -> 2x2, 9 one frame max-pooled, then
    // a newline row.
    const int64_t P = 10;
    const at::Tensor features = at::randn({P, kSide * kSide, dim});
    const at::Tensor newline = at::randn({dim});
    std::vector<std::vector<int64_t>> rows;
    rows.push_back(map_row(0, 0, 1, 1, 1, 0, 0, 4, 4, pack::kCopy, 4, 4, 0));
    rows.push_back(map_row(16, 16, 1, 2, 3, 1, 2, 6, 8, pack::kBilinear, 3, 5, 1));
    rows.push_back(map_row(34, 7 * 16, 2, 1, 1, 0, 0, 4, 4, pack::kAvg2, 2, 2, 0));
    rows.push_back(map_row(42, 9 * 16, 1, 1, 1, 0, 0, 4, 4, pack::kMax2, 2, 2, 0));
    rows.push_back({pack::kKindNewline, 46, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    const at::Tensor layout = table_of(rows);
    const at::Tensor out = pack_tokens_cpu(features, newline, layout, 47, kSide);
    IL_CHECK(out.size(0) == 47 && out.size(1) == dim);
    const float* f = features.const_data_ptr<float>();
    const float* o = out.const_data_ptr<float>();
    const float* nl = newline.const_data_ptr<float>();
    for (int64_t d = 0; d < dim; ++d) {
      for (int64_t r = 0; r < 16; ++r) IL_CHECK(o[r * dim + d] == f[r * dim + d]);
      for (int64_t y = 0; y < 3; ++y) {
        IL_CHECK(o[(16 + y * 6 + 5) * dim + d] == nl[d]);
        for (int64_t x = 0; x < 5; ++x) {  // naive bilinear (float64) on the crop
          const double sy = std::max(0.0, (y + 0.5) * 6.0 / 3.0 - 0.5), sx = std::max(0.0, (x + 0.5) * 8.0 / 5.0 - 0.5);
          const int64_t y0 = static_cast<int64_t>(sy), x0 = static_cast<int64_t>(sx);
          const int64_t y1 = std::min<int64_t>(y0 + 1, 5), x1 = std::min<int64_t>(x0 + 1, 7);
          const double ly = sy - y0, lx = sx - x0;
          auto v = [&](int64_t yy, int64_t xx) { return static_cast<double>(at_map(f, dim, 1, 3, 1 + yy, 2 + xx, d)); };
          const double expect = (1 - ly) * ((1 - lx) * v(y0, x0) + lx * v(y0, x1)) + ly * ((1 - lx) * v(y1, x0) + lx * v(y1, x1));
          IL_CHECK(std::fabs(o[(16 + y * 6 + x) * dim + d] - expect) < 1e-5);
        }
      }
      for (int64_t frame = 0; frame < 2; ++frame)
        for (int64_t y = 0; y < 2; ++y)
          for (int64_t x = 0; x < 2; ++x) {
            double sum = 0;
            for (int64_t k = 0; k < 4; ++k) sum += at_map(f, dim, 7 + frame, 1, 2 * y + k / 2, 2 * x + k % 2, d);
            IL_CHECK(std::fabs(o[(34 + frame * 4 + y * 2 + x) * dim + d] - sum / 4) < 1e-5);
          }
      for (int64_t y = 0; y < 2; ++y)
        for (int64_t x = 0; x < 2; ++x) {
          float m = -INFINITY;
          for (int64_t k = 0; k < 4; ++k) m = std::max(m, at_map(f, dim, 9, 1, 2 * y + k / 2, 2 * x + k % 2, d));
          IL_CHECK(o[(42 + y * 2 + x) * dim + d] == m);
        }
      IL_CHECK(o[46 * dim + d] == nl[d]);
    }

    // Backward: every feature row gets exactly its share (sum over outputs of weight * grad):
    // with grad = 1 everywhere, a copied row gets 1, an avg-pooled row 1/4, a cropped row 0; the
    // newline gets the count of its rows (3 + 1).
    const at::Tensor ones = at::ones({47, dim});
    auto [gf, gn] = pack_tokens_backward_cpu(ones, features, layout, P, kSide, true);
    const float* g = gf.const_data_ptr<float>();
    IL_CHECK(g[0] == 1.f && g[(7 * 16) * dim] == 0.25f && gn.const_data_ptr<float>()[0] == 4.f);
    IL_CHECK(g[(16 + 0) * dim] == 0.f);  // grid map row 0 is cropped away
    double total = 0;
    for (int64_t i = 0; i < gf.numel(); ++i) total += g[i];
    // Each output row's weights sum to 1 (max: exactly one argmax per channel).
    IL_CHECK(std::fabs(total - (47.0 - 4.0) * dim) < 1e-3 * dim);
  }

  // Rejected layouts raise c10::ValueError before any kernel runs.
  const at::Tensor features = at::randn({2, kSide * kSide, 4});
  auto rejects = [&](std::vector<int64_t> row, int64_t num_rows) {
    try {
      pack_tokens_cpu(features, std::nullopt, table_of({row}), num_rows, kSide);
    } catch (const c10::ValueError&) {
      return true;
    }
    return false;
  };
  IL_CHECK(rejects(map_row(0, 17, 1, 1, 1, 0, 0, 4, 4, pack::kCopy, 4, 4, 0), 16));   // reads past the features
  IL_CHECK(rejects(map_row(0, 0, 1, 1, 1, 1, 0, 4, 4, pack::kCopy, 4, 4, 0), 16));    // crop past the map
  IL_CHECK(rejects(map_row(0, 0, 1, 1, 1, 0, 0, 4, 4, pack::kAvg2, 3, 2, 0), 6));     // pooled size wrong
  IL_CHECK(rejects(map_row(0, 0, 1, 1, 1, 0, 0, 4, 4, pack::kCopy, 4, 4, 1), 20));    // newline column, no newline
  IL_CHECK(rejects(map_row(0, 0, 1, 1, 1, 0, 0, 4, 4, pack::kCopy, 4, 4, 0), 17));    // num_rows mismatch
  IL_CHECK(rejects(map_row(0, 0, 1, 1, 1, 0, 0, 4, 4, 7, 4, 4, 0), 16));              // unknown resample
  IL_CHECK(!rejects(map_row(0, 16, 1, 1, 1, 0, 0, 4, 4, pack::kCopy, 4, 4, 0), 16));  // the second tile: fine
  std::printf("pack_tokens_cpu: ok\n");
  return 0;
}
