// The CPU kernels of merge_tokens through their torch entry points, against naive loops.
//
// Per-operator ATen headers instead of <ATen/ATen.h> (or torch/extension.h): half the compile time.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <vector>

#include "check.h"
#include "ops/merge_tokens.h"

using interleave::merge_tokens_backward_cpu;
using interleave::merge_tokens_cpu;

namespace {

constexpr int64_t kImage = 90, kVideo = 91;

// IL_CHECK that also names the case that failed.
#define CASE_CHECK(cond)                                                                    \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "case B=%lld L=%lld D=%lld dtype=%s\n", (long long)B, (long long)L, \
                   (long long)D, c10::toString(dtype));                                      \
      IL_CHECK(cond);                                                                       \
    }                                                                                       \
  } while (0)

struct Inputs {
  at::Tensor ids, weight, visual;
  int64_t k;
};

Inputs make(int64_t B, int64_t L, int64_t D, int64_t V, at::ScalarType dtype, uint64_t seed) {
  at::manual_seed(seed);
  Inputs in;
  in.ids = at::randint(0, 80, {B, L}, at::kLong);  // 80 < kImage: text ids never collide
  auto acc = in.ids.accessor<int64_t, 2>();
  in.k = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      if ((b * 7 + l * 3) % 5 == 0) {
        acc[b][l] = (in.k % 2) ? kVideo : kImage;
        ++in.k;
      }
  in.weight = at::randn({V, D}).to(dtype);
  in.visual = at::randn({in.k, D});  // float visual rows, cast by the op
  return in;
}

at::Tensor naive_forward(const Inputs& in) {
  const int64_t B = in.ids.size(0), L = in.ids.size(1), D = in.weight.size(1);
  at::Tensor out = at::empty({B, L, D}, in.weight.options());
  const at::Tensor vis = in.visual.to(in.weight.scalar_type());
  int64_t k = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t id = in.ids[b][l].item<int64_t>();
      out[b][l].copy_(id == kImage || id == kVideo ? vis[k++] : in.weight[id]);
    }
  return out;
}

void test_shape(int64_t B, int64_t L, int64_t D, at::ScalarType dtype) {
  const Inputs in = make(B, L, D, 100, dtype, B * 1000 + L * 10 + D);
  const std::vector<int64_t> ph = {kImage, kVideo};
  const at::Tensor ids0 = in.ids.clone(), w0 = in.weight.clone(), v0 = in.visual.clone();

  const at::Tensor out = merge_tokens_cpu(in.ids, in.weight, in.visual, ph, std::nullopt, -1);
  CASE_CHECK(at::equal(out, naive_forward(in)));

  // Backward: sequential sums in the embedding dtype, like ATen's CPU embedding backward.
  const at::Tensor grad = at::randn({B, L, D}).to(dtype);
  auto [gw, gv] = merge_tokens_backward_cpu(grad, in.ids, ph, 100, in.k, at::kFloat, -1, true, true);
  at::Tensor ew = at::zeros({100, D}, grad.options());
  at::Tensor ev = at::empty({in.k, D}, at::kFloat);
  int64_t k = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t id = in.ids[b][l].item<int64_t>();
      if (id == kImage || id == kVideo)
        ev[k++].copy_(grad[b][l]);
      else
        ew[id].add_(grad[b][l]);
    }
  CASE_CHECK(at::equal(gw, ew));
  CASE_CHECK(at::equal(gv, ev));

  // A count mismatch raises ValueError and leaves the caller's tensors as they were.
  if (in.k > 0) {
    bool raised = false;
    try {
      merge_tokens_cpu(in.ids, in.weight, in.visual.narrow(0, 0, in.k - 1), ph, std::nullopt, -1);
    } catch (const c10::ValueError&) {
      raised = true;
    }
    CASE_CHECK(raised);
  }
  // A text id outside the table raises too.
  at::Tensor bad_ids = in.ids.clone();
  if (in.k < B * L) {
    for (int64_t p = 0; p < B * L; ++p) {
      int64_t& id = bad_ids.data_ptr<int64_t>()[p];
      if (id != kImage && id != kVideo) {
        id = 100;
        break;
      }
    }
    bool raised = false;
    try {
      merge_tokens_cpu(bad_ids, in.weight, in.visual, ph, std::nullopt, -1);
    } catch (const c10::ValueError&) {
      raised = true;
    }
    CASE_CHECK(raised);
  }
  CASE_CHECK(at::equal(ids0, in.ids) && at::equal(w0, in.weight) && at::equal(v0, in.visual));
}

}  // namespace

int main() {
  // L = 0 (empty input), 33 (crosses the 32-position minimum chunk), 300 (B * L up to 900
  // positions: 29 chunks, split over the OpenMP threads).
  for (int64_t B : {1, 2, 3})
    for (int64_t L : {0, 1, 5, 33, 300})
      for (int64_t D : {1, 3, 64})
        for (auto dtype : {at::kFloat, at::kBFloat16}) test_shape(B, L, D, dtype);
  std::printf("test_merge_tokens_cpu: ok\n");
  return 0;
}
