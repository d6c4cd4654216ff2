// CPU kernels of pack_tokens (forward and backward).
//
// Forward: every output row is written once from its taps (csrc/common/pack_tokens.h): a memcpy
// for copies and the newline, a 4-tap sum in the opmath type for bilinear and avg, a 4-way max.
// This replaces transformers' per-image loop of view/permute/contiguous/unpad/interpolate/cat/
// flatten (LlavaOnevisionModel.pack_image_features, apply_pooling), which copies every map several
// times. Backward: every input row gathers the output rows it fed, in a fixed order (no atomics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <vector>

#include "../ops/pack_tokens.h"
#include "output_alloc.h"

namespace interleave {
namespace {

using namespace pack;

#define IL_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

template <typename T, typename A>
void forward_rows(const PackShape& s, const T* feat, const T* newline, T* out, int64_t r0, int64_t r1) {
  const PackLayout& L = s.layout;
  const int64_t dim = s.dim;
  int64_t seg = find_range(L.out_starts.data(), static_cast<int64_t>(L.out_starts.size()), r0);
  for (int64_t row = r0; row < r1; ++row) {
    while (row >= L.segments[seg].out_start + L.segments[seg].out_rows) ++seg;
    const Segment& sg = L.segments[seg];
    const OutputTaps<A> t = output_taps<A>(sg, s.side, row - sg.out_start);
    T* dst = out + row * dim;
    if (t.kind == kTapCopy) {
      std::memcpy(dst, feat + t.src[0] * dim, sizeof(T) * dim);
    } else if (t.kind == kTapNewline) {
      std::memcpy(dst, newline, sizeof(T) * dim);
    } else {
      const T* x0 = feat + t.src[0] * dim;
      const T* x1 = feat + t.src[1] * dim;
      const T* x2 = feat + t.src[2] * dim;
      const T* x3 = feat + t.src[3] * dim;
      if (t.kind == kTapBilinear) {
        const A wy0 = t.wy0, wy1 = t.wy1, wx0 = t.wx0, wx1 = t.wx1;
        for (int64_t d = 0; d < dim; ++d) {
          const A top = A(x0[d]) * wx0 + A(x1[d]) * wx1;
          const A bottom = A(x2[d]) * wx0 + A(x3[d]) * wx1;
          dst[d] = static_cast<T>(top * wy0 + bottom * wy1);
        }
      } else if (t.kind == kTapAvg) {
        for (int64_t d = 0; d < dim; ++d)
          dst[d] = static_cast<T>((((A(x0[d]) + A(x1[d])) + A(x2[d])) + A(x3[d])) / A(4));
      } else {  // max
        for (int64_t d = 0; d < dim; ++d) {
          const T v[4] = {x0[d], x1[d], x2[d], x3[d]};
          dst[d] = v[argmax4<A>(A(v[0]), A(v[1]), A(v[2]), A(v[3]))];
        }
      }
    }
  }
}

template <typename T, typename A>
void backward_rows(const PackShape& s, const T* grad, const T* feat, T* grad_feat, int64_t r0, int64_t r1) {
  const PackLayout& L = s.layout;
  const int64_t dim = s.dim, side = s.side;
  const int64_t num_maps = static_cast<int64_t>(L.map_segments.size());
  std::vector<A> acc(dim);
  for (int64_t row = r0; row < r1; ++row) {
    T* dst = grad_feat + row * dim;
    const Segment* sg = nullptr;
    if (num_maps > 0) {
      const Segment& cand = L.segments[L.map_segments[find_range(L.map_src_starts.data(), num_maps, row)]];
      if (row >= cand.src_start && row < cand.src_start + cand.repeat * src_rows_per_map(cand, side)) sg = &cand;
    }
    if (sg == nullptr) {  // a feature row no segment reads
      std::memset(static_cast<void*>(dst), 0, sizeof(T) * dim);
      continue;
    }
    const InputPlace p = input_place(*sg, side, row);
    if (sg->resample == kCopy) {
      if (p.inside) {
        std::memcpy(dst, grad + output_row(*sg, p.rep, p.cy, p.cx) * dim, sizeof(T) * dim);
      } else {
        std::memset(static_cast<void*>(dst), 0, sizeof(T) * dim);
      }
    } else if (sg->resample == kMax2) {
      int64_t out_row, window[4];
      int k;
      if (!max_window(*sg, p, &out_row, &k, window, side)) {
        std::memset(static_cast<void*>(dst), 0, sizeof(T) * dim);
        continue;
      }
      const T* g = grad + out_row * dim;
      const T *w0 = feat + window[0] * dim, *w1 = feat + window[1] * dim;
      const T *w2 = feat + window[2] * dim, *w3 = feat + window[3] * dim;
      for (int64_t d = 0; d < dim; ++d)
        dst[d] = argmax4<A>(A(w0[d]), A(w1[d]), A(w2[d]), A(w3[d])) == k ? g[d] : T(0);
    } else {  // bilinear, avg: weighted sum of the output rows it fed, in their order
      std::fill(acc.begin(), acc.end(), A(0));
      for_each_contribution<A>(*sg, p, [&](int64_t out_row, A w) {
        const T* g = grad + out_row * dim;
        for (int64_t d = 0; d < dim; ++d) acc[d] += w * A(g[d]);
      });
      for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<T>(acc[d]);
    }
  }
}

// Rows per parallel task: about 64 KiB of output each.
int64_t grain_rows(int64_t dim, int64_t elem) { return std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(1, dim * elem)); }

}  // namespace

at::Tensor pack_tokens_cpu(const at::Tensor& features_arg, const std::optional<at::Tensor>& newline_arg,
                           const at::Tensor& layout, int64_t num_rows, int64_t side) {
  const PackShape s = check_pack_tokens_args(features_arg, newline_arg, layout, num_rows, side);
  TORCH_CHECK_VALUE(features_arg.is_cpu(), "pack_tokens_cpu: tensors must be on the CPU");
  const at::Tensor features = features_arg.contiguous();
  const at::Tensor newline = newline_arg.has_value() ? newline_arg->contiguous() : at::Tensor();
  at::Tensor out = empty_cpu_output({num_rows, s.dim}, features.scalar_type());
  if (num_rows == 0 || s.dim == 0) return out;
  IL_DISPATCH_FLOAT(features.scalar_type(), "pack_tokens_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* feat = features.const_data_ptr<scalar_t>();
    const scalar_t* nl = newline.defined() ? newline.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, grain_rows(s.dim, sizeof(scalar_t)), [&](int64_t r0, int64_t r1) {
      forward_rows<scalar_t, A>(s, feat, nl, dst, r0, r1);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pack_tokens_backward_cpu(
    const at::Tensor& grad_arg, const std::optional<at::Tensor>& features_arg, const at::Tensor& layout,
    int64_t num_features, int64_t side, bool newline_grad) {
  const PackShape s = check_pack_tokens_backward_args(grad_arg, features_arg, layout, num_features, side);
  TORCH_CHECK_VALUE(grad_arg.is_cpu(), "pack_tokens_backward_cpu: tensors must be on the CPU");
  const at::Tensor grad = grad_arg.contiguous();
  const at::Tensor features = features_arg.has_value() ? features_arg->contiguous() : at::Tensor();
  const int64_t src_rows = num_features * side * side, dim = s.dim;
  at::Tensor grad_features = at::empty({num_features, side * side, dim}, grad.options());
  at::Tensor grad_newline = at::empty({newline_grad ? dim : 0}, grad.options());
  IL_DISPATCH_FLOAT(grad.scalar_type(), "pack_tokens_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* feat = features.defined() ? features.const_data_ptr<scalar_t>() : nullptr;
    if (src_rows > 0 && dim > 0) {
      scalar_t* gf = grad_features.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, src_rows, grain_rows(dim, sizeof(scalar_t)), [&](int64_t r0, int64_t r1) {
        backward_rows<scalar_t, A>(s, g, feat, gf, r0, r1);
      });
    }
    if (newline_grad && dim > 0) {
      // The newline's gradient: its output rows summed in ascending order, per channel.
      scalar_t* gn = grad_newline.mutable_data_ptr<scalar_t>();
      const std::vector<int64_t>& rows = s.layout.newline_rows;
      at::parallel_for(0, dim, 256, [&](int64_t d0, int64_t d1) {
        std::vector<A> acc(d1 - d0, A(0));
        for (const int64_t r : rows)
          for (int64_t d = d0; d < d1; ++d) acc[d - d0] += A(g[r * dim + d]);
        for (int64_t d = d0; d < d1; ++d) gn[d] = static_cast<scalar_t>(acc[d - d0]);
      });
    }
  });
  return {grad_features, grad_newline};
}

}  // namespace interleave
