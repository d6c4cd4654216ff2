// Torch-facing entry points of merge_tokens: argument checks shared by both backends, and the
// per-backend implementations registered in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <tuple>

#include "../common/merge_tokens.h"

namespace interleave {

struct MergeShape {
  int64_t batch, length, dim, num_embeddings, num_visual;
  PlaceholderIds placeholders;
};

// Checks everything that is known without reading tensor data (shapes, dtypes, devices, the
// placeholder-id list, num_placeholders vs K) and raises ValueError/TypeError naming the problem.
MergeShape check_merge_tokens_args(const at::Tensor& input_ids, const at::Tensor& embed_weight,
                                   const at::Tensor& visual, at::IntArrayRef image_token_ids,
                                   std::optional<int64_t> num_placeholders);

// Shared message for a data-dependent failure found by the count/validate pass.
[[noreturn]] void raise_merge_data_error(const at::Tensor& input_ids, int64_t placeholders,
                                         int64_t num_visual, int64_t first_bad_position,
                                         int64_t num_embeddings);

// Positions per block of the CUDA kernels at least (the chunk is max(this, ceil(n / kMaxChunks))):
// kMinChunk by default; tests and the benchmark's variants set it (smaller chunks mean more blocks,
// each copying fewer rows, for short sequences).
int64_t& merge_cuda_min_chunk();

at::Tensor merge_tokens_cpu(const at::Tensor& input_ids, const at::Tensor& embed_weight,
                            const at::Tensor& visual, at::IntArrayRef image_token_ids,
                            std::optional<int64_t> num_placeholders, int64_t padding_idx);

std::tuple<at::Tensor, at::Tensor> merge_tokens_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input_ids, at::IntArrayRef image_token_ids,
    int64_t num_embeddings, int64_t num_visual, at::ScalarType visual_dtype, int64_t padding_idx,
    bool weight_grad, bool visual_grad);

#ifdef INTERLEAVE_WITH_CUDA
at::Tensor merge_tokens_cuda(const at::Tensor& input_ids, const at::Tensor& embed_weight,
                             const at::Tensor& visual, at::IntArrayRef image_token_ids,
                             std::optional<int64_t> num_placeholders, int64_t padding_idx);

std::tuple<at::Tensor, at::Tensor> merge_tokens_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input_ids, at::IntArrayRef image_token_ids,
    int64_t num_embeddings, int64_t num_visual, at::ScalarType visual_dtype, int64_t padding_idx,
    bool weight_grad, bool visual_grad);
#endif

// Validates the backward op's arguments (shared by both backends).
MergeShape check_merge_tokens_backward_args(const at::Tensor& grad_output,
                                            const at::Tensor& input_ids,
                                            at::IntArrayRef image_token_ids,
                                            int64_t num_embeddings, int64_t num_visual,
                                            at::ScalarType visual_dtype);

}  // namespace interleave
