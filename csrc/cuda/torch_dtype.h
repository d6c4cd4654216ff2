// at::ScalarType -> cuda::DType for the torch glue (*_cuda.cpp) of every op.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "dtype.h"

namespace interleave {

inline cuda::DType to_kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kDouble: return cuda::DType::kFloat64;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kHalf: return cuda::DType::kFloat16;
    default: TORCH_CHECK_TYPE(false, "interleave: unsupported dtype ", t, " for a CUDA kernel");
  }
}

}  // namespace interleave
