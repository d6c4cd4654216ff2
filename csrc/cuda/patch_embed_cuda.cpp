// Torch glue of the patch_embed CUDA kernels: checks, the weight in the kernels' K order, allocation
// and stream (ATen/cuda/CUDAContext.h is avoided: it needs cuBLAS/cuSPARSE headers that a minimal
// toolkit lacks). The kernels themselves live in patch_embed_kernels.cu (no torch headers).
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "../ops/patch_embed.h"
#include "patch_embed_kernels.h"

namespace interleave {
namespace {

cuda::PixelType to_pixel_type(at::ScalarType t) {
  switch (t) {
    case at::kByte: return cuda::PixelType::kUInt8;
    case at::kFloat: return cuda::PixelType::kFloat32;
    case at::kDouble: return cuda::PixelType::kFloat64;
    case at::kBFloat16: return cuda::PixelType::kBFloat16;
    case at::kHalf: return cuda::PixelType::kFloat16;
    default: TORCH_CHECK_TYPE(false, "patch_embed: unsupported pixel dtype ", t);
  }
}

cuda::OutType to_out_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::OutType::kFloat32;
    case at::kDouble: return cuda::OutType::kFloat64;
    case at::kBFloat16: return cuda::OutType::kBFloat16;
    case at::kHalf: return cuda::OutType::kFloat16;
    default: TORCH_CHECK_TYPE(false, "patch_embed: unsupported output dtype ", t);
  }
}

}  // namespace

at::Tensor patch_embed_cuda(const at::Tensor& tiles, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& pos_embed, std::optional<at::ScalarType> out_dtype) {
  const PatchEmbedShape s = check_patch_embed_args(tiles, weight, bias, pos_embed, out_dtype);
  TORCH_CHECK_VALUE(tiles.is_cuda(), "patch_embed_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(tiles.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t M = s.rows(), K = patch_k(s.geometry), Kp = patch_k_padded(K);
  TORCH_CHECK_VALUE((M + 127) / 128 <= 65535, "patch_embed_cuda: at most ", 65535 * 128,
                    " tokens per call, got ", M, "; split the batch");

  // The GEMM follows the output dtype: bf16/fp16 outputs use tensor cores with operands of that
  // type (uint8 pixels are exact in both; the weight is rounded once, as a bf16 model's already
  // is); float32/float64 outputs use the SIMT kernel in that precision.
  cuda::GemmType gemm;
  at::ScalarType operand, epilogue;
  switch (s.out_dtype) {
    case at::kBFloat16: gemm = cuda::GemmType::kBFloat16; operand = at::kBFloat16; epilogue = at::kFloat; break;
    case at::kHalf: gemm = cuda::GemmType::kFloat16; operand = at::kHalf; epilogue = at::kFloat; break;
    case at::kDouble: gemm = cuda::GemmType::kFloat64; operand = at::kDouble; epilogue = at::kDouble; break;
    default: gemm = cuda::GemmType::kFloat32; operand = at::kFloat; epilogue = at::kFloat; break;
  }
  // fp16 operands: the folded weight W / (255 * std) of a SigLIP-scale conv (|W| ~ 0.04) lies near
  // fp16's subnormal range (< 6.1e-5), where it loses bits. Keep the 1/255 out of the operand
  // (W * 255 = W / std) and apply it to the fp32 accumulator instead; exact in real arithmetic.
  const bool unscale = gemm == cuda::GemmType::kFloat16 && s.channels_last;
  const at::Tensor w = patch_embed_weight_order(unscale ? weight.mul(255.0) : weight, s.channels_last,
                                                operand, Kp);  // [C, Kp]
  const at::Tensor b = bias.to(epilogue).contiguous();
  const at::Tensor pos = pos_embed.to(epilogue).contiguous();
  at::Tensor out = at::empty({s.batch, s.geometry.tokens, s.dim}, tiles.options().dtype(s.out_dtype));
  if (M == 0 || s.dim == 0) return out;

  cuda::PatchEmbedArgs args{};
  args.pixels = tiles.const_data_ptr();
  args.pixel_type = to_pixel_type(tiles.scalar_type());
  args.geometry = s.geometry;
  args.rows = M;
  args.k = K;
  args.k_padded = Kp;
  args.dim = s.dim;
  args.weight = w.const_data_ptr();
  args.alpha = unscale ? static_cast<float>(1.0 / 255.0) : 1.0f;
  args.bias = b.const_data_ptr();
  args.pos_embed = pos.const_data_ptr();
  args.out = out.mutable_data_ptr();
  args.out_type = to_out_type(s.out_dtype);
  cuda::launch_patch_embed(args, gemm, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace interleave
