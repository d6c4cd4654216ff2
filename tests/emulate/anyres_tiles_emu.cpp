// Host emulation of the anyres_tiles CUDA kernels (tests/test_cuda_emulated.py). The kernel source
// (csrc/cuda/anyres_tiles_kernels.cu without its launcher, which uses <<<>>>) is compiled as C++
// under tests/emulate/cuda_emu.h and launched with the real block size and shared memory, every
// thread a coroutine, so barriers and strided loops run as on the GPU. The host side is the glue's
// own (csrc/cuda/anyres_tiles_batch.h: descriptors, the deduplicated coefficient arena, sizes). This checks the kernels' index math, barriers and Pillow
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

#include "anyres_tiles_batch.h"

using namespace interleave;
using namespace interleave::cuda;

// Pass 1's SIMT rows per block (plan_tile_batch's simt_rows: 1 or kSimtRows) for the next calls.
static int simt_rows = 1;
extern "C" void emu_set_simt_rows(int rows) { simt_rows = rows; }
// Whether the next calls let eligible jobs take the integer tensor-core pass 1 (plan_tile_batch's
// allow_imma), and how many jobs of the last call took it.
static int allow_imma = 0, imma_jobs = 0;
extern "C" void emu_set_imma(int allow) { allow_imma = allow; }
extern "C" int emu_imma_jobs() { return imma_jobs; }
// Whether the next calls let fused integer jobs run the vertical pass on tensor cores too
// (plan_tile_batch's allow_imma_vertical), and how many jobs of the last call did.
static int allow_imma_vertical = 1, imma_vertical_jobs = 0;
extern "C" void emu_set_imma_vertical(int allow) { allow_imma_vertical = allow; }
extern "C" int emu_imma_vertical_jobs() { return imma_vertical_jobs; }
// Whether the next calls let integer pass-1 jobs stage their source rows with cp.async
// (plan_tile_batch's allow_imma_stage), and how many jobs of the last call did.
static int allow_imma_stage = 0, imma_stage_jobs = 0;
extern "C" void emu_set_imma_stage(int allow) { allow_imma_stage = allow; }
extern "C" int emu_imma_stage_jobs() { return imma_stage_jobs; }
// The fused band (canvas rows per block; 0: not fused) of each job of the last call.
static std::vector<int> fused_bands;
extern "C" int emu_fused_band(int job) { return job >= 0 && job < static_cast<int>(fused_bands.size()) ? fused_bands[job] : -1; }

// The glue's host side, shared (anyres_tiles_batch.h): descriptors, the deduplicated coefficient
// arena, the intermediate's size, the shared-memory sizes. Returns false on a bad image index.
static bool plan_batch(int num_images, const uint8_t* const* images, const int64_t* hw, int num_jobs,
                       const int64_t* table, int64_t tile, int out_bytes, int allow_mma, int allow_fused,
                       TileBatch& batch) {
  std::vector<TileJob> jobs_table;
  for (int i = 0; i < num_jobs; ++i) {
    jobs_table.push_back(unpack_tile_job(table + static_cast<int64_t>(i) * kJobFields));
    if (jobs_table.back().image < 0 || jobs_table.back().image >= num_images) return false;
  }
  const std::vector<const uint8_t*> pixels(images, images + num_images);
  std::vector<std::array<int64_t, 2>> sizes;
  for (int i = 0; i < num_images; ++i) sizes.push_back({hw[2 * i], hw[2 * i + 1]});
  batch = plan_tile_batch(jobs_table, pixels, sizes, tile, out_bytes, allow_mma != 0, allow_fused != 0, simt_rows,
                          allow_imma != 0, allow_imma_vertical != 0, allow_imma_stage != 0);
  return true;
}

// The glue keeps a device copy of the arena per arena_key (device_arena in anyres_tiles_cuda.cpp):
// across every batch planned here (the emulated launches and emu_check_arena_key's), equal keys
// must mean equal arenas. 0: consistent; 2: an arena differs from an earlier one under its key.
static int check_arena_key(const TileBatch& batch) {
  static std::map<std::vector<int64_t>, std::vector<int32_t>> arenas;
  const auto seen = arenas.find(batch.arena_key);
  if (seen == arenas.end()) {
    arenas.emplace(batch.arena_key, batch.arena());
    return 0;
  }
  return seen->second == batch.arena() ? 0 : 2;
}

// Plans a batch (no launch) and checks its arena against its key: 0, 1 (bad job), 2 (mismatch);
// emu_fused_band then reads its jobs' bands.
extern "C" int emu_check_arena_key(int num_images, const uint8_t* const* images, const int64_t* hw, int num_jobs,
                                   const int64_t* table, int64_t tile, int out_bytes, int allow_mma, int allow_fused) {
  TileBatch batch;
  if (!plan_batch(num_images, images, hw, num_jobs, table, tile, out_bytes, allow_mma, allow_fused, batch)) return 1;
  fused_bands.clear();
  for (const TileJobDevice& d : batch.descs) fused_bands.push_back(d.fused_band);
  return check_arena_key(batch);
}

extern "C" int emu_anyres_tiles(int num_images, const uint8_t* const* images, const int64_t* hw, int num_jobs,
                                const int64_t* table, int64_t tile, const void* lut, int lut_bytes, void* out,
                                int force_direct, int allow_mma, int allow_fused, int* mma_jobs,
                                int* fused_jobs) {
  TileBatch batch;
  if (!plan_batch(num_images, images, hw, num_jobs, table, tile, lut == nullptr ? 1 : lut_bytes, allow_mma,
                  allow_fused, batch))
    return 1;
  if (check_arena_key(batch) != 0) return 2;
  *mma_jobs = *fused_jobs = imma_jobs = imma_vertical_jobs = imma_stage_jobs = 0;
  fused_bands.clear();
  for (const TileJobDevice& d : batch.descs) {
    fused_bands.push_back(d.fused_band);
    imma_vertical_jobs += d.imma_vstride > 0;
    *mma_jobs += d.mma_pass1;
    *fused_jobs += d.fused;
    imma_jobs += d.imma_pass1;
    imma_stage_jobs += d.imma_stage;
  }
  const int64_t pass1 = batch.pass1, pass2 = batch.pass2, staged_row_bytes = batch.staged_row_bytes;
  // cp.async may read the images only (cuda_emu.h aborts otherwise).
  emu::readable.clear();
  for (int i = 0; i < num_images; ++i)
    emu::readable.emplace_back(images[i], static_cast<size_t>(hw[2 * i] * hw[2 * i + 1] * 3));
  std::vector<uint8_t> mid(static_cast<size_t>(std::max<int64_t>(batch.mid_bytes, 1)), 0xAB);
  const bool use_staged = pass1_staged_row(staged_row_bytes);
  const TileJobDevice* jobs = batch.descs.data();
  // As the glue uploads it (TileBatch::write_arena), into a buffer of exactly its size.
  const std::vector<int32_t> arena = batch.arena();
  const int32_t* coeffs = arena.data();
  uint8_t* m = mid.data();
  const int32_t t = static_cast<int32_t>(tile);
  if (pass1 > 0) {
    const int threads = batch.pass1_mma || batch.pass1_imma ? kMmaThreads : pass1_threads(batch.pass1_width);  // the launcher's
    if (batch.pass1_imma)  // the launcher's choice of instantiation
      emu::launch(static_cast<unsigned>(pass1), threads, static_cast<size_t>(staged_row_bytes + batch.imma_stage_bytes),
                  [&] { anyres_pass1_kernel<true, kImmaPath>(jobs, num_jobs, coeffs, m, out, lut, lut_bytes, t); });
    else if (batch.pass1_mma)
      emu::launch(static_cast<unsigned>(pass1), threads, static_cast<size_t>(staged_row_bytes),
                  [&] { anyres_pass1_kernel<true, kMmaPath>(jobs, num_jobs, coeffs, m, out, lut, lut_bytes, t); });
    else if (use_staged)
      emu::launch(static_cast<unsigned>(pass1), threads, static_cast<size_t>(staged_row_bytes),
                  [&] { anyres_pass1_kernel<true>(jobs, num_jobs, coeffs, m, out, lut, lut_bytes, t); });
    else
      emu::launch(static_cast<unsigned>(pass1), threads, 0, [&] { anyres_pass1_kernel<false>(jobs, num_jobs, coeffs, m, out, lut, lut_bytes, t); });
  }
  emu::readable.clear();
  if (pass2 > 0) {
    // The launcher's choice (pass2_staged_out, with_pass2_kernel); force_direct tests the other path.
    const int64_t canvas_row_bytes = batch.canvas_row_bytes;
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
