// The host side of a CUDA anyres_tiles launch, without torch (the glue, anyres_tiles_cuda.cpp, and
// the host emulation in tests/emulate both build their launches with it): one device descriptor per
// job, the int32 coefficient arena (each distinct axis once), the intermediate's size and the
// per-pass row counts and shared-memory sizes.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../common/anyres_jobs.h"
#include "anyres_tiles_kernels.h"

namespace interleave {
namespace cuda {

// A run of the coefficient arena: `size` int32 values at `offset`, copied from `data`, which
// `owner` keeps alive (a memoized coefficient or plane table).
struct ArenaPiece {
  std::shared_ptr<const void> owner;
  const int32_t* data = nullptr;
  int64_t offset = 0, size = 0;
};

struct TileBatch {
  std::vector<TileJobDevice> descs;
  // The int32 coefficient arena, as pieces of the memoized tables and its size (never 0: one zero
  // when no job resamples; the gaps between pieces are zeros). Its content is written only where it
  // is uploaded (write_arena, straight into the upload's staging buffer): on a device-cache hit
  // nothing of it is copied on the host (a ~200 KB vector per call on the integer path, whose
  // reallocations page-faulted: ~200 us per call measured by a plan loop on this machine).
  std::vector<ArenaPiece> arena_pieces;
  int64_t arena_size = 0;
  // What the arena holds, in order: its content is a function of these values alone (the axes'
  // sizes and layouts, the plane tables' keys, the padding), so equal keys mean equal arenas and
  // the glue reuses its device copy (anyres_tiles_cuda.cpp) instead of uploading it every call.
  std::vector<int64_t> arena_key;

  // The arena into dst[0, arena_size).
  void write_arena(int32_t* dst) const {
    std::memset(dst, 0, static_cast<size_t>(arena_size) * sizeof(int32_t));
    for (const ArenaPiece& p : arena_pieces)
      std::memcpy(dst + p.offset, p.data, static_cast<size_t>(p.size) * sizeof(int32_t));
  }
  std::vector<int32_t> arena() const {
    std::vector<int32_t> a(static_cast<size_t>(arena_size));
    write_arena(a.data());
    return a;
  }
  int64_t mid_bytes = 0, pass1 = 0, pass2 = 0, staged_row_bytes = 0, canvas_row_bytes = 0;
  int64_t pass1_width = 0;  // the widest intermediate row: pass 1's block size (pass1_threads)
  bool pass1_mma = false;   // some job's pass 1 runs on fp16 tensor cores: kMmaThreads per block
  bool pass1_imma = false;  // some job's pass 1 runs on integer tensor cores (never with pass1_mma)
  // Pass 1's shared memory before the jobs' buffers (staged_row_bytes): kImmaStageBlockBytes of
  // stage buffers when some job stages its source rows (TileJobDevice::imma_stage), else 0.
  int64_t imma_stage_bytes = 0;
};

// Whether a horizontal axis can run on pass 1's tensor-core path exactly (kMmaRows). Per output:
// at most kMmaMaxTaps taps, the high parts hi = w >> 11 within fp16's exact integers
// (|hi| <= 2048), and 255 * sum |hi| below 2^24 (every partial fp32 sum of the high products then
// stays exact, whatever the MMA's order).
inline bool mma_axis_exact(const AxisCoeffs& c) {
  if (c.out_size <= 0) return false;
  for (int64_t x = 0; x < c.out_size; ++x) {
    if (c.count[x] > kMmaMaxTaps) return false;
    int64_t sum_hi = 0;
    for (int64_t i = 0; i < c.count[x]; ++i) {
      const int32_t hi = c.weights[x * c.ksize + i] >> 11;  // arithmetic: floor, lo = w & 2047 >= 0
      if (hi < -2048 || hi > 2048) return false;
      sum_hi += hi < 0 ? -hi : hi;
    }
    if (255 * sum_hi >= (int64_t{1} << 24)) return false;
  }
  return true;
}

// A per-axis decision memoized like the coefficients it reads (cached_bicubic_coeffs): each scans
// every weight, ~10 us for 1920 -> 384, per job and call otherwise (16 times for 16 frames). At
// most 256 keys (then it starts over).
template <typename Key, typename Value, typename Compute>
inline Value memoized_axis_check(std::mutex& mutex, std::map<Key, Value>& cache, const Key& key, Compute&& compute) {
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 256) cache.clear();
  return cache[key] = compute();
}

// mma_axis_exact per (in_size, out_size).
inline bool cached_mma_axis_exact(const AxisCoeffs& c) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, bool> cache;
  return memoized_axis_check(mutex, cache, std::pair<int, int>{c.in_size, c.out_size}, [&] { return mma_axis_exact(c); });
}

// Whether every weight of an axis splits into the integer paths' byte planes: a signed high byte
// (w >> 16 in [-128, 127]) and two unsigned ones.
inline bool weights_fit_byte_planes(const AxisCoeffs& c) {
  for (int64_t x = 0; x < c.out_size; ++x)
    for (int64_t i = 0; i < c.count[x]; ++i) {
      const int32_t hi = c.weights[x * c.ksize + i] >> 16;  // arithmetic: floor
      if (hi < -128 || hi > 127) return false;
    }
  return true;
}

// Whether a horizontal axis can run on pass 1's integer tensor-core path (kImmaBand), its image at
// source canvas x `src_left`: every group of 8 outputs reads at most kImmaWindow source pixels from
// its window start, and every weight w splits into a signed high byte (w >> 16 in [-128, 127]) and
// two unsigned bytes ((w >> 8) & 255, w & 255). Each plane's sum then stays far inside int32
// (|sum| <= 64 * 255 * 255), and 2^16 hi + 2^8 mid + lo, taken modulo 2^32, is Pillow's own int32
// sum. The groups are the kernel's: chunks of kMmaChunk columns of a row `width` wide whose outputs
// start at `dst_left` (unfused: the intermediate row itself, dst_left 0, groups at multiples of 8;
// fused: the canvas row) cover outputs [max(c0 - dst_left, 0), min(c0 + 64 - dst_left, n)), in
// groups of 8 from the chunk's first output, the last one cut at the chunk's end.
inline bool imma_axis_ok(const AxisCoeffs& c, int64_t src_left, int64_t dst_left, int64_t width) {
  const int64_t n = c.out_size;
  if (n <= 0) return false;
  for (int64_t c0 = 0; c0 < width; c0 += kMmaChunk) {
    const int64_t xa = std::max<int64_t>(c0 - dst_left, 0), xb = std::min<int64_t>(c0 + kMmaChunk - dst_left, n);
    for (int64_t x0 = xa; x0 < xb; x0 += 8) {
      const int64_t s = imma_window_start(c.first[x0], src_left);
      int64_t e = 0;
      for (int64_t x = x0; x < std::min<int64_t>(x0 + 8, xb); ++x) e = std::max<int64_t>(e, c.first[x] + c.count[x]);
      if (e - s > kImmaWindow) return false;
    }
  }
  return weights_fit_byte_planes(c);
}

// imma_axis_ok per (in_size, out_size, src_left mod 4, dst_left, width) (the window starts depend on
// src_left only mod 4).
inline bool cached_imma_axis_ok(const AxisCoeffs& c, int64_t src_left, int64_t dst_left, int64_t width) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 5>, bool> cache;
  return memoized_axis_check(mutex, cache, std::array<int64_t, 5>{c.in_size, c.out_size, src_left & 3, dst_left, width},
                             [&] { return imma_axis_ok(c, src_left, dst_left, width); });
}

// The shared-memory row (32-bit words) that tensor-core blocks stage, or 0 if it does not fit.
// Blocks cover chunks of kMmaChunk columns of a row `width` wide whose outputs start at `left`
// (unfused: the intermediate row itself, left 0; fused: the canvas row, left = dst_left): chunk
// c0 covers outputs [max(c0 - left, 0), min(c0 + 64 - left, n)). Each chunk stages from its first
// output's first source pixel (rounded down to a multiple of 4) to the end of its groups' windows
// (a group of 8 outputs starts at its first pixel rounded down to even, for 8-byte fragment loads,
// and spans whole steps of 16). Rounded up to 8 mod 32 (rows g and g + 1 of a fragment load then
// fall in different banks).
inline int64_t mma_stride(const AxisCoeffs& c, int64_t left, int64_t width) {
  const int64_t n = c.out_size;
  int64_t need = 0;
  for (int64_t c0 = 0; c0 < width; c0 += kMmaChunk) {
    const int64_t xa = std::max<int64_t>(c0 - left, 0), xb = std::min<int64_t>(c0 + kMmaChunk - left, n);
    if (xa >= xb) continue;
    const int64_t cs = c.first[xa] & ~int64_t{3};
    for (int64_t x0 = xa; x0 < xb; x0 += 8) {
      const int64_t xl = std::min(n - 1, x0 + 7);
      const int64_t s = c.first[x0] & ~int64_t{1}, e = c.first[xl] + c.count[xl];
      need = std::max(need, s + (e - s + 15) / 16 * 16 - cs);
    }
  }
  const int64_t stride = need <= 8 ? 8 : (need - 8 + 31) / 32 * 32 + 8;
  return kMmaRows * stride * 4 <= kMaxStagedRowBytes ? stride : 0;
}

// The intermediate rows a fused job's blocks hold at most (TileJobDevice::fused): over bands of
// `band` canvas rows, the span of the vertical taps of the resized rows inside them (the resized
// image sits at row `top` of a canvas `canvas_h` tall).
inline int64_t fused_rows(const AxisCoeffs& v, int64_t band, int64_t top, int64_t canvas_h) {
  int64_t rows = 0;
  for (int64_t cy0 = 0; cy0 < canvas_h; cy0 += band) {
    const int64_t ya = std::max<int64_t>(cy0 - top, 0), yb = std::min<int64_t>(cy0 + band - top, v.out_size);
    if (ya < yb) rows = std::max<int64_t>(rows, v.first[yb - 1] + v.count[yb - 1] - v.first[ya]);
  }
  return rows;
}

// Pass 1's dynamic shared memory for a fused job: the staged source rows (none for the integer
// path: stride 0) and the intermediate,
// or (tiles a multiple of kMmaChunk wide, 16-byte stores) the output rows laid out in the same
// memory, out_bytes per value (1 for uint8, or the lut's), whichever is larger.
inline int64_t fused_smem_bytes(int64_t stride, int64_t rows, int64_t band, int64_t tile, int64_t out_bytes) {
  const int64_t outs = tile % kMmaChunk == 0 ? band * kMmaChunk * 3 * out_bytes : 0;
  return std::max((kMmaRows * stride + rows * kMmaChunk) * 4, outs);
}

// The tallest band (kFusedRows, halved down to 8) whose fp16 fused buffers fit kMaxStagedRowBytes
// for a job whose vertical axis is v (the resized image at canvas row top), staging `stride` words
// per source row: {band, intermediate rows}, or {0, 0}.
inline std::array<int64_t, 2> fused_band_that_fits(const AxisCoeffs& v, int64_t stride, int64_t top, int64_t canvas_h,
                                                   int64_t tile, int64_t out_bytes) {
  for (int64_t band = kFusedRows; band >= 8; band /= 2) {
    const int64_t rows = fused_rows(v, band, top, canvas_h);
    if (fused_smem_bytes(stride, rows, band, tile, out_bytes) <= kMaxStagedRowBytes) return {band, rows};
  }
  return {0, 0};
}

// The band of a fused integer job (a multiple of 8 up to kImmaFusedRows whose buffers fit
// kMaxStagedRowBytes): the one with the fewest intermediate rows made over the canvas, counting
// each block's rows in the 16-row steps its warps take (ceil(canvas_h / band) blocks per column
// chunk, each ceil(rows / 16) steps). Taller bands re-make fewer of the rows that neighbouring bands
// share, but a band whose rows end just past a step pays a mostly empty step: for 1080 -> 384,
// band 32 holds 98 rows, 7 steps per 32 canvas rows (84 steps per column chunk), band 48 143 rows
// in 9 steps (72), band 64 188 in 12 (72). Ties go to the shorter band: more, shorter blocks leave
// a shorter tail on the last wave (band 48: 768 blocks for 16 frames, ~2.9 waves of 264 resident
// blocks on an H100; band 64: 576, ~2.2). {band, intermediate rows}, or {0, 0}.
inline std::array<int64_t, 2> imma_fused_band(const AxisCoeffs& v, int64_t top, int64_t canvas_h, int64_t tile,
                                              int64_t out_bytes) {
  std::array<int64_t, 2> best{0, 0};
  int64_t best_steps = 0;
  for (int64_t band = kImmaFusedRows; band >= 8; band -= 8) {
    const int64_t rows = fused_rows(v, band, top, canvas_h);
    if (fused_smem_bytes(0, rows, band, tile, out_bytes) > kMaxStagedRowBytes) continue;
    const int64_t steps = (canvas_h + band - 1) / band * ((rows + 15) / 16);
    if (best[0] == 0 || steps <= best_steps) {
      best = {band, rows};
      best_steps = steps;
    }
  }
  return best;
}

// The column-major intermediate of a fused integer job whose vertical pass runs on integer tensor
// cores (TileJobDevice::imma_vstride, imma_vertical_pixels): its bytes per column, or 0 where that
// pass cannot run there. Mirrors the kernel's tiling: bands of `band` canvas rows (the resized image
// at canvas row top), row tiles of 8 canvas rows in each, a tile's window from its first resized
// row's first tap rounded down to 4 (counted from the band's first intermediate row); every tile's
// taps must end within kImmaWindow rows of that, and every weight must split into a signed high
// byte. The stride covers the `rows` intermediate rows and every tile's 64-row window, in words
// that are 4 mod 8 (the 8 columns of a fragment load then fall in different banks).
inline int64_t imma_vertical_stride(const AxisCoeffs& v, int64_t band, int64_t top, int64_t canvas_h, int64_t rows) {
  int64_t need = rows;
  for (int64_t cy0 = 0; cy0 < canvas_h; cy0 += band) {
    const int64_t cy1 = std::min(cy0 + band, canvas_h);
    const int64_t ya = std::max<int64_t>(cy0 - top, 0), yb = std::min<int64_t>(cy1 - top, v.out_size);
    if (ya >= yb) continue;
    for (int64_t cy = cy0; cy < cy1; cy += 8) {
      const int64_t y_lo = std::max(cy - top, ya), y_hi = std::min(cy + 8 - top, yb);
      if (y_lo >= y_hi) continue;
      const int64_t kbase = (v.first[y_lo] - v.first[ya]) & ~int64_t{3};
      int64_t kend = 0;
      for (int64_t y = y_lo; y < y_hi; ++y) kend = std::max<int64_t>(kend, v.first[y] + v.count[y] - v.first[ya]);
      if (kend - kbase > kImmaWindow) return 0;
      need = std::max(need, kbase + kImmaWindow);
    }
  }
  if (!weights_fit_byte_planes(v)) return 0;
  int64_t words = (need + 3) / 4;
  words += (12 - words % 8) % 8;  // 4 mod 8
  return words * 4;
}

// One output's weights as the integer MMAs' B fragments (kImmaPlaneWords words at `words`): word
// 12 t + 4 p + 2 q + r holds plane p (0: the signed high byte of each weight, bits 16-23; 1: bits
// 8-15; 2: bits 0-7) of the weights of taps j0 + 32 q + 16 r + 4 t + [0, 4) (byte i: tap + i), zero
// outside [0, count): lane t of the MMA takes its 12 words with three 16-byte loads. Made on the
// host once per axis and placement, where every warp of every block split 16 weights into bytes.
inline void imma_plane_words(const AxisCoeffs& c, int64_t x, int64_t j0, int32_t* words) {
  for (int t = 0; t < 4; ++t)
    for (int q = 0; q < 2; ++q)
      for (int r = 0; r < 2; ++r)
        for (int i = 0; i < 4; ++i) {
          const int64_t j = j0 + 32 * q + 16 * r + 4 * t + i;
          const uint32_t w = static_cast<uint32_t>(j >= 0 && j < c.count[x] ? c.weights[x * c.ksize + j] : 0);
          for (int p = 0; p < 3; ++p)
            reinterpret_cast<uint32_t&>(words[12 * t + 4 * p + 2 * q + r]) |= ((w >> (16 - 8 * p)) & 255u) << (8 * i);
        }
}

// The horizontal pass's B fragments (TileJobDevice::h_planes; imma_group_rows) for every output x
// of axis c: its group of 8 starts where the kernel starts it (the outputs of canvas chunk k of 64
// columns, the image at canvas column dst_left, from max(64 k - dst_left, 0) in steps of 8; unfused
// jobs: dst_left 0, multiples of 8), the group's window at imma_window_start(first[x0], src_left),
// so output x's taps run from j0 = window start - first[x].
inline std::vector<int32_t> imma_horizontal_planes(const AxisCoeffs& c, int64_t src_left, int64_t dst_left) {
  std::vector<int32_t> words(static_cast<size_t>(c.out_size) * kImmaPlaneWords, 0);
  for (int64_t x = 0; x < c.out_size; ++x) {
    const int64_t xa = std::max<int64_t>((x + dst_left) / kMmaChunk * kMmaChunk - dst_left, 0);
    const int64_t x0 = xa + (x - xa) / 8 * 8;
    imma_plane_words(c, x, imma_window_start(c.first[x0], src_left) - c.first[x], words.data() + x * kImmaPlaneWords);
  }
  return words;
}

// The vertical pass's B fragments of a fused integer job on tensor cores (TileJobDevice::v_planes;
// imma_vertical_pixels) for every resized row y: its window starts where the kernel starts it, the
// first tap of the first resized row of y's row tile (8 canvas rows from a multiple of 8), counted
// from the first tap of its band's first resized row (bands of `band` canvas rows, the image at
// canvas row top) and rounded down to 4, as imma_vertical_stride mirrors too.
inline std::vector<int32_t> imma_vertical_planes(const AxisCoeffs& v, int64_t top, int64_t band) {
  std::vector<int32_t> words(static_cast<size_t>(v.out_size) * kImmaPlaneWords, 0);
  for (int64_t y = 0; y < v.out_size; ++y) {
    const int64_t cy = y + top;
    const int64_t ya = std::max<int64_t>(cy / band * band - top, 0), y_lo = std::max(cy / 8 * 8 - top, ya);
    const int64_t j0 = ((v.first[y_lo] - v.first[ya]) & ~int64_t{3}) - (v.first[y] - v.first[ya]);
    imma_plane_words(v, y, j0, words.data() + y * kImmaPlaneWords);
  }
  return words;
}

// Pass 1's dynamic shared memory for a fused integer job: the intermediate (column-major when its
// vertical pass runs on tensor cores, vstride > 0; else row-major words) or the output rows laid out
// in the same memory, whichever is larger.
inline int64_t imma_fused_smem_bytes(int64_t vstride, int64_t rows, int64_t band, int64_t tile, int64_t out_bytes) {
  return vstride > 0 ? std::max<int64_t>(3 * kMmaChunk * vstride, fused_smem_bytes(0, 0, band, tile, out_bytes))
                     : fused_smem_bytes(0, rows, band, tile, out_bytes);
}

// A fused integer job's blocks, per vertical axis and placement (memoized: the 16 frames of a video
// share one): {band, intermediate rows, imma_vstride} (imma_fused_band, then imma_vertical_stride
// where allow_vertical and its column-major buffer fits, else 0: the SIMT vertical pass over the
// row-major buffer the band was sized for), or {0, 0, 0} where no band fits.
inline std::array<int64_t, 3> cached_imma_fused_plan(const AxisCoeffs& v, int64_t top, int64_t canvas_h, int64_t tile,
                                                     int64_t out_bytes, bool allow_vertical) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 7>, std::array<int64_t, 3>> cache;
  const std::array<int64_t, 7> key{v.in_size, v.out_size, top, canvas_h, tile, out_bytes, allow_vertical};
  return memoized_axis_check(mutex, cache, key, [&] {
    const auto fit = imma_fused_band(v, top, canvas_h, tile, out_bytes);
    int64_t vstride = fit[0] > 0 && allow_vertical ? imma_vertical_stride(v, fit[0], top, canvas_h, fit[1]) : 0;
    if (vstride > 0 && imma_fused_smem_bytes(vstride, fit[1], fit[0], tile, out_bytes) > kMaxStagedRowBytes) vstride = 0;
    return std::array<int64_t, 3>{fit[0], fit[1], vstride};
  });
}

// images[i] / hw[i]: the contiguous uint8 [h, w, 3] pixels (device pointers for a launch) and size
// of the image that jobs name by index.
// allow_mma: let eligible jobs run pass 1 on tensor cores (the glue's setting; tests run both).
// tile, out_bytes: the tile size and the bytes of an output value (1 for uint8 tiles, else the
// lut's entries). allow_fused: let eligible tensor-core jobs with a vertical pass run both passes
// in one (and write their canvas' padding). simt_rows: 1, or kSimtRows intermediate rows per block
// for the SIMT horizontal pass of jobs whose staged source rows fit (the glue's setting).
// allow_imma: let eligible jobs (imma_axis_ok) run pass 1 on integer tensor cores, with a vertical
// pass fused into the same blocks where allow_fused; it replaces allow_mma (no job of the launch
// takes the fp16 tensor-core path or its fused passes). allow_imma_vertical: let such fused jobs
// run the vertical pass on integer tensor cores too where imma_vertical_stride allows (the glue:
// always; the emulated tests run both). allow_imma_stage: let integer pass-1 jobs whose image rows
// are 16-byte aligned copy their source windows into shared memory with cp.async
// (TileJobDevice::imma_stage).
inline TileBatch plan_tile_batch(const std::vector<TileJob>& table, const std::vector<const uint8_t*>& images,
                                 const std::vector<std::array<int64_t, 2>>& hw, int64_t tile, int64_t out_bytes,
                                 bool allow_mma = true, bool allow_fused = true, int simt_rows = 1,
                                 bool allow_imma = false, bool allow_imma_vertical = true,
                                 bool allow_imma_stage = false) {
  TileBatch b;
  b.descs.resize(table.size());
  std::vector<ResizePlan> plans(table.size());  // each job's, for both loops below
  // A memoized table's values as the arena's next piece (nothing is copied here: write_arena).
  auto append = [&b](std::shared_ptr<const void> owner, const std::vector<int32_t>& v) {
    const int64_t at = b.arena_size;
    b.arena_pieces.push_back(ArenaPiece{std::move(owner), v.data(), at, static_cast<int64_t>(v.size())});
    b.arena_size += static_cast<int64_t>(v.size());
    return at;
  };
  // Each distinct axis (in_size, out_size, layout) is uploaded once: the 16 frames of a video share
  // theirs. Horizontal axes go tap-major (TileJobDevice::h_weights), vertical ones as computed.
  std::map<std::array<int64_t, 3>, std::array<int64_t, 4>> uploaded;  // + whether mma_axis_exact
  auto append_axis = [&](const std::shared_ptr<const AxisCoeffs>& axis, bool tap_major) {
    const AxisCoeffs& c = *axis;
    const std::array<int64_t, 3> key{c.in_size, c.out_size, tap_major};
    const auto it = uploaded.find(key);
    if (it != uploaded.end()) return it->second;
    b.arena_key.insert(b.arena_key.end(), {1, key[0], key[1], key[2]});
    std::shared_ptr<const std::vector<int32_t>> transposed;
    if (tap_major)  // [out_size][ksize] -> [ksize][out_size], memoized like the coefficients
      transposed = bounded_memo<std::array<int64_t, 2>, std::vector<int32_t>>({c.in_size, c.out_size}, [&] {
        std::vector<int32_t> t(c.weights.size());
        for (int64_t x = 0; x < c.out_size; ++x)
          for (int64_t i = 0; i < c.ksize; ++i) t[i * c.out_size + x] = c.weights[x * c.ksize + i];
        return t;
      });
    const std::array<int64_t, 4> at{append(axis, c.first), append(axis, c.count),
                                    tap_major ? append(transposed, *transposed) : append(axis, c.weights),
                                    tap_major && allow_mma && cached_mma_axis_exact(c)};
    uploaded.emplace(key, at);
    return at;
  };
  for (size_t i = 0; i < table.size(); ++i) {
    const TileJob& j = table[i];
    TileJobDevice& d = b.descs[i];
    std::memset(&d, 0, sizeof(d));
    d.image = images[j.image];
    d.img_h = hw[j.image][0];
    d.img_w = hw[j.image][1];
    d.src_h = j.src_h; d.src_w = j.src_w; d.src_top = j.src_top; d.src_left = j.src_left;
    d.resize_h = j.resize_h; d.resize_w = j.resize_w;
    d.canvas_h = j.canvas_h; d.canvas_w = j.canvas_w;
    d.dst_top = j.dst_top; d.dst_left = j.dst_left; d.first_tile = j.first_tile;
    d.src_pad = static_cast<int32_t>(j.src_pad);  // packed RGB, < 2^24
    d.dst_pad = static_cast<int32_t>(j.dst_pad);
    const ResizePlan& p = plans[i] = plan_resize(j);
    d.need_horizontal = p.need_horizontal;
    d.need_vertical = p.need_vertical;
    d.vertical_first = p.vertical_first;
    if (p.need_horizontal) {
      d.h_outputs = p.horizontal->out_size;
      const auto at = append_axis(p.horizontal, true);
      d.h_first = at[0]; d.h_count = at[1]; d.h_weights = at[2];
      // A candidate for a tensor-core pass 1 (decided below, once the launch's staging is known):
      // the integer one first.
      if (allow_imma && !p.vertical_first && p.mid_rows > 0) {
        // Fused where its groups (chunks of the canvas row) pass and its buffers fit, else unfused.
        if (allow_fused && p.need_vertical && cached_imma_axis_ok(*p.horizontal, j.src_left, j.dst_left, j.canvas_w)) {
          const auto fit = cached_imma_fused_plan(*p.vertical, j.dst_top, j.canvas_h, tile, out_bytes, allow_imma_vertical);
          d.fused_band = static_cast<int32_t>(fit[0]);
          d.fused_rows = static_cast<int32_t>(fit[1]);
          d.imma_vstride = static_cast<int32_t>(fit[2]);
          d.fused = d.imma_pass1 = fit[0] > 0;
        }
        if (!d.fused) d.imma_pass1 = cached_imma_axis_ok(*p.horizontal, j.src_left, 0, p.horizontal->out_size);
      } else if (allow_mma && !allow_imma && at[3] && !p.vertical_first && p.mid_rows > 0)
        d.mma_stride = static_cast<int32_t>(mma_stride(*p.horizontal, 0, p.horizontal->out_size));
    }
    // A fused candidate: tensor-core horizontal pass and a vertical pass; its blocks cover the
    // whole canvas (the padding around the resized image too), so pass 2 has nothing left of it.
    const int64_t fused_stride = allow_fused && d.mma_stride > 0 && p.need_vertical
                                     ? mma_stride(*p.horizontal, j.dst_left, j.canvas_w) : 0;
    if (fused_stride > 0) {
      // The tallest band whose buffers fit (a shorter band re-makes more of the rows that
      // neighbouring bands share).
      const auto fit = fused_band_that_fits(*p.vertical, fused_stride, j.dst_top, j.canvas_h, tile, out_bytes);
      if (fit[0] > 0) {
        d.fused = 1;
        d.fused_band = static_cast<int32_t>(fit[0]);
        d.fused_rows = static_cast<int32_t>(fit[1]);
        d.mma_stride = static_cast<int32_t>(fused_stride);
      }
    }
    if (p.need_vertical) {
      d.v_ksize = p.vertical->ksize;
      const auto at = append_axis(p.vertical, false);
      d.v_first = at[0]; d.v_count = at[1]; d.v_weights = at[2];
    }
    if (p.need_horizontal && !p.vertical_first)
      b.staged_row_bytes = std::max(b.staged_row_bytes, j.src_w * kStagedBytesPerPixel);
    b.canvas_row_bytes = std::max(b.canvas_row_bytes, j.canvas_w * 3);
    d.row_first = p.row_first;
    d.mid_rows = p.mid_rows;
    d.mid_width = p.mid_width;
    if (d.mid_rows > 0) b.pass1_width = std::max(b.pass1_width, d.mid_width);
  }
  // The tensor-core path lives in the staged pass-1 kernel: only when the launch stages its rows
  // (no source row wider than kMaxStagedRowBytes allows). Its blocks cover bands x chunks.
  const bool staged = pass1_staged_row(b.staged_row_bytes);
  int64_t pass2 = 0;
  // Each distinct axis and placement's B fragments once (the 16 frames of a video share theirs),
  // 16-byte aligned in the arena (the kernel loads them as uint4; the arena starts aligned).
  std::map<std::array<int64_t, 5>, int64_t> planes_at;
  const auto append_planes = [&](const std::array<int64_t, 5>& key, auto&& make) {
    auto it = planes_at.find(key);
    if (it == planes_at.end()) {
      b.arena_size = (b.arena_size + 3) / 4 * 4;  // zeros up to the next 16 bytes
      b.arena_key.insert(b.arena_key.end(), {2, key[0], key[1], key[2], key[3], key[4]});
      // Memoized like the coefficients (~75K byte operations per 384-output table otherwise).
      const auto planes = bounded_memo<std::array<int64_t, 5>, std::vector<int32_t>>(key, make);
      it = planes_at.emplace(key, append(planes, *planes)).first;
    }
    return it->second;
  };
  for (size_t i = 0; i < b.descs.size(); ++i) {
    TileJobDevice& d = b.descs[i];
    d.mma_pass1 = staged && d.mma_stride > 0;
    d.imma_pass1 = staged && d.imma_pass1;
    d.fused = (d.mma_pass1 || d.imma_pass1) && d.fused;
    if (!d.mma_pass1) d.mma_stride = 0;
    if (!d.fused) d.fused_rows = d.fused_band = d.imma_vstride = 0;
    if (d.imma_pass1) {
      const ResizePlan& p = plans[i];
      const int64_t dst_left = d.fused ? d.dst_left : 0;  // where the groups of 8 start (see above)
      d.h_planes = append_planes({0, p.horizontal->in_size, p.horizontal->out_size, d.src_left, dst_left},
                                 [&] { return imma_horizontal_planes(*p.horizontal, d.src_left, dst_left); });
      if (d.fused && d.imma_vstride > 0)
        d.v_planes = append_planes({1, p.vertical->in_size, p.vertical->out_size, d.dst_top, d.fused_band},
                                   [&] { return imma_vertical_planes(*p.vertical, d.dst_top, d.fused_band); });
    }
    d.pass1_begin = b.pass1;
    d.pass2_begin = pass2;  // fused jobs have no pass-2 rows
    if (!d.fused) pass2 += table[i].canvas_h;
    if (d.mma_pass1) {  // blocks: (canvas or intermediate) row bands x chunks of 64 columns
      const int64_t width = d.fused ? table[i].canvas_w : d.mid_width;
      d.mma_chunks = static_cast<int32_t>((width + kMmaChunk - 1) / kMmaChunk);
      const int64_t rows = d.fused ? table[i].canvas_h : d.mid_rows, per = d.fused ? d.fused_band : kMmaRows;
      b.pass1 += (rows + per - 1) / per * d.mma_chunks;
      b.pass1_mma = true;
      b.staged_row_bytes = std::max(b.staged_row_bytes, d.fused ? fused_smem_bytes(d.mma_stride, d.fused_rows, d.fused_band,
                                                                                   tile, out_bytes)
                                                                  : kMmaRows * d.mma_stride * 4);
    } else if (d.imma_pass1) {  // blocks: bands of kImmaBand intermediate rows (fused: fused_band canvas
                                // rows) x chunks of 64 outputs (fused: canvas columns)
      const int64_t width = d.fused ? table[i].canvas_w : d.mid_width;
      d.mma_chunks = static_cast<int32_t>((width + kMmaChunk - 1) / kMmaChunk);
      const int64_t rows = d.fused ? table[i].canvas_h : d.mid_rows, per = d.fused ? d.fused_band : kImmaBand;
      b.pass1 += (rows + per - 1) / per * d.mma_chunks;
      b.pass1_imma = true;  // kMmaThreads per block, the integer tensor-core instantiation of the kernel
      d.imma_stage = allow_imma_stage && d.img_w * 3 % 16 == 0 && reinterpret_cast<uintptr_t>(d.image) % 16 == 0;
      if (d.imma_stage) b.imma_stage_bytes = kImmaStageBlockBytes;
      if (d.fused)  // the intermediate rows in shared memory (after the stage buffers, if any)
        b.staged_row_bytes = std::max(b.staged_row_bytes,
                                      imma_fused_smem_bytes(d.imma_vstride, d.fused_rows, d.fused_band, tile, out_bytes));
      d.rows_per_block = 1;
    } else if (staged && simt_rows == kSimtRows && d.need_horizontal && !d.vertical_first && d.mid_rows > 0 &&
               kSimtRows * table[i].src_w * kStagedBytesPerPixel <= kMaxStagedRowBytes) {
      d.rows_per_block = kSimtRows;  // blocks: groups of kSimtRows intermediate rows
      b.pass1 += (d.mid_rows + kSimtRows - 1) / kSimtRows;
      b.staged_row_bytes = std::max(b.staged_row_bytes, kSimtRows * table[i].src_w * kStagedBytesPerPixel);
    } else {
      d.rows_per_block = 1;
      b.pass1 += d.mid_rows;
    }
    // Only unfused jobs keep an intermediate in global memory.
    d.mid_offset = b.mid_bytes;
    if (!d.fused) b.mid_bytes += d.mid_rows * d.mid_width * kMidBytesPerPixel;
  }
  b.pass2 = pass2;
  if (b.arena_size == 0) {
    b.arena_size = 1;
    b.arena_key.push_back(3);
  }
  return b;
}

}  // namespace cuda
}  // namespace interleave
