// Argument checks of merge_tokens, run before any kernel so that bad input never reaches one.
#include "merge_tokens.h"

#include <c10/util/Exception.h>

#include "../common/env.h"

namespace interleave {
namespace {

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

PlaceholderIds pack_placeholder_ids(at::IntArrayRef image_token_ids) {
  TORCH_CHECK_VALUE(!image_token_ids.empty(),
                    "merge_tokens: image_token_id must name at least one placeholder id");
  TORCH_CHECK_VALUE(static_cast<int>(image_token_ids.size()) <= kMaxPlaceholderIds,
                    "merge_tokens: at most ", kMaxPlaceholderIds, " placeholder ids, got ",
                    image_token_ids.size());
  PlaceholderIds ph{};
  ph.count = static_cast<int>(image_token_ids.size());
  for (int i = 0; i < kMaxPlaceholderIds; ++i)
    ph.ids[i] = i < ph.count ? image_token_ids[i] : image_token_ids[0];
  return ph;
}

}  // namespace

MergeShape check_merge_tokens_args(const at::Tensor& input_ids, const at::Tensor& embed_weight,
                                   const at::Tensor& visual, at::IntArrayRef image_token_ids,
                                   std::optional<int64_t> num_placeholders) {
  TORCH_CHECK_TYPE(input_ids.scalar_type() == at::kLong,
                   "merge_tokens: input_ids must be int64, got ", input_ids.scalar_type());
  TORCH_CHECK_VALUE(input_ids.dim() == 2, "merge_tokens: input_ids must be [B, L], got shape ",
                    input_ids.sizes());
  TORCH_CHECK_VALUE(embed_weight.dim() == 2,
                    "merge_tokens: embed_weight must be [V, D], got shape ", embed_weight.sizes());
  TORCH_CHECK_VALUE(visual.dim() == 2, "merge_tokens: visual must be [K, D], got shape ",
                    visual.sizes());
  TORCH_CHECK_TYPE(supported_float(embed_weight.scalar_type()),
                   "merge_tokens: embed_weight must be float32/float64/bfloat16/float16, got ",
                   embed_weight.scalar_type());
  TORCH_CHECK_TYPE(supported_float(visual.scalar_type()),
                   "merge_tokens: visual must be float32/float64/bfloat16/float16, got ",
                   visual.scalar_type());
  TORCH_CHECK_VALUE(visual.size(1) == embed_weight.size(1),
                    "merge_tokens: visual has D=", visual.size(1), " but embed_weight has D=",
                    embed_weight.size(1));
  TORCH_CHECK_VALUE(input_ids.device() == embed_weight.device() &&
                        visual.device() == embed_weight.device(),
                    "merge_tokens: all tensors must be on one device, got input_ids on ",
                    input_ids.device(), ", embed_weight on ", embed_weight.device(),
                    ", visual on ", visual.device());
  if (num_placeholders.has_value()) {
    TORCH_CHECK_VALUE(*num_placeholders == visual.size(0), "merge_tokens: num_placeholders=",
                      *num_placeholders, " but visual has ", visual.size(0), " rows");
  }
  MergeShape s;
  s.batch = input_ids.size(0);
  s.length = input_ids.size(1);
  s.dim = embed_weight.size(1);
  s.num_embeddings = embed_weight.size(0);
  s.num_visual = visual.size(0);
  s.placeholders = pack_placeholder_ids(image_token_ids);
  return s;
}

MergeShape check_merge_tokens_backward_args(const at::Tensor& grad_output,
                                            const at::Tensor& input_ids,
                                            at::IntArrayRef image_token_ids,
                                            int64_t num_embeddings, int64_t num_visual,
                                            at::ScalarType visual_dtype) {
  TORCH_CHECK_TYPE(input_ids.scalar_type() == at::kLong,
                   "merge_tokens_backward: input_ids must be int64, got ", input_ids.scalar_type());
  TORCH_CHECK_VALUE(input_ids.dim() == 2 && grad_output.dim() == 3 &&
                        grad_output.size(0) == input_ids.size(0) &&
                        grad_output.size(1) == input_ids.size(1),
                    "merge_tokens_backward: grad_output must be [B, L, D] for input_ids [B, L], got ",
                    grad_output.sizes(), " and ", input_ids.sizes());
  TORCH_CHECK_TYPE(supported_float(grad_output.scalar_type()) && supported_float(visual_dtype),
                   "merge_tokens_backward: unsupported dtypes ", grad_output.scalar_type(), ", ",
                   visual_dtype);
  TORCH_CHECK_VALUE(grad_output.device() == input_ids.device(),
                    "merge_tokens_backward: grad_output on ", grad_output.device(),
                    " but input_ids on ", input_ids.device());
  TORCH_CHECK_VALUE(num_embeddings >= 0 && num_visual >= 0,
                    "merge_tokens_backward: negative sizes");
  MergeShape s;
  s.batch = input_ids.size(0);
  s.length = input_ids.size(1);
  s.dim = grad_output.size(2);
  s.num_embeddings = num_embeddings;
  s.num_visual = num_visual;
  s.placeholders = pack_placeholder_ids(image_token_ids);
  return s;
}

void raise_merge_data_error(const at::Tensor& input_ids, int64_t placeholders, int64_t num_visual,
                            int64_t first_bad_position, int64_t num_embeddings) {
  if (first_bad_position >= 0) {
    const int64_t length = input_ids.size(1);
    // Error path only: reading the offending id here may cost a device sync, which is fine.
    const int64_t value = input_ids.reshape(-1)[first_bad_position].item<int64_t>();
    TORCH_CHECK_VALUE(false, "merge_tokens: input_ids[", first_bad_position / length, ", ",
                      first_bad_position % length, "] = ", value,
                      " is a text token outside the embedding table [0, ", num_embeddings, ")");
  }
  TORCH_CHECK_VALUE(false, "merge_tokens: input_ids holds ", placeholders,
                    " placeholder tokens but visual has ", num_visual,
                    " rows; they must be equal (one visual row per placeholder)");
}

int64_t& merge_cuda_min_chunk() {
  static int64_t chunk = kMinChunk;
  return chunk;
}

int64_t& merge_cuda_self_count_max() {
  static int64_t positions = kMergeSelfCountMax;
  return positions;
}

bool& merge_cuda_count_rotation() {
  static bool rotate = false;
  return rotate;
}

int64_t& merge_cuda_flat_loads() {
  static int64_t loads = 8;
  return loads;
}

bool& merge_cuda_lookback() {
  static bool on = env_opt_in("INTERLEAVE_MERGE_LOOKBACK");
  return on;
}

}  // namespace interleave
