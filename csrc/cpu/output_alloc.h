// Output allocation for CPU kernels that write a large fresh tensor exactly once.
#pragma once

#include <ATen/core/Tensor.h>

namespace interleave {

// Like at::empty, for large outputs (>= 4 MiB) that the kernel overwrites entirely. A fresh 32 MiB
// tensor costs ~9 ms of 4 KiB page faults on a 2-core machine, more than the copy itself. So the
// buffer is mapped 2 MiB-aligned with MADV_HUGEPAGE, and when the tensor is freed its mapping is
// kept (up to 1 GiB in all) and handed to the next output of a similar size, already faulted in:
// in a training or serving loop the op then pays no page faults at all. The storage keeps the
// default CPU allocator, so a later resize_ behaves as usual. INTERLEAVE_HUGEPAGES=0 turns all of
// this off (plain at::empty).
at::Tensor empty_cpu_output(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace interleave
