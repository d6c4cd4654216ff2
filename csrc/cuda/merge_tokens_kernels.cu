// CUDA kernels of merge_tokens. No torch headers here (compile time); see merge_tokens_kernels.h.
//
// Forward = transformers' `embed_tokens(input_ids).masked_scatter(mask, visual.to(dtype))` in two
// launches and no host sync of its own:
//   1. merge_count_kernel: one block per chunk of positions counts placeholders and finds bad ids.
//   2. merge_forward_kernel: one block per chunk sums the counts of the chunks before it (at most
//      kMaxChunks values, so no scan kernel is needed), ranks its placeholders with a ballot scan,
//      then copies every row of the chunk once: where rows are 16-byte vectors of one dtype, the
//      tile's rows as one flat range of vectors (block_copy_rows_flat), else one warp per row.
// The sync-free path is one launch: each block of merge_forward_kernel counts all the ids before its
// chunk itself, up to merge_cuda_self_count_max() positions (self_counted_prefix; the default), or,
// with merge_cuda_lookback() on, finds the placeholders before its chunk by a decoupled look-back
// over the other blocks' published counts at any length (lookback_prefix).
#include <assert.h>  // declares __assert_fail for device code (the sync-free trap)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "dispatch.cuh"
#include "merge_tokens_kernels.h"

namespace interleave {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // threads per block, and positions per tile
constexpr int kWarps = kThreads / 32;

template <typename To, typename From>
__device__ __forceinline__ To cast_to(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (std::is_same_v<To, double> && std::is_same_v<From, float>) {
    return static_cast<double>(x);
  } else {
    return from_float<To>(to_float(x));
  }
}

// ---- block reductions and the ballot scan --------------------------------------------------
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch /* [kWarps] */) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, scratch[w]);
  return r;
}

struct Sum {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a + b; }
};
struct Min {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};

// Exclusive prefix of a 0/1 flag over the block, and the block's total.
__device__ __forceinline__ int flag_exclusive_scan(bool flag, int* warp_counts /* [kWarps] */,
                                                   int* total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  __syncthreads();
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < kWarps; ++w) {
    before += w < warp ? warp_counts[w] : 0;
    all += warp_counts[w];
  }
  *total = all;
  return before + __popc(ballot & ((1u << lane) - 1u));
}

// Placeholders before this block's chunk: the sum of the counts of all earlier chunks.
__device__ __forceinline__ int64_t chunk_prefix(const MergePositions& pos, int64_t* scratch) {
  int64_t pre = 0;
  for (int64_t j = threadIdx.x; j < blockIdx.x; j += kThreads) pre += pos.chunk_info[j];
  return block_reduce(pre, Sum{}, scratch);
}

// The sync-free path's answer to a placeholder count != visual rows or a text id outside the table:
// a device-side assertion (the host never reads the counts on that path).
__device__ __forceinline__ void sync_free_trap() {
  __assert_fail(
      "interleave.merge_tokens (sync-free path): placeholder count != visual rows, or a text id "
      "outside the embedding table",
      __FILE__, __LINE__, __func__);
}

// The one-launch sync-free path (MergePositions::chunk_info == nullptr): the block counts the
// placeholders before its chunk itself, from the ids (no count kernel, no chunk_info), and with
// device_assert checks its own chunk's text ids; the last block, which has then counted every
// position, checks the total against the visual rows. Returns the placeholders before the chunk.
__device__ __forceinline__ int64_t self_counted_prefix(const MergePositions& pos, int64_t chunk,
                                                       bool device_assert, int64_t* scratch) {
  const int64_t p0 = chunk * pos.chunk;
  const int64_t p1 = min(pos.n, p0 + pos.chunk);
  int64_t before = 0, own = 0, bad = 0;
  auto classify = [&](int64_t p, int64_t id) {
    const bool visual = is_placeholder(id, pos.placeholders);
    if (p < p0) {
      before += visual;
    } else {
      own += visual;
      bad += !visual && !is_valid_text_id(id, pos.num_embeddings);
    }
  };
  // The ids before the chunk are read as 16-byte pairs, kSelfCountLoads per thread in flight at a
  // time: a block at the end of 8192 positions reads 64 KiB, and one 8-byte load per thread per
  // step (the first version) put ~32 dependent L2 round trips ahead of its copy (the c0e6c19 H100
  // profile: 33 us one-launch against 26 + 2 us for the two-launch path).
  int64_t scalar_from = 0;
  if ((reinterpret_cast<uintptr_t>(pos.ids) & 15) == 0) {
    constexpr int kSelfCountLoads = 8;
    const int64_t pairs = p1 / 2;
    const longlong2* v = reinterpret_cast<const longlong2*>(pos.ids);
    // rotate_count: every block starts its walk at its own place (a multiple of 8 pairs, one
    // 128-byte line), so that the blocks, which all read the first ids, do not all ask the same L2
    // lines at the same time. The count does not depend on the order.
    const int64_t lines = pairs / 8;
    const int64_t rot = pos.rotate_count && lines > 0 ? (chunk * 37) % lines * 8 : 0;
    const auto at = [&](int64_t i) { return i + rot < pairs ? i + rot : i + rot - pairs; };
    for (int64_t base = 0; base < pairs; base += kThreads * kSelfCountLoads) {
      longlong2 x[kSelfCountLoads];
#pragma unroll
      for (int u = 0; u < kSelfCountLoads; ++u) {
        const int64_t i = base + u * kThreads + threadIdx.x;
        if (i < pairs) x[u] = __ldg(v + at(i));
      }
#pragma unroll
      for (int u = 0; u < kSelfCountLoads; ++u) {
        const int64_t i = base + u * kThreads + threadIdx.x;
        if (i < pairs) {
          const int64_t j = at(i);
          classify(2 * j, x[u].x);
          classify(2 * j + 1, x[u].y);
        }
      }
    }
    scalar_from = 2 * pairs;
  }
  for (int64_t p = scalar_from + threadIdx.x; p < p1; p += kThreads) classify(p, pos.ids[p]);
  before = block_reduce(before, Sum{}, scratch);
  if (device_assert) {
    own = block_reduce(own, Sum{}, scratch);
    bad = block_reduce(bad, Sum{}, scratch);
    const bool last = chunk == pos.num_chunks - 1;
    if (threadIdx.x == 0 && (bad > 0 || (last && before + own != pos.num_visual))) {
      sync_free_trap();
    }
  }
  return before;
}

// ---- the one-launch path's decoupled look-back (MergePositions::lookback) ---------------------
// A single-pass prefix sum across blocks (Merrill and Garland's decoupled look-back): each block
// takes the next chunk from a ticket counter (so every chunk before it belongs to a block that has
// already started, and no block waits on one that is not running), counts its own placeholders,
// publishes that count, then sums its predecessors' published words kThreads at a time, nearest
// first, until one carries an inclusive prefix; then it publishes its own inclusive prefix. Against the
// self count (every block reads all ids before its chunk: 8 MiB of L2 reads at 8192 positions,
// growing as n^2) this reads each id once more and a few status words, at any n; the 12ae393 H100
// profile had the self-counting kernel at 16.0 us against 10.5 us for the copy kernel that is
// handed the prefixes (D=1024 bf16).
constexpr unsigned long long kStatusAggregate = 1ull << 62, kStatusInclusive = 2ull << 62,
                             kStatusValue = (1ull << 62) - 1;

__device__ __forceinline__ unsigned long long read_status(const unsigned long long* p) {
  return *reinterpret_cast<const volatile unsigned long long*>(p);  // a fresh read on every spin
}

__device__ __forceinline__ void write_status(unsigned long long* p, unsigned long long v) {
  *reinterpret_cast<volatile unsigned long long*>(p) = v;  // flag and value in one 8-byte store
}

// This block's chunk, from the ticket counter (block 0's thread 0 and so on in start order).
__device__ __forceinline__ int64_t take_chunk(MergeLookback* lb, int64_t* slot) {
  if (threadIdx.x == 0) *slot = static_cast<int64_t>(atomicAdd(&lb->ticket, 1ull));
  __syncthreads();
  return *slot;
}

// Counts the chunk's placeholders and bad text ids, publishes the count, and returns (to every
// thread) the number of placeholders before the chunk, which the block finds by the look-back.
// With device_assert a bad id in the chunk, or (last chunk) a total != the visual rows, traps.
// Then counts the block out (lb->done); the last block out zeroes the state for the next launch.
__device__ __forceinline__ int64_t lookback_prefix(const MergePositions& pos, int64_t chunk,
                                                   bool device_assert, int64_t* scratch) {
  MergeLookback* lb = pos.lookback;
  const int64_t p0 = chunk * pos.chunk;
  const int64_t p1 = min(pos.n, p0 + pos.chunk);
  int64_t own = 0, bad = 0;
  for (int64_t p = p0 + threadIdx.x; p < p1; p += kThreads) {
    const int64_t id = pos.ids[p];
    const bool visual = is_placeholder(id, pos.placeholders);
    own += visual;
    bad += !visual && !is_valid_text_id(id, pos.num_embeddings);
  }
  own = block_reduce(own, Sum{}, scratch);
  if (device_assert) bad = block_reduce(bad, Sum{}, scratch);
  __shared__ bool last_out;
  const bool first = chunk == 0;
  if (threadIdx.x == 0) {
    write_status(&lb->status[chunk], static_cast<unsigned long long>(own) |
                                         (first && pos.lookback_inclusive ? kStatusInclusive : kStatusAggregate));
  }
  // The whole block looks back kThreads chunks at a time, nearest first: thread t waits for chunk
  // j - t's word (every earlier chunk's block is running and publishes its count without waiting
  // on anyone), then the window's sum up to its nearest inclusive prefix is two block reductions.
  // A chunk before the first reads as an inclusive prefix of 0, which ends the walk there. (The
  // de8175c H100 run had warp 0 alone walk windows of 32, up to 8 dependent L2 round trips at the
  // benchmark's 256 chunks: 14.7 us of kernel against 10.5 us for the copy given the prefixes.)
  int64_t before = 0;
  for (int64_t j = chunk - 1; !first; j -= kThreads) {
    const int64_t k = j - threadIdx.x;
    unsigned long long s = kStatusInclusive;
    if (k >= 0) {
      do {
        s = read_status(&lb->status[k]);
      } while ((s >> 62) == 0);
    }
    const int64_t stop = block_reduce<int64_t>((s >> 62) == 2 ? threadIdx.x : kThreads, Min{}, scratch);
    before += block_reduce<int64_t>(threadIdx.x <= stop ? static_cast<int64_t>(s & kStatusValue) : 0, Sum{}, scratch);
    if (stop < kThreads) break;
  }
  if (threadIdx.x == 0) {
    if (!first && pos.lookback_inclusive)
      write_status(&lb->status[chunk], static_cast<unsigned long long>(before + own) | kStatusInclusive);
    if (device_assert && (bad > 0 || (chunk == pos.num_chunks - 1 && before + own != pos.num_visual)))
      sync_free_trap();
    // Every read of the status words by this block is done (the values are used above).
    __threadfence();
    last_out = atomicAdd(&lb->done, 1ull) == static_cast<unsigned long long>(pos.num_chunks - 1);
  }
  __syncthreads();
  if (last_out) {  // every block has taken its ticket and finished its look-back
    for (int64_t c = threadIdx.x; c < pos.num_chunks; c += kThreads) lb->status[c] = 0;
    if (threadIdx.x == 0) {
      lb->ticket = 0;
      lb->done = 0;
    }
  }
  return before;
}

enum RowKind : unsigned char { kText = 0, kVisual = 1, kZero = 2 };

// Visits the chunk of this block one tile of kThreads positions at a time. For each tile it fills
// kind[]/row[] (row = embedding id or visual rank) and calls body(tile_begin, tile_rows).
template <typename Body>
__device__ __forceinline__ void for_each_tile(const MergePositions& pos, int64_t chunk, int64_t first_rank,
                                              bool validate, unsigned char* kind, int64_t* row,
                                              int* warp_counts, Body body) {
  const int64_t p0 = chunk * pos.chunk;
  const int64_t p1 = min(pos.n, p0 + pos.chunk);
  int64_t rank_base = first_rank;
  for (int64_t t0 = p0; t0 < p1; t0 += kThreads) {
    const int64_t p = t0 + threadIdx.x;
    const bool in_range = p < p1;
    const int64_t id = in_range ? pos.ids[p] : 0;
    const bool visual = in_range && is_placeholder(id, pos.placeholders);
    int tile_total;
    const int64_t rank = rank_base + flag_exclusive_scan(visual, warp_counts, &tile_total);
    if (visual) {
      kind[threadIdx.x] = rank < pos.num_visual ? kVisual : kZero;
      row[threadIdx.x] = rank;
    } else {
      const bool ok = !validate || is_valid_text_id(id, pos.num_embeddings);
      kind[threadIdx.x] = ok ? kText : kZero;
      row[threadIdx.x] = id;
    }
    __syncthreads();
    body(t0, static_cast<int>(p1 - t0 < kThreads ? p1 - t0 : kThreads));
    rank_base += tile_total;
    __syncthreads();
  }
}

// One warp copies (and casts) one row of `dim` elements.
template <typename To, typename From>
__device__ __forceinline__ void warp_copy_row(To* __restrict__ dst, const From* __restrict__ src,
                                              int64_t dim, bool vec16) {
  const int lane = threadIdx.x % 32;
  if constexpr (std::is_same_v<To, From>) {
    if (vec16) {
      const int64_t nvec = dim * static_cast<int64_t>(sizeof(To)) / 16;
      const uint4* s = reinterpret_cast<const uint4*>(src);
      uint4* d = reinterpret_cast<uint4*>(dst);
      int64_t i = lane;
      // Four independent 16-byte loads in flight per lane before the stores.
#pragma unroll 1
      for (; i + 96 < nvec; i += 128) {
        const uint4 a = __ldg(s + i), b = __ldg(s + i + 32), c = __ldg(s + i + 64),
                    e = __ldg(s + i + 96);
        d[i] = a; d[i + 32] = b; d[i + 64] = c; d[i + 96] = e;
      }
      for (; i < nvec; i += 32) d[i] = __ldg(s + i);
      return;
    }
  }
#pragma unroll 4
  for (int64_t i = lane; i < dim; i += 32) dst[i] = cast_to<To>(src[i]);
}

// Copies a tile's rows (all 16-byte vectorizable, same dtype) as one flat range of
// rows * row_vectors 16-byte vectors: consecutive threads take consecutive vectors of a row, and
// every thread has kFlatLoads loads in flight before its stores. One warp per row (warp_copy_row)
// keeps 4 loads per lane in flight and walks its rows one after another: at D=1024 bf16 a chunk of
// 32 rows was 4 dependent round trips per warp, and the copy ran at 58% of a same-size copy (the
// c0e6c19 H100 run; 80% with this, e857c2a). src(r): row r's source, nullptr for zeros; dst(r):
// its destination, nullptr to skip the row.
// kFlatLoads = 16 (MergePositions::flat_loads, a benchmark variant): a block of 32 rows of 2 KiB
// (D=1024 bf16) in one round of loads instead of two: the bench's cold-L2 timings of the de8175c H100
// run put every sync-free variant at 21-22 us against 16 us for a same-size copy, all blocks
// resident at once and each waiting out its rounds' DRAM latency one after another.
template <int kFlatLoads, typename Src, typename Dst>
__device__ __forceinline__ void block_copy_rows_flat(int rows, int row_vectors, Src src, Dst dst) {
  const int total = rows * row_vectors;
  for (int base = threadIdx.x; base < total; base += kThreads * kFlatLoads) {
    uint4 x[kFlatLoads];
#pragma unroll
    for (int u = 0; u < kFlatLoads; ++u) {
      const int i = base + u * kThreads;
      x[u] = make_uint4(0u, 0u, 0u, 0u);
      if (i < total) {
        const int r = i / row_vectors;
        const uint4* from = src(r);
        if (from != nullptr && dst(r) != nullptr) x[u] = __ldg(from + (i - r * row_vectors));
      }
    }
#pragma unroll
    for (int u = 0; u < kFlatLoads; ++u) {
      const int i = base + u * kThreads;
      if (i < total) {
        const int r = i / row_vectors;
        uint4* to = dst(r);
        if (to != nullptr) to[i - r * row_vectors] = x[u];
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ int row_vectors_of(int64_t dim) {
  return static_cast<int>(dim * static_cast<int64_t>(sizeof(T)) / 16);
}

// The flat copy indexes a tile (at most kThreads rows) in 32 bits.
template <typename T>
__device__ __forceinline__ bool flat_copy_fits(int64_t dim) {
  return dim * static_cast<int64_t>(sizeof(T)) / 16 <= (int64_t{1} << 31) / kThreads - 1;
}

template <typename T>
__device__ __forceinline__ void warp_zero_row(T* dst, int64_t dim) {
  for (int64_t i = threadIdx.x % 32; i < dim; i += 32) dst[i] = from_float<T>(0.f);
}

__device__ __forceinline__ void trap_on_mismatch(const MergePositions& pos, int64_t prefix,
                                                 int64_t* scratch) {
  // Only the last chunk knows the total; it also scans every chunk's bad-id slot.
  if (blockIdx.x != pos.num_chunks - 1) return;
  const int64_t total = prefix + pos.chunk_info[blockIdx.x];
  int64_t worst = -1;
  for (int64_t j = threadIdx.x; j < pos.num_chunks; j += kThreads) {
    const int64_t b = pos.chunk_info[pos.num_chunks + j];
    worst = b > worst ? b : worst;
  }
  worst = -block_reduce(-worst, Min{}, scratch);
  if (threadIdx.x == 0 && (total != pos.num_visual || worst >= 0)) {
    sync_free_trap();
  }
}

// ---- kernels --------------------------------------------------------------------------------
__global__ void __launch_bounds__(kThreads) merge_count_kernel(MergePositions pos) {
  __shared__ int64_t scratch[kWarps];
  const int64_t p0 = blockIdx.x * pos.chunk;
  const int64_t p1 = min(pos.n, p0 + pos.chunk);
  int64_t count = 0, bad = INT64_MAX;
  for (int64_t p = p0 + threadIdx.x; p < p1; p += kThreads) {
    const int64_t id = pos.ids[p];
    const bool visual = is_placeholder(id, pos.placeholders);
    count += visual;
    if (!visual && !is_valid_text_id(id, pos.num_embeddings) && p < bad) bad = p;
  }
  count = block_reduce(count, Sum{}, scratch);
  bad = block_reduce(bad, Min{}, scratch);
  if (threadIdx.x == 0) {
    pos.chunk_info[blockIdx.x] = count;
    pos.chunk_info[pos.num_chunks + blockIdx.x] = bad == INT64_MAX ? -1 : bad;
  }
}

template <typename To, typename From, int kFlatLoads = 8>
__global__ void __launch_bounds__(kThreads)
    merge_forward_kernel(MergePositions pos, const To* __restrict__ table,
                         const From* __restrict__ visual, To* __restrict__ out, bool vec_table,
                         bool vec_visual, bool device_assert) {
  __shared__ int64_t scratch[kWarps];
  __shared__ int warp_counts[kWarps];
  __shared__ unsigned char kind[kThreads];
  __shared__ int64_t row[kThreads];
  __shared__ int64_t ticket;
  int64_t prefix;
  int64_t chunk = blockIdx.x;
  if (pos.chunk_info == nullptr && pos.lookback != nullptr) {
    chunk = take_chunk(pos.lookback, &ticket);
    prefix = lookback_prefix(pos, chunk, device_assert, scratch);
  } else if (pos.chunk_info == nullptr) {
    prefix = self_counted_prefix(pos, chunk, device_assert, scratch);
  } else {
    prefix = chunk_prefix(pos, scratch);
    if (device_assert) trap_on_mismatch(pos, prefix, scratch);
  }
  const int64_t dim = pos.dim;
  const int warp = threadIdx.x / 32;
  if constexpr (std::is_same_v<To, From>) {
    if (vec_table && vec_visual && flat_copy_fits<To>(dim)) {
      const int rv = row_vectors_of<To>(dim);
      const uint4* tbl = reinterpret_cast<const uint4*>(table);
      const uint4* vis = reinterpret_cast<const uint4*>(visual);
      uint4* dst = reinterpret_cast<uint4*>(out);
      for_each_tile(pos, chunk, prefix, /*validate=*/true, kind, row, warp_counts, [&](int64_t t0, int rows) {
        block_copy_rows_flat<kFlatLoads>(
            rows, rv,
            [&](int r) -> const uint4* {
              return kind[r] == kText ? tbl + row[r] * rv : kind[r] == kVisual ? vis + row[r] * rv : nullptr;
            },
            [&](int r) -> uint4* { return dst + (t0 + r) * rv; });
      });
      return;
    }
  }
  for_each_tile(pos, chunk, prefix, /*validate=*/true, kind, row, warp_counts,
                [&](int64_t t0, int rows) {
                  for (int r = warp; r < rows; r += kWarps) {
                    To* dst = out + (t0 + r) * dim;
                    if (kind[r] == kText)
                      warp_copy_row(dst, table + row[r] * dim, dim, vec_table);
                    else if (kind[r] == kVisual)
                      warp_copy_row(dst, visual + row[r] * dim, dim, vec_visual);
                    else
                      warp_zero_row(dst, dim);
                  }
                });
}

template <typename To, typename From>
__global__ void __launch_bounds__(kThreads)
    merge_backward_visual_kernel(MergePositions pos, const From* __restrict__ grad,
                                 To* __restrict__ grad_visual, bool vec) {
  __shared__ int64_t scratch[kWarps];
  __shared__ int warp_counts[kWarps];
  __shared__ unsigned char kind[kThreads];
  __shared__ int64_t row[kThreads];
  const int64_t prefix = chunk_prefix(pos, scratch);
  const int64_t dim = pos.dim;
  const int warp = threadIdx.x / 32;
  if constexpr (std::is_same_v<To, From>) {
    if (vec && flat_copy_fits<From>(dim)) {  // the forward's flat copy, gathering the placeholder rows' gradients
      const int rv = row_vectors_of<From>(dim);
      const uint4* g = reinterpret_cast<const uint4*>(grad);
      uint4* gv = reinterpret_cast<uint4*>(grad_visual);
      for_each_tile(pos, blockIdx.x, prefix, /*validate=*/false, kind, row, warp_counts, [&](int64_t t0, int rows) {
        block_copy_rows_flat<8>(
            rows, rv, [&](int r) -> const uint4* { return g + (t0 + r) * rv; },
            [&](int r) -> uint4* { return kind[r] == kVisual ? gv + row[r] * rv : nullptr; });
      });
      return;
    }
  }
  for_each_tile(pos, blockIdx.x, prefix, /*validate=*/false, kind, row, warp_counts,
                [&](int64_t t0, int rows) {
                  for (int r = warp; r < rows; r += kWarps)
                    if (kind[r] == kVisual)
                      warp_copy_row(grad_visual + row[r] * dim, grad + (t0 + r) * dim, dim, vec);
                });
}

__global__ void merge_weight_keys_kernel(MergePositions pos, int64_t padding_idx,
                                         int64_t* __restrict__ keys) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= pos.n) return;
  const int64_t id = pos.ids[p];
  const bool skip = id == padding_idx || is_placeholder(id, pos.placeholders) ||
                    !is_valid_text_id(id, pos.num_embeddings);
  keys[p] = skip ? pos.num_embeddings : id;
}

template <typename T, typename Acc>
__global__ void merge_weight_grad_kernel(const int64_t* __restrict__ sorted_keys,
                                         const int64_t* __restrict__ order, int64_t n,
                                         int64_t num_embeddings, int64_t dim,
                                         const T* __restrict__ grad, T* __restrict__ grad_weight) {
  const int64_t i = blockIdx.x;
  const int64_t key = sorted_keys[i];
  // One block per segment of equal keys, started by the segment's first element.
  if (key >= num_embeddings || (i > 0 && sorted_keys[i - 1] == key)) return;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    Acc acc = 0;
    for (int64_t j = i; j < n && sorted_keys[j] == key; ++j)
      acc += cast_to<Acc>(grad[order[j] * dim + d]);
    grad_weight[key * dim + d] = cast_to<T>(acc);
  }
}

bool rows_vectorizable(const void* a, const void* b, int64_t row_bytes) {
  return aligned16(a) && aligned16(b) && row_bytes % 16 == 0;
}

}  // namespace

void launch_merge_count(const MergePositions& pos, cudaStream_t stream) {
  if (pos.num_chunks == 0) return;
  merge_count_kernel<<<static_cast<unsigned>(pos.num_chunks), kThreads, 0, stream>>>(pos);
}

void launch_merge_forward(const MergePositions& pos, const void* embed_weight, DType weight_dtype,
                          const void* visual, DType visual_dtype, void* out, bool device_assert,
                          cudaStream_t stream) {
  if (pos.num_chunks == 0) return;
  with_type(weight_dtype, [&](auto to_tag) {
    using To = decltype(to_tag);
    with_type(visual_dtype, [&](auto from_tag) {
      using From = decltype(from_tag);
      const bool vec_table = rows_vectorizable(embed_weight, out, pos.dim * sizeof(To));
      const bool vec_visual = std::is_same_v<To, From> &&
                              rows_vectorizable(visual, out, pos.dim * sizeof(From));
      if constexpr (std::is_same_v<To, From>) {  // the flat copy's 16 loads: same-dtype rows only
        if (pos.flat_loads == 16) {
          merge_forward_kernel<To, From, 16><<<static_cast<unsigned>(pos.num_chunks), kThreads, 0, stream>>>(
              pos, static_cast<const To*>(embed_weight), static_cast<const From*>(visual),
              static_cast<To*>(out), vec_table, vec_visual, device_assert);
          return;
        }
      }
      merge_forward_kernel<To, From><<<static_cast<unsigned>(pos.num_chunks), kThreads, 0, stream>>>(
          pos, static_cast<const To*>(embed_weight), static_cast<const From*>(visual),
          static_cast<To*>(out), vec_table, vec_visual, device_assert);
    });
  });
}

void launch_merge_backward_visual(const MergePositions& pos, const void* grad_output,
                                  DType grad_dtype, void* grad_visual, DType visual_dtype,
                                  cudaStream_t stream) {
  if (pos.num_chunks == 0) return;
  with_type(grad_dtype, [&](auto from_tag) {
    using From = decltype(from_tag);
    with_type(visual_dtype, [&](auto to_tag) {
      using To = decltype(to_tag);
      const bool vec = std::is_same_v<To, From> &&
                       rows_vectorizable(grad_output, grad_visual, pos.dim * sizeof(From));
      merge_backward_visual_kernel<To, From>
          <<<static_cast<unsigned>(pos.num_chunks), kThreads, 0, stream>>>(
              pos, static_cast<const From*>(grad_output), static_cast<To*>(grad_visual), vec);
    });
  });
}

void launch_merge_weight_keys(const MergePositions& pos, int64_t padding_idx, int64_t* keys,
                              cudaStream_t stream) {
  if (pos.n == 0) return;
  const unsigned blocks = static_cast<unsigned>((pos.n + kThreads - 1) / kThreads);
  merge_weight_keys_kernel<<<blocks, kThreads, 0, stream>>>(pos, padding_idx, keys);
}

void launch_merge_weight_grad(const int64_t* sorted_keys, const int64_t* order, int64_t n,
                              int64_t num_embeddings, int64_t dim, const void* grad_output,
                              DType grad_dtype, void* grad_weight, cudaStream_t stream) {
  if (n == 0 || dim == 0) return;
  const unsigned threads = dim >= 256 ? 256 : 64;
  with_type(grad_dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
    merge_weight_grad_kernel<T, Acc><<<static_cast<unsigned>(n), threads, 0, stream>>>(
        sorted_keys, order, n, num_embeddings, dim, static_cast<const T*>(grad_output),
        static_cast<T*>(grad_weight));
  });
}

}  // namespace cuda
}  // namespace interleave
