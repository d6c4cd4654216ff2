// Torch glue of the anyres_tiles CUDA kernels: checks, Pillow coefficients computed on the host
// (never on the device, see csrc/common/resample.h), one upload of the job descriptors per call and
// of the coefficients per arena key (device_arena), one intermediate arena, two launches for the
// whole batch (pass 1 on tensor cores where that is exact and switched on: anyres_tiles_kernels.h,
// kMmaRows and kImmaBand).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "../ops/anyres_tiles.h"
#include "anyres_tiles_batch.h"
#include "anyres_tiles_kernels.h"

namespace interleave {
namespace {

// Uploads `size` bytes, which fill(dst) writes into a pinned staging buffer, to a new tensor on
// `device`, on the current stream, asynchronously: a pageable copy waits for the stream, i.e. for
// the caller's image upload queued just before, so the host could not plan the next batch
// meanwhile. The caching host allocator keeps the pinned block until the copy has run (as
// pack_tokens' layout upload does).
template <typename Fill>
at::Tensor upload(int64_t size, const at::Device& device, Fill fill) {
  at::Tensor staging = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  fill(staging.mutable_data_ptr<uint8_t>());
  return staging.to(at::TensorOptions().device(device).dtype(at::kByte), /*non_blocking=*/true);
}

at::Tensor upload(const void* bytes, int64_t size, const at::Device& device) {
  return upload(size, device, [&](uint8_t* dst) { std::memcpy(dst, bytes, static_cast<size_t>(size)); });
}

// The batch's coefficient arena, written straight into the staging buffer (TileBatch::write_arena:
// the host never holds it otherwise).
at::Tensor upload_arena(const cuda::TileBatch& batch, const at::Device& device) {
  return upload(batch.arena_size * static_cast<int64_t>(sizeof(int32_t)), device,
                [&](uint8_t* dst) { batch.write_arena(reinterpret_cast<int32_t*>(dst)); });
}

// The device copy of a batch's coefficient arena, kept per device and arena key
// (TileBatch::arena_key) for later calls: the 16 frames of a video or a processor's repeated image
// sizes then upload only their job descriptors (the arena is ~50 KB for 16 frames on the SIMT
// path, ~200 KB with the integer path's fragment tables, ~2-8 us of the call's device time).
// A later call waits for the copy through its event (on any stream); recordStream tells the
// caching allocator every stream that reads it, so a copy dropped from the cache (at most 32
// entries, then it starts over) is not reused under a kernel still reading it. Under stream
// capture (CUDA graphs), or with anyres_cuda_arena_cache() off, the arena is uploaded as part of the
// call, as before.
at::Tensor device_arena(const cuda::TileBatch& batch, const at::Device& device, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone || !anyres_cuda_arena_cache())
    return upload_arena(batch, device);
  struct Entry {
    at::Tensor coeffs;
    cudaEvent_t uploaded;  // recorded after the copy, on the stream that made it
  };
  static std::mutex mutex;
  static std::map<std::pair<int, std::vector<int64_t>>, Entry> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  std::pair<int, std::vector<int64_t>> key{device.index(), batch.arena_key};
  auto it = cache.find(key);
  if (it == cache.end()) {
    if (cache.size() >= 32) {
      for (auto& e : cache) C10_CUDA_CHECK(cudaEventDestroy(e.second.uploaded));
      cache.clear();
    }
    Entry e{upload_arena(batch, device), nullptr};
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&e.uploaded, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(e.uploaded, stream));
    it = cache.emplace(std::move(key), std::move(e)).first;
  } else {
    // Always (a no-op dependency on the stream that uploaded it): comparing stream handles would
    // miss a new stream that reuses a destroyed one's handle while its copy is still queued.
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream, it->second.uploaded, 0));
  }
  c10::cuda::CUDACachingAllocator::recordStream(it->second.coeffs.storage().data_ptr(),
                                                c10::cuda::getCurrentCUDAStream(device.index()));
  return it->second.coeffs;
}

}  // namespace

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
  TORCH_CHECK_VALUE(batch.pass1 < (int64_t(1) << 31) && batch.pass2 < (int64_t(1) << 31),
                    "anyres_tiles_cuda: batch too large for one launch");

  // The job descriptors (they hold this call's image pointers) every call; the coefficients once per
  // arena key and device (device_arena).
  const auto dev = at::TensorOptions().device(images[0].device());
  at::Tensor meta = upload(descs.data(), static_cast<int64_t>(descs.size() * sizeof(cuda::TileJobDevice)),
                           images[0].device());
  const at::Tensor coeffs = device_arena(batch, images[0].device(), stream);
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
                            reinterpret_cast<const int32_t*>(coeffs.const_data_ptr<uint8_t>()),
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
