// Argument checks of anyres_tiles, run before any kernel, and the per-job resize plan.
#include "anyres_tiles.h"

#include <c10/util/Exception.h>

#include "../common/env.h"

namespace interleave {

std::vector<TileJob> check_anyres_tiles_args(at::TensorList images, const at::Tensor& jobs,
                                             int64_t num_tiles, int64_t tile, std::vector<TileRun>* gaps) {
  TORCH_CHECK_VALUE(tile >= 1, "anyres_tiles: tile must be >= 1, got ", tile);
  TORCH_CHECK_VALUE(num_tiles >= 0, "anyres_tiles: num_tiles must be >= 0, got ", num_tiles);
  for (size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& im = images[i];
    TORCH_CHECK_TYPE(im.scalar_type() == at::kByte, "anyres_tiles: images[", i,
                     "] must be uint8, got ", im.scalar_type());
    TORCH_CHECK_VALUE(im.dim() == 3 && im.size(2) == 3 && im.size(0) >= 1 && im.size(1) >= 1,
                      "anyres_tiles: images[", i, "] must be [H, W, 3] with H, W >= 1, got shape ",
                      im.sizes());
    TORCH_CHECK_VALUE(im.device() == images[0].device(), "anyres_tiles: images[", i, "] is on ",
                      im.device(), " but images[0] is on ", images[0].device());
  }
  TORCH_CHECK_TYPE(jobs.scalar_type() == at::kLong, "anyres_tiles: jobs must be int64");
  TORCH_CHECK_VALUE(jobs.is_cpu() && jobs.dim() == 2 && jobs.size(1) == kJobFields,
                    "anyres_tiles: jobs must be a CPU tensor [J, ", int(kJobFields), "], got ",
                    jobs.sizes(), " on ", jobs.device());
  const at::Tensor table = jobs.contiguous();
  const int64_t* t = table.const_data_ptr<int64_t>();
  std::vector<TileJob> out(jobs.size(0));
  std::vector<char> covered(num_tiles, 0);
  for (int64_t j = 0; j < jobs.size(0); ++j) {
    const int64_t* r = t + j * kJobFields;
    const TileJob a = unpack_tile_job(r);
    TORCH_CHECK_VALUE(a.image >= 0 && a.image < static_cast<int64_t>(images.size()),
                      "anyres_tiles: job ", j, " names image ", a.image, " of ", images.size());
    const int64_t h = images[a.image].size(0), w = images[a.image].size(1);
    TORCH_CHECK_VALUE(a.src_top >= 0 && a.src_left >= 0 && a.src_top + h <= a.src_h &&
                          a.src_left + w <= a.src_w,
                      "anyres_tiles: job ", j, ": image ", h, "x", w, " at (", a.src_top, ", ",
                      a.src_left, ") does not fit its source canvas ", a.src_h, "x", a.src_w);
    TORCH_CHECK_VALUE(!a.vertical_first || (a.src_h == h && a.src_w == w),
                      "anyres_tiles: job ", j, ": the vertical-first order needs an unpadded source");
    TORCH_CHECK_VALUE(a.resize_h >= 1 && a.resize_w >= 1 && a.resize_h <= (1 << 20) &&
                          a.resize_w <= (1 << 20) && a.src_h <= (1 << 24) && a.src_w <= (1 << 24),
                      "anyres_tiles: job ", j, ": bad sizes (source ", a.src_h, "x", a.src_w,
                      ", resize ", a.resize_h, "x", a.resize_w, ")");
    TORCH_CHECK_VALUE(a.canvas_h >= tile && a.canvas_w >= tile && a.canvas_h % tile == 0 &&
                          a.canvas_w % tile == 0,
                      "anyres_tiles: job ", j, ": canvas ", a.canvas_h, "x", a.canvas_w,
                      " is not a grid of ", tile, "x", tile, " tiles");
    TORCH_CHECK_VALUE(a.dst_top >= 0 && a.dst_left >= 0 && a.dst_top + a.resize_h <= a.canvas_h &&
                          a.dst_left + a.resize_w <= a.canvas_w,
                      "anyres_tiles: job ", j, ": resized ", a.resize_h, "x", a.resize_w, " at (",
                      a.dst_top, ", ", a.dst_left, ") does not fit the canvas ", a.canvas_h, "x",
                      a.canvas_w);
    TORCH_CHECK_VALUE(a.src_pad >= 0 && a.src_pad <= 0xFFFFFF && a.dst_pad >= 0 && a.dst_pad <= 0xFFFFFF,
                      "anyres_tiles: job ", j, ": pad values must be packed RGB in [0, 0xFFFFFF]");
    const int64_t ntiles = (a.canvas_h / tile) * (a.canvas_w / tile);
    TORCH_CHECK_VALUE(a.first_tile >= 0 && a.first_tile + ntiles <= num_tiles,
                      "anyres_tiles: job ", j, " writes tiles [", a.first_tile, ", ",
                      a.first_tile + ntiles, ") outside [0, ", num_tiles, ")");
    for (int64_t k = a.first_tile; k < a.first_tile + ntiles; ++k) {
      TORCH_CHECK_VALUE(!covered[k], "anyres_tiles: tile ", k, " is written by two jobs");
      covered[k] = 1;
    }
    out[j] = a;
  }
  if (gaps) {
    gaps->clear();
    for (int64_t k = 0; k < num_tiles; ++k) {
      if (covered[k]) continue;
      if (!gaps->empty() && gaps->back().first + gaps->back().count == k) ++gaps->back().count;
      else gaps->push_back({k, 1});
    }
  }
  return out;
}

void check_anyres_lut(const std::optional<at::Tensor>& lut, const at::Tensor& first_image) {
  if (!lut.has_value()) return;
  const auto t = lut->scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf,
                   "anyres_tiles: lut must be float32/bfloat16/float16, got ", t);
  TORCH_CHECK_VALUE(lut->dim() == 2 && lut->size(0) == 3 && lut->size(1) == 256,
                    "anyres_tiles: lut must be [3, 256], got ", lut->sizes());
  TORCH_CHECK_VALUE(lut->device() == first_image.device(), "anyres_tiles: lut is on ", lut->device(),
                    " but the images are on ", first_image.device());
}

bool& anyres_cuda_mma() {
  // Off until a GPU run has checked the tensor-core pass against Pillow (the emulator checks the
  // kernel's logic, not the hardware's fp32 sums): correct first.
  static bool allowed = false;
  return allowed;
}

int64_t& anyres_cuda_simt_rows() {
  static int64_t rows = 1;
  return rows;
}

bool& anyres_cuda_fused() {
  // On: where a tensor-core pass 1 runs, jobs with a vertical pass run it in the same blocks (no
  // intermediate in global memory); off for the benchmark variants that time them apart.
  static bool fused = true;
  return fused;
}

bool& anyres_cuda_arena_cache() {
  static bool cached = env_switch_on("INTERLEAVE_ANYRES_ARENA_CACHE");
  return cached;
}

bool& anyres_cuda_imma_staged() {
  // Off until a GPU run has timed it against the direct loads (the same bytes either way).
  static bool staged = env_opt_in("INTERLEAVE_ANYRES_IMMA_STAGED");
  return staged;
}

bool& anyres_cuda_imma() {
  // Off until a GPU run has timed it against the SIMT pass (exact either way, checked bitwise in
  // emulation); INTERLEAVE_ANYRES_IMMA=1 starts a process with it on.
  static bool allowed = env_opt_in("INTERLEAVE_ANYRES_IMMA");
  return allowed;
}

}  // namespace interleave
