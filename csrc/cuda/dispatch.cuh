// Device-side helpers shared by the .cu files: the DType -> C++ type dispatch of the launchers, the
// 16-byte alignment test of their vectorized paths, and the float / bf16 / fp16 conversions. No
// torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "dtype.h"

namespace interleave {
namespace cuda {

// Calls f(T{}) with the C++ type of t.
template <typename F>
inline void with_type(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
    case DType::kFloat16: f(__half{}); break;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Lets `kernels` use up to `bytes` of dynamic shared memory (past the default 48 KiB): set once per
// device and call site (`opted`: the call site's flags), for the most any of its launches asks, as
// a host call on every launch would add microseconds.
template <typename... Kernels>
inline void opt_in_dynamic_smem(std::atomic<bool> (&opted)[64], int device, int bytes, Kernels... kernels) {
  if (device >= 0 && device < 64 && opted[device].load()) return;
  (cudaFuncSetAttribute(kernels, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), ...);
  if (device >= 0 && device < 64) opted[device].store(true);
}

// ---- conversions with the rounding of Tensor.to (c10 converts through float) ----------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_float<double>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Two 16-bit values (bf16/fp16) in one word, lo in the low half (memory order, and the order the
// mma fragments expect), and back to two floats.
template <typename T>
__device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t word) {
  const uint16_t l = static_cast<uint16_t>(word), h = static_cast<uint16_t>(word >> 16);
  T lo, hi;
  memcpy(&lo, &l, 2);
  memcpy(&hi, &h, 2);
  return make_float2(to_float(lo), to_float(hi));
}

}  // namespace cuda
}  // namespace interleave
