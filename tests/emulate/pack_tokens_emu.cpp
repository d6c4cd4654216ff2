// Host emulation of the pack_tokens CUDA kernels (forward, backward, newline gradient) under
// tests/emulate/cuda_emu.h; see tests/test_cuda_emulated.py. The device layout is derived from the
// segment table as csrc/ops/pack_tokens_checks.cpp and csrc/cuda/pack_tokens_cuda.cpp do (the
// table comes from interleave.ops.pack_tokens.build_layout, valid by construction), float32 only.
#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>

#include <cstdint>
#include <vector>

#include "cuda_emu.h"

#include EMU_KERNEL_SOURCE

using namespace interleave;
using namespace interleave::cuda;
using namespace interleave::pack;

namespace {

struct HostLayout {
  std::vector<int64_t> segments, out_starts, map_segments, map_src_starts, newline_rows;
  PackDeviceLayout device{};
};

void build(const int64_t* table, int64_t num_segments, int64_t num_features, int64_t side, int64_t dim,
           int64_t max_blocks, HostLayout& h) {
  h.segments.assign(table, table + num_segments * kNumFields);
  int64_t rows = 0;
  for (int64_t i = 0; i < num_segments; ++i) {
    const Segment s = load_segment(table + i * kNumFields);
    h.out_starts.push_back(s.out_start);
    if (s.kind == kKindNewline) {
      h.newline_rows.push_back(s.out_start);
    } else {
      h.map_segments.push_back(i);
      h.map_src_starts.push_back(s.src_start);
      if (s.newline_col)
        for (int64_t r = 0; r < s.repeat; ++r)
          for (int64_t y = 0; y < s.out_h; ++y) h.newline_rows.push_back(output_row(s, r, y, s.out_w));
    }
    rows += s.out_rows;
  }
  PackDeviceLayout& d = h.device;
  d.segments = h.segments.data();
  d.out_starts = h.out_starts.data();
  d.map_segments = h.map_segments.data();
  d.map_src_starts = h.map_src_starts.data();
  d.newline_rows = h.newline_rows.data();
  d.num_segments = num_segments;
  d.num_maps = static_cast<int64_t>(h.map_segments.size());
  d.num_newline_rows = static_cast<int64_t>(h.newline_rows.size());
  d.side = side;
  d.dim = dim;
  d.num_rows = rows;
  d.src_rows = num_features * side * side;
  d.max_blocks = max_blocks;
}

template <typename Body>
void with_vec_float(int64_t dim, Body body) {
  if (dim % 4 == 0) body(std::integral_constant<int, 4>{});
  else body(std::integral_constant<int, 1>{});
}

}  // namespace

extern "C" int64_t emu_pack_forward(const int64_t* table, int64_t num_segments, int64_t num_features, int64_t side,
                                    int64_t dim, const float* features, const float* newline, int64_t max_blocks,
                                    float* out) {
  HostLayout h;
  build(table, num_segments, num_features, side, dim, max_blocks, h);
  const PackDeviceLayout L = h.device;
  with_vec_float(dim, [&](auto vec) {
    emu::launch(row_blocks(L.num_rows, L.max_blocks), kThreads, 0,
                [&] { pack_forward_kernel<float, decltype(vec)::value>(L, features, newline, out); });
  });
  return L.num_rows;
}

extern "C" int emu_pack_backward(const int64_t* table, int64_t num_segments, int64_t num_features, int64_t side,
                                 int64_t dim, const float* grad, const float* features, int64_t max_blocks,
                                 float* grad_features, float* grad_newline) {
  HostLayout h;
  build(table, num_segments, num_features, side, dim, max_blocks, h);
  const PackDeviceLayout L = h.device;
  with_vec_float(dim, [&](auto vec) {
    emu::launch(row_blocks(L.src_rows, L.max_blocks), kThreads, 0,
                [&] { pack_backward_kernel<float, decltype(vec)::value>(L, grad, features, grad_features); });
  });
  if (grad_newline != nullptr) {
    const int64_t parts = newline_parts(L.num_newline_rows);
    std::vector<float> partials(static_cast<size_t>(std::max<int64_t>(parts, 1) * dim));
    const unsigned blocks = static_cast<unsigned>((dim + kThreads - 1) / kThreads);
    if (parts > 0)
      emu::launch2d(blocks, static_cast<unsigned>(parts), kThreads, 0,
                    [&] { newline_partial_kernel<float>(L, grad, partials.data()); });
    emu::launch(blocks, kThreads, 0, [&] { newline_final_kernel<float>(dim, parts, partials.data(), grad_newline); });
  }
  return 0;
}
