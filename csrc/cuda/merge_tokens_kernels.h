// Launchers of the merge_tokens CUDA kernels. Raw pointers and sizes only: this header is included
// by the torch glue (merge_tokens_cuda.cpp) and by merge_tokens_kernels.cu, which must stay free of
// torch headers to keep its compile time low.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/merge_tokens.h"
#include "dtype.h"

namespace interleave {
namespace cuda {

// The one-launch sync-free forward's decoupled look-back state (merge_tokens_cuda.cpp keeps one per
// device and stream): a ticket counter that hands out chunks in the order blocks start, a counter of
// blocks past their look-back, and one status word per chunk (flag in the top two bits: 1 its own
// placeholder count, 2 the count up to and including it). All zero between launches: the last block
// past its look-back zeroes it for the next launch.
struct MergeLookback {
  unsigned long long ticket;
  unsigned long long done;
  unsigned long long status[kMaxChunks];
};

struct MergePositions {
  const int64_t* ids;      // [n] flattened input_ids
  int64_t n;               // B * L
  PlaceholderIds placeholders;
  int64_t num_embeddings;  // V
  int64_t num_visual;      // K
  int64_t dim;             // D
  int64_t chunk, num_chunks;
  int64_t* chunk_info;     // [2 * num_chunks]: placeholder count, then first bad text position or -1;
                           // nullptr: the forward counts for itself (merge_cuda_self_count_max)
  bool rotate_count;       // self count: each block walks the ids from its own offset
  MergeLookback* lookback; // chunk_info == nullptr and this set: decoupled look-back instead of the
                           // self count (blocks publish their counts and read their predecessors')
  bool lookback_inclusive; // publish inclusive prefixes (always; false only in the emulated tests,
                           // which make every block walk back to the first chunk)
  int flat_loads;          // the forward's flat copy: 16-byte loads in flight per thread, 8 or 16
};

// First pass: per chunk, count placeholders and find the first text id outside [0, V).
void launch_merge_count(const MergePositions& pos, cudaStream_t stream);

// Second pass (or the only one, chunk_info == nullptr): every output row written once. With
// device_assert, a count mismatch or a bad id
// (possible only on the sync-free path, where the host did not read chunk_info) traps with a
// device-side assertion; rows that would be read out of bounds are written as zeros instead.
void launch_merge_forward(const MergePositions& pos, const void* embed_weight, DType weight_dtype,
                          const void* visual, DType visual_dtype, void* out, bool device_assert,
                          cudaStream_t stream);

// Backward, visual part: grad_visual[k] = grad_output[position of placeholder k] (cast).
void launch_merge_backward_visual(const MergePositions& pos, const void* grad_output,
                                  DType grad_dtype, void* grad_visual, DType visual_dtype,
                                  cudaStream_t stream);

// Backward, embedding part: keys[p] = id for text positions that get a gradient, V otherwise.
void launch_merge_weight_keys(const MergePositions& pos, int64_t padding_idx, int64_t* keys,
                              cudaStream_t stream);

// grad_weight (zeroed by the caller) rows summed deterministically: sorted_keys/order come from a
// stable sort of keys, so each row sums its positions in ascending order, in float (double for
// float64) and is rounded once.
void launch_merge_weight_grad(const int64_t* sorted_keys, const int64_t* order, int64_t n,
                              int64_t num_embeddings, int64_t dim, const void* grad_output,
                              DType grad_dtype, void* grad_weight, cudaStream_t stream);

}  // namespace cuda
}  // namespace interleave
