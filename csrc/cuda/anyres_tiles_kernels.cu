// CUDA kernels of anyres_tiles: the same Pillow arithmetic as the CPU kernel (coefficients come
// from the host, see csrc/common/resample.h), in two launches for a whole batch of jobs:
//   pass 1: the first resize pass of every job into a uint8 intermediate (only the rows the second
//           pass reads), one block per intermediate row;
//   pass 2: the second pass, padding and tiling, one block per canvas row, each thread writing
//           consecutive bytes of a tile row.
#include <cstdint>
#include <type_traits>

#include "../common/resample.h"
#include "anyres_tiles_kernels.h"

namespace interleave {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The job owning flattened row `row` of a pass (jobs are few: a linear scan is enough).
__device__ __forceinline__ int find_job(const TileJobDevice* jobs, int num_jobs, int64_t row,
                                        bool second_pass) {
  int j = 0;
  while (j + 1 < num_jobs &&
         (second_pass ? jobs[j + 1].pass2_begin : jobs[j + 1].pass1_begin) <= row)
    ++j;
  return j;
}

// Pixel channel of the (virtual, padded) source canvas.
__device__ __forceinline__ int32_t source_px(const TileJobDevice& J, int64_t sy, int64_t sx, int c) {
  const int64_t y = sy - J.src_top, x = sx - J.src_left;
  if (y < 0 || y >= J.img_h || x < 0 || x >= J.img_w) return pad_channel(J.src_pad, c);
  return J.image[(y * J.img_w + x) * 3 + c];
}

__global__ void __launch_bounds__(kThreads)
    anyres_pass1_kernel(const TileJobDevice* __restrict__ jobs, int num_jobs,
                        const int32_t* __restrict__ coeffs, uint8_t* __restrict__ mid) {
  const int64_t row = blockIdx.x;
  const TileJobDevice& J = jobs[find_job(jobs, num_jobs, row, false)];
  const int64_t r = row - J.pass1_begin;
  uint8_t* dst = mid + J.mid_offset + r * J.mid_width * 3;
  if (J.vertical_first) {
    // Vertical pass of output row r over all source columns (the source is the image itself).
    const int32_t first = coeffs[J.v_first + r], count = coeffs[J.v_count + r];
    const int32_t* k = coeffs + J.v_weights + r * J.v_ksize;
    for (int64_t i = threadIdx.x; i < J.mid_width * 3; i += blockDim.x) {
      int32_t acc = kResampleHalf;
      for (int y = 0; y < count; ++y) acc += J.image[(first + y) * J.img_w * 3 + i] * k[y];
      dst[i] = resample_clip8(acc);
    }
    return;
  }
  const int64_t sy = J.row_first + r;
  if (!J.need_horizontal) {
    for (int64_t i = threadIdx.x; i < J.mid_width * 3; i += blockDim.x)
      dst[i] = static_cast<uint8_t>(source_px(J, sy, i / 3, static_cast<int>(i % 3)));
    return;
  }
  for (int64_t i = threadIdx.x; i < J.mid_width * 3; i += blockDim.x) {
    const int64_t xx = i / 3;
    const int c = static_cast<int>(i % 3);
    const int32_t first = coeffs[J.h_first + xx], count = coeffs[J.h_count + xx];
    const int32_t* k = coeffs + J.h_weights + xx * J.h_ksize;
    int32_t acc = kResampleHalf;
    for (int x = 0; x < count; ++x) acc += source_px(J, sy, first + x, c) * k[x];
    dst[i] = resample_clip8(acc);
  }
}

// Value of resized pixel (y, x), channel c, from the intermediate.
__device__ __forceinline__ uint8_t second_pass_px(const TileJobDevice& J, const int32_t* coeffs,
                                                  const uint8_t* m, int64_t y, int64_t x, int c) {
  if (J.vertical_first) {  // horizontal pass over intermediate row y
    const uint8_t* row = m + y * J.mid_width * 3;
    if (!J.need_horizontal) return row[x * 3 + c];
    const int32_t first = coeffs[J.h_first + x], count = coeffs[J.h_count + x];
    const int32_t* k = coeffs + J.h_weights + x * J.h_ksize;
    int32_t acc = kResampleHalf;
    for (int i = 0; i < count; ++i) acc += row[(first + i) * 3 + c] * k[i];
    return resample_clip8(acc);
  }
  const int64_t stride = J.mid_width * 3;
  if (!J.need_vertical) return m[(y - J.row_first) * stride + x * 3 + c];
  const int32_t first = coeffs[J.v_first + y], count = coeffs[J.v_count + y];
  const int32_t* k = coeffs + J.v_weights + y * J.v_ksize;
  const uint8_t* base = m + (first - J.row_first) * stride + x * 3 + c;
  int32_t acc = kResampleHalf;
  for (int i = 0; i < count; ++i) acc += base[i * stride] * k[i];
  return resample_clip8(acc);
}

// Out = uint8_t: [P, T, T, 3] tiles. Out = uint32_t / uint16_t: [P, 3, T, T] entries of the lut.
template <typename Out>
__global__ void __launch_bounds__(kThreads)
    anyres_pass2_kernel(const TileJobDevice* __restrict__ jobs, int num_jobs,
                        const int32_t* __restrict__ coeffs, const uint8_t* __restrict__ mid,
                        Out* __restrict__ out, const Out* __restrict__ lut, int64_t tile) {
  const int64_t row = blockIdx.x;
  const TileJobDevice& J = jobs[find_job(jobs, num_jobs, row, true)];
  const int64_t cy = row - J.pass2_begin;
  const int64_t y = cy - J.dst_top;
  const bool in_rows = y >= 0 && y < J.resize_h;
  const int64_t cols = J.canvas_w / tile, tile_row = cy / tile, in_tile = cy % tile;
  const uint8_t* m = mid + J.mid_offset;
  // uint8: consecutive threads write consecutive bytes of one tile row (coalesced). lut: threads
  // walk one channel plane at a time, so writes of a warp stay within one plane row.
  const int64_t n = J.canvas_w * 3;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    int64_t cx;
    int c;
    if constexpr (std::is_same_v<Out, uint8_t>) {
      cx = i / 3;
      c = static_cast<int>(i % 3);
    } else {
      c = static_cast<int>(i / J.canvas_w);
      cx = i % J.canvas_w;
    }
    const int64_t x = cx - J.dst_left;
    uint8_t v = pad_channel(J.dst_pad, c);
    if (in_rows && x >= 0 && x < J.resize_w) v = second_pass_px(J, coeffs, m, y, x, c);
    const int64_t t = J.first_tile + tile_row * cols + cx / tile;
    if constexpr (std::is_same_v<Out, uint8_t>)
      out[((t * tile + in_tile) * tile + cx % tile) * 3 + c] = v;
    else
      out[((t * 3 + c) * tile + in_tile) * tile + cx % tile] = lut[c * 256 + v];
  }
}

}  // namespace

void launch_anyres_tiles(const TileJobDevice* jobs, int num_jobs, int64_t pass1_rows,
                         int64_t pass2_rows, const int32_t* coeffs, uint8_t* mid, void* out,
                         const void* lut, int lut_bytes, int64_t tile, cudaStream_t stream) {
  if (num_jobs == 0) return;
  if (pass1_rows > 0)
    anyres_pass1_kernel<<<static_cast<unsigned>(pass1_rows), kThreads, 0, stream>>>(jobs, num_jobs, coeffs, mid);
  if (pass2_rows <= 0) return;
  const unsigned blocks = static_cast<unsigned>(pass2_rows);
  if (lut == nullptr)
    anyres_pass2_kernel<uint8_t><<<blocks, kThreads, 0, stream>>>(
        jobs, num_jobs, coeffs, mid, static_cast<uint8_t*>(out), nullptr, tile);
  else if (lut_bytes == 4)
    anyres_pass2_kernel<uint32_t><<<blocks, kThreads, 0, stream>>>(
        jobs, num_jobs, coeffs, mid, static_cast<uint32_t*>(out), static_cast<const uint32_t*>(lut), tile);
  else
    anyres_pass2_kernel<uint16_t><<<blocks, kThreads, 0, stream>>>(
        jobs, num_jobs, coeffs, mid, static_cast<uint16_t*>(out), static_cast<const uint16_t*>(lut), tile);
}

}  // namespace cuda
}  // namespace interleave
