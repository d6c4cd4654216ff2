// Device-side helpers shared by the .cu files: the DType -> C++ type dispatch of the launchers and
// the 16-byte alignment test of their vectorized paths. No torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

}  // namespace cuda
}  // namespace interleave
