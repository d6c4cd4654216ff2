// Torch glue of the merge_tokens CUDA kernels: checks, allocation, stream, and the one host sync of
// the default path (ATen/cuda/CUDAContext.h is avoided: it needs cuBLAS/cuSPARSE headers that a
// minimal toolkit lacks). The kernels themselves live in merge_tokens_kernels.cu (no torch headers).
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "../ops/merge_tokens.h"
#include "merge_tokens_kernels.h"
#include "state_pool.h"
#include "torch_dtype.h"

namespace interleave {
namespace {

// The look-back states (cuda::MergeLookback, a few KiB each, zeroed when made; every launch leaves
// its state zeroed for the next): a StatePool per device (csrc/cuda/state_pool.h says which state a
// launch gets and why a state is never shared by two launches in flight). At most kMaxStates per
// device, never freed. Making one is a cudaMalloc, which may synchronize the device: a look-back call
// that needs a new state (the first on a stream, while the others are busy) is not sync-free.
struct CudaStateBackend {
  using Stream = cudaStream_t;
  using Event = cudaEvent_t;
  void* allocate(cudaStream_t stream) {
    void* p = nullptr;
    C10_CUDA_CHECK(cudaMalloc(&p, sizeof(cuda::MergeLookback)));
    const cudaError_t err = cudaMemsetAsync(p, 0, sizeof(cuda::MergeLookback), stream);
    if (err != cudaSuccess) {
      (void)cudaFree(p);
      C10_CUDA_CHECK(err);
    }
    return p;
  }
  cudaEvent_t make_event() {
    cudaEvent_t e = nullptr;
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  bool finished(cudaEvent_t e) {
    const cudaError_t err = cudaEventQuery(e);
    if (err == cudaSuccess) return true;
    (void)cudaGetLastError();  // cudaErrorNotReady (or an error: then not reusable either)
    return false;
  }
  void wait(cudaStream_t stream, cudaEvent_t e) { C10_CUDA_CHECK(cudaStreamWaitEvent(stream, e, 0)); }
  bool record(cudaEvent_t e, cudaStream_t stream) {
    if (cudaEventRecord(e, stream) == cudaSuccess) return true;
    (void)cudaGetLastError();
    return false;
  }
};

using LookbackLease = ScopedLease<CudaStateBackend>;

// The pool of `device`, or nullptr while the stream is being captured into a CUDA graph (no
// allocation or event then; a graph replayed alongside eager launches would share a state): the
// caller takes the count kernel instead.
StatePool<CudaStateBackend>* lookback_pool(int device, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
    (void)cudaGetLastError();  // e.g. the legacy stream while another stream captures: treat as capturing
    return nullptr;
  }
  if (capture != cudaStreamCaptureStatusNone) return nullptr;
  static std::mutex mu;
  static std::map<int, std::unique_ptr<StatePool<CudaStateBackend>>> pools;
  const std::lock_guard<std::mutex> lock(mu);
  auto& pool = pools[device];
  if (!pool) pool = std::make_unique<StatePool<CudaStateBackend>>();
  return pool.get();
}

// Runs the counting pass; chunk_info stays on the device. self_count: no counting pass, the
// forward kernel counts for itself (chunk_info stays undefined, pos.chunk_info null), by the
// look-back where `lookback` is given.
cuda::MergePositions count_positions(const at::Tensor& ids, const MergeShape& s,
                                     at::Tensor& chunk_info, cudaStream_t stream, bool self_count = false,
                                     cuda::MergeLookback* lookback = nullptr) {
  cuda::MergePositions pos{};
  pos.ids = ids.const_data_ptr<int64_t>();
  pos.n = s.batch * s.length;
  pos.placeholders = s.placeholders;
  pos.num_embeddings = s.num_embeddings;
  pos.num_visual = s.num_visual;
  pos.dim = s.dim;
  pos.chunk = std::max<int64_t>((pos.n + kMaxChunks - 1) / kMaxChunks, merge_cuda_min_chunk());
  pos.num_chunks = merge_num_chunks(pos.n, pos.chunk);
  pos.rotate_count = merge_cuda_count_rotation();
  pos.lookback = self_count ? lookback : nullptr;
  pos.lookback_inclusive = true;
  pos.flat_loads = static_cast<int>(merge_cuda_flat_loads());
  if (self_count) return pos;
  chunk_info = at::empty({2 * std::max<int64_t>(pos.num_chunks, 1)}, ids.options());
  pos.chunk_info = chunk_info.mutable_data_ptr<int64_t>();
  cuda::launch_merge_count(pos, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return pos;
}

}  // namespace

at::Tensor merge_tokens_cuda(const at::Tensor& input_ids_arg, const at::Tensor& embed_weight_arg,
                             const at::Tensor& visual_arg, at::IntArrayRef image_token_ids,
                             std::optional<int64_t> num_placeholders, int64_t /*padding_idx*/) {
  const MergeShape s = check_merge_tokens_args(input_ids_arg, embed_weight_arg, visual_arg,
                                               image_token_ids, num_placeholders);
  TORCH_CHECK_VALUE(input_ids_arg.is_cuda(), "merge_tokens_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(input_ids_arg.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor ids = input_ids_arg.contiguous();
  const at::Tensor weight = embed_weight_arg.contiguous();
  const at::Tensor visual = visual_arg.contiguous();

  at::Tensor chunk_info;
  const bool sync_free = num_placeholders.has_value();
  // The sync-free path is one launch: the look-back at any length (where a state is at hand), else
  // the self count up to merge_cuda_self_count_max() positions; otherwise the count kernel first.
  // The lease (if any) records its state's event when this function returns, after the launch.
  const LookbackLease lease(sync_free && merge_cuda_lookback() ? lookback_pool(ids.get_device(), stream) : nullptr,
                            stream);
  cuda::MergeLookback* lookback = static_cast<cuda::MergeLookback*>(lease.state());
  const bool one_launch = lookback != nullptr || (sync_free && s.batch * s.length <= merge_cuda_self_count_max());
  const cuda::MergePositions pos = count_positions(ids, s, chunk_info, stream, one_launch, lookback);
  int64_t total = 0, first_bad = -1;  // what the host knows: nothing to count when n == 0
  if (!sync_free && pos.num_chunks > 0) {
    // The default path's one host sync: read the per-chunk counts and bad-id slots (16 bytes per
    // chunk, at most 1024 chunks) and raise before the copy kernel runs.
    const at::Tensor info = chunk_info.cpu();
    const int64_t* h = info.const_data_ptr<int64_t>();
    for (int64_t c = 0; c < pos.num_chunks; ++c) {
      total += h[c];
      if (first_bad < 0) first_bad = h[pos.num_chunks + c];
    }
  }
  // Sync-free with chunks: the forward kernel checks on the device (device_assert) instead.
  if ((!sync_free || pos.num_chunks == 0) && (first_bad >= 0 || total != s.num_visual))
    raise_merge_data_error(ids, total, s.num_visual, first_bad, s.num_embeddings);
  at::Tensor out = at::empty({s.batch, s.length, s.dim}, weight.options());
  if (s.dim == 0) return out;
  cuda::launch_merge_forward(pos, weight.const_data_ptr(), to_kernel_dtype(weight.scalar_type()),
                             visual.const_data_ptr(), to_kernel_dtype(visual.scalar_type()),
                             out.mutable_data_ptr(), /*device_assert=*/sync_free, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_tokens_backward_cuda(
    const at::Tensor& grad_output_arg, const at::Tensor& input_ids_arg,
    at::IntArrayRef image_token_ids, int64_t num_embeddings, int64_t num_visual,
    at::ScalarType visual_dtype, int64_t padding_idx, bool weight_grad, bool visual_grad) {
  const MergeShape s = check_merge_tokens_backward_args(grad_output_arg, input_ids_arg,
                                                        image_token_ids, num_embeddings,
                                                        num_visual, visual_dtype);
  TORCH_CHECK_VALUE(input_ids_arg.is_cuda(), "merge_tokens_backward_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(input_ids_arg.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor grad = grad_output_arg.contiguous();
  const at::Tensor ids = input_ids_arg.contiguous();
  const int64_t n = s.batch * s.length;

  at::Tensor grad_weight = weight_grad ? at::zeros({num_embeddings, s.dim}, grad.options())
                                       : at::empty({0}, grad.options());
  // Rows of grad_visual that no placeholder reaches (only if the ids changed since the forward)
  // stay zero rather than uninitialized.
  at::Tensor grad_visual = visual_grad ? at::zeros({num_visual, s.dim}, grad.options().dtype(visual_dtype))
                                       : at::empty({0}, grad.options().dtype(visual_dtype));
  if (n == 0 || s.dim == 0) return {grad_weight, grad_visual};

  at::Tensor chunk_info;
  const cuda::MergePositions pos = count_positions(ids, s, chunk_info, stream);
  if (visual_grad) {
    cuda::launch_merge_backward_visual(pos, grad.const_data_ptr(), to_kernel_dtype(grad.scalar_type()),
                                       grad_visual.mutable_data_ptr(), to_kernel_dtype(visual_dtype),
                                       stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (weight_grad) {
    at::Tensor keys = at::empty({n}, ids.options());
    cuda::launch_merge_weight_keys(pos, padding_idx, keys.mutable_data_ptr<int64_t>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // A stable sort keeps each row's positions ascending: the sum order is fixed (deterministic)
    // and equal to the order of ATen's CPU embedding backward.
    auto [sorted_keys, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    cuda::launch_merge_weight_grad(sorted_keys.const_data_ptr<int64_t>(),
                                   order.const_data_ptr<int64_t>(), n, num_embeddings, s.dim,
                                   grad.const_data_ptr(), to_kernel_dtype(grad.scalar_type()),
                                   grad_weight.mutable_data_ptr(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_weight, grad_visual};
}

}  // namespace interleave
