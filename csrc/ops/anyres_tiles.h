// Torch-facing entry points of anyres_tiles: the job-table checks shared by both backends and the
// per-backend implementations registered in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <vector>

#include "../common/anyres_jobs.h"

namespace interleave {

// Validates images (uint8 [h, w, 3], one device) and jobs (int64 CPU [J, kJobFields]): indices,
// placements inside their canvases, tiles of all jobs disjoint and inside [0, num_tiles).
// Raises ValueError/TypeError naming the problem; returns the unpacked jobs. Tiles no job writes
// (a caller's batch padding: transformers' [images, max patches] pixel_values) are returned in
// `gaps` as [first, count) runs; the kernels zero them.
struct TileRun {
  int64_t first, count;
};
std::vector<TileJob> check_anyres_tiles_args(at::TensorList images, const at::Tensor& jobs,
                                             int64_t num_tiles, int64_t tile, std::vector<TileRun>* gaps);

// lut: optional [3, 256] float32/bfloat16/float16 table (normalized value of each uint8 per
// channel); with it the output is [P, 3, tile, tile] in the table's dtype (HF pixel_values layout),
// without it [P, tile, tile, 3] uint8.
void check_anyres_lut(const std::optional<at::Tensor>& lut, const at::Tensor& first_image);

// Whether the CUDA kernels may run pass 1 on tensor cores where that is exact (default false until
// verified on a GPU; interleave.ops.anyres_tiles.cuda_tensor_cores switches it, through
// interleave._C._set_anyres_mma).
bool& anyres_cuda_mma();
// Intermediate rows per block of the CUDA pass 1's SIMT horizontal pass: 1 (default) or
// cuda::kSimtRows (4; a benchmark variant waiting for a GPU run, see simt_rows_block).
int64_t& anyres_cuda_simt_rows();
// Whether the CUDA kernels may run pass 1 on integer tensor cores (byte planes of the weights on
// mma.m16n8k32, see imma_pass1_block) where a group of 8 outputs reads at most 64 source pixels;
// it replaces anyres_cuda_mma's path for the call. Default false (INTERLEAVE_ANYRES_IMMA=1: true)
// until a GPU run has timed it; interleave.ops.anyres_tiles.cuda_integer_tensor_cores switches it.
bool& anyres_cuda_imma();
// Whether the integer pass 1 copies each warp's source rows into shared memory with 16-byte
// cp.async (images whose rows are 16-byte aligned; plan_tile_batch's allow_imma_stage). Off by
// default until a GPU run has timed it; INTERLEAVE_ANYRES_IMMA_STAGED=1 starts a process with it on.
bool& anyres_cuda_imma_staged();
// Whether the CUDA glue keeps the device copy of a batch's coefficient arena for later calls with
// the same arena key (device_arena in anyres_tiles_cuda.cpp). Default true;
// INTERLEAVE_ANYRES_ARENA_CACHE=0 (bench/gpu_preflight.sh sets it when its check fails) uploads
// the arena every call, as before.
bool& anyres_cuda_arena_cache();
// Whether a job that runs pass 1 on tensor cores (either path) and has a vertical pass runs both
// passes in one block (plan_tile_batch's allow_fused). Default true;
// interleave.ops.anyres_tiles.cuda_fused_passes switches it (benchmarks time both).
bool& anyres_cuda_fused();

at::Tensor anyres_tiles_cpu(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                            int64_t tile, const std::optional<at::Tensor>& lut);
#ifdef INTERLEAVE_WITH_CUDA
at::Tensor anyres_tiles_cuda(at::TensorList images, const at::Tensor& jobs, int64_t num_tiles,
                             int64_t tile, const std::optional<at::Tensor>& lut);
#endif

}  // namespace interleave
