// CPU kernels of merge_tokens (forward and backward).
//
// Forward mirrors transformers' `embed_tokens(input_ids).masked_scatter(mask, visual)` in one pass:
// a counting pass over the ids (cheap: 8 bytes per position) validates everything, then every
// output row is written exactly once, either as a copy of its embedding row or as the cast visual
// row of its placeholder rank. Backward mirrors the gradients of embedding + masked_scatter: the
// visual gradient is a gather of the placeholder rows, the embedding gradient accumulates text rows
// in position order, exactly as ATen's embedding_dense_backward_cpu does (bitwise equal to it).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <vector>

#include "../ops/merge_tokens.h"
#include "output_alloc.h"

namespace interleave {
namespace {

// Result of the counting pass: the placeholder rank at which each chunk starts.
struct ChunkPlan {
  int64_t chunk = 0;
  std::vector<int64_t> offsets;  // [num_chunks + 1], offsets.back() = total placeholders
  int64_t first_bad = -1;        // first text position whose id is outside [0, V), or -1
};

ChunkPlan plan_chunks(const int64_t* ids, int64_t n, const PlaceholderIds& ph, int64_t num_embeddings,
                      bool validate_text) {
  ChunkPlan plan;
  plan.chunk = merge_chunk_size(n);
  const int64_t num_chunks = merge_num_chunks(n, plan.chunk);
  std::vector<int64_t> counts(num_chunks, 0), bad(num_chunks, -1);
  at::parallel_for(0, num_chunks, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t p1 = std::min(n, (c + 1) * plan.chunk);
      int64_t count = 0, first_bad = -1;
      for (int64_t p = c * plan.chunk; p < p1; ++p) {
        const bool visual = is_placeholder(ids[p], ph);
        count += visual;
        if (validate_text && !visual && first_bad < 0 && !is_valid_text_id(ids[p], num_embeddings))
          first_bad = p;
      }
      counts[c] = count;
      bad[c] = first_bad;
    }
  });
  plan.offsets.assign(num_chunks + 1, 0);
  for (int64_t c = 0; c < num_chunks; ++c) {
    plan.offsets[c + 1] = plan.offsets[c] + counts[c];
    if (plan.first_bad < 0) plan.first_bad = bad[c];
  }
  return plan;
}

// Calls f(chunk_begin, chunk_end, first_rank) for every chunk, in parallel.
template <typename F>
void for_each_chunk(const ChunkPlan& plan, int64_t n, F&& f) {
  const int64_t num_chunks = static_cast<int64_t>(plan.offsets.size()) - 1;
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      f(c * plan.chunk, std::min(n, (c + 1) * plan.chunk), plan.offsets[c]);
  });
}

// Casts one row with the same rounding as Tensor.to (static_cast through c10's types).
template <typename To, typename From>
inline void cast_row(To* dst, const From* src, int64_t dim) {
  if constexpr (std::is_same_v<To, From>) {
    std::memcpy(dst, src, sizeof(To) * dim);
  } else {
    for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<To>(src[d]);
  }
}

#define IL_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

}  // namespace

at::Tensor merge_tokens_cpu(const at::Tensor& input_ids_arg, const at::Tensor& embed_weight_arg,
                            const at::Tensor& visual_arg, at::IntArrayRef image_token_ids,
                            std::optional<int64_t> num_placeholders, int64_t /*padding_idx*/) {
  const MergeShape s = check_merge_tokens_args(input_ids_arg, embed_weight_arg, visual_arg,
                                               image_token_ids, num_placeholders);
  TORCH_CHECK_VALUE(input_ids_arg.is_cpu(), "merge_tokens_cpu: tensors must be on the CPU");
  const at::Tensor input_ids = input_ids_arg.contiguous();
  const at::Tensor embed_weight = embed_weight_arg.contiguous();
  const at::Tensor visual = visual_arg.contiguous();
  const int64_t n = s.batch * s.length, dim = s.dim;
  const int64_t* ids = input_ids.const_data_ptr<int64_t>();

  const ChunkPlan plan = plan_chunks(ids, n, s.placeholders, s.num_embeddings, true);
  if (plan.first_bad >= 0 || plan.offsets.back() != s.num_visual)
    raise_merge_data_error(input_ids, plan.offsets.back(), s.num_visual, plan.first_bad,
                           s.num_embeddings);

  at::Tensor out = empty_cpu_output({s.batch, s.length, dim}, embed_weight.scalar_type());
  if (n == 0 || dim == 0) return out;
  IL_DISPATCH_FLOAT(embed_weight.scalar_type(), "merge_tokens_cpu", [&] {
    using out_t = scalar_t;
    IL_DISPATCH_FLOAT(visual.scalar_type(), "merge_tokens_cpu_visual", [&] {
      using visual_t = scalar_t;
      const out_t* table = embed_weight.const_data_ptr<out_t>();
      const visual_t* vis = visual.const_data_ptr<visual_t>();
      out_t* dst = out.mutable_data_ptr<out_t>();
      for_each_chunk(plan, n, [&](int64_t p0, int64_t p1, int64_t rank) {
        for (int64_t p = p0; p < p1; ++p) {
          const RowSource src = row_source(ids[p], s.placeholders, rank);
          if (src.visual) {
            cast_row(dst + p * dim, vis + src.row * dim, dim);
            ++rank;
          } else {
            std::memcpy(dst + p * dim, table + src.row * dim, sizeof(out_t) * dim);
          }
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_tokens_backward_cpu(
    const at::Tensor& grad_output_arg, const at::Tensor& input_ids_arg,
    at::IntArrayRef image_token_ids, int64_t num_embeddings, int64_t num_visual,
    at::ScalarType visual_dtype, int64_t padding_idx, bool weight_grad, bool visual_grad) {
  const MergeShape s = check_merge_tokens_backward_args(grad_output_arg, input_ids_arg,
                                                        image_token_ids, num_embeddings,
                                                        num_visual, visual_dtype);
  const at::Tensor grad = grad_output_arg.contiguous();
  const at::Tensor input_ids = input_ids_arg.contiguous();
  const int64_t n = s.batch * s.length, dim = s.dim;
  const int64_t* ids = input_ids.const_data_ptr<int64_t>();
  const auto grad_dtype = grad.scalar_type();

  at::Tensor grad_weight = weight_grad ? at::zeros({num_embeddings, dim}, grad.options())
                                       : at::empty({0}, grad.options());
  at::Tensor grad_visual = visual_grad ? at::empty({num_visual, dim}, grad.options().dtype(visual_dtype))
                                       : at::empty({0}, grad.options().dtype(visual_dtype));
  if (n == 0 || dim == 0) {
    if (visual_grad) grad_visual.zero_();
    return {grad_weight, grad_visual};
  }
  const ChunkPlan plan = plan_chunks(ids, n, s.placeholders, num_embeddings, weight_grad);
  TORCH_CHECK_VALUE(plan.offsets.back() == num_visual, "merge_tokens_backward: input_ids holds ",
                    plan.offsets.back(), " placeholder tokens but num_visual=", num_visual);
  TORCH_CHECK_VALUE(plan.first_bad < 0, "merge_tokens_backward: a text id is outside [0, ",
                    num_embeddings, ")");

  IL_DISPATCH_FLOAT(grad_dtype, "merge_tokens_backward_cpu", [&] {
    using grad_t = scalar_t;
    const grad_t* g = grad.const_data_ptr<grad_t>();
    if (visual_grad) {
      IL_DISPATCH_FLOAT(visual_dtype, "merge_tokens_backward_cpu_visual", [&] {
        using visual_t = scalar_t;
        visual_t* gv = grad_visual.mutable_data_ptr<visual_t>();
        for_each_chunk(plan, n, [&](int64_t p0, int64_t p1, int64_t rank) {
          for (int64_t p = p0; p < p1; ++p)
            if (is_placeholder(ids[p], s.placeholders)) cast_row(gv + (rank++) * dim, g + p * dim, dim);
        });
      });
    }
    if (weight_grad) {
      // Threads own column slices and walk the positions in order, so every element is summed
      // in the same order, starting from zero, and in the same dtype as ATen's
      // embedding_dense_backward_cpu (grad_weight[k].add_(grad[i]) for i ascending).
      grad_t* gw = grad_weight.mutable_data_ptr<grad_t>();
      at::parallel_for(0, dim, 256, [&](int64_t d0, int64_t d1) {
        for (int64_t p = 0; p < n; ++p) {
          const int64_t id = ids[p];
          if (id == padding_idx || is_placeholder(id, s.placeholders)) continue;
          grad_t* row = gw + id * dim;
          const grad_t* src = g + p * dim;
          for (int64_t d = d0; d < d1; ++d) row[d] = static_cast<grad_t>(row[d] + src[d]);
        }
      });
    }
  });
  return {grad_weight, grad_visual};
}

}  // namespace interleave
