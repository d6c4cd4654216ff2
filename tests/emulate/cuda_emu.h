// A small host emulator for CUDA kernels that use threadIdx/blockIdx/blockDim/gridDim,
// __syncthreads, shared memory and the collectives below (64-bit atomicAdd, as a plain add): compile the .cu as C++ after
// this header and launch kernels with emu::launch. Every CUDA thread of a block is a coroutine
// (ucontext) with its own stack; __syncthreads waits until every unfinished thread of the block is
// there, so a barrier really separates the phases of a kernel (a thread never reads shared memory
// that another thread has not written yet), and threads waiting at different barriers are a
// reported deadlock. Blocks run one after another. Warp collectives (__shfl_down_sync,
// __ballot_sync, the MMA below) exchange values between two warp-wide waits: the whole warp must
// call them together, as on the GPU; other warps may be anywhere. Warpgroup MMAs (wgmma) and
// warpgroup barriers wait likewise for the calling 128 threads.
// `__shared__` becomes `static` (one copy, reused by the blocks in turn); dynamic shared memory is
// IL_DYNAMIC_SMEM (csrc/common/macros.h), here a buffer of the launch's size. This checks index
// math, barriers and arithmetic on machines without a GPU; not races between blocks, not speed.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
#define INTERLEAVE_EMULATION 1

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline EmuDim3 threadIdx, blockIdx, blockDim{1, 1, 1}, gridDim{1, 1, 1};

namespace emu {
enum State { kReady = 0, kAtBarrier = 1, kDone = 2, kAtWarpSync = 3, kAtGroupSync = 4 };
inline std::vector<ucontext_t> contexts;
inline std::vector<std::vector<char>> stacks;
inline std::vector<int> states;
inline ucontext_t scheduler;
inline int current = 0;
inline std::function<void()> body;
inline std::vector<unsigned char> dynamic_smem;
inline std::vector<uint64_t> exchange;  // one slot per thread of the block (warp collectives)
inline std::vector<std::array<uint32_t, 6>> mma_exchange;  // a[4], b[2] of each thread (il_mma_*)
// Warpgroup MMAs issued by each thread (il_wgmma_*): the open group, then the committed ones, oldest
// first. They run when a wait retires them, reading A registers, B and the accumulator then.
struct WgmmaOp {
  float* d;
  const uint32_t* a;
  uint64_t desc;
  int scale_d;
};
// cp.async copies issued by each thread and not yet waited for (il_cp_async_*): they land at the
// thread's wait, so a kernel that reads the destination before waiting reads the old bytes.
struct CpAsync {
  void* dst;
  const void* src;
  size_t bytes;
};
inline std::vector<std::vector<CpAsync>> cp_async_pending;       // not yet committed
inline std::vector<std::deque<std::vector<CpAsync>>> cp_async_groups;  // committed, oldest first
// The global-memory buffers a launch may read with cp.async (a driver registers its inputs; empty:
// unchecked): a copy from outside them aborts, so an out-of-bounds source is caught even where the
// bytes it would bring are never used.
inline std::vector<std::pair<const unsigned char*, size_t>> readable;
inline bool is_readable(const void* p, size_t bytes) {
  if (readable.empty()) return true;
  const auto* q = static_cast<const unsigned char*>(p);
  for (const auto& r : readable)
    if (q >= r.first && q + bytes <= r.first + r.second) return true;
  return false;
}
inline void cp_async_land(std::vector<CpAsync>& copies) {
  for (const CpAsync& c : copies) std::memcpy(c.dst, c.src, c.bytes);
  copies.clear();
}
inline std::vector<std::vector<WgmmaOp>> wgmma_open;
inline std::vector<std::deque<std::vector<WgmmaOp>>> wgmma_committed;

inline void trampoline() {
  body();
  states[current] = kDone;
  swapcontext(&contexts[current], &scheduler);
}

inline void barrier() {
  states[current] = kAtBarrier;
  swapcontext(&contexts[current], &scheduler);
}

// The wait of a warp collective: every unfinished lane of the caller's warp (see run_block).
inline void warp_sync() {
  states[current] = kAtWarpSync;
  swapcontext(&contexts[current], &scheduler);
}

// The wait of a warpgroup collective (wgmma): every unfinished thread of the caller's 128.
inline void group_sync() {
  states[current] = kAtGroupSync;
  swapcontext(&contexts[current], &scheduler);
}

template <typename T>
T* dynamic_shared() { return reinterpret_cast<T*>(dynamic_smem.data()); }

// Lets the threads waiting at `state` go on in every group of `width` threads (a warp, a
// warpgroup) whose unfinished threads all wait there; true if any went on.
inline bool release_groups(unsigned block, unsigned width, int state) {
  bool released = false;
  for (unsigned w = 0; w < block; w += width) {
    bool all_waiting = true, any_waiting = false;
    for (unsigned t = w; t < std::min(block, w + width); ++t) {
      if (states[t] == kDone) continue;
      if (states[t] == state) any_waiting = true;
      else all_waiting = false;
    }
    if (any_waiting && all_waiting) {
      for (unsigned t = w; t < std::min(block, w + width); ++t)
        if (states[t] == state) states[t] = kReady;
      released = true;
    }
  }
  return released;
}

// Runs the block's threads until all are done: each ready thread runs until it finishes or waits;
// a warp's lanes waiting at a warp sync go on once every unfinished lane of that warp waits there,
// a warpgroup's threads at a group sync (wgmma waits, named warpgroup barriers) likewise for its
// 128 threads; threads at __syncthreads go on once every unfinished thread of the block waits there (exited
// threads count as arrived, as on the GPU). Anything else is a deadlock, reported and fatal.
inline void run_block(unsigned block) {
  for (;;) {
    bool ran = false;
    for (unsigned t = 0; t < block; ++t) {
      if (states[t] != kReady) continue;
      current = static_cast<int>(t);
      threadIdx.x = t;
      swapcontext(&scheduler, &contexts[t]);
      ran = true;
    }
    if (ran) continue;
    bool all_done = true, all_at_barrier = true;
    for (unsigned t = 0; t < block; ++t) {
      if (states[t] == kDone) continue;
      all_done = false;
      if (states[t] != kAtBarrier) all_at_barrier = false;
    }
    const bool released = release_groups(block, 32, kAtWarpSync) | release_groups(block, 128, kAtGroupSync);
    if (all_done) return;
    if (released) continue;
    if (!all_at_barrier) {
      std::fprintf(stderr, "cuda_emu: deadlock in block %u (threads wait at different barriers)\n", blockIdx.x);
      std::abort();
    }
    for (unsigned t = 0; t < block; ++t)
      if (states[t] == kAtBarrier) states[t] = kReady;
  }
}

// Runs kernel() for every block of the grid (grid_x x grid_y) and every thread of `block`,
// threads as coroutines.
template <typename Kernel>
void launch2d(unsigned grid_x, unsigned grid_y, unsigned block, size_t smem_bytes, Kernel kernel) {
  constexpr size_t kStack = 128 * 1024;
  gridDim.x = grid_x;
  gridDim.y = grid_y;
  blockDim.x = block;
  dynamic_smem.assign(smem_bytes + 16, 0xCD);
  exchange.assign(block, 0);
  mma_exchange.assign(block, {});
  wgmma_open.assign(block, {});
  wgmma_committed.assign(block, {});
  cp_async_pending.assign(block, {});
  cp_async_groups.assign(block, {});
  contexts.resize(block);
  states.assign(block, kReady);
  if (stacks.size() < block) stacks.resize(block, std::vector<char>(kStack));
  body = kernel;
  for (unsigned by = 0; by < grid_y; ++by) {
    for (unsigned bx = 0; bx < grid_x; ++bx) {
      blockIdx.x = bx;
      blockIdx.y = by;
      for (unsigned t = 0; t < block; ++t) {
        getcontext(&contexts[t]);
        contexts[t].uc_stack.ss_sp = stacks[t].data();
        contexts[t].uc_stack.ss_size = kStack;
        contexts[t].uc_link = nullptr;
        makecontext(&contexts[t], trampoline, 0);
        states[t] = kReady;
      }
      run_block(block);
      for (unsigned t = 0; t < block; ++t) {
        bool in_flight = !cp_async_pending[t].empty();
        for (const auto& g : cp_async_groups[t]) in_flight = in_flight || !g.empty();
        cp_async_groups[t].clear();  // empty groups: allowed, as on the GPU
        if (in_flight) {
          std::fprintf(stderr, "cuda_emu: thread %u ended with cp.async copies never waited for\n", t);
          std::abort();
        }
      }
    }
  }
}

template <typename Kernel>
void launch(unsigned grid, unsigned block, size_t smem_bytes, Kernel kernel) {
  launch2d(grid, 1, block, smem_bytes, kernel);
}
}  // namespace emu

inline void __syncthreads() { emu::barrier(); }
// A warp barrier: every unfinished lane of the caller's warp (a full mask only).
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_sync(); }

namespace emu {
template <typename T>
T shfl_down(T v, unsigned delta) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shfl of a value wider than 8 bytes");
  uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  exchange[threadIdx.x] = raw;
  warp_sync();
  const unsigned lane = threadIdx.x % 32, src = lane + delta;
  T r = v;
  if (src < 32 && threadIdx.x - lane + src < blockDim.x) {
    const uint64_t x = exchange[threadIdx.x - lane + src];
    std::memcpy(&r, &x, sizeof(T));
  }
  warp_sync();
  return r;
}

inline unsigned ballot(bool pred) {
  exchange[threadIdx.x] = pred ? 1 : 0;
  warp_sync();
  const unsigned base = threadIdx.x - threadIdx.x % 32;
  unsigned bits = 0;
  for (unsigned l = 0; l < 32 && base + l < blockDim.x; ++l) bits |= static_cast<unsigned>(exchange[base + l] != 0) << l;
  warp_sync();
  return bits;
}
}  // namespace emu

template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta) { return emu::shfl_down(v, delta); }
inline unsigned __ballot_sync(unsigned, bool pred) { return emu::ballot(pred); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// Blocks run one after another and a block's threads one at a time between waits, so the atomics
// are plain read-modify-writes and a fence orders nothing the emulation could reorder.
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
inline void __threadfence() {}
template <typename T>
T __ldg(const T* p) { return *p; }
using std::min;
using std::max;
using std::fma;  // device code calls fma(float, float, float) unqualified, as CUDA's math headers allow

// The tensor-core primitives of csrc/cuda/anyres_tiles_kernels.cu (there one PTX instruction each),
// with the instructions' documented semantics. fp16 through GCC's _Float16 (IEEE binary16,
// round-to-nearest-even conversions), as the PTX .rn instructions round.
namespace emu {
inline _Float16 half_of(uint32_t bits16) {
  const uint16_t b = static_cast<uint16_t>(bits16);
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return h;
}
inline uint32_t bits_of(_Float16 h) {
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
}  // namespace emu

// prmt.b32 (default mode): result byte i is byte (selector >> 4i) & 7 of {b, a} (a = bytes 0..3).
inline uint32_t il_prmt(uint32_t a, uint32_t b, uint32_t selector) {
  const uint64_t bytes = static_cast<uint64_t>(b) << 32 | a;
  uint32_t d = 0;
  for (int i = 0; i < 4; ++i) d |= static_cast<uint32_t>((bytes >> (8 * ((selector >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return d;
}
// sub.rn.f16x2
inline uint32_t il_hsub2(uint32_t a, uint32_t b) {
  const _Float16 lo = static_cast<_Float16>(static_cast<float>(emu::half_of(a)) - static_cast<float>(emu::half_of(b)));
  const _Float16 hi = static_cast<_Float16>(static_cast<float>(emu::half_of(a >> 16)) - static_cast<float>(emu::half_of(b >> 16)));
  return emu::bits_of(lo) | emu::bits_of(hi) << 16;
}
// cvt.rn.f16.s32 twice, packed lo | hi << 16
inline uint32_t il_int2_to_half2(int32_t lo, int32_t hi) {
  return emu::bits_of(static_cast<_Float16>(static_cast<float>(lo))) |
         emu::bits_of(static_cast<_Float16>(static_cast<float>(hi))) << 16;
}
// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, a warp collective: each lane posts its
// fragments, then computes its four results from the whole warp's (the PTX ISA's fragment layout:
// groupID g = lane / 4, t = lane % 4; A: a[0] (row g, k 2t..2t+1), a[1] (row g + 8), a[2], a[3]
// the same at k + 8; B: b[0] (k 2t..2t+1, column g), b[1] at k + 8; C: c[0..1] (row g, columns
// 2t..2t+1), c[2..3] (row g + 8)). The sum is exact in double and rounded once to fp32, which
// is what the kernels that use it rely on (integer sums below 2^24). The whole warp must call it
// together, as on the GPU.
namespace emu {
inline double bf16_value(uint32_t bits16) {  // bf16 is the upper half of a float32
  const uint32_t f = (bits16 & 0xFFFFu) << 16;
  float v;
  std::memcpy(&v, &f, 4);
  return v;
}
inline double f16_value(uint32_t bits16) { return static_cast<double>(half_of(bits16)); }
}  // namespace emu

template <double (*Value)(uint32_t)>
inline void il_mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& mine = emu::mma_exchange[threadIdx.x];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  for (int i = 0; i < 2; ++i) mine[4 + i] = b[i];
  emu::warp_sync();
  const unsigned lane = threadIdx.x % 32, base = threadIdx.x - lane;
  const auto a_at = [&](int row, int k) {
    const auto& src = emu::mma_exchange[base + (row % 8) * 4 + (k % 8) / 2];
    return Value(src[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)] >> (16 * (k % 2)));
  };
  const auto b_at = [&](int k, int col) {
    const auto& src = emu::mma_exchange[base + col * 4 + (k % 8) / 2];
    return Value(src[4 + (k >= 8 ? 1 : 0)] >> (16 * (k % 2)));
  };
  float d[4];
  for (int e = 0; e < 4; ++e) {
    const int row = static_cast<int>(lane / 4) + (e >> 1) * 8, col = static_cast<int>(lane % 4) * 2 + (e & 1);
    double sum = c[e];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    d[e] = static_cast<float>(sum);
  }
  emu::warp_sync();
  for (int e = 0; e < 4; ++e) c[e] = d[e];
}
inline void il_mma_f16_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  il_mma_16816<emu::f16_value>(c, a, b);
}
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: the same fragments, bf16 operands.
inline void il_mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  il_mma_16816<emu::bf16_value>(c, a, b);
}

// mma.sync.aligned.m16n8k32.row.col.s32.u8.{s8,u8}.s32 (csrc/cuda/ptx_primitives.cuh), a warp
// collective with the PTX ISA's fragment layout: A a[0] (row g, k 4t..4t+3, byte i = k 4t + i),
// a[1] (row g + 8), a[2] / a[3] at k + 16; B b[0] (k 4t..4t+3, column g), b[1] at k + 16; C as in
// m16n8k16. The sums are exact; one outside int32 aborts the emulation, since the kernels that use
// it promise every accumulator stays inside (no reliance on wrap-around in the tensor cores).
template <bool kSignedB>
inline void il_imma_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& mine = emu::mma_exchange[threadIdx.x];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  for (int i = 0; i < 2; ++i) mine[4 + i] = b[i];
  emu::warp_sync();
  const unsigned lane = threadIdx.x % 32, base = threadIdx.x - lane;
  const auto a_at = [&](int row, int k) -> int64_t {
    const auto& src = emu::mma_exchange[base + (row % 8) * 4 + (k % 16) / 4];
    return (src[(row >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0)] >> (8 * (k % 4))) & 0xFF;
  };
  const auto b_at = [&](int k, int col) -> int64_t {
    const auto& src = emu::mma_exchange[base + col * 4 + (k % 16) / 4];
    const uint32_t byte = (src[4 + (k >= 16 ? 1 : 0)] >> (8 * (k % 4))) & 0xFF;
    return kSignedB ? static_cast<int64_t>(static_cast<int8_t>(byte)) : static_cast<int64_t>(byte);
  };
  int32_t d[4];
  for (int e = 0; e < 4; ++e) {
    const int row = static_cast<int>(lane / 4) + (e >> 1) * 8, col = static_cast<int>(lane % 4) * 2 + (e & 1);
    int64_t sum = c[e];
    for (int k = 0; k < 32; ++k) sum += a_at(row, k) * b_at(k, col);
    if (sum < INT32_MIN || sum > INT32_MAX) {
      std::fprintf(stderr, "cuda_emu: an integer mma accumulator left int32 (%lld)\n", static_cast<long long>(sum));
      std::abort();
    }
    d[e] = static_cast<int32_t>(sum);
  }
  emu::warp_sync();
  for (int e = 0; e < 4; ++e) c[e] = d[e];
}
inline void il_imma_u8s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  il_imma_16832<true>(c, a, b);
}
inline void il_imma_u8u8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  il_imma_16832<false>(c, a, b);
}

// ---- Hopper warpgroup MMA (csrc/cuda/ptx_primitives.cuh) ------------------------------------------
// wgmma.mma_async.m64n128k16.f32.f16.f16 with A in registers and B in shared memory, emulated from
// the PTX ISA: the instruction is recorded when issued and computed when an il_wgmma_wait retires
// its group, reading the A registers, the shared-memory B and the accumulator at that moment, so a
// kernel that rewrites A before the wait, or reads the accumulator before it, gets wrong results
// here as on the GPU. A: warp w of the warpgroup holds rows 16w..16w+15 in the mma.m16n8k16 A
// layout; D: acc[4j + e] is row 16w + gid + 8 * (e >> 1), column 8j + 2 * tig + (e & 1). B: the
// descriptor's start address, LBO and SBO (bits 0-13, 16-29, 32-45, each >> 4), no swizzle only
// (bits 62-63 zero): element (n, k) at start + (n % 8) * 16 + (n / 8) * SBO + (k % 8) * 2 +
// (k / 8) * LBO bytes (the K-major core-matrix layout). Sums exact in double, rounded once to fp32.
inline uint32_t il_smem_addr(const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - emu::dynamic_smem.data());
}
inline void il_fence_proxy_async_smem() {}
inline void il_cp_async4(void* smem_dst, const void* gmem_src) {
  emu::cp_async_pending[threadIdx.x].push_back({smem_dst, gmem_src, 4});
}
inline void il_cp_async_wait_all() {
  for (auto& g : emu::cp_async_groups[threadIdx.x]) emu::cp_async_land(g);
  emu::cp_async_groups[threadIdx.x].clear();
  emu::cp_async_land(emu::cp_async_pending[threadIdx.x]);
}
// 16-byte copies: both addresses must be 16-byte aligned (shared memory from its base), as the
// GPU requires; the emulator aborts otherwise.
inline void il_cp_async16(void* smem_dst, const void* gmem_src) {
  if (il_smem_addr(smem_dst) % 16 != 0 || reinterpret_cast<uintptr_t>(gmem_src) % 16 != 0) {
    std::fprintf(stderr, "cuda_emu: cp.async of 16 bytes with a misaligned address (thread %u)\n", threadIdx.x);
    std::abort();
  }
  if (!emu::is_readable(gmem_src, 16)) {
    std::fprintf(stderr, "cuda_emu: cp.async of 16 bytes from outside every input buffer (thread %u, block %u)\n",
                 threadIdx.x, blockIdx.x);
    std::abort();
  }
  emu::cp_async_pending[threadIdx.x].push_back({smem_dst, gmem_src, 16});
}
inline void il_cp_async_commit() {
  emu::cp_async_groups[threadIdx.x].push_back(std::move(emu::cp_async_pending[threadIdx.x]));
  emu::cp_async_pending[threadIdx.x].clear();
}
template <int Pending>
inline void il_cp_async_wait_group() {
  auto& groups = emu::cp_async_groups[threadIdx.x];
  while (groups.size() > static_cast<size_t>(Pending)) {
    emu::cp_async_land(groups.front());
    groups.pop_front();
  }
}
inline void il_wgmma_fence() {}
inline void il_bar_sync_warpgroup(int) { emu::group_sync(); }
inline void il_reg_fence(float&) {}
inline void il_reg_fence(uint32_t&) {}
inline void il_wgmma_m64n128k16_f16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
  emu::wgmma_open[threadIdx.x].push_back({d, a, desc, scale_d});
}
inline void il_wgmma_commit() {
  auto& open = emu::wgmma_open[threadIdx.x];
  emu::wgmma_committed[threadIdx.x].push_back(std::move(open));
  open.clear();
}

namespace emu {
inline void wgmma_apply(unsigned t, size_t group, size_t index) {
  const unsigned base = t - t % 128, lane = t % 32, warp = (t % 128) / 32, gid = lane / 4, tig = lane % 4;
  const WgmmaOp& op = wgmma_committed[t][group][index];
  const WgmmaOp& first = wgmma_committed[base][group][index];
  if (op.desc != first.desc || op.scale_d != first.scale_d || (op.desc >> 62) != 0) {
    std::fprintf(stderr, "cuda_emu: wgmma operands differ across the warpgroup or use a swizzle\n");
    std::abort();
  }
  const uint32_t start = static_cast<uint32_t>(op.desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>((op.desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((op.desc >> 32) & 0x3FFF) << 4;
  const auto a_at = [&](int row, int k) {
    const unsigned owner = base + (row / 16) * 32 + (row % 8) * 4 + (k % 8) / 2;
    const uint32_t reg = wgmma_committed[owner][group][index].a[(row % 16 >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return static_cast<double>(half_of(reg >> (16 * (k % 2))));
  };
  const auto b_at = [&](int k, int n) {
    const size_t off = start + (n % 8) * 16 + static_cast<size_t>(n / 8) * sbo + (k % 8) * 2 + (k / 8) * lbo;
    if (off + 2 > dynamic_smem.size()) {
      std::fprintf(stderr, "cuda_emu: wgmma B descriptor reads past shared memory (byte %zu)\n", off);
      std::abort();
    }
    uint16_t bits;
    std::memcpy(&bits, dynamic_smem.data() + off, 2);
    return static_cast<double>(half_of(bits));
  };
  float out[64];
  for (int j = 0; j < 16; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = static_cast<int>(warp * 16 + gid) + (e >> 1) * 8, col = 8 * j + static_cast<int>(2 * tig) + (e & 1);
      double sum = op.scale_d ? op.d[4 * j + e] : 0.0;
      for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
      out[4 * j + e] = static_cast<float>(sum);
    }
  std::memcpy(op.d, out, sizeof(out));
}
}  // namespace emu

// Waits (as a warpgroup collective) until at most `Pending` committed groups remain: runs the older
// ones in order, each thread computing its own accumulator slots from the whole warpgroup's A.
template <int Pending>
void il_wgmma_wait() {
  emu::group_sync();  // every thread has issued and committed the same groups
  auto& mine = emu::wgmma_committed[threadIdx.x];
  const size_t retire = mine.size() > static_cast<size_t>(Pending) ? mine.size() - Pending : 0;
  for (size_t g = 0; g < retire; ++g)
    for (size_t i = 0; i < mine[g].size(); ++i) emu::wgmma_apply(threadIdx.x, g, i);
  emu::group_sync();  // nobody rewrites its A registers before every thread has read them
  for (size_t g = 0; g < retire; ++g) mine.pop_front();
}
