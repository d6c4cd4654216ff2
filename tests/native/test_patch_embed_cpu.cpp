// The CPU kernel of patch_embed through its torch entry point, against a naive loop over the
// conv's definition (and, under ASan, that the im2col gather never reads outside the pixels: the
// odd sizes leave pixels past the last patch, which must not be read either way).
//
// Per-operator ATen headers instead of <ATen/ATen.h>: half the compile time.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>

#include "check.h"
#include "ops/patch_embed.h"

namespace {

// out[n, t, c] = bias[c] + pos[t, c] + sum_{ch,i,j} W[c, ch, i, j] * pixel(n, ch, py*p+i, px*p+j),
// in double, straight from the definition of a valid stride-p conv.
at::Tensor naive(const at::Tensor& tiles, const at::Tensor& w, const at::Tensor& b,
                 const at::Tensor& pos, bool channels_last) {
  const int64_t N = tiles.size(0), C = w.size(0), cin = w.size(1), p = w.size(2);
  const int64_t H = channels_last ? tiles.size(1) : tiles.size(2);
  const int64_t W = channels_last ? tiles.size(2) : tiles.size(3);
  const int64_t gh = H / p, gw = W / p, T = gh * gw;
  const at::Tensor x = tiles.to(at::kDouble);
  const at::Tensor wd = w.to(at::kDouble), bd = b.to(at::kDouble), pd = pos.to(at::kDouble);
  at::Tensor out = at::empty({N, T, C}, at::kDouble);
  const double* px = x.const_data_ptr<double>();
  const double* pw = wd.const_data_ptr<double>();
  double* po = out.mutable_data_ptr<double>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double acc = bd.const_data_ptr<double>()[c] + pd.const_data_ptr<double>()[t * C + c];
        for (int64_t ch = 0; ch < cin; ++ch)
          for (int64_t i = 0; i < p; ++i)
            for (int64_t j = 0; j < p; ++j) {
              const int64_t y = (t / gw) * p + i, xx = (t % gw) * p + j;
              const int64_t idx = channels_last ? ((n * H + y) * W + xx) * cin + ch
                                                : ((n * cin + ch) * H + y) * W + xx;
              acc += pw[((c * cin + ch) * p + i) * p + j] * px[idx];
            }
        po[(n * T + t) * C + c] = acc;
      }
  return out;
}

double max_rel_error(const at::Tensor& a, const at::Tensor& ref) {
  const at::Tensor ad = a.to(at::kDouble).contiguous();
  const double* x = ad.const_data_ptr<double>();
  const double* r = ref.const_data_ptr<double>();
  double scale = 0, err = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    scale = std::fmax(scale, std::fabs(r[i]));
    err = std::fmax(err, std::fabs(x[i] - r[i]));
  }
  return err / std::fmax(scale, 1e-30);
}

void check_case(int64_t N, int64_t H, int64_t W, int64_t cin, int64_t p, int64_t C, bool channels_last,
                at::ScalarType out_dtype, double tolerance) {
  at::manual_seed(N * 1000 + H * 10 + p);
  const at::Tensor tiles = channels_last
                               ? at::randint(0, 256, {N, H, W, cin}, at::kByte)
                               : at::randn({N, cin, H, W});
  const int64_t T = (H / p) * (W / p);
  const at::Tensor w = at::randn({C, cin, p, p}), b = at::randn({C}), pos = at::randn({T, C});
  const at::Tensor out = interleave::patch_embed_cpu(tiles, w, b, pos, out_dtype);
  IL_CHECK(out.dim() == 3 && out.size(0) == N && out.size(1) == T && out.size(2) == C);
  IL_CHECK(out.scalar_type() == out_dtype);
  const double err = max_rel_error(out, naive(tiles, w, b, pos, channels_last));
  if (!(err <= tolerance)) {
    std::fprintf(stderr, "case N=%lld H=%lld W=%lld cin=%lld p=%lld C=%lld channels_last=%d: rel err %g\n",
                 (long long)N, (long long)H, (long long)W, (long long)cin, (long long)p, (long long)C,
                 (int)channels_last, err);
    IL_CHECK(false);
  }
}

}  // namespace

int main() {
  for (bool cl : {true, false}) {
    check_case(1, 14, 14, 3, 14, 5, cl, at::kFloat, 1e-5);    // one token
    check_case(2, 30, 30, 3, 14, 7, cl, at::kFloat, 1e-5);    // pixels past the last patch
    check_case(3, 17, 23, 1, 4, 9, cl, at::kFloat, 1e-5);     // non-square, one channel
    check_case(2, 30, 28, 4, 7, 6, cl, at::kDouble, 1e-12);   // float64 path
    check_case(2, 28, 28, 3, 14, 8, cl, at::kBFloat16, 1e-2); // rounded once to bf16
  }
  // Rows spread over several blocks (M = 2 * 27 * 27 = 1458 > 256) on every thread.
  check_case(2, 384, 384, 3, 14, 4, true, at::kFloat, 1e-5);
  bool raised = false;
  try {  // bad input raises before any kernel runs
    interleave::patch_embed_cpu(at::randint(0, 256, {1, 10, 10, 3}, at::kByte), at::randn({4, 3, 14, 14}),
                                at::randn({4}), at::randn({0, 4}), std::nullopt);
  } catch (const c10::ValueError&) {
    raised = true;
  }
  IL_CHECK(raised);
  std::printf("patch_embed_cpu: ok\n");
  return 0;
}
