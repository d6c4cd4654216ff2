// Index math of merge_tokens (csrc/common/merge_tokens.h), without torch.
#include <cstdint>
#include <cstdio>
#include <initializer_list>

#include "check.h"
#include "common/merge_tokens.h"

using namespace interleave;

static PlaceholderIds make_ids(std::initializer_list<int64_t> ids) {
  PlaceholderIds ph{};
  ph.count = 0;
  for (int64_t id : ids) ph.ids[ph.count++] = id;
  for (int i = ph.count; i < kMaxPlaceholderIds; ++i) ph.ids[i] = ph.ids[0];
  return ph;
}

int main() {
  // Placeholders: one id, two ids, the maximum of eight.
  const PlaceholderIds one = make_ids({151646});
  IL_CHECK(is_placeholder(151646, one));
  IL_CHECK(!is_placeholder(151647, one) && !is_placeholder(0, one) && !is_placeholder(-1, one));
  const PlaceholderIds two = make_ids({151646, 151647});
  IL_CHECK(is_placeholder(151646, two) && is_placeholder(151647, two) && !is_placeholder(151645, two));
  const PlaceholderIds eight = make_ids({1, 2, 3, 4, 5, 6, 7, 8});
  for (int64_t id = 1; id <= 8; ++id) IL_CHECK(is_placeholder(id, eight));
  IL_CHECK(!is_placeholder(0, eight) && !is_placeholder(9, eight));
  // Unused slots repeat the first id and never add a match.
  const PlaceholderIds padded = make_ids({42});
  IL_CHECK(!is_placeholder(0, padded));

  // Text ids must index the table.
  IL_CHECK(!is_valid_text_id(-1, 100));
  IL_CHECK(is_valid_text_id(0, 100) && is_valid_text_id(99, 100));
  IL_CHECK(!is_valid_text_id(100, 100) && !is_valid_text_id(INT64_MAX, 100));
  IL_CHECK(!is_valid_text_id(0, 0));

  // Chunks: at least kMinChunk positions, at most kMaxChunks chunks, covering n exactly.
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(31), int64_t(32), int64_t(33), int64_t(8192),
                    int64_t(32768), int64_t(32769), int64_t(10000000), int64_t(1) << 40}) {
    const int64_t chunk = merge_chunk_size(n);
    const int64_t chunks = merge_num_chunks(n, chunk);
    IL_CHECK(chunk >= kMinChunk);
    IL_CHECK(chunks <= kMaxChunks);
    IL_CHECK(chunks * chunk >= n);
    IL_CHECK(n == 0 ? chunks == 0 : (chunks - 1) * chunk < n);
  }
  IL_CHECK(merge_chunk_size(8192) == kMinChunk && merge_num_chunks(8192, kMinChunk) == 256);

  // Row sources.
  const RowSource text = row_source(17, two, 5);
  IL_CHECK(!text.visual && text.row == 17);
  const RowSource vis = row_source(151647, two, 5);
  IL_CHECK(vis.visual && vis.row == 5);

  std::printf("test_merge_index: ok\n");
  return 0;
}
