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

// Up to this many positions the sync-free CUDA forward is one launch: every block counts the
// placeholders before its chunk from the ids itself, instead of a count kernel and chunk_info (a
// launch, an allocation and ~2 us of device time). The blocks' reads of ids grow as n^2 / 8 bytes
// (8 MiB of L2 reads at 8192 positions, chunks of 32), so longer inputs keep the count kernel.
// kMergeSelfCountMax by default; 0 always takes the count kernel (the benchmark times both: the
// e857c2a H100 profile had the one-launch kernel at 13.0 us against 8.6 + 1.9 us for the two
// kernels at D=1024 bf16, warm).
constexpr int64_t kMergeSelfCountMax = 8192;
int64_t& merge_cuda_self_count_max();
// Whether each block of the one-launch path starts its walk over the ids at its own offset
// (MergePositions::rotate_count); off by default until a GPU run times it.
bool& merge_cuda_count_rotation();
// Whether the sync-free CUDA forward is one launch with a decoupled look-back at every n (no count
// kernel, no n^2 reads of the ids) instead of the self count up to merge_cuda_self_count_max()
// positions and the count kernel beyond. Off by default: the de8175c H100 run timed it 1-5% slower
// than both at the benchmark's 8192 positions with a cold L2 (faster warm: 14.7 against 16.6 us of
// kernel at D=1024 bf16); INTERLEAVE_MERGE_LOOKBACK=1 in the environment starts it on.
bool& merge_cuda_lookback();
// 16-byte loads in flight per thread in the CUDA forward's flat copy: 8 (default) or 16 (a
// benchmark variant waiting for a GPU run; see block_copy_rows_flat).
int64_t& merge_cuda_flat_loads();

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
