// Output allocation for CPU kernels that write a large fresh tensor exactly once.
#pragma once

#include <ATen/core/Tensor.h>

namespace interleave {

// Like at::empty, but a large buffer is mapped 2 MiB-aligned with MADV_HUGEPAGE so that the first
// write takes a few huge-page faults instead of one fault per 4 KiB page (on a 2-core machine the
// 4 KiB faults of a 32 MiB output cost ~9 ms, more than the copy itself). The storage keeps the
// default CPU allocator, so a later resize_ behaves as usual. INTERLEAVE_HUGEPAGES=0 turns it off.
at::Tensor empty_cpu_output(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace interleave
