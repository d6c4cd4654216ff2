// Host emulation of the merge_tokens CUDA forward (count pass, then the copy pass with its prefix,
// ballot scan and warp row copies; or with self_count the one-launch sync-free copy pass alone,
// counting for itself or by the decoupled look-back) under tests/emulate/cuda_emu.h; see tests/test_cuda_emulated.py.
// The glue mirrors csrc/cuda/merge_tokens_cuda.cpp (count_positions, launch_merge_forward) for
// float32 tables and visual rows; min_chunk is the cuda_min_chunk setting.
#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda_emu.h"

#include EMU_KERNEL_SOURCE

using namespace interleave;
using namespace interleave::cuda;

// MergePositions as count_positions (merge_tokens_cuda.cpp) fills them; chunk_info points at info.
static MergePositions make_positions(const int64_t* ids, int64_t n, const int64_t* placeholder_ids,
                                     int num_placeholder_ids, int64_t num_embeddings, int64_t num_visual,
                                     int64_t dim, int64_t min_chunk, std::vector<int64_t>& info) {
  MergePositions pos{};
  pos.ids = ids;
  pos.n = n;
  pos.placeholders.count = num_placeholder_ids;
  for (int i = 0; i < num_placeholder_ids; ++i) pos.placeholders.ids[i] = placeholder_ids[i];
  pos.num_embeddings = num_embeddings;
  pos.num_visual = num_visual;
  pos.dim = dim;
  pos.chunk = std::max<int64_t>((n + kMaxChunks - 1) / kMaxChunks, min_chunk);
  pos.num_chunks = merge_num_chunks(n, pos.chunk);
  info.assign(2 * std::max<int64_t>(pos.num_chunks, 1), -7);
  pos.chunk_info = info.data();
  return pos;
}

// The forward's flat-copy loads per thread (MergePositions::flat_loads: 8 or 16), for the next calls.
static int flat_loads = 8;
extern "C" void emu_set_flat_loads(int loads) { flat_loads = loads; }

static void forward(const MergePositions& pos, const float* table, const float* visual, float* out, bool vec_table,
                    bool vec_visual, bool device_assert) {
  if (flat_loads == 16)
    merge_forward_kernel<float, float, 16>(pos, table, visual, out, vec_table, vec_visual, device_assert);
  else
    merge_forward_kernel<float, float>(pos, table, visual, out, vec_table, vec_visual, device_assert);
}

extern "C" int emu_merge_forward(const int64_t* ids, int64_t n, const int64_t* placeholder_ids, int num_placeholder_ids,
                                 const float* table, int64_t num_embeddings, const float* visual, int64_t num_visual,
                                 int64_t dim, int64_t min_chunk, float* out, int64_t* count, int64_t* first_bad,
                                 int self_count) {
  std::vector<int64_t> info;
  MergePositions pos = make_positions(ids, n, placeholder_ids, num_placeholder_ids, num_embeddings, num_visual, dim,
                                      min_chunk, info);
  if (pos.num_chunks == 0) return 0;
  const bool vec_table = rows_vectorizable(table, out, dim * sizeof(float));
  const bool vec_visual = rows_vectorizable(visual, out, dim * sizeof(float));
  if (self_count) {  // the one-launch sync-free path: no count kernel, no chunk_info
    // 1: each block counts the ids before its chunk; 2: the same, rotated walks; 3: the decoupled
    // look-back, launched twice on one state (the first launch must leave it zero for the second);
    // 4: the look-back with aggregates only, so every block walks back to the first chunk.
    pos.chunk_info = nullptr;
    pos.rotate_count = self_count == 2;
    MergeLookback state{};
    pos.lookback = self_count >= 3 ? &state : nullptr;
    pos.lookback_inclusive = self_count == 3;
    *count = num_visual;
    *first_bad = -1;
    for (int launch = 0; launch < (self_count == 3 ? 2 : 1); ++launch) {
      emu::launch(static_cast<unsigned>(pos.num_chunks), kThreads, 0, [&] {
        forward(pos, table, visual, out, vec_table, vec_visual, true);
      });
      if (state.ticket != 0 || state.done != 0) return 1;
      for (int64_t c = 0; c < kMaxChunks; ++c)
        if (state.status[c] != 0) return 2;
    }
    return 0;
  }
  emu::launch(static_cast<unsigned>(pos.num_chunks), kThreads, 0, [&] { merge_count_kernel(pos); });
  // The default path's host check (merge_tokens_cuda.cpp): total count and the first bad position.
  *count = 0;
  *first_bad = -1;
  for (int64_t c = 0; c < pos.num_chunks; ++c) {
    *count += info[c];
    if (*first_bad < 0) *first_bad = info[pos.num_chunks + c];
  }
  if (*count != num_visual || *first_bad >= 0) return 0;
  emu::launch(static_cast<unsigned>(pos.num_chunks), kThreads, 0, [&] {
    forward(pos, table, visual, out, vec_table, vec_visual, false);
  });
  return 0;
}

// The backward's visual part (merge_tokens_cuda.cpp's backward: the count pass, then
// merge_backward_visual_kernel): grad_visual[k] = grad[position of the k-th placeholder], float32.
extern "C" int emu_merge_backward_visual(const int64_t* ids, int64_t n, const int64_t* placeholder_ids,
                                         int num_placeholder_ids, int64_t num_embeddings, int64_t num_visual,
                                         int64_t dim, int64_t min_chunk, const float* grad, float* grad_visual) {
  std::vector<int64_t> info;
  MergePositions pos = make_positions(ids, n, placeholder_ids, num_placeholder_ids, num_embeddings, num_visual, dim,
                                      min_chunk, info);
  if (pos.num_chunks == 0) return 0;
  emu::launch(static_cast<unsigned>(pos.num_chunks), kThreads, 0, [&] { merge_count_kernel(pos); });
  const bool vec = rows_vectorizable(grad, grad_visual, dim * sizeof(float));
  emu::launch(static_cast<unsigned>(pos.num_chunks), kThreads, 0, [&] {
    merge_backward_visual_kernel<float, float>(pos, grad, grad_visual, vec);
  });
  return 0;
}
