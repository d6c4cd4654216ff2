// CPU kernel of anyres_tiles: Pillow-exact bicubic resize (two passes with a uint8 intermediate in
// the job's pass order; horizontal-first keeps only the rows the vertical pass reads, as
// ImagingResampleInner does), then padding and tiling written straight into the
// [P, tile, tile, 3] output. Multi-threaded over rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../ops/anyres_tiles.h"
#include "output_alloc.h"

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

// Where finished canvas rows go: uint8 HWC tiles, or normalized CHW tiles through a lookup table.
struct TileSink {
  uint8_t* tiles_u8 = nullptr;   // [P, T, T, 3]
  void* tiles_lut = nullptr;     // [P, 3, T, T], lut dtype
  const void* lut = nullptr;     // [3, 256]
  at::ScalarType lut_dtype = at::kFloat;
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, sink.lut_dtype, "anyres_tiles_lut", [&] {
    const scalar_t* lut = static_cast<const scalar_t*>(sink.lut);
    scalar_t* out = static_cast<scalar_t*>(sink.tiles_lut);
    for (int64_t col = 0; col < cols; ++col) {
      const int64_t t = first_tile + tile_row * cols + col;
      const uint8_t* src = row + col * row_bytes;
      for (int c = 0; c < 3; ++c) {
        scalar_t* dst = out + ((t * 3 + c) * tile + in_tile) * tile;
        const scalar_t* table = lut + c * 256;
        for (int64_t x = 0; x < tile; ++x) dst[x] = table[src[x * 3 + c]];
      }
    }
  });
}

// Row sy of the (virtual) source canvas: the image row with src_pad around it, or all src_pad.
const uint8_t* source_row(const TileJob& j, const at::Tensor& image, int64_t sy, uint8_t* buf) {
  const int64_t h = image.size(0), w = image.size(1);
  const uint8_t* img = image.const_data_ptr<uint8_t>();
  const int64_t y = sy - j.src_top;
  if (y >= 0 && y < h && j.src_left == 0 && w == j.src_w) return img + y * w * 3;
  fill_rgb(buf, j.src_w, j.src_pad);
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

// The horizontal pass of 8 rows at once. The rows are first transposed so that the 24 values
// (8 rows x 3 channels) of one source column are contiguous; each output pixel is then a fixed
// 24-lane multiply-accumulate over its window. The 24 lanes are three 8 x int32 vectors (GCC/Clang
// vector extensions, not intrinsics): with the AVX2 clone (chosen at load time where the CPU has
// it) each tap is three zero-extending loads, three multiplies and three adds on ymm registers; a
// plain 24-element loop left gcc splitting lanes over xmm registers and a stack slot (about 2x
// slower). Integer sums are exact in any order, so the result is Pillow's bit for bit.
constexpr int kBlockRows = 8;
constexpr int kLanes = kBlockRows * 3;
typedef int32_t Int32x8 __attribute__((vector_size(32)));

// Eight bytes zero-extended to int32 lanes. Written lane by lane because gcc 12 turns this into
// one vpmovzxbd, while __builtin_convertvector of a uint8 vector became scalar byte extractions.
inline Int32x8 widen8(const uint8_t* q) {
  Int32x8 v;
  for (int l = 0; l < 8; ++l) v[l] = q[l];
  return v;
}

__attribute__((target_clones("avx2", "default")))
void horizontal_pass_block(const uint8_t* const* src, uint8_t* const* dst, const AxisCoeffs& c,
                           int64_t in_width, uint8_t* transposed) {
  // 4-byte moves of 3-byte pixels: each store's 4th byte is overwritten by the next one (rows in
  // ascending order, then the next column), so `transposed` has one spare byte at the end. The
  // last column is copied bytewise so that no load reads past the end of a source row.
  for (int64_t x = 0; x + 1 < in_width; ++x)
    for (int r = 0; r < kBlockRows; ++r) {
      uint32_t v;
      std::memcpy(&v, src[r] + x * 3, 4);
      std::memcpy(transposed + x * kLanes + r * 3, &v, 4);
    }
  for (int r = 0; r < kBlockRows; ++r)
    for (int ch = 0; ch < 3; ++ch)
      transposed[(in_width - 1) * kLanes + r * 3 + ch] = src[r][(in_width - 1) * 3 + ch];
  const Int32x8 half = Int32x8{} + kResampleHalf;
  for (int xx = 0; xx < c.out_size; ++xx) {
    const uint8_t* p = transposed + static_cast<int64_t>(c.first[xx]) * kLanes;
    const int32_t* k = c.weights.data() + static_cast<size_t>(xx) * c.ksize;
    Int32x8 a0 = half, a1 = half, a2 = half;
    const int count = c.count[xx];
    for (int x = 0; x < count; ++x) {
      const int32_t w = k[x];
      const uint8_t* q = p + x * kLanes;
      a0 += widen8(q) * w;
      a1 += widen8(q + 8) * w;
      a2 += widen8(q + 16) * w;
    }
    int32_t acc[kLanes];
    std::memcpy(acc, &a0, sizeof(a0));
    std::memcpy(acc + 8, &a1, sizeof(a1));
    std::memcpy(acc + 16, &a2, sizeof(a2));
    for (int r = 0; r < kBlockRows; ++r)
      for (int ch = 0; ch < 3; ++ch) dst[r][xx * 3 + ch] = resample_clip8(acc[r * 3 + ch]);
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

void run_job(const TileJob& j, const at::Tensor& image, int64_t tile, const TileSink& sink) {
  const ResizePlan c = plan_resize(j);
  // First pass into `mid`: horizontal over the rows the vertical pass reads (or a copy when the
  // width does not change), or, in Pillow's vertical-first order, vertical over all rows.
  const int64_t mid_bytes = c.mid_width * 3;
  const int64_t mid_rows = c.mid_rows;
  // Without a horizontal pass and without source padding the first pass would only copy image
  // rows: the second pass reads them in place instead.
  const bool in_place = !c.vertical_first && !c.need_horizontal && j.src_top == 0 &&
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
        vertical_pass(img, mid_bytes, *c.vertical, static_cast<int>(r), 0, acc.data(), mid_out + r * mid_bytes);
    });
  } else if (!in_place) {
    at::parallel_for(0, mid_rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> bufs(static_cast<size_t>(kBlockRows) * j.src_w * 3);
      std::vector<uint8_t> transposed(c.need_horizontal ? static_cast<size_t>(j.src_w) * kLanes + 1 : 0);
      int64_t r = r0;
      if (c.need_horizontal) {
        for (; r + kBlockRows <= r1; r += kBlockRows) {
          const uint8_t* src[kBlockRows];
          uint8_t* dst[kBlockRows];
          for (int b = 0; b < kBlockRows; ++b) {
            src[b] = source_row(j, image, c.row_first + r + b, bufs.data() + b * j.src_w * 3);
            dst[b] = mid_out + (r + b) * mid_bytes;
          }
          horizontal_pass_block(src, dst, *c.horizontal, j.src_w, transposed.data());
        }
      }
      for (; r < r1; ++r) {
        const uint8_t* src = source_row(j, image, c.row_first + r, bufs.data());
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
          vertical_pass(mid, mid_bytes, *c.vertical, static_cast<int>(y), c.row_first, acc.data(), px);
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
  const std::vector<TileJob> table = check_anyres_tiles_args(images, jobs, num_tiles, tile);
  TORCH_CHECK_VALUE(images.empty() || images[0].is_cpu(), "anyres_tiles_cpu: images must be on the CPU");
  if (!images.empty()) check_anyres_lut(lut, images[0]);
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(images.size());
  for (const auto& im : images) contiguous.push_back(im.contiguous());
  TileSink sink;
  at::Tensor out, lut_c;
  if (lut.has_value()) {
    lut_c = lut->contiguous();
    out = empty_cpu_output({num_tiles, 3, tile, tile}, lut_c.scalar_type());
    sink.tiles_lut = out.mutable_data_ptr();
    sink.lut = lut_c.const_data_ptr();
    sink.lut_dtype = lut_c.scalar_type();
  } else {
    out = empty_cpu_output({num_tiles, tile, tile, 3}, at::kByte);
    sink.tiles_u8 = out.mutable_data_ptr<uint8_t>();
  }
  for (const TileJob& j : table) run_job(j, contiguous[j.image], tile, sink);
  return out;
}

}  // namespace interleave
