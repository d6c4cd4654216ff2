// Torch glue of the anyres_tiles CUDA kernels: checks, Pillow coefficients computed on the host
// (never on the device, see csrc/common/resample.h), one upload of the job descriptors and
// coefficients, one intermediate arena, two launches for the whole batch (pass 1 on tensor cores
// where that is exact and switched on: anyres_tiles_kernels.h, kMmaRows and kImmaBand).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cstring>
#include <vector>

#include "../ops/anyres_tiles.h"
#include "anyres_tiles_batch.h"
#include "anyres_tiles_kernels.h"

namespace interleave {

at::Tensor anyres_tiles_cuda(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                             int64_t tile, const std::optional<at::Tensor>& lut) {
  std::vector<TileRun> gaps;
  const std::vector<TileJob> table = check_anyres_tiles_args(images, jobs, num_tiles, tile, &gaps);
  TORCH_CHECK_VALUE(!images.empty() && images[0].is_cuda(), "anyres_tiles_cuda: images must be on a CUDA device");
  check_anyres_lut(lut, images[0]);
  const c10::cuda::CUDAGuard guard(images[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> contiguous;
  for (const auto& im : images) contiguous.push_back(im.contiguous());

  std::vector<const uint8_t*> pixels;
  std::vector<std::array<int64_t, 2>> hw;
  for (const auto& im : contiguous) {
    pixels.push_back(im.const_data_ptr<uint8_t>());
    hw.push_back({im.size(0), im.size(1)});
  }
  const cuda::TileBatch batch = cuda::plan_tile_batch(table, pixels, hw, tile, lut.has_value() ? lut->element_size() : 1,
                                                         anyres_cuda_mma(), anyres_cuda_fused(),
                                                         static_cast<int>(anyres_cuda_simt_rows()), anyres_cuda_imma(),
                                                         /*allow_imma_vertical=*/true, anyres_cuda_imma_staged());
  const auto& descs = batch.descs;
  const auto& arena = batch.arena;
  TORCH_CHECK_VALUE(batch.pass1 < (int64_t(1) << 31) && batch.pass2 < (int64_t(1) << 31),
                    "anyres_tiles_cuda: batch too large for one launch");

  // One host->device copy for descriptors and coefficients together, from pinned memory and
  // asynchronous: a pageable copy waits for the stream, i.e. for the caller's image upload queued
  // just before, so the host could not plan the next batch meanwhile. The caching host allocator
  // keeps the pinned block until the copy has run (as pack_tokens' layout upload does).
  const auto dev = at::TensorOptions().device(images[0].device());
  const int64_t desc_bytes = static_cast<int64_t>(descs.size() * sizeof(cuda::TileJobDevice));
  const int64_t coeff_at = (desc_bytes + 15) / 16 * 16;  // 16-byte aligned start of the int32s
  const int64_t coeff_bytes = static_cast<int64_t>(arena.size() * sizeof(int32_t));
  at::Tensor staging = at::empty({coeff_at + coeff_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = staging.mutable_data_ptr<uint8_t>();
  std::memset(h, 0, static_cast<size_t>(coeff_at));
  std::memcpy(h, descs.data(), static_cast<size_t>(desc_bytes));
  std::memcpy(h + coeff_at, arena.data(), static_cast<size_t>(coeff_bytes));
  at::Tensor meta = staging.to(dev.dtype(at::kByte), /*non_blocking=*/true);
  at::Tensor mid = at::empty({std::max<int64_t>(batch.mid_bytes, 1)}, dev.dtype(at::kByte));
  at::Tensor out, lut_c;
  if (lut.has_value()) {
    lut_c = lut->contiguous();
    out = at::empty({num_tiles, 3, tile, tile}, dev.dtype(lut_c.scalar_type()));
  } else {
    out = at::empty({num_tiles, tile, tile, 3}, dev.dtype(at::kByte));
  }
  cuda::launch_anyres_tiles(reinterpret_cast<const cuda::TileJobDevice*>(meta.const_data_ptr<uint8_t>()),
                            static_cast<int>(descs.size()), batch.pass1, batch.pass2,
                            reinterpret_cast<const int32_t*>(meta.const_data_ptr<uint8_t>() + coeff_at),
                            mid.mutable_data_ptr<uint8_t>(), out.mutable_data_ptr(),
                            lut.has_value() ? lut_c.const_data_ptr() : nullptr,
                            lut.has_value() ? static_cast<int>(lut_c.element_size()) : 0, tile,
                            batch.staged_row_bytes, batch.canvas_row_bytes, batch.pass1_width, batch.pass1_mma,
                            batch.pass1_imma, batch.imma_stage_bytes, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Tiles no job writes (batch padding) are zero, on the same stream.
  for (const TileRun& g : gaps) out.narrow(0, g.first, g.count).zero_();
  return out;
}

}  // namespace interleave
