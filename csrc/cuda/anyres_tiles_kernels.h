// Launchers of the anyres_tiles CUDA kernels (raw pointers only; see anyres_tiles_kernels.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace interleave {
namespace cuda {

// One job as the kernels read it: the validated TileJob plus where its coefficients (in the int32
// arena) and its intermediate rows (in the uint8 arena) live, and where its rows start in the
// flattened per-pass work lists (one block per row).
struct TileJobDevice {
  const uint8_t* image;
  int64_t img_h, img_w;
  int64_t src_h, src_w, src_top, src_left;
  int64_t resize_h, resize_w, canvas_h, canvas_w, dst_top, dst_left, first_tile;
  int32_t src_pad, dst_pad;  // packed RGB
  int32_t need_horizontal, need_vertical, vertical_first;
  int32_t v_ksize;
  // Offsets into the int32 coefficient arena. The horizontal weights are tap-major (weight i of
  // output x at h_weights + i * h_outputs + x): the threads of a warp take consecutive outputs, so
  // each tap's weights are one coalesced load (output-major, they were 32 cache lines per load
  // and pass 1's bottleneck). The vertical ones stay output-major (ksize per row): a block shares
  // its row's weights, which are then broadcast loads.
  int64_t h_outputs;
  int64_t h_first, h_count, h_weights;
  int64_t v_first, v_count, v_weights;
  int64_t row_first;                    // first source row the first pass reads (horizontal first)
  int64_t mid_rows, mid_width;          // intermediate: rows x pixels
  int64_t mid_offset;                   // bytes into the intermediate arena
  int64_t pass1_begin, pass2_begin;     // first flattened row of this job in each pass
};

// Pass 1 (one block per intermediate row of every job; its block size follows pass1_width, the
// widest intermediate row), then pass 2 (one block per canvas row of
// every job, writing the tiles). One launch each for the whole batch. With lut (a [3, 256] table of
// lut_bytes-wide entries: 4 for float32, 2 for bfloat16/float16) the output is [P, 3, T, T]
// normalized values, else [P, T, T, 3] uint8.
constexpr int64_t kStagedBytesPerPixel = 4;  // pass 1 stages one 32-bit word per source pixel
constexpr int64_t kMidBytesPerPixel = 4;     // the intermediate holds one 32-bit word per pixel

void launch_anyres_tiles(const TileJobDevice* jobs, int num_jobs, int64_t pass1_rows,
                         int64_t pass2_rows, const int32_t* coeffs, uint8_t* mid, void* out,
                         const void* lut, int lut_bytes, int64_t tile, int64_t staged_row_bytes,
                         int64_t canvas_row_bytes, int64_t pass1_width, cudaStream_t stream);

}  // namespace cuda
}  // namespace interleave
