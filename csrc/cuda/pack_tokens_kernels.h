// Launchers of the pack_tokens CUDA kernels. Raw pointers and sizes only: this header is included
// by the torch glue (pack_tokens_cuda.cpp) and by pack_tokens_kernels.cu, which stays free of
// torch headers to keep its compile time low.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/pack_tokens.h"
#include "dtype.h"

namespace interleave {
namespace cuda {

// The validated layout on the device (one int64 buffer copied from pinned host memory).
struct PackDeviceLayout {
  const int64_t* segments;        // [num_segments, pack::kNumFields]
  const int64_t* out_starts;      // [num_segments], ascending
  const int64_t* map_segments;    // [num_maps] indices of map segments, src_start ascending
  const int64_t* map_src_starts;  // [num_maps]
  const int64_t* newline_rows;    // [num_newline_rows], ascending
  int64_t num_segments, num_maps, num_newline_rows;
  int64_t side, dim, num_rows, src_rows;
  int64_t max_blocks;             // grid cap of the row kernels (grid-stride loops); 0: no cap
};

// Rows of the newline gradient summed per partial (the partials are then summed in order).
constexpr int64_t kNewlineRowsPerPart = 64;
inline int64_t newline_parts(int64_t num_newline_rows) {
  return (num_newline_rows + kNewlineRowsPerPart - 1) / kNewlineRowsPerPart;
}

// out [num_rows, dim] <- the taps of every output row. One launch for the whole batch.
void launch_pack_forward(const PackDeviceLayout& L, const void* features, const void* newline, void* out,
                         DType dtype, cudaStream_t stream);

// grad_features [src_rows, dim] <- every input row gathers the output rows it fed (deterministic).
// features: needed for max pooling (else may be null).
void launch_pack_backward(const PackDeviceLayout& L, const void* grad, const void* features,
                          void* grad_features, DType dtype, cudaStream_t stream);

// grad_newline [dim] = sum of grad's newline rows in ascending order: per part of
// kNewlineRowsPerPart rows into `partials` ([newline_parts, dim] float, double for float64),
// then the parts in order.
void launch_pack_newline_grad(const PackDeviceLayout& L, const void* grad, void* partials,
                              void* grad_newline, DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace interleave
