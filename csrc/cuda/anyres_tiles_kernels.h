// Launchers of the anyres_tiles CUDA kernels (raw pointers only; see anyres_tiles_kernels.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/macros.h"

namespace interleave {
namespace cuda {

// One job as the kernels read it: the validated TileJob plus where its coefficients (in the int32
// arena) and its intermediate rows (in the uint8 arena) live, and where its rows start in the
// flattened per-pass work lists (one block per row).
struct TileJobDevice {
  const uint8_t* image;
  int64_t img_h, img_w;
  int64_t src_h, src_w, src_top, src_left;
  int64_t resize_h, resize_w, canvas_h, canvas_w, dst_top, dst_left, first_tile;
  int32_t src_pad, dst_pad;  // packed RGB
  int32_t need_horizontal, need_vertical, vertical_first;
  int32_t v_ksize;
  // Offsets into the int32 coefficient arena. The horizontal weights are tap-major (weight i of
  // output x at h_weights + i * h_outputs + x): the threads of a warp take consecutive outputs, so
  // each tap's weights are one coalesced load (output-major, they were 32 cache lines per load
  // and pass 1's bottleneck). The vertical ones stay output-major (ksize per row): a block shares
  // its row's weights, which are then broadcast loads.
  int64_t h_outputs;
  int64_t h_first, h_count, h_weights;
  int64_t v_first, v_count, v_weights;
  int64_t row_first;                    // first source row the first pass reads (horizontal first)
  int64_t mid_rows, mid_width;          // intermediate: rows x pixels
  int64_t mid_offset;                   // bytes into the intermediate arena
  int64_t pass1_begin, pass2_begin;     // first flattened block of this job in each pass
  // Pass 1 on tensor cores (see kMmaRows): 1 when this job's horizontal pass runs there; its blocks
  // are bands of kMmaRows intermediate rows times chunks of kMmaChunk outputs (mma_chunks per
  // band), each staging its source window as kMmaRows rows of mma_stride words.
  int32_t mma_pass1, mma_chunks, mma_stride;
  // Both passes in pass 1's launch: 1 for a tensor-core job (fp16 or integer) with a vertical pass;
  // its blocks cover its whole canvas (padding too) in bands of fused_band canvas rows (at most
  // kFusedRows or kImmaFusedRows, so that the buffers fit) times mma_chunks chunks of 64 columns, each with fused_rows x
  // kMmaChunk words of intermediate in shared memory (after the staged rows on the fp16 path).
  // Such a job has no rows in pass 2 and no intermediate in global memory.
  int32_t fused, fused_rows, fused_band;
  // Pass 1's SIMT horizontal pass: intermediate rows per block, 1 or kSimtRows (then its blocks are
  // ceil(mid_rows / kSimtRows), each staging that many source rows; plan_tile_batch's simt_rows).
  int32_t rows_per_block;
  // Pass 1 on integer tensor cores (imma_pass1_block in anyres_tiles_kernels.cu): 1 when this job's
  // horizontal pass runs there; unfused, its blocks are bands of kImmaBand intermediate rows times
  // mma_chunks chunks of kMmaChunk outputs, with no shared memory; fused, see above
  // (imma_fused_block; plan_tile_batch's allow_imma and allow_fused).
  int32_t imma_pass1;
  // A fused integer job's vertical pass on integer tensor cores too (imma_vertical_pixels): the
  // bytes per column of its column-major intermediate in shared memory ([3 channels][64 columns]
  // [imma_vstride], 4 consecutive rows a word), or 0 for the SIMT vertical pass over a row-major
  // one (imma_vertical_stride in anyres_tiles_batch.h decides).
  int32_t imma_vstride;
  // An integer pass-1 job whose warps copy their source windows into shared memory with 16-byte
  // cp.async, two steps of 16 rows in flight (imma_group_rows' staged source; plan_tile_batch's
  // allow_imma_stage): 1 where its image rows are 16-byte aligned (img_w * 3 a multiple of 16 and
  // the image's address too). Then the launch's first kImmaStageBlockBytes of dynamic shared memory
  // are the warps' stage buffers and the job's other buffers follow them.
  int32_t imma_stage;
  // A fused integer job's vertical pass on tensor cores: offset into the int32 arena of its B
  // fragments, made once on the host (imma_vertical_planes in anyres_tiles_batch.h): per resized
  // row kImmaPlaneWords words, lane t's 12 (3 planes x 2 k-chunks x 2 registers) at 12 t, so a lane
  // takes them with three 16-byte loads instead of 16 weight loads and their byte splitting.
  int64_t v_planes;
  // The same for the integer pass 1 (imma_group_rows): per intermediate column (output) x, the B
  // fragments of its weights over its group's window (imma_horizontal_planes).
  int64_t h_planes;
};
constexpr int kImmaPlaneWords = 48;  // per output (column or resized row): 4 lanes t x 12 words

constexpr int kSimtRows = 4;

// Pass 1's tensor-core path (horizontal pass first, Pillow's exact integer result): a block takes
// kMmaRows intermediate rows and kMmaChunk outputs of them; each warp one group of 8 outputs at a
// time (an m16n8k16 MMA: 16 rows, 8 outputs, 16 source pixels), over the group's window of source
// pixels. The 22-bit weights are split into an 11-bit high part and an 11-bit low part, each exact
// in fp16, as are the pixels; products (< 2^19) and the sums of at most kMmaMaxTaps of them stay
// below 2^24, so fp32 accumulation is exact and hi * 2^11 + lo is Pillow's integer sum.
constexpr int kMmaRows = 16;
constexpr int kMmaChunk = 64;
constexpr int kMmaThreads = 256;  // 8 warps: one group of 8 outputs each per chunk
constexpr int kMmaMaxTaps = 32;   // 32 * 255 * 2047 < 2^24
constexpr int kFusedRows = 32;    // canvas rows per block of a fused fp16 tensor-core job, at most
// Canvas rows per block of a fused integer tensor-core job, at most: its bands are multiples of 8
// up to this, chosen per job (imma_fused_band in anyres_tiles_batch.h).
constexpr int kImmaFusedRows = 64;

// Pass 1 on integer tensor cores (TileJobDevice::imma_pass1): Pillow's int32 sums exactly, as three
// byte planes of the weights on mma.m16n8k32 (uint8 pixels). A block takes kImmaBand intermediate
// rows and kMmaChunk outputs (kMmaThreads: a warp per group of 8 outputs, 16 rows per step); a
// group's taps must lie within kImmaWindow source pixels of its window start (imma_axis_ok).
constexpr int kImmaBand = 64;
constexpr int kImmaWindow = 64;  // two k-chunks of 32 pixels
// The staged source of the integer pass 1 (TileJobDevice::imma_stage): per warp two buffers of 16
// rows, each row the group's 64-pixel window (192 bytes) from its 16-byte-aligned start (0, 4, 8 or
// 12 bytes before it): 13 chunks of 16 bytes, 208 bytes = 52 words apart. 52 = 20 mod 32, so a
// fragment load (8 rows g x 4 lanes t, words 52 g + 3 t + const) touches 32 distinct banks.
constexpr int kImmaStageChunks = 13;
constexpr int kImmaStageRowBytes = 16 * kImmaStageChunks;
constexpr int kImmaStageWarpBytes = 2 * 16 * kImmaStageRowBytes;
constexpr int64_t kImmaStageBlockBytes = int64_t{kImmaStageWarpBytes} * (kMmaThreads / 32);

// Where the integer pass 1 starts the window of the group of 8 outputs whose first output's first
// tap is source pixel `first`: rounded down to a multiple of 4 pixels from the image's left edge
// (at canvas x `left`), so that 4 pixels are three aligned 32-bit words. The host's eligibility
// check (imma_axis_ok) and the kernel (imma_pass1_block) both use it.
IL_HD int64_t imma_window_start(int64_t first, int64_t left) { return left + ((first - left) & ~int64_t{3}); }

// Pass 1 (one block per intermediate row of every job; its block size follows pass1_width, the
// widest intermediate row), then pass 2 (one block per canvas row of
// every job, writing the tiles). One launch each for the whole batch. With lut (a [3, 256] table of
// lut_bytes-wide entries: 4 for float32, 2 for bfloat16/float16) the output is [P, 3, T, T]
// normalized values, else [P, T, T, 3] uint8.
constexpr int64_t kStagedBytesPerPixel = 4;  // pass 1 stages one 32-bit word per source pixel
constexpr int64_t kMidBytesPerPixel = 4;     // the intermediate holds one 32-bit word per pixel
constexpr int64_t kMaxStagedRowBytes = 48 * 1024;  // pass 1's dynamic shared memory, at most

// Whether pass 1 stages its source rows (the launcher, the host planning and the host emulation
// decide with this): up to the default 48 KiB of dynamic shared memory (source rows up to 12288
// pixels at 4 bytes each); wider rows use the direct path for the whole launch.
inline bool pass1_staged_row(int64_t staged_row_bytes) {
  return staged_row_bytes > 0 && staged_row_bytes <= kMaxStagedRowBytes;
}

void launch_anyres_tiles(const TileJobDevice* jobs, int num_jobs, int64_t pass1_rows,
                         int64_t pass2_rows, const int32_t* coeffs, uint8_t* mid, void* out,
                         const void* lut, int lut_bytes, int64_t tile, int64_t staged_row_bytes,
                         int64_t canvas_row_bytes, int64_t pass1_width, bool pass1_mma, bool pass1_imma,
                         int64_t imma_stage_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace interleave
