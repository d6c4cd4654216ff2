// The element types the CUDA kernels take, shared by every op's launchers (torch-free: included
// by .cu files and by the torch glue alike).
#pragma once

namespace interleave {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

}  // namespace cuda
}  // namespace interleave
