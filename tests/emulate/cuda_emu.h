// A small host emulator for CUDA kernels that use only threadIdx/blockIdx/blockDim/gridDim,
// __syncthreads and shared memory (no warp intrinsics, no atomics): compile the .cu as C++ after
// this header and launch kernels with emu::launch. Every CUDA thread of a block is a coroutine
// (ucontext) with its own stack; __syncthreads yields to the scheduler, which resumes the block's
// threads round by round, so a barrier really separates the phases of a kernel (a thread never
// reads shared memory that another thread has not written yet). Blocks run one after another.
// Warp collectives (__shfl_down_sync, __ballot_sync) are emulated with two block-wide barriers
// around an exchange of values: correct for kernels whose whole block calls them together (our
// block reductions and ballot scans do), a deadlock-free mismatch otherwise is not detected.
// `__shared__` becomes `static` (one copy, reused by the blocks in turn); dynamic shared memory is
// IL_DYNAMIC_SMEM (csrc/common/macros.h), here a buffer of the launch's size. This checks index
// math, barriers and arithmetic on machines without a GPU; not races between blocks, not speed.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
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
enum State { kReady = 0, kAtBarrier = 1, kDone = 2 };
inline std::vector<ucontext_t> contexts;
inline std::vector<std::vector<char>> stacks;
inline std::vector<int> states;
inline ucontext_t scheduler;
inline int current = 0;
inline std::function<void()> body;
inline std::vector<unsigned char> dynamic_smem;
inline std::vector<uint64_t> exchange;  // one slot per thread of the block (warp collectives)

inline void trampoline() {
  body();
  states[current] = kDone;
  swapcontext(&contexts[current], &scheduler);
}

inline void barrier() {
  states[current] = kAtBarrier;
  swapcontext(&contexts[current], &scheduler);
}

template <typename T>
T* dynamic_shared() { return reinterpret_cast<T*>(dynamic_smem.data()); }

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
      for (bool left = true; left;) {
        left = false;
        for (unsigned t = 0; t < block; ++t) {
          if (states[t] == kDone) continue;
          states[t] = kReady;
          current = static_cast<int>(t);
          threadIdx.x = t;
          swapcontext(&scheduler, &contexts[t]);
          if (states[t] != kDone) left = true;
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

namespace emu {
template <typename T>
T shfl_down(T v, unsigned delta) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shfl of a value wider than 8 bytes");
  uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  exchange[threadIdx.x] = raw;
  barrier();
  const unsigned lane = threadIdx.x % 32, src = lane + delta;
  T r = v;
  if (src < 32 && threadIdx.x - lane + src < blockDim.x) {
    const uint64_t x = exchange[threadIdx.x - lane + src];
    std::memcpy(&r, &x, sizeof(T));
  }
  barrier();
  return r;
}

inline unsigned ballot(bool pred) {
  exchange[threadIdx.x] = pred ? 1 : 0;
  barrier();
  const unsigned base = threadIdx.x - threadIdx.x % 32;
  unsigned bits = 0;
  for (unsigned l = 0; l < 32 && base + l < blockDim.x; ++l) bits |= static_cast<unsigned>(exchange[base + l] != 0) << l;
  barrier();
  return bits;
}
}  // namespace emu

template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta) { return emu::shfl_down(v, delta); }
inline unsigned __ballot_sync(unsigned, bool pred) { return emu::ballot(pred); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
template <typename T>
T __ldg(const T* p) { return *p; }
using std::min;
using std::fma;  // device code calls fma(float, float, float) unqualified, as CUDA's math headers allow
