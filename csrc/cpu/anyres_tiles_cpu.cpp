// CPU kernel of anyres_tiles: Pillow-exact bicubic resize (two passes with a uint8 intermediate in
// the job's pass order; horizontal-first keeps only the rows the vertical pass reads, as
// ImagingResampleInner does), then padding and tiling written straight into the
// [P, tile, tile, 3] output. Multi-threaded over rows. The inner loops (resample_simd.h) are
// chosen per call by instruction-set level; all levels give the same bytes.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../ops/anyres_tiles.h"
#include "output_alloc.h"
#include "resample_simd.h"

namespace interleave {
namespace {

// Fills `pixels` RGB pixels with a packed pad colour.
void fill_rgb(uint8_t* dst, int64_t pixels, int64_t packed) {
  const uint8_t r = pad_channel(packed, 0), g = pad_channel(packed, 1), b = pad_channel(packed, 2);
  if (r == g && g == b) {
    std::memset(dst, r, pixels * 3);
    return;
  }
  for (int64_t i = 0; i < pixels; ++i) {
    dst[i * 3 + 0] = r;
    dst[i * 3 + 1] = g;
    dst[i * 3 + 2] = b;
  }
}

// Where finished canvas rows go: uint8 HWC tiles, or normalized CHW tiles through a lookup table
// (copied as bytes: the table already holds the values in the output dtype).
struct TileSink {
  uint8_t* tiles_u8 = nullptr;   // [P, T, T, 3]
  uint8_t* tiles_lut = nullptr;  // [P, 3, T, T] of lut_bytes-wide values
  const void* lut = nullptr;     // [3, 256]
  int lut_bytes = 0;
  LutPlanes planes;
  CpuSimd simd = CpuSimd::kGeneric;
};

void write_canvas_row(const TileSink& sink, const uint8_t* row, int64_t first_tile, int64_t cols,
                      int64_t cy, int64_t tile) {
  const int64_t tile_row = cy / tile, in_tile = cy % tile, row_bytes = tile * 3;
  if (sink.tiles_u8) {
    for (int64_t col = 0; col < cols; ++col) {
      uint8_t* dst = sink.tiles_u8 + ((first_tile + tile_row * cols + col) * tile + in_tile) * row_bytes;
      std::memcpy(dst, row + col * row_bytes, row_bytes);
    }
    return;
  }
  for (int64_t col = 0; col < cols; ++col) {
    const int64_t t = first_tile + tile_row * cols + col;
    void* dst[3];
    for (int c = 0; c < 3; ++c) dst[c] = sink.tiles_lut + ((t * 3 + c) * tile + in_tile) * tile * sink.lut_bytes;
    lut_row(sink.simd, row + col * row_bytes, tile, sink.lut, sink.planes, dst);
  }
}

// A channels-first image viewed as [H, W, 3] (strides W, 1, H*W: image.permute(1, 2, 0) of a
// contiguous [3, H, W], as torchvision's and torchcodec's decoders return it). The kernel reads it
// in place, interleaving each source row into the row buffer (interleave_row), instead of making
// the whole image channels-last first.
bool is_planar(const at::Tensor& im) {
  if (im.dim() != 3 || im.size(2) != 3) return false;
  const int64_t h = im.size(0), w = im.size(1);
  return h > 1 && w > 1 && im.stride(0) == w && im.stride(1) == 1 && im.stride(2) == h * w;
}

// Row sy of the (virtual) source canvas: the image row with src_pad around it, or all src_pad.
const uint8_t* source_row(const TileJob& j, const at::Tensor& image, bool planar, CpuSimd simd, int64_t sy,
                          uint8_t* buf) {
  const int64_t h = image.size(0), w = image.size(1);
  const uint8_t* img = image.const_data_ptr<uint8_t>();
  const int64_t y = sy - j.src_top;
  if (!planar && y >= 0 && y < h && j.src_left == 0 && w == j.src_w) return img + y * w * 3;
  if (j.src_left > 0 || w < j.src_w || y < 0 || y >= h) fill_rgb(buf, j.src_w, j.src_pad);
  if (y >= 0 && y < h) {
    if (planar) {
      const uint8_t* planes[3] = {img + y * w, img + h * w + y * w, img + 2 * h * w + y * w};
      interleave_row(simd, planes, w, buf + j.src_left * 3);
    } else {
      std::memcpy(buf + j.src_left * 3, img + y * w * 3, w * 3);
    }
  }
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

// Pillow ImagingResampleVertical_8bpc, one output row.
// quad: the axis' vpdpbusd digits (AVX-512 level) or null.
void vertical_pass(CpuSimd simd, const uint8_t* rows, int64_t row_bytes, const AxisCoeffs& c, const QuadAxis* quad,
                   int yy, int64_t row_first, int32_t* acc, uint8_t* dst) {
  const int32_t* k = c.weights.data() + static_cast<size_t>(yy) * c.ksize;
  vertical_row(simd, rows + (c.first[yy] - row_first) * row_bytes, row_bytes, k, c.count[yy],
               quad && quad->ok ? quad->output_digits(yy) : nullptr, acc, dst);
}

void run_job(const TileJob& j, const at::Tensor& image_arg, int64_t tile, const TileSink& sink) {
  const ResizePlan c = plan_resize(j);
  // Pillow's vertical-first order reads whole image rows in place: a channels-first image is made
  // channels-last for it (the only path that copies one).
  const bool planar = is_planar(image_arg) && !c.vertical_first;
  const at::Tensor image = c.vertical_first ? image_arg.contiguous() : image_arg;
  const CpuSimd simd = sink.simd;
  // The vpdpbusd form of the weights (AVX-512 level), memoized like the coefficients.
  const bool vnni = simd >= CpuSimd::kAvx512;
  const std::shared_ptr<const QuadAxis> quad_h =
      vnni && c.need_horizontal ? cached_quad_axis(c.horizontal->in_size, c.horizontal->out_size, true) : nullptr;
  const std::shared_ptr<const QuadAxis> quad_v =
      vnni && c.need_vertical ? cached_quad_axis(c.vertical->in_size, c.vertical->out_size, false) : nullptr;
  // First pass into `mid`: horizontal over the rows the vertical pass reads (or a copy when the
  // width does not change), or, in Pillow's vertical-first order, vertical over all rows.
  const int64_t mid_bytes = c.mid_width * 3;
  const int64_t mid_rows = c.mid_rows;
  // Without a horizontal pass and without source padding the first pass would only copy image
  // rows: the second pass reads them in place instead.
  const bool in_place = !planar && !c.vertical_first && !c.need_horizontal && j.src_top == 0 &&
                        j.src_left == 0 && j.src_h == image.size(0) && j.src_w == image.size(1);
  std::vector<uint8_t> mid_buffer(in_place ? 0 : static_cast<size_t>(mid_rows * mid_bytes));
  uint8_t* mid_out = mid_buffer.data();
  const uint8_t* mid = in_place ? image.const_data_ptr<uint8_t>() + c.row_first * mid_bytes : mid_out;
  if (c.vertical_first) {
    // The checks allow this order only for an unpadded source: the image itself.
    const uint8_t* img = image.const_data_ptr<uint8_t>();
    at::parallel_for(0, mid_rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> acc(mid_bytes);
      for (int64_t r = r0; r < r1; ++r)
        vertical_pass(simd, img, mid_bytes, *c.vertical, quad_v.get(), static_cast<int>(r), 0, acc.data(), mid_out + r * mid_bytes);
    });
  } else if (!in_place) {
    at::parallel_for(0, mid_rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> bufs(static_cast<size_t>(kResampleBlockRows) * j.src_w * 3);
      std::vector<uint8_t> scratch(c.need_horizontal ? horizontal_block_scratch(j.src_w) : 0);
      int64_t r = r0;
      if (c.need_horizontal) {
        for (; r + kResampleBlockRows <= r1; r += kResampleBlockRows) {
          const uint8_t* src[kResampleBlockRows];
          uint8_t* dst[kResampleBlockRows];
          for (int b = 0; b < kResampleBlockRows; ++b) {
            src[b] = source_row(j, image, planar, simd, c.row_first + r + b, bufs.data() + b * j.src_w * 3);
            dst[b] = mid_out + (r + b) * mid_bytes;
          }
          horizontal_block(simd, src, dst, *c.horizontal, quad_h.get(), j.src_w, scratch.data());
        }
      }
      for (; r < r1; ++r) {
        const uint8_t* src = source_row(j, image, planar, simd, c.row_first + r, bufs.data());
        uint8_t* dst = mid_out + r * mid_bytes;
        if (c.need_horizontal) horizontal_pass(src, dst, *c.horizontal);
        else std::memcpy(dst, src, mid_bytes);
      }
    });
  }

  const int64_t cols = j.canvas_w / tile;
  at::parallel_for(0, j.canvas_h, 16, [&](int64_t y0, int64_t y1) {
    std::vector<uint8_t> canvas_row(j.canvas_w * 3);
    std::vector<int32_t> acc(mid_bytes);
    for (int64_t cy = y0; cy < y1; ++cy) {
      const int64_t y = cy - j.dst_top;
      uint8_t* row = canvas_row.data();
      if (y < 0 || y >= j.resize_h) {
        fill_rgb(row, j.canvas_w, j.dst_pad);
      } else {
        fill_rgb(row, j.dst_left, j.dst_pad);
        const int64_t right = j.dst_left + j.resize_w;
        fill_rgb(row + right * 3, j.canvas_w - right, j.dst_pad);
        uint8_t* px = row + j.dst_left * 3;
        if (c.vertical_first) {
          const uint8_t* src = mid + y * mid_bytes;
          if (c.need_horizontal) horizontal_pass(src, px, *c.horizontal);
          else std::memcpy(px, src, mid_bytes);
        } else if (c.need_vertical) {
          vertical_pass(simd, mid, mid_bytes, *c.vertical, quad_v.get(), static_cast<int>(y), c.row_first, acc.data(), px);
        } else {
          std::memcpy(px, mid + y * mid_bytes, mid_bytes);
        }
      }
      write_canvas_row(sink, row, j.first_tile, cols, cy, tile);
    }
  });
}

}  // namespace

at::Tensor anyres_tiles_cpu(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                            int64_t tile, const std::optional<at::Tensor>& lut) {
  std::vector<TileRun> gaps;
  const std::vector<TileJob> table = check_anyres_tiles_args(images, jobs, num_tiles, tile, &gaps);
  TORCH_CHECK_VALUE(images.empty() || images[0].is_cpu(), "anyres_tiles_cpu: images must be on the CPU");
  if (!images.empty()) check_anyres_lut(lut, images[0]);
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(images.size());
  for (const auto& im : images) contiguous.push_back(is_planar(im) ? im : im.contiguous());
  TileSink sink;
  sink.simd = anyres_cpu_simd();
  at::Tensor out, lut_c;
  if (lut.has_value()) {
    lut_c = lut->contiguous();
    out = empty_cpu_output({num_tiles, 3, tile, tile}, lut_c.scalar_type());
    sink.tiles_lut = static_cast<uint8_t*>(out.mutable_data_ptr());
    sink.lut = lut_c.const_data_ptr();
    sink.lut_bytes = static_cast<int>(lut_c.element_size());
    sink.planes = lut_planes(sink.lut, sink.lut_bytes);
  } else {
    out = empty_cpu_output({num_tiles, tile, tile, 3}, at::kByte);
    sink.tiles_u8 = out.mutable_data_ptr<uint8_t>();
  }
  // Tiles no job writes (batch padding) are zero: 0.0 in every float dtype, as transformers pads.
  const int64_t tile_bytes = tile * tile * 3 * static_cast<int64_t>(out.element_size());
  uint8_t* base = static_cast<uint8_t*>(out.mutable_data_ptr());
  for (const TileRun& g : gaps) std::memset(base + g.first * tile_bytes, 0, static_cast<size_t>(g.count * tile_bytes));
  for (const TileJob& j : table) run_job(j, contiguous[j.image], tile, sink);
  return out;
}

}  // namespace interleave
