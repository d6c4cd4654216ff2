// Argument and layout checks of pack_tokens, run on the host before any kernel: a layout that
// passes cannot make a kernel read or write out of bounds.
#include "pack_tokens.h"

#include <c10/util/Exception.h>

namespace interleave {
namespace {

using namespace pack;

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Sizes beyond this are rejected so that no index product can overflow int64.
constexpr int64_t kMaxExtent = int64_t(1) << 31;

#define IL_LAYOUT_CHECK(cond, ...) \
  TORCH_CHECK_VALUE(cond, "pack_tokens: layout segment ", i, ": ", __VA_ARGS__)

PackLayout check_layout(const at::Tensor& table, int64_t num_features, int64_t side, bool has_newline) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kLong, "pack_tokens: layout must be int64, got ",
                   table.scalar_type());
  TORCH_CHECK_VALUE(table.is_cpu(), "pack_tokens: layout must be a CPU tensor (it is read on the "
                    "host; the CUDA op copies it to the device itself), got one on ", table.device());
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(1) == kNumFields,
                    "pack_tokens: layout must be [S, ", int(kNumFields), "], got shape ", table.sizes());
  const at::Tensor t = table.contiguous();
  const int64_t* data = t.const_data_ptr<int64_t>();
  const int64_t src_rows = num_features * side * side;
  PackLayout out;
  int64_t next_out = 0, next_src = 0;
  for (int64_t i = 0; i < t.size(0); ++i) {
    const int64_t* f = data + i * kNumFields;
    for (int k = 0; k < kNumFields; ++k)
      IL_LAYOUT_CHECK(f[k] >= 0 && f[k] < kMaxExtent, "field ", k, " = ", f[k], " is outside [0, 2^31)");
    const Segment s = load_segment(f);
    IL_LAYOUT_CHECK(s.out_start == next_out, "out_start is ", s.out_start, " but the previous segments end at ", next_out);
    if (s.kind == kKindNewline) {
      IL_LAYOUT_CHECK(s.out_rows == 1, "a newline segment has one row, got ", s.out_rows);
      IL_LAYOUT_CHECK(has_newline, "a newline segment needs the newline tensor, which is None");
      out.newline_rows.push_back(s.out_start);
    } else {
      IL_LAYOUT_CHECK(s.kind == kKindMap, "kind must be 0 (map) or 1 (newline), got ", s.kind);
      IL_LAYOUT_CHECK(s.repeat >= 1 && s.tiles_r >= 1 && s.tiles_c >= 1,
                      "repeat, tiles_r, tiles_c must be >= 1, got ", s.repeat, ", ", s.tiles_r, ", ", s.tiles_c);
      const int64_t map_h = s.tiles_r * side, map_w = s.tiles_c * side;
      IL_LAYOUT_CHECK(s.crop_h >= 1 && s.crop_w >= 1 && s.crop_top + s.crop_h <= map_h &&
                          s.crop_left + s.crop_w <= map_w,
                      "crop [", s.crop_top, ", +", s.crop_h, ") x [", s.crop_left, ", +", s.crop_w,
                      ") is empty or outside the ", map_h, "x", map_w, " map");
      IL_LAYOUT_CHECK(s.newline_col <= 1, "newline_col must be 0 or 1, got ", s.newline_col);
      IL_LAYOUT_CHECK(s.newline_col == 0 || has_newline, "a newline column needs the newline tensor, which is None");
      if (s.resample == kCopy) {
        IL_LAYOUT_CHECK(s.out_h == s.crop_h && s.out_w == s.crop_w, "a copy keeps the crop's size ",
                        s.crop_h, "x", s.crop_w, ", got ", s.out_h, "x", s.out_w);
      } else if (s.resample == kAvg2 || s.resample == kMax2) {
        IL_LAYOUT_CHECK(s.out_h == s.crop_h / 2 && s.out_w == s.crop_w / 2 && s.out_h >= 1 && s.out_w >= 1,
                        "2x2 pooling (floor mode) of ", s.crop_h, "x", s.crop_w, " gives ", s.crop_h / 2,
                        "x", s.crop_w / 2, " (at least 1x1), got ", s.out_h, "x", s.out_w);
        out.has_max = out.has_max || s.resample == kMax2;
      } else {
        IL_LAYOUT_CHECK(s.resample == kBilinear, "resample must be 0 (copy), 1 (bilinear), 2 (avg) or 3 (max), got ", s.resample);
        IL_LAYOUT_CHECK(s.out_h >= 1 && s.out_w >= 1, "bilinear output must be at least 1x1, got ", s.out_h, "x", s.out_w);
      }
      IL_LAYOUT_CHECK(s.out_rows == s.repeat * out_rows_per_map(s), "out_rows must be repeat*out_h*(out_w+newline_col) = ",
                      s.repeat * out_rows_per_map(s), ", got ", s.out_rows);
      const int64_t src_end = s.src_start + s.repeat * src_rows_per_map(s, side);
      IL_LAYOUT_CHECK(s.src_start >= next_src, "sources must be disjoint and in ascending order: src_start ",
                      s.src_start, " is before the previous map's end ", next_src);
      IL_LAYOUT_CHECK(src_end <= src_rows, "the map reads feature rows [", s.src_start, ", ", src_end,
                      ") but features has ", src_rows, " (", num_features, " tiles/frames of ", side * side, ")");
      next_src = src_end;
      out.map_segments.push_back(i);
      out.map_src_starts.push_back(s.src_start);
      if (s.newline_col) {
        for (int64_t r = 0; r < s.repeat; ++r)
          for (int64_t y = 0; y < s.out_h; ++y) out.newline_rows.push_back(output_row(s, r, y, s.out_w));
      }
    }
    IL_LAYOUT_CHECK(s.out_rows <= kMaxExtent - next_out, "the output has more than 2^31 rows");
    next_out += s.out_rows;
    out.segments.push_back(s);
    out.out_starts.push_back(s.out_start);
  }
  out.num_rows = next_out;
  return out;
}

}  // namespace

PackShape check_pack_tokens_args(const at::Tensor& features, const std::optional<at::Tensor>& newline,
                                 const at::Tensor& layout, int64_t num_rows, int64_t side) {
  TORCH_CHECK_VALUE(side >= 1, "pack_tokens: side must be >= 1, got ", side);
  TORCH_CHECK_VALUE(features.dim() == 3 && features.size(1) == side * side,
                    "pack_tokens: features must be [P, ", side * side, ", H] (", side, "x", side,
                    " features per tile/frame), got shape ", features.sizes());
  TORCH_CHECK_TYPE(supported_float(features.scalar_type()),
                   "pack_tokens: features must be float32/float64/bfloat16/float16, got ", features.scalar_type());
  if (newline.has_value()) {
    TORCH_CHECK_VALUE(newline->dim() == 1 && newline->size(0) == features.size(2),
                      "pack_tokens: newline must be [", features.size(2), "] (H of features), got shape ",
                      newline->sizes());
    TORCH_CHECK_TYPE(newline->scalar_type() == features.scalar_type(), "pack_tokens: newline must have the "
                     "features' dtype ", features.scalar_type(), ", got ", newline->scalar_type());
    TORCH_CHECK_VALUE(newline->device() == features.device(), "pack_tokens: newline is on ", newline->device(),
                      " but features on ", features.device());
  }
  PackShape s;
  s.num_features = features.size(0);
  s.side = side;
  s.dim = features.size(2);
  s.layout = check_layout(layout, s.num_features, side, newline.has_value());
  TORCH_CHECK_VALUE(s.layout.num_rows == num_rows, "pack_tokens: num_rows=", num_rows, " but the layout writes ",
                    s.layout.num_rows, " rows");
  return s;
}

PackShape check_pack_tokens_backward_args(const at::Tensor& grad, const std::optional<at::Tensor>& features,
                                          const at::Tensor& layout, int64_t num_features, int64_t side) {
  TORCH_CHECK_VALUE(side >= 1 && num_features >= 0, "pack_tokens_backward: bad side ", side,
                    " or num_features ", num_features);
  TORCH_CHECK_VALUE(grad.dim() == 2, "pack_tokens_backward: grad must be [T, H], got shape ", grad.sizes());
  TORCH_CHECK_TYPE(supported_float(grad.scalar_type()),
                   "pack_tokens_backward: grad must be float32/float64/bfloat16/float16, got ", grad.scalar_type());
  PackShape s;
  s.num_features = num_features;
  s.side = side;
  s.dim = grad.size(1);
  s.layout = check_layout(layout, num_features, side, true);
  TORCH_CHECK_VALUE(grad.size(0) == s.layout.num_rows, "pack_tokens_backward: grad has ", grad.size(0),
                    " rows but the layout writes ", s.layout.num_rows);
  if (s.layout.has_max) {
    TORCH_CHECK_VALUE(features.has_value(), "pack_tokens_backward: max pooling needs the features");
  }
  if (features.has_value()) {
    TORCH_CHECK_VALUE(features->dim() == 3 && features->size(0) == num_features &&
                          features->size(1) == side * side && features->size(2) == s.dim,
                      "pack_tokens_backward: features must be [", num_features, ", ", side * side, ", ",
                      s.dim, "], got shape ", features->sizes());
    TORCH_CHECK_TYPE(features->scalar_type() == grad.scalar_type(), "pack_tokens_backward: features dtype ",
                     features->scalar_type(), " differs from grad's ", grad.scalar_type());
    TORCH_CHECK_VALUE(features->device() == grad.device(), "pack_tokens_backward: features on ",
                      features->device(), ", grad on ", grad.device());
  }
  return s;
}

int64_t& pack_cuda_max_blocks() {
  static int64_t blocks = 0;
  return blocks;
}

}  // namespace interleave
