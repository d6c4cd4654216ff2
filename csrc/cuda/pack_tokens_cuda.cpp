// Torch glue of the pack_tokens CUDA kernels: checks on the host, the layout copied to the device
// through pinned memory (asynchronous, no host sync: the caching host allocator keeps the pinned
// block alive until the copy has run), allocation, stream. The kernels are in
// pack_tokens_kernels.cu (no torch headers).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>

#include "../ops/pack_tokens.h"
#include "pack_tokens_kernels.h"
#include "torch_dtype.h"

namespace interleave {
namespace {

// One int64 buffer on the device: segments, out_starts, map segments, their src_starts, newline
// rows. `storage` keeps it alive for the launches (the caching allocator orders its reuse on the
// stream).
cuda::PackDeviceLayout upload_layout(const PackShape& s, const at::Device& device, at::Tensor& storage) {
  const PackLayout& L = s.layout;
  const int64_t S = static_cast<int64_t>(L.segments.size());
  const int64_t M = static_cast<int64_t>(L.map_segments.size());
  const int64_t NL = static_cast<int64_t>(L.newline_rows.size());
  const int64_t total = S * pack::kNumFields + S + 2 * M + NL;
  at::Tensor host = at::empty({std::max<int64_t>(total, 1)},
                              at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < S; ++i) {
    const pack::Segment& g = L.segments[i];
    int64_t* f = h + i * pack::kNumFields;
    f[pack::kKind] = g.kind;
    f[pack::kOutStart] = g.out_start;
    f[pack::kOutRows] = g.out_rows;
    f[pack::kSrcStart] = g.src_start;
    f[pack::kRepeat] = g.repeat;
    f[pack::kTilesR] = g.tiles_r;
    f[pack::kTilesC] = g.tiles_c;
    f[pack::kCropTop] = g.crop_top;
    f[pack::kCropLeft] = g.crop_left;
    f[pack::kCropH] = g.crop_h;
    f[pack::kCropW] = g.crop_w;
    f[pack::kResample] = g.resample;
    f[pack::kOutH] = g.out_h;
    f[pack::kOutW] = g.out_w;
    f[pack::kNewlineCol] = g.newline_col;
    f[pack::kReserved] = 0;
  }
  int64_t* p = h + S * pack::kNumFields;
  if (S) std::memcpy(p, L.out_starts.data(), sizeof(int64_t) * S);
  if (M) std::memcpy(p + S, L.map_segments.data(), sizeof(int64_t) * M);
  if (M) std::memcpy(p + S + M, L.map_src_starts.data(), sizeof(int64_t) * M);
  if (NL) std::memcpy(p + S + 2 * M, L.newline_rows.data(), sizeof(int64_t) * NL);
  storage = host.to(device, /*non_blocking=*/true);
  const int64_t* d = storage.const_data_ptr<int64_t>();
  cuda::PackDeviceLayout out{};
  out.segments = d;
  out.out_starts = d + S * pack::kNumFields;
  out.map_segments = out.out_starts + S;
  out.map_src_starts = out.map_segments + M;
  out.newline_rows = out.map_src_starts + M;
  out.num_segments = S;
  out.num_maps = M;
  out.num_newline_rows = NL;
  out.side = s.side;
  out.dim = s.dim;
  out.num_rows = L.num_rows;
  out.src_rows = s.num_features * s.side * s.side;
  return out;
}

}  // namespace

at::Tensor pack_tokens_cuda(const at::Tensor& features_arg, const std::optional<at::Tensor>& newline_arg,
                            const at::Tensor& layout, int64_t num_rows, int64_t side) {
  const PackShape s = check_pack_tokens_args(features_arg, newline_arg, layout, num_rows, side);
  TORCH_CHECK_VALUE(features_arg.is_cuda(), "pack_tokens_cuda: features must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(features_arg.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor features = features_arg.contiguous();
  const at::Tensor newline = newline_arg.has_value() ? newline_arg->contiguous() : at::Tensor();
  at::Tensor out = at::empty({num_rows, s.dim}, features.options());
  if (num_rows == 0 || s.dim == 0) return out;
  at::Tensor storage;
  cuda::PackDeviceLayout L = upload_layout(s, features.device(), storage);
  L.max_blocks = pack_cuda_max_blocks();
  cuda::launch_pack_forward(L, features.const_data_ptr(), newline.defined() ? newline.const_data_ptr() : nullptr,
                            out.mutable_data_ptr(), to_kernel_dtype(features.scalar_type()), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> pack_tokens_backward_cuda(
    const at::Tensor& grad_arg, const std::optional<at::Tensor>& features_arg, const at::Tensor& layout,
    int64_t num_features, int64_t side, bool newline_grad) {
  const PackShape s = check_pack_tokens_backward_args(grad_arg, features_arg, layout, num_features, side);
  TORCH_CHECK_VALUE(grad_arg.is_cuda(), "pack_tokens_backward_cuda: grad must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(grad_arg.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor grad = grad_arg.contiguous();
  const at::Tensor features = features_arg.has_value() ? features_arg->contiguous() : at::Tensor();
  at::Tensor grad_features = at::empty({num_features, side * side, s.dim}, grad.options());
  at::Tensor grad_newline = at::empty({newline_grad ? s.dim : 0}, grad.options());
  if (s.dim == 0) return {grad_features, grad_newline};
  at::Tensor storage;
  cuda::PackDeviceLayout L = upload_layout(s, grad.device(), storage);
  L.max_blocks = pack_cuda_max_blocks();
  const cuda::DType dtype = to_kernel_dtype(grad.scalar_type());
  cuda::launch_pack_backward(L, grad.const_data_ptr(), features.defined() ? features.const_data_ptr() : nullptr,
                             grad_features.mutable_data_ptr(), dtype, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (newline_grad) {
    const at::ScalarType acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor partials = at::empty({std::max<int64_t>(cuda::newline_parts(L.num_newline_rows), 1), s.dim},
                                    grad.options().dtype(acc));
    cuda::launch_pack_newline_grad(L, grad.const_data_ptr(), partials.mutable_data_ptr(),
                                   grad_newline.mutable_data_ptr(), dtype, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_features, grad_newline};
}

}  // namespace interleave
