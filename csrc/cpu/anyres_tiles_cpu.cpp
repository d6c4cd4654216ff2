// CPU kernel of anyres_tiles: Pillow-exact bicubic resize (two passes with a uint8 intermediate in
// the job's pass order; horizontal-first keeps only the rows the vertical pass reads, as
// ImagingResampleInner does), then padding and tiling written straight into the
// [P, tile, tile, 3] output. Multi-threaded over rows.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../ops/anyres_tiles.h"

namespace interleave {
namespace {

// Row sy of the (virtual) source canvas: the image row with src_pad around it, or all src_pad.
const uint8_t* source_row(const TileJob& j, const at::Tensor& image, int64_t sy, uint8_t* buf) {
  const int64_t h = image.size(0), w = image.size(1);
  const uint8_t* img = image.const_data_ptr<uint8_t>();
  const int64_t y = sy - j.src_top;
  if (y >= 0 && y < h && j.src_left == 0 && w == j.src_w) return img + y * w * 3;
  std::memset(buf, static_cast<int>(j.src_pad), j.src_w * 3);
  if (y >= 0 && y < h) std::memcpy(buf + j.src_left * 3, img + y * w * 3, w * 3);
  return buf;
}

// Pillow ImagingResampleHorizontal_8bpc for 3 bands.
void horizontal_pass(const uint8_t* src, uint8_t* dst, const AxisCoeffs& c) {
  for (int xx = 0; xx < c.out_size; ++xx) {
    const uint8_t* p = src + static_cast<int64_t>(c.first[xx]) * 3;
    const int32_t* k = c.weights.data() + static_cast<size_t>(xx) * c.ksize;
    int32_t s0 = kResampleHalf, s1 = kResampleHalf, s2 = kResampleHalf;
    for (int x = 0; x < c.count[xx]; ++x) {
      s0 += p[x * 3 + 0] * k[x];
      s1 += p[x * 3 + 1] * k[x];
      s2 += p[x * 3 + 2] * k[x];
    }
    dst[xx * 3 + 0] = resample_clip8(s0);
    dst[xx * 3 + 1] = resample_clip8(s1);
    dst[xx * 3 + 2] = resample_clip8(s2);
  }
}

// Pillow ImagingResampleVertical_8bpc, one output row; `acc` is a per-thread int32 row.
void vertical_pass(const uint8_t* rows, int64_t row_bytes, const AxisCoeffs& c, int yy,
                   int64_t row_first, int32_t* acc, uint8_t* dst) {
  const int32_t* k = c.weights.data() + static_cast<size_t>(yy) * c.ksize;
  const uint8_t* base = rows + (c.first[yy] - row_first) * row_bytes;
  for (int64_t i = 0; i < row_bytes; ++i) acc[i] = kResampleHalf;
  for (int y = 0; y < c.count[yy]; ++y) {
    const uint8_t* r = base + y * row_bytes;
    const int32_t ky = k[y];
    for (int64_t i = 0; i < row_bytes; ++i) acc[i] += r[i] * ky;  // vectorizes
  }
  for (int64_t i = 0; i < row_bytes; ++i) dst[i] = resample_clip8(acc[i]);
}

void run_job(const TileJob& j, const at::Tensor& image, int64_t tile, uint8_t* out) {
  const ResizePlan c = plan_resize(j);
  // First pass into `mid`: horizontal over the rows the vertical pass reads (or a copy when the
  // width does not change), or, in Pillow's vertical-first order, vertical over all rows.
  const int64_t mid_bytes = c.mid_width * 3;
  const int64_t mid_rows = c.mid_rows;
  std::vector<uint8_t> mid(static_cast<size_t>(mid_rows * mid_bytes));
  if (c.vertical_first) {
    // The checks allow this order only for an unpadded source: the image itself.
    const uint8_t* img = image.const_data_ptr<uint8_t>();
    at::parallel_for(0, mid_rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> acc(mid_bytes);
      for (int64_t r = r0; r < r1; ++r)
        vertical_pass(img, mid_bytes, c.vertical, static_cast<int>(r), 0, acc.data(), mid.data() + r * mid_bytes);
    });
  } else {
    at::parallel_for(0, mid_rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> buf(j.src_w * 3);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* src = source_row(j, image, c.row_first + r, buf.data());
        uint8_t* dst = mid.data() + r * mid_bytes;
        if (c.need_horizontal) horizontal_pass(src, dst, c.horizontal);
        else std::memcpy(dst, src, mid_bytes);
      }
    });
  }

  const int64_t cols = j.canvas_w / tile, row_bytes = tile * 3;
  at::parallel_for(0, j.canvas_h, 16, [&](int64_t y0, int64_t y1) {
    std::vector<uint8_t> canvas_row(j.canvas_w * 3);
    std::vector<int32_t> acc(mid_bytes);
    for (int64_t cy = y0; cy < y1; ++cy) {
      const int64_t y = cy - j.dst_top;
      uint8_t* row = canvas_row.data();
      if (y < 0 || y >= j.resize_h) {
        std::memset(row, static_cast<int>(j.dst_pad), j.canvas_w * 3);
      } else {
        std::memset(row, static_cast<int>(j.dst_pad), j.dst_left * 3);
        const int64_t right = j.dst_left + j.resize_w;
        std::memset(row + right * 3, static_cast<int>(j.dst_pad), (j.canvas_w - right) * 3);
        uint8_t* px = row + j.dst_left * 3;
        if (c.vertical_first) {
          const uint8_t* src = mid.data() + y * mid_bytes;
          if (c.need_horizontal) horizontal_pass(src, px, c.horizontal);
          else std::memcpy(px, src, mid_bytes);
        } else if (c.need_vertical) {
          vertical_pass(mid.data(), mid_bytes, c.vertical, static_cast<int>(y), c.row_first, acc.data(), px);
        } else {
          std::memcpy(px, mid.data() + y * mid_bytes, mid_bytes);
        }
      }
      // Scatter the canvas row into its tiles: tile (cy / tile, c), row cy % tile.
      const int64_t tile_row = cy / tile, in_tile = cy % tile;
      for (int64_t col = 0; col < cols; ++col) {
        uint8_t* dst = out + ((j.first_tile + tile_row * cols + col) * tile + in_tile) * row_bytes;
        std::memcpy(dst, row + col * row_bytes, row_bytes);
      }
    }
  });
}

}  // namespace

at::Tensor anyres_tiles_cpu(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                            int64_t tile) {
  const std::vector<TileJob> table = check_anyres_tiles_args(images, jobs, num_tiles, tile);
  TORCH_CHECK_VALUE(images.empty() || images[0].is_cpu(), "anyres_tiles_cpu: images must be on the CPU");
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(images.size());
  for (const auto& im : images) contiguous.push_back(im.contiguous());
  at::Tensor out = at::empty({num_tiles, tile, tile, 3}, at::TensorOptions().dtype(at::kByte));
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  for (const TileJob& j : table) run_job(j, contiguous[j.image], tile, dst);
  return out;
}

}  // namespace interleave
