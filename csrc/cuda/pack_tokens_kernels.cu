// CUDA kernels of pack_tokens. No torch headers here (compile time); see pack_tokens_kernels.h.
//
// Forward: one warp per output row (grid-stride), 16-byte vectors where rows and pointers allow;
// the warp computes the row's taps from the segment table (csrc/common/pack_tokens.h) and writes
// the row once. Backward: one warp per input row gathers the output rows it fed, in a fixed order,
// so there are no float atomics and the result is deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "dispatch.cuh"
#include "pack_tokens_kernels.h"

namespace interleave {
namespace cuda {
namespace {

using namespace pack;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxContrib = 16;  // contributions listed per input row before recomputing

template <typename T> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_acc(float x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <typename T> __device__ __forceinline__ T from_acc(double x) { return static_cast<T>(x); }

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load(const T* base, int64_t row, int64_t dim, int64_t i) {
  return reinterpret_cast<const Vec<T, VEC>*>(base + row * dim)[i];
}
template <typename T, int VEC>
__device__ __forceinline__ void store(T* base, int64_t row, int64_t dim, int64_t i, const Vec<T, VEC>& x) {
  reinterpret_cast<Vec<T, VEC>*>(base + row * dim)[i] = x;
}

__device__ __forceinline__ Segment segment_at(const PackDeviceLayout& L, int64_t i) {
  return load_segment(L.segments + i * kNumFields);
}

// One warp copies row src_row of src to row `row` of out: four vectors' loads in flight per lane
// before their stores (a row of H=1024 bf16 is 128 16-byte vectors, four per lane: one round trip
// instead of four dependent ones).
template <typename T, int VEC>
__device__ __forceinline__ void warp_copy_row(T* __restrict__ out, int64_t row, const T* __restrict__ src,
                                              int64_t src_row, int64_t dim, int lane) {
  const int64_t vecs = dim / VEC;
  int64_t i = lane;
  for (; i + 96 < vecs; i += 128) {
    const Vec<T, VEC> a = load<T, VEC>(src, src_row, dim, i), b = load<T, VEC>(src, src_row, dim, i + 32);
    const Vec<T, VEC> c = load<T, VEC>(src, src_row, dim, i + 64), d = load<T, VEC>(src, src_row, dim, i + 96);
    store<T, VEC>(out, row, dim, i, a);
    store<T, VEC>(out, row, dim, i + 32, b);
    store<T, VEC>(out, row, dim, i + 64, c);
    store<T, VEC>(out, row, dim, i + 96, d);
  }
  for (; i < vecs; i += 32) store<T, VEC>(out, row, dim, i, load<T, VEC>(src, src_row, dim, i));
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
pack_forward_kernel(PackDeviceLayout L, const T* __restrict__ feat, const T* __restrict__ newline,
                    T* __restrict__ out) {
  using A = typename OpMath<T>::type;
  const int lane = threadIdx.x % 32;
  const int64_t vecs = L.dim / VEC;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; row < L.num_rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const Segment s = segment_at(L, find_range(L.out_starts, L.num_segments, row));
    const OutputTaps<A> t = output_taps<A>(s, L.side, row - s.out_start);
    if (t.kind == kTapCopy || t.kind == kTapNewline) {
      const T* src = t.kind == kTapCopy ? feat : newline;
      const int64_t src_row = t.kind == kTapCopy ? t.src[0] : 0;
      warp_copy_row<T, VEC>(out, row, src, src_row, L.dim, lane);
      continue;
    }
    for (int64_t i = lane; i < vecs; i += 32) {
      const Vec<T, VEC> x0 = load<T, VEC>(feat, t.src[0], L.dim, i), x1 = load<T, VEC>(feat, t.src[1], L.dim, i);
      const Vec<T, VEC> x2 = load<T, VEC>(feat, t.src[2], L.dim, i), x3 = load<T, VEC>(feat, t.src[3], L.dim, i);
      Vec<T, VEC> y;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const A a0 = to_acc(x0.v[k]), a1 = to_acc(x1.v[k]), a2 = to_acc(x2.v[k]), a3 = to_acc(x3.v[k]);
        if (t.kind == kTapBilinear) {
          // ATen's order: (x00*wx0 + x01*wx1)*wy0 + (x10*wx0 + x11*wx1)*wy1.
          y.v[k] = from_acc<T>((a0 * t.wx0 + a1 * t.wx1) * t.wy0 + (a2 * t.wx0 + a3 * t.wx1) * t.wy1);
        } else if (t.kind == kTapAvg) {
          y.v[k] = from_acc<T>((((a0 + a1) + a2) + a3) / A(4));
        } else {
          const int m = argmax4<A>(a0, a1, a2, a3);
          y.v[k] = m == 0 ? x0.v[k] : m == 1 ? x1.v[k] : m == 2 ? x2.v[k] : x3.v[k];
        }
      }
      store<T, VEC>(out, row, L.dim, i, y);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
pack_backward_kernel(PackDeviceLayout L, const T* __restrict__ grad, const T* __restrict__ feat,
                     T* __restrict__ grad_feat) {
  using A = typename OpMath<T>::type;
  const int lane = threadIdx.x % 32;
  const int64_t vecs = L.dim / VEC;
  Vec<T, VEC> zero;
#pragma unroll
  for (int k = 0; k < VEC; ++k) zero.v[k] = from_acc<T>(A(0));
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; row < L.src_rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    bool owned = false;
    Segment s{};
    if (L.num_maps > 0) {
      s = segment_at(L, L.map_segments[find_range(L.map_src_starts, L.num_maps, row)]);
      owned = row >= s.src_start && row < s.src_start + s.repeat * src_rows_per_map(s, L.side);
    }
    const InputPlace p = owned ? input_place(s, L.side, row) : InputPlace{false, 0, 0, 0};
    if (!p.inside) {
      for (int64_t i = lane; i < vecs; i += 32) store<T, VEC>(grad_feat, row, L.dim, i, zero);
      continue;
    }
    if (s.resample == kCopy) {
      const int64_t out_row = output_row(s, p.rep, p.cy, p.cx);
      for (int64_t i = lane; i < vecs; i += 32) store<T, VEC>(grad_feat, row, L.dim, i, load<T, VEC>(grad, out_row, L.dim, i));
      continue;
    }
    if (s.resample == kMax2) {
      int64_t out_row, window[4];
      int k_self;
      if (!max_window(s, p, &out_row, &k_self, window, L.side)) {
        for (int64_t i = lane; i < vecs; i += 32) store<T, VEC>(grad_feat, row, L.dim, i, zero);
        continue;
      }
      for (int64_t i = lane; i < vecs; i += 32) {
        const Vec<T, VEC> g = load<T, VEC>(grad, out_row, L.dim, i);
        const Vec<T, VEC> w0 = load<T, VEC>(feat, window[0], L.dim, i), w1 = load<T, VEC>(feat, window[1], L.dim, i);
        const Vec<T, VEC> w2 = load<T, VEC>(feat, window[2], L.dim, i), w3 = load<T, VEC>(feat, window[3], L.dim, i);
        Vec<T, VEC> y;
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          y.v[k] = argmax4<A>(to_acc(w0.v[k]), to_acc(w1.v[k]), to_acc(w2.v[k]), to_acc(w3.v[k])) == k_self ? g.v[k] : zero.v[k];
        store<T, VEC>(grad_feat, row, L.dim, i, y);
      }
      continue;
    }
    // bilinear, avg: list the (output row, weight) pairs once; recompute them per vector only
    // when there are more than kMaxContrib (strong upsampling, which the plans never make).
    int64_t rows[kMaxContrib];
    A weights[kMaxContrib];
    int n = 0;
    for_each_contribution<A>(s, p, [&](int64_t r, A w) {
      if (n < kMaxContrib) { rows[n] = r; weights[n] = w; }
      ++n;
    });
    for (int64_t i = lane; i < vecs; i += 32) {
      A acc[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] = A(0);
      auto add = [&](int64_t r, A w) {
        const Vec<T, VEC> g = load<T, VEC>(grad, r, L.dim, i);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += w * to_acc(g.v[k]);
      };
      if (n <= kMaxContrib) {
        for (int j = 0; j < n; ++j) add(rows[j], weights[j]);
      } else {
        for_each_contribution<A>(s, p, add);
      }
      Vec<T, VEC> y;
#pragma unroll
      for (int k = 0; k < VEC; ++k) y.v[k] = from_acc<T>(acc[k]);
      store<T, VEC>(grad_feat, row, L.dim, i, y);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
newline_partial_kernel(PackDeviceLayout L, const T* __restrict__ grad, typename OpMath<T>::type* partials) {
  using A = typename OpMath<T>::type;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (d >= L.dim) return;
  const int64_t part = blockIdx.y, r0 = part * kNewlineRowsPerPart;
  const int64_t r1 = r0 + kNewlineRowsPerPart < L.num_newline_rows ? r0 + kNewlineRowsPerPart : L.num_newline_rows;
  A acc = A(0);
  for (int64_t r = r0; r < r1; ++r) acc += to_acc(grad[L.newline_rows[r] * L.dim + d]);
  partials[part * L.dim + d] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
newline_final_kernel(int64_t dim, int64_t parts, const typename OpMath<T>::type* __restrict__ partials,
                     T* __restrict__ out) {
  using A = typename OpMath<T>::type;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (d >= dim) return;
  A acc = A(0);
  for (int64_t p = 0; p < parts; ++p) acc += partials[p * dim + d];
  out[d] = from_acc<T>(acc);
}

// Blocks for `rows` rows at one warp each, capped at 2^20 and at max_blocks when set (the kernels
// are grid-stride: a smaller grid of longer-lived blocks is correct too).
unsigned row_blocks(int64_t rows, int64_t max_blocks) {
  int64_t blocks = (rows + kWarps - 1) / kWarps;
  if (blocks > (int64_t(1) << 20)) blocks = int64_t(1) << 20;
  if (max_blocks > 0 && blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned>(blocks);
}

// Calls f(T{}, std::integral_constant<int, VEC>{}) with 16-byte vectors when every row start is
// 16-byte aligned, else one element per thread.
template <typename F>
void with_vec(DType dtype, int64_t dim, bool pointers_aligned, F&& f) {
  with_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    if (pointers_aligned && (dim * static_cast<int64_t>(sizeof(T))) % 16 == 0) {
      f(tag, std::integral_constant<int, kVec>{});
    } else {
      f(tag, std::integral_constant<int, 1>{});
    }
  });
}

}  // namespace

void launch_pack_forward(const PackDeviceLayout& L, const void* features, const void* newline, void* out,
                         DType dtype, cudaStream_t stream) {
  if (L.num_rows == 0 || L.dim == 0) return;
  const bool aligned = aligned16(features) && aligned16(out) && (newline == nullptr || aligned16(newline));
  with_vec(dtype, L.dim, aligned, [&](auto tag, auto vec) {
    using T = decltype(tag);
    pack_forward_kernel<T, decltype(vec)::value><<<row_blocks(L.num_rows, L.max_blocks), kThreads, 0, stream>>>(
        L, static_cast<const T*>(features), static_cast<const T*>(newline), static_cast<T*>(out));
  });
}

void launch_pack_backward(const PackDeviceLayout& L, const void* grad, const void* features,
                          void* grad_features, DType dtype, cudaStream_t stream) {
  if (L.src_rows == 0 || L.dim == 0) return;
  const bool aligned = aligned16(grad) && aligned16(grad_features) && (features == nullptr || aligned16(features));
  with_vec(dtype, L.dim, aligned, [&](auto tag, auto vec) {
    using T = decltype(tag);
    pack_backward_kernel<T, decltype(vec)::value><<<row_blocks(L.src_rows, L.max_blocks), kThreads, 0, stream>>>(
        L, static_cast<const T*>(grad), static_cast<const T*>(features), static_cast<T*>(grad_features));
  });
}

void launch_pack_newline_grad(const PackDeviceLayout& L, const void* grad, void* partials,
                              void* grad_newline, DType dtype, cudaStream_t stream) {
  if (L.dim == 0) return;
  const int64_t parts = newline_parts(L.num_newline_rows);
  const unsigned blocks = static_cast<unsigned>((L.dim + kThreads - 1) / kThreads);
  with_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename OpMath<T>::type;
    if (parts > 0) {
      newline_partial_kernel<T><<<dim3(blocks, static_cast<unsigned>(parts)), kThreads, 0, stream>>>(
          L, static_cast<const T*>(grad), static_cast<A*>(partials));
    }
    newline_final_kernel<T><<<blocks, kThreads, 0, stream>>>(L.dim, parts, static_cast<const A*>(partials),
                                                              static_cast<T*>(grad_newline));
  });
}

}  // namespace cuda
}  // namespace interleave
