// Host emulation of patch_embed's Hopper wgmma kernel (csrc/cuda/patch_embed_wgmma.cu) under
// tests/emulate/cuda_emu.h, whose wgmma primitives run each warpgroup MMA when its wait retires it
// (reading A registers, the shared-memory panel and the accumulator then). See
// tests/test_cuda_emulated.py: the panels come from the glue's own layout op
// (torch.ops.interleave._patch_embed_wgmma_layout), the grid's tile slices are chosen by the test so
// that a warpgroup walks several tiles.
#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda_emu.h"

using std::fmaf;

#include EMU_KERNEL_SOURCE

using namespace interleave;
using namespace interleave::cuda;

// tiles: uint8 [n, height, width, channels]; panels: fp16 [ceil(dim / 128), k_steps * 16 * 128] of
// W' * s; alpha: 1 / s (one float); bias: fp32 [ceil(dim / 128) * 128]; pos and out: [T, dim] / [n * T, dim] in bf16 (bf16 != 0) or fp16.
// staged: the staged variant (A copied into shared memory with cp.async); returns 2 where its layout
// does not apply (patch_embed_wgmma_staged_layout), as launch_patch_embed_wgmma would fall back.
extern "C" int emu_patch_embed_wgmma(const uint8_t* tiles, int64_t n, int64_t height, int64_t width, int64_t channels,
                                     int64_t patch, const void* panels, int64_t k_steps, const float* alpha,
                                     const float* bias, const void* pos, int64_t dim, int bf16, int slices, int staged,
                                     void* out) {
  PatchEmbedWgmmaArgs args{};
  args.pixels = tiles;
  args.geometry = make_patch_geometry(true, channels, height, width, patch);
  args.rows = static_cast<int32_t>(n * args.geometry.tokens);
  args.k = static_cast<int32_t>(patch_k(args.geometry));
  args.k_steps = static_cast<int32_t>(k_steps);
  args.dim = static_cast<int32_t>(dim);
  args.panels = static_cast<const uint4*>(panels);
  args.alpha = alpha;
  args.bias = bias;
  args.pos_embed = pos;
  args.out = out;
  args.out_type = bf16 ? OutType::kBFloat16 : OutType::kFloat16;
  if (k_steps * 16 < args.k || k_steps > kWgmmaMaxSteps || dim % 4 != 0 || (patch * channels) % 2 != 0 ||
      (width * channels) % 2 != 0)
    return 1;
  const unsigned panel_count = static_cast<unsigned>((dim + kWgmmaN - 1) / kWgmmaN);
  if (staged) {
    args.layout = patch_embed_wgmma_staged_layout(args.geometry, static_cast<int>(k_steps));
    if (!args.layout.ok || reinterpret_cast<uintptr_t>(tiles) % 4 != 0) return 2;
    emu::launch2d(panel_count, static_cast<unsigned>(slices), kWgmmaThreads, args.layout.smem, [&] {
      if (bf16)
        wgmma_patch_kernel<__nv_bfloat16, true>(args);
      else
        wgmma_patch_kernel<__half, true>(args);
    });
    return 0;
  }
  emu::launch2d(panel_count, static_cast<unsigned>(slices), kWgmmaThreads,
                patch_embed_wgmma_smem_bytes(static_cast<int>(k_steps)), [&] {
                  if (bf16)
                    wgmma_patch_kernel<__nv_bfloat16, false>(args);
                  else
                    wgmma_patch_kernel<__half, false>(args);
                });
  return 0;
}
