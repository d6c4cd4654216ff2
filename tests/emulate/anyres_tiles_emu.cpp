// Host emulation of the anyres_tiles CUDA kernels (tests/test_cuda_emulated.py). The kernel source
// (csrc/cuda/anyres_tiles_kernels.cu without its launcher, which uses <<<>>>) is compiled as C++
// under tests/emulate/cuda_emu.h and launched with the real block size and shared memory, every
// thread a coroutine, so barriers and strided loops run as on the GPU. The glue mirrors
// csrc/cuda/anyres_tiles_cuda.cpp. This checks the kernels' index math, barriers and Pillow
// arithmetic on machines without a GPU; timing and races between blocks need a GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "cuda_emu.h"

#include EMU_KERNEL_SOURCE

using namespace interleave;
using namespace interleave::cuda;

extern "C" int emu_anyres_tiles(int num_images, const uint8_t* const* images, const int64_t* hw, int num_jobs,
                                const int64_t* table, int64_t tile, const void* lut, int lut_bytes, void* out,
                                int force_direct) {
  std::vector<TileJobDevice> descs(num_jobs);
  std::vector<int32_t> arena;
  auto append = [&arena](const std::vector<int32_t>& v) {
    const int64_t at = static_cast<int64_t>(arena.size());
    arena.insert(arena.end(), v.begin(), v.end());
    return at;
  };
  int64_t mid_bytes = 0, pass1 = 0, pass2 = 0, staged_row_bytes = 0;
  for (int i = 0; i < num_jobs; ++i) {
    const int64_t* row = table + static_cast<int64_t>(i) * kJobFields;
    TileJobDevice& d = descs[i];
    std::memset(&d, 0, sizeof(d));
    const int64_t image = row[kJobImage];
    if (image < 0 || image >= num_images) return 1;
    d.image = images[image];
    d.img_h = hw[2 * image];
    d.img_w = hw[2 * image + 1];
    d.src_h = row[kJobSrcH]; d.src_w = row[kJobSrcW]; d.src_top = row[kJobSrcTop]; d.src_left = row[kJobSrcLeft];
    d.resize_h = row[kJobResizeH]; d.resize_w = row[kJobResizeW];
    d.canvas_h = row[kJobCanvasH]; d.canvas_w = row[kJobCanvasW];
    d.dst_top = row[kJobDstTop]; d.dst_left = row[kJobDstLeft]; d.first_tile = row[kJobFirstTile];
    d.src_pad = static_cast<int32_t>(row[kJobSrcPad]);
    d.dst_pad = static_cast<int32_t>(row[kJobDstPad]);
    // plan_resize (csrc/ops/anyres_tiles_checks.cpp)
    const bool need_h = d.resize_w != d.src_w, need_v = d.resize_h != d.src_h;
    const bool vertical_first = row[kJobVerticalFirst] != 0 && need_v;
    d.need_horizontal = need_h;
    d.need_vertical = need_v;
    d.vertical_first = vertical_first;
    AxisCoeffs hc, vc;
    if (need_h) {
      hc = pil_bicubic_coeffs(static_cast<int>(d.src_w), static_cast<int>(d.resize_w));
      d.h_ksize = hc.ksize;
      d.h_first = append(hc.first);
      d.h_count = append(hc.count);
      d.h_weights = append(hc.weights);
    }
    if (need_v) {
      vc = pil_bicubic_coeffs(static_cast<int>(d.src_h), static_cast<int>(d.resize_h));
      d.v_ksize = vc.ksize;
      d.v_first = append(vc.first);
      d.v_count = append(vc.count);
      d.v_weights = append(vc.weights);
    }
    if (need_v && !vertical_first) {
      d.row_first = vc.first.front();
      d.mid_rows = vc.first.back() + vc.count.back() - d.row_first;
    } else {
      d.row_first = 0;
      d.mid_rows = vertical_first ? d.resize_h : d.src_h;
    }
    d.mid_width = vertical_first ? d.src_w : d.resize_w;
    if (need_h && !vertical_first) staged_row_bytes = std::max(staged_row_bytes, d.src_w * kStagedBytesPerPixel);
    d.mid_offset = mid_bytes;
    mid_bytes += d.mid_rows * d.mid_width * kMidBytesPerPixel;
    d.pass1_begin = pass1;
    pass1 += d.mid_rows;
    d.pass2_begin = pass2;
    pass2 += d.canvas_h;
  }
  if (arena.empty()) arena.push_back(0);
  std::vector<uint8_t> mid(static_cast<size_t>(std::max<int64_t>(mid_bytes, 1)), 0xAB);
  const bool use_staged = staged_row_bytes > 0 && staged_row_bytes <= kMaxStagedRowBytes;
  const TileJobDevice* jobs = descs.data();
  const int32_t* coeffs = arena.data();
  uint8_t* m = mid.data();
  if (pass1 > 0) {
    if (use_staged)
      emu::launch(static_cast<unsigned>(pass1), kThreads, static_cast<size_t>(staged_row_bytes),
                  [&] { anyres_pass1_kernel<true>(jobs, num_jobs, coeffs, m); });
    else
      emu::launch(static_cast<unsigned>(pass1), kThreads, 0, [&] { anyres_pass1_kernel<false>(jobs, num_jobs, coeffs, m); });
  }
  const int32_t t = static_cast<int32_t>(tile);
  if (pass2 > 0) {
    // The launcher's choice (pass2_staged_out, with_pass2_kernel); force_direct tests the other path.
    int64_t canvas_row_bytes = 0;
    for (const auto& d : descs) canvas_row_bytes = std::max(canvas_row_bytes, d.canvas_w * 3);
    const bool staged = !force_direct && pass2_staged_out(tile, lut, lut_bytes, canvas_row_bytes);
    const size_t smem = staged ? static_cast<size_t>(canvas_row_bytes) : 0;
    const unsigned blocks = static_cast<unsigned>(pass2);
    with_pass2_kernel(lut, lut_bytes, staged, [&](auto out_tag, auto staged_tag) {
      using Out = decltype(out_tag);
      emu::launch(blocks, kThreads, smem, [&] {
        anyres_pass2_kernel<Out, decltype(staged_tag)::value>(jobs, num_jobs, coeffs, m, static_cast<Out*>(out),
                                                              static_cast<const Out*>(lut), t);
      });
    });
  }
  return 0;
}
