// Torch glue of the anyres_tiles CUDA kernels: checks, Pillow coefficients computed on the host
// (never on the device, see csrc/common/resample.h), one upload of the job descriptors and
// coefficients, one intermediate arena, two launches for the whole batch.
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "../ops/anyres_tiles.h"
#include "anyres_tiles_kernels.h"

namespace interleave {

at::Tensor anyres_tiles_cuda(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                             int64_t tile, const std::optional<at::Tensor>& lut) {
  const std::vector<TileJob> table = check_anyres_tiles_args(images, jobs, num_tiles, tile);
  TORCH_CHECK_VALUE(!images.empty() && images[0].is_cuda(), "anyres_tiles_cuda: images must be on a CUDA device");
  check_anyres_lut(lut, images[0]);
  const c10::cuda::CUDAGuard guard(images[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> contiguous;
  for (const auto& im : images) contiguous.push_back(im.contiguous());

  std::vector<cuda::TileJobDevice> descs(table.size());
  std::vector<int32_t> arena;
  auto append = [&arena](const std::vector<int32_t>& v) {
    const int64_t at = static_cast<int64_t>(arena.size());
    arena.insert(arena.end(), v.begin(), v.end());
    return at;
  };
  // Each distinct axis (in_size, out_size) is uploaded once: the 16 frames of a video share theirs.
  std::map<std::pair<int64_t, int64_t>, std::array<int64_t, 3>> uploaded;
  auto append_axis = [&](const AxisCoeffs& c) {
    const std::pair<int64_t, int64_t> key{c.in_size, c.out_size};
    const auto it = uploaded.find(key);
    if (it != uploaded.end()) return it->second;
    const std::array<int64_t, 3> at{append(c.first), append(c.count), append(c.weights)};
    uploaded.emplace(key, at);
    return at;
  };
  int64_t mid_bytes = 0, pass1 = 0, pass2 = 0, staged_row_bytes = 0, canvas_row_bytes = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    const TileJob& j = table[i];
    cuda::TileJobDevice& d = descs[i];
    std::memset(&d, 0, sizeof(d));
    const at::Tensor& im = contiguous[j.image];
    d.image = im.const_data_ptr<uint8_t>();
    d.img_h = im.size(0);
    d.img_w = im.size(1);
    d.src_h = j.src_h; d.src_w = j.src_w; d.src_top = j.src_top; d.src_left = j.src_left;
    d.resize_h = j.resize_h; d.resize_w = j.resize_w;
    d.canvas_h = j.canvas_h; d.canvas_w = j.canvas_w;
    d.dst_top = j.dst_top; d.dst_left = j.dst_left; d.first_tile = j.first_tile;
    d.src_pad = static_cast<int32_t>(j.src_pad);  // packed RGB, < 2^24
    d.dst_pad = static_cast<int32_t>(j.dst_pad);
    const ResizePlan p = plan_resize(j);
    d.need_horizontal = p.need_horizontal;
    d.need_vertical = p.need_vertical;
    d.vertical_first = p.vertical_first;
    if (p.need_horizontal) {
      d.h_ksize = p.horizontal.ksize;
      const auto at = append_axis(p.horizontal);
      d.h_first = at[0]; d.h_count = at[1]; d.h_weights = at[2];
    }
    if (p.need_vertical) {
      d.v_ksize = p.vertical.ksize;
      const auto at = append_axis(p.vertical);
      d.v_first = at[0]; d.v_count = at[1]; d.v_weights = at[2];
    }
    if (p.need_horizontal && !p.vertical_first) staged_row_bytes = std::max(staged_row_bytes, j.src_w * cuda::kStagedBytesPerPixel);
    canvas_row_bytes = std::max(canvas_row_bytes, j.canvas_w * 3);
    d.row_first = p.row_first;
    d.mid_rows = p.mid_rows;
    d.mid_width = p.mid_width;
    d.mid_offset = mid_bytes;
    mid_bytes += d.mid_rows * d.mid_width * cuda::kMidBytesPerPixel;
    d.pass1_begin = pass1;
    pass1 += d.mid_rows;
    d.pass2_begin = pass2;
    pass2 += j.canvas_h;
  }
  TORCH_CHECK_VALUE(pass1 < (int64_t(1) << 31) && pass2 < (int64_t(1) << 31),
                    "anyres_tiles_cuda: batch too large for one launch");
  if (arena.empty()) arena.push_back(0);

  // One host->device copy for descriptors and coefficients together (pageable: the copy is
  // synchronous with respect to the host, which the host-side vectors need anyway).
  const auto dev = at::TensorOptions().device(images[0].device());
  const int64_t desc_bytes = static_cast<int64_t>(descs.size() * sizeof(cuda::TileJobDevice));
  const int64_t coeff_at = (desc_bytes + 15) / 16 * 16;  // 16-byte aligned start of the int32s
  const int64_t coeff_bytes = static_cast<int64_t>(arena.size() * sizeof(int32_t));
  std::vector<uint8_t> staging(static_cast<size_t>(coeff_at + coeff_bytes), 0);
  std::memcpy(staging.data(), descs.data(), static_cast<size_t>(desc_bytes));
  std::memcpy(staging.data() + coeff_at, arena.data(), static_cast<size_t>(coeff_bytes));
  at::Tensor meta = at::from_blob(staging.data(), {static_cast<int64_t>(staging.size())}, at::kByte)
                        .to(dev.dtype(at::kByte));
  at::Tensor mid = at::empty({std::max<int64_t>(mid_bytes, 1)}, dev.dtype(at::kByte));
  at::Tensor out, lut_c;
  if (lut.has_value()) {
    lut_c = lut->contiguous();
    out = at::empty({num_tiles, 3, tile, tile}, dev.dtype(lut_c.scalar_type()));
  } else {
    out = at::empty({num_tiles, tile, tile, 3}, dev.dtype(at::kByte));
  }
  cuda::launch_anyres_tiles(reinterpret_cast<const cuda::TileJobDevice*>(meta.const_data_ptr<uint8_t>()),
                            static_cast<int>(descs.size()), pass1, pass2,
                            reinterpret_cast<const int32_t*>(meta.const_data_ptr<uint8_t>() + coeff_at),
                            mid.mutable_data_ptr<uint8_t>(), out.mutable_data_ptr(),
                            lut.has_value() ? lut_c.const_data_ptr() : nullptr,
                            lut.has_value() ? static_cast<int>(lut_c.element_size()) : 0, tile,
                            staged_row_bytes, canvas_row_bytes, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace interleave
