#include "output_alloc.h"

#include "../common/env.h"

#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>

#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace interleave {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMinBytes = size_t(4) << 20;
constexpr size_t kCacheBytes = size_t(1) << 30;

bool hugepages_enabled() {
  static const bool enabled = env_switch_on("INTERLEAVE_HUGEPAGES");
  return enabled;
}

#if defined(__linux__)
struct Mapping {
  void* data;
  size_t length;  // a multiple of kHugePage
};

// Freed mappings kept for reuse. Intentionally leaked at exit (the OS reclaims it).
struct MappingCache {
  std::mutex mutex;
  std::vector<Mapping*> free;
  size_t bytes = 0;
};

MappingCache& cache() {
  static auto* c = new MappingCache();
  return *c;
}

// The smallest cached mapping that holds `length` without wasting more than half of it; among
// equal sizes the most recently freed one (searched from the back, replaced only by a strictly
// smaller one), whose pages are the likeliest to still be in the caches and the TLB. It also makes
// reuse predictable: a loop that frees and reallocates one size gets the same buffer back.
Mapping* take_cached(size_t length) {
  MappingCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  size_t best = c.free.size();
  for (size_t i = c.free.size(); i-- > 0;) {
    const size_t have = c.free[i]->length;
    if (have >= length && have <= 2 * length && (best == c.free.size() || have < c.free[best]->length))
      best = i;
  }
  if (best == c.free.size()) return nullptr;
  Mapping* m = c.free[best];
  c.free.erase(c.free.begin() + static_cast<std::ptrdiff_t>(best));
  c.bytes -= m->length;
  return m;
}

void release(void* ctx) {
  auto* m = static_cast<Mapping*>(ctx);
  MappingCache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.bytes + m->length <= kCacheBytes) {
      c.free.push_back(m);
      c.bytes += m->length;
      return;
    }
  }
  munmap(m->data, m->length);
  delete m;
}

Mapping* map_new(size_t length) {
  // Over-map by one huge page, then trim so the kept range starts on a 2 MiB boundary.
  void* raw = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
  const size_t head = aligned - start;
  if (head) munmap(raw, head);
  const size_t tail = kHugePage - head;
  if (tail) munmap(reinterpret_cast<void*>(aligned + length), tail);
  void* data = reinterpret_cast<void*>(aligned);
  madvise(data, length, MADV_HUGEPAGE);  // advisory: without THP it is a plain mapping
  return new Mapping{data, length};
}
#endif

}  // namespace

at::Tensor empty_cpu_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
#if defined(__linux__)
  if (hugepages_enabled() && nbytes >= kMinBytes) {
    const size_t length = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
    Mapping* m = take_cached(length);
    if (!m) m = map_new(length);
    if (m) {
      c10::DataPtr ptr(m->data, m, &release, c10::Device(c10::kCPU));
      c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(ptr),
                           c10::GetCPUAllocator(), /*resizable=*/true);
      return at::empty({0}, at::TensorOptions().dtype(dtype)).set_(storage, 0, sizes);
    }
  }
#endif
  return at::empty(sizes, at::TensorOptions().dtype(dtype));
}

}  // namespace interleave
