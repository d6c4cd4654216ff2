// Index math of merge_tokens, shared by the CPU and CUDA kernels (and the native C++ tests).
//
// Mirrors transformers' LlavaModel.get_placeholder_mask + masked_scatter: position p of the
// flattened [B, L] input_ids is a placeholder when its id is one of the image/video placeholder ids;
// the k-th placeholder in row-major order takes visual row k, every other position takes row
// input_ids[p] of the embedding table.
#pragma once

#include <cstdint>

#include "macros.h"

namespace interleave {

// Placeholder ids travel by value into kernels; image + video ids (and a few spares) are enough.
constexpr int kMaxPlaceholderIds = 8;

struct PlaceholderIds {
  int64_t ids[kMaxPlaceholderIds];
  int count;
};

IL_HD bool is_placeholder(int64_t id, const PlaceholderIds& ph) {
  bool hit = false;
IL_UNROLL
  for (int i = 0; i < kMaxPlaceholderIds; ++i) hit |= (i < ph.count) & (id == ph.ids[i]);
  return hit;
}

// A text position must index a real row of the embedding table.
IL_HD bool is_valid_text_id(int64_t id, int64_t num_embeddings) {
  return id >= 0 && id < num_embeddings;
}

// Positions are processed in chunks: a chunk is the unit of the placeholder count (first pass) and
// of the prefix offset (second pass). The chunk count is bounded so that the second pass can sum
// all preceding chunk counts in one block without a separate scan kernel.
constexpr int64_t kMinChunk = 32;
constexpr int64_t kMaxChunks = 1024;

IL_HD int64_t merge_chunk_size(int64_t n) {
  int64_t c = (n + kMaxChunks - 1) / kMaxChunks;
  if (c < kMinChunk) c = kMinChunk;
  return c;
}

IL_HD int64_t merge_num_chunks(int64_t n, int64_t chunk) { return (n + chunk - 1) / chunk; }

// Where the row of position p comes from: the embedding row `id` or the visual row `rank`.
struct RowSource {
  bool visual;
  int64_t row;
};

IL_HD RowSource row_source(int64_t id, const PlaceholderIds& ph, int64_t placeholder_rank) {
  RowSource s;
  s.visual = is_placeholder(id, ph);
  s.row = s.visual ? placeholder_rank : id;
  return s;
}

}  // namespace interleave
