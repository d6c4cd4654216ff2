// The jobs of anyres_tiles as both backends run them, without torch (the CUDA host emulation in
// tests/emulate includes this too): one job unpacked from the int64 table, and its resize plan.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "resample.h"

namespace interleave {

// One job, unpacked from a row of the int64 job table (kJobFields values, see resample.h).
struct TileJob {
  int64_t image, src_h, src_w, src_top, src_left, src_pad;
  int64_t resize_h, resize_w, canvas_h, canvas_w, dst_top, dst_left, dst_pad, first_tile;
  bool vertical_first;
};

inline TileJob unpack_tile_job(const int64_t* r) {
  return TileJob{r[kJobImage], r[kJobSrcH], r[kJobSrcW], r[kJobSrcTop], r[kJobSrcLeft], r[kJobSrcPad],
                 r[kJobResizeH], r[kJobResizeW], r[kJobCanvasH], r[kJobCanvasW], r[kJobDstTop],
                 r[kJobDstLeft], r[kJobDstPad], r[kJobFirstTile], r[kJobVerticalFirst] != 0};
}

// How one job runs: Pillow's coefficients of each axis that changes size, the pass order, and the
// intermediate between the passes (rows x width pixels; horizontal-first keeps only the rows the
// vertical pass reads, from row_first on, as ImagingResampleInner does). Shared by both backends.
struct ResizePlan {
  // Shared with the memo below, not copied: a copy per job was tens of KB of memcpy per frame.
  std::shared_ptr<const AxisCoeffs> horizontal, vertical;  // null for an axis that keeps its size
  bool need_horizontal, need_vertical, vertical_first;
  int64_t row_first, mid_rows, mid_width;
};

// A process-wide memo of immutable values derived from a key, bounded (cleared past kMaxEntries);
// a mutex because DataLoader threads may tile concurrently. Callers share the cached values (a
// clear only drops the map's references). One memo per Make type: each call site's lambda.
template <typename Key, typename Value, typename Make>
std::shared_ptr<const Value> bounded_memo(const Key& key, Make make) {
  constexpr size_t kMaxEntries = 256;
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<const Value>> cache;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto computed = std::make_shared<const Value>(make());
  const std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= kMaxEntries) cache.clear();
  cache.emplace(key, computed);
  return computed;
}

// Pillow's coefficients of one axis, memoized per (in_size, out_size): computing them costs ~20 us
// per axis (a bicubic filter evaluation per tap, in double), which for a batch of 16 video frames
// was ~0.7 ms of host time per call, while the sizes repeat within a batch and across calls.
// Plans share the cached coefficients.
inline std::shared_ptr<const AxisCoeffs> cached_bicubic_coeffs(int in_size, int out_size) {
  return bounded_memo<std::pair<int, int>, AxisCoeffs>(std::make_pair(in_size, out_size),
                                                       [&] { return pil_bicubic_coeffs(in_size, out_size); });
}

inline ResizePlan plan_resize(const TileJob& j) {
  ResizePlan p;
  p.need_horizontal = j.resize_w != j.src_w;
  p.need_vertical = j.resize_h != j.src_h;
  p.vertical_first = j.vertical_first && p.need_vertical;
  if (p.need_horizontal)
    p.horizontal = cached_bicubic_coeffs(static_cast<int>(j.src_w), static_cast<int>(j.resize_w));
  if (p.need_vertical)
    p.vertical = cached_bicubic_coeffs(static_cast<int>(j.src_h), static_cast<int>(j.resize_h));
  if (p.need_vertical && !p.vertical_first) {
    p.row_first = p.vertical->first.front();
    p.mid_rows = p.vertical->first.back() + p.vertical->count.back() - p.row_first;
  } else {
    p.row_first = 0;
    p.mid_rows = p.vertical_first ? j.resize_h : j.src_h;
  }
  p.mid_width = p.vertical_first ? j.src_w : j.resize_w;
  return p;
}

}  // namespace interleave
