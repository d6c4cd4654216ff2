// Torch-facing entry points of pack_tokens: the layout checks shared by both backends and the
// per-backend implementations registered in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../common/pack_tokens.h"

namespace interleave {

// A validated layout, with what the backward needs besides the segments: the map segments in
// source order (their src_start ascending, for the input-row search) and the output rows that
// hold the newline (in ascending order: the newline's gradient sums them in that order).
struct PackLayout {
  std::vector<pack::Segment> segments;
  std::vector<int64_t> out_starts;      // [S] segment out_start, ascending
  std::vector<int64_t> map_segments;    // indices of the map segments, src_start ascending
  std::vector<int64_t> map_src_starts;  // their src_start
  std::vector<int64_t> newline_rows;
  int64_t num_rows = 0;
  bool has_max = false;
};

struct PackShape {
  int64_t num_features, side, dim;  // features [num_features, side*side, dim]
  PackLayout layout;
};

// Checks features ([P, side*side, H] float), newline ([H], same dtype and device, or None), the
// layout table (int64 CPU [S, pack::kNumFields]: segments contiguous in the output, sources inside
// the features and disjoint in ascending order, crops inside their maps, output sizes consistent
// with the resampling) and num_rows; raises ValueError/TypeError naming the problem.
PackShape check_pack_tokens_args(const at::Tensor& features, const std::optional<at::Tensor>& newline,
                                 const at::Tensor& layout, int64_t num_rows, int64_t side);

// Backward: grad [num_rows, H]; features (needed when a segment max-pools) or None.
PackShape check_pack_tokens_backward_args(const at::Tensor& grad, const std::optional<at::Tensor>& features,
                                          const at::Tensor& layout, int64_t num_features, int64_t side);

// Grid cap of the CUDA row kernels (0: one block per 8 rows, the default); tests and the
// benchmark's variants set it (a persistent-style grid of a few blocks per SM).
int64_t& pack_cuda_max_blocks();

at::Tensor pack_tokens_cpu(const at::Tensor& features, const std::optional<at::Tensor>& newline,
                           const at::Tensor& layout, int64_t num_rows, int64_t side);
std::tuple<at::Tensor, at::Tensor> pack_tokens_backward_cpu(
    const at::Tensor& grad, const std::optional<at::Tensor>& features, const at::Tensor& layout,
    int64_t num_features, int64_t side, bool newline_grad);
#ifdef INTERLEAVE_WITH_CUDA
at::Tensor pack_tokens_cuda(const at::Tensor& features, const std::optional<at::Tensor>& newline,
                            const at::Tensor& layout, int64_t num_rows, int64_t side);
std::tuple<at::Tensor, at::Tensor> pack_tokens_backward_cuda(
    const at::Tensor& grad, const std::optional<at::Tensor>& features, const at::Tensor& layout,
    int64_t num_features, int64_t side, bool newline_grad);
#endif

}  // namespace interleave
