// Torch-facing entry points of anyres_tiles: the job-table checks shared by both backends and the
// per-backend implementations registered in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <vector>

#include "../common/resample.h"

namespace interleave {

// One validated job, unpacked from the int64 job table.
struct TileJob {
  int64_t image, src_h, src_w, src_top, src_left, src_pad;
  int64_t resize_h, resize_w, canvas_h, canvas_w, dst_top, dst_left, dst_pad, first_tile;
  bool vertical_first;
};

// How one job runs: Pillow's coefficients of each axis that changes size, the pass order, and the
// uint8 intermediate between the passes (rows x width pixels; horizontal-first keeps only the rows
// the vertical pass reads, from row_first on, as ImagingResampleInner does). Shared by both backends.
struct ResizePlan {
  AxisCoeffs horizontal, vertical;
  bool need_horizontal, need_vertical, vertical_first;
  int64_t row_first, mid_rows, mid_width;
};
ResizePlan plan_resize(const TileJob& job);

// Validates images (uint8 [h, w, 3], one device) and jobs (int64 CPU [J, kJobFields]): indices,
// placements inside their canvases, tiles of all jobs disjoint and covering [0, num_tiles).
// Raises ValueError/TypeError naming the problem; returns the unpacked jobs.
std::vector<TileJob> check_anyres_tiles_args(at::TensorList images, const at::Tensor& jobs,
                                             int64_t num_tiles, int64_t tile);

// lut: optional [3, 256] float32/bfloat16/float16 table (normalized value of each uint8 per
// channel); with it the output is [P, 3, tile, tile] in the table's dtype (HF pixel_values layout),
// without it [P, tile, tile, 3] uint8.
void check_anyres_lut(const std::optional<at::Tensor>& lut, const at::Tensor& first_image);

at::Tensor anyres_tiles_cpu(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                            int64_t tile, const std::optional<at::Tensor>& lut);
#ifdef INTERLEAVE_WITH_CUDA
at::Tensor anyres_tiles_cuda(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                             int64_t tile, const std::optional<at::Tensor>& lut);
#endif

}  // namespace interleave
