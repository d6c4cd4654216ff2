// Torch glue of the patch_embed CUDA kernels: checks, the weight in the kernels' K order, allocation
// and stream (ATen/cuda/CUDAContext.h is avoided: it needs cuBLAS/cuSPARSE headers that a minimal
// toolkit lacks). The kernels themselves live in patch_embed_kernels.cu (no torch headers).
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <ATen/ops/constant_pad_nd.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../ops/patch_embed.h"
#include "cublaslt_gemm.h"
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

// ---- operands derived from the weight, built once per weight version ------------------------
// The op is called with the same folded tensors (interleave.ops' fold cache) until the weights
// change, so what each GEMM path derives from them (cuBLAS and mma: the weight in K order, for
// cuBLAS with the bias columns; wgmma: fp16 panels) is kept in a few entries, most recently used
// last, so that several models do not evict each other. An entry holds its source tensors, so
// their storage cannot be reused by another weight while the entry lives; it matches by identity
// and version counter. Inference tensors (made under torch.inference_mode, as the fold is when the
// model runs there) have no version counter: they are matched by identity, which is what the fold
// cache needs (it replaces its folded tensor when the model's weight changes, it never modifies it
// in place). Under torch.compile the fold is a fresh tensor per call: a miss each time, a few small
// kernels, still no sync.
// Only operands of folded tensors registered by the fold cache are kept (patch_embed.h,
// patch_embed_register_folded): gradcheck perturbs a weight through `.data`, which keeps its version,
// and an entry keyed on a caller's own weight went stale there (the e857c2a H100 run's float64
// gradcheck of the pixel_values path).
int64_t tensor_version(const at::Tensor& t) { return t.is_inference() ? -2 : t._version(); }

constexpr size_t kRegisteredFolded = 16;  // the Python fold cache holds 8 (weight, bias) pairs
std::mutex registered_mu;
std::vector<at::Tensor> registered_folded;  // most recent last; holding them keeps their storage

bool is_registered_folded(const at::Tensor& t) {
  const std::lock_guard<std::mutex> lock(registered_mu);
  for (const at::Tensor& r : registered_folded)
    if (r.is_same(t)) return true;
  return false;
}

template <typename Entry, size_t kEntries = 4>
class DerivedOperandCache {
 public:
  // The entry for which match(entry) holds, else make()'s, which is then kept; with !cacheable,
  // make()'s without looking or keeping.
  template <typename Match, typename Make>
  Entry get(bool cacheable, Match match, Make make) {
    if (!cacheable) return make();
    const std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (match(entries_[i])) {
        std::rotate(entries_.begin() + static_cast<std::ptrdiff_t>(i),
                    entries_.begin() + static_cast<std::ptrdiff_t>(i) + 1, entries_.end());
        return entries_.back();
      }
    }
    if (entries_.size() == kEntries) entries_.erase(entries_.begin());
    entries_.push_back(make());
    return entries_.back();
  }

 private:
  std::mutex mu_;
  std::vector<Entry> entries_;
};

// A (folded) weight in the im2col's K order, [C, lda], for the cuBLAS and mma paths. Rebuilding it
// per call was ~0.04 ms of small ATen kernels (the c0e6c19 H100 profile of the N=64 bf16 case:
// 15 small copy and float64 kernels, ~0.035 ms, around a 0.145 ms GEMM).
struct OrderedWeight {
  at::Tensor weight, bias;
  int64_t weight_version = -1, bias_version = -1;
  at::ScalarType operand;
  bool unscale = false, channels_last = false;
  int64_t lda = 0, bias_columns = 0;
  at::Tensor w;  // [C, lda]
};

// unscale (fp16 operands): the operand is W * 255 and the caller applies 1/255 to the accumulator
// (see patch_embed_cuda). With bias_columns > 0 (cuBLAS) columns k.. hold bias / alpha split into
// that many parts of the operand type (see patch_embed_cublas).
at::Tensor ordered_weight(const at::Tensor& weight, const at::Tensor& bias, bool channels_last,
                          at::ScalarType operand, bool unscale, int64_t k, int64_t lda, int64_t bias_columns) {
  static DerivedOperandCache<OrderedWeight> cache;
  const int64_t wv = tensor_version(weight), bv = bias_columns > 0 ? tensor_version(bias) : -1;
  const auto match = [&](const OrderedWeight& e) {
    return e.weight.is_same(weight) && e.weight_version == wv && e.operand == operand && e.unscale == unscale &&
           e.channels_last == channels_last && e.lda == lda && e.bias_columns == bias_columns &&
           (bias_columns == 0 || (e.bias.is_same(bias) && e.bias_version == bv));
  };
  const auto make = [&] {
    const at::Tensor scaled = unscale ? weight.mul(255.0) : weight;
    at::Tensor w = patch_embed_weight_order(scaled, channels_last, operand, lda);  // zeros past K
    if (bias_columns > 0) {
      at::Tensor rest = bias.to(at::kDouble).div(unscale ? 1.0 / 255.0 : 1.0);  // bias / alpha
      for (int64_t i = 0; i < bias_columns; ++i) {
        const at::Tensor part = rest.to(operand);
        w.select(1, k + i).copy_(part);
        rest = rest.sub(part.to(at::kDouble));
      }
    }
    return OrderedWeight{weight, bias_columns > 0 ? bias : at::Tensor(), wv, bv, operand, unscale,
                         channels_last, lda, bias_columns, w};
  };
  const bool cacheable = is_registered_folded(weight) && (bias_columns == 0 || is_registered_folded(bias));
  return cache.get(cacheable, match, make).w;
}

// The cuBLAS path for bf16/fp16 outputs: out = alpha * (A W^T) + pos_embed, with A the im2col of
// the pixels written by our kernel (uint8 values are exact in bf16/fp16) and the bias carried by
// kBiasColumns extra columns of A that are 1, against the bias split into that many bf16/fp16 parts
// in W (so it enters the fp32 accumulator with ~24 bits, not rounded to 8). The position embedding
// enters as the GEMM's C operand (beta = 1): one rounding to bf16 at the end, where transformers'
// conv + position embedding rounds twice. Chunks of whole images keep A (M x lda operand elements)
// around 64 MiB.
//   * lt (cuda_gemm("cublas"), and auto's choice below kPatchEmbedLtMaxRows tokens): one cuBLASLt
//     GEMM per chunk, batched over its images, C = pos_embed [T, C] shared by every batch (stride
//     0): the output is written once.
//   * otherwise (cuda_gemm("cublas_copy"), or where cuBLASLt refuses the problem or is missing):
//     pos_embed is first copied into the chunk's output rows and addmm_ adds onto it. At N=64 on the
//     H100 (e857c2a profile) the copy was 0.034 ms and the GEMM's read of it another 107 MB.
constexpr int kBiasColumns = 3;

at::Tensor patch_embed_cublas(const PatchEmbedShape& s, const at::Tensor& tiles, const at::Tensor& weight,
                              const at::Tensor& bias, const at::Tensor& pos_embed, at::ScalarType operand,
                              bool unscale, cuda::GemmType gemm, bool lt, cudaStream_t stream) {
  const double alpha = unscale ? 1.0 / 255.0 : 1.0;
  const int64_t K = patch_k(s.geometry), lda = (K + kBiasColumns + 7) / 8 * 8, T = s.geometry.tokens;
  const int64_t images = std::max<int64_t>(1, (int64_t{64} << 20) / std::max<int64_t>(1, T * lda * 2));
  TORCH_CHECK_VALUE(T * (lda / 8) < (int64_t{1} << 31) / std::max<int64_t>(1, std::min(images, s.batch)),
                    "patch_embed_cuda: ", T, " tokens per image of ", lda, " columns are too many for one im2col launch");
  // alpha scales the whole product, the bias columns included.
  const at::Tensor w = ordered_weight(weight, bias, s.channels_last, operand, unscale, K, lda, kBiasColumns);
  at::Tensor out = at::empty({s.batch, T, s.dim}, tiles.options().dtype(s.out_dtype));
  const at::Tensor pos = pos_embed.to(s.out_dtype).contiguous();
  at::Tensor out2d = out.view({s.batch * T, s.dim});
  at::Tensor a = at::empty({std::min(images, s.batch) * T, lda}, tiles.options().dtype(operand));
  const at::Tensor wt = w.t();  // [lda, C], a transposed view: cuBLAS reads it as is
  at::Tensor workspace;
  if (lt) workspace = at::empty({static_cast<int64_t>(cuda::kLtWorkspaceBytes)}, tiles.options().dtype(at::kByte));
  const int64_t row_bytes = s.dim * pos.element_size();
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  for (int64_t n0 = 0; n0 < s.batch; n0 += images) {
    const int64_t count = std::min(images, s.batch - n0), rows = count * T;
    at::Tensor a_rows = a.narrow(0, 0, rows);
    cuda::launch_patch_im2col(tiles.const_data_ptr(), to_pixel_type(tiles.scalar_type()), s.geometry, n0 * T,
                              rows, K, lda, kBiasColumns, gemm, patch_embed_im2col_staged(),
                              a_rows.mutable_data_ptr(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor out_rows = out2d.narrow(0, n0 * T, rows);
    if (lt) {
      cuda::LtGemmBroadcastC g;
      g.type = gemm == cuda::GemmType::kBFloat16 ? cuda::LtType::kBFloat16 : cuda::LtType::kFloat16;
      g.rows = T;
      g.cols = s.dim;
      g.k = lda;
      g.batch = static_cast<int>(count);
      g.a = a_rows.const_data_ptr();
      g.lda = lda;
      g.stride_a = T * lda;
      g.w = w.const_data_ptr();
      g.ldw = lda;
      g.c = pos.const_data_ptr();
      g.ldc = s.dim;
      g.d = out_rows.mutable_data_ptr();
      g.ldd = s.dim;
      g.stride_d = T * s.dim;
      g.alpha = static_cast<float>(alpha);
      g.beta = 1.f;
      g.tune = patch_embed_cublaslt_tune();
      if (cuda::lt_gemm_broadcast_c(g, tiles.get_device(), workspace.mutable_data_ptr(),
                                    cuda::kLtWorkspaceBytes, stream))
        continue;
    }
    if (row_bytes % 16 == 0 && aligned(pos.const_data_ptr()) && aligned(out_rows.const_data_ptr()) &&
        (rows + 7) / 8 < (int64_t{1} << 31)) {
      // The chunk starts at an image border: its row r takes pos row r % T.
      cuda::launch_broadcast_rows(pos.const_data_ptr(), T, row_bytes, rows, out_rows.mutable_data_ptr(), stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      out_rows.view({count, T, s.dim}).copy_(pos.unsqueeze(0).expand({count, T, s.dim}));
    }
    out_rows.addmm_(a_rows, wt, /*beta=*/1, /*alpha=*/alpha);
  }
  return out;
}

// ---- the wgmma kernel (patch_embed_wgmma.cu) ---------------------------------------------------
// Its weight: W' * s in fp16, s a power of two chosen on the device so that the largest |W' * s|
// lies in (2^14, 2^15] (fp16 cannot overflow, and every weight above 2^-29 of the largest keeps
// fp16's 11 significant bits), alpha = 1 / s applied to the fp32 accumulator (the kernel reads it from device
// memory: no host sync), laid out in panels of 128 channels in wgmma's core-matrix order
// (patch_embed_kernels.h). Built once per weight version (DerivedOperandCache above).
struct WgmmaPanels {
  at::Tensor key;
  int64_t version = -1;
  int k_steps = 0;
  at::Tensor panels;  // fp16 [panels, k_steps * 16 * 128]
  at::Tensor alpha;   // float32 [1]: 1 / s
};

WgmmaPanels wgmma_panels(const at::Tensor& weight, const PatchEmbedShape& s, int k_steps) {
  static DerivedOperandCache<WgmmaPanels> cache;
  const int64_t version = tensor_version(weight);
  const auto match = [&](const WgmmaPanels& e) {
    return e.key.is_same(weight) && e.version == version && e.k_steps == k_steps;
  };
  const auto make = [&] {
    const at::Tensor w = weight.to(at::kFloat);
    // s = 2^floor(log2(2^15 / max|W'|)): exact to apply, exact to undo.
    const at::Tensor scale = w.abs().amax().clamp_min(1e-30).reciprocal().mul(32768.0).log2().floor().exp2();
    return WgmmaPanels{weight, version, k_steps,
                       patch_embed_wgmma_layout(w.mul(scale), s.channels_last, 1.0, k_steps, cuda::kWgmmaN),
                       scale.reciprocal().reshape({1})};
  };
  return cache.get(is_registered_folded(weight), match, make);
}

// The wgmma kernel's output, or nullopt where it does not apply (the caller takes its default path).
std::optional<at::Tensor> patch_embed_wgmma(const PatchEmbedShape& s, const at::Tensor& tiles, const at::Tensor& weight,
                                            const at::Tensor& bias, const at::Tensor& pos_embed, bool staged,
                                            cudaStream_t stream) {
  const int64_t M = s.rows(), K = patch_k(s.geometry);
  const int64_t k_steps = (K + 15) / 16;
  const auto even = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 2 == 0; };
  // Every 16-bit pixel-pair load must be aligned: even patch rows, even image rows, an even base.
  if (!s.channels_last || (s.patch * s.channels) % 2 != 0 || (s.width * s.channels) % 2 != 0 ||
      !even(tiles.const_data_ptr()) || k_steps < 1 || k_steps > cuda::kWgmmaMaxSteps || s.dim % 4 != 0 ||
      M >= (int64_t{1} << 31) || s.dim >= (int64_t{1} << 31) ||
      (s.out_dtype != at::kBFloat16 && s.out_dtype != at::kHalf) ||
      !cuda::patch_embed_wgmma_compiled(tiles.get_device()))
    return std::nullopt;
  const WgmmaPanels panels = wgmma_panels(weight, s, static_cast<int>(k_steps));
  const int64_t padded_dim = panels.panels.size(0) * cuda::kWgmmaN;
  const at::Tensor b = at::constant_pad_nd(bias.to(at::kFloat), {0, padded_dim - s.dim}, 0).contiguous();
  at::Tensor pos = pos_embed.to(s.out_dtype).contiguous();
  if (reinterpret_cast<uintptr_t>(pos.const_data_ptr()) % 8 != 0) pos = pos.clone();  // 8-byte loads
  at::Tensor out = at::empty({s.batch, s.geometry.tokens, s.dim}, tiles.options().dtype(s.out_dtype));
  cuda::PatchEmbedWgmmaArgs args{};
  args.pixels = static_cast<const uint8_t*>(tiles.const_data_ptr());
  args.geometry = s.geometry;
  args.rows = static_cast<int32_t>(M);
  args.k = static_cast<int32_t>(K);
  args.k_steps = static_cast<int32_t>(k_steps);
  args.dim = static_cast<int32_t>(s.dim);
  args.panels = static_cast<const uint4*>(panels.panels.const_data_ptr());
  args.alpha = panels.alpha.const_data_ptr<float>();
  args.bias = b.const_data_ptr<float>();
  args.pos_embed = pos.const_data_ptr();
  args.out = out.mutable_data_ptr();
  args.out_type = to_out_type(s.out_dtype);
  cuda::launch_patch_embed_wgmma(args, staged, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

bool patch_embed_wgmma_available(int device) { return cuda::patch_embed_wgmma_compiled(device); }

std::string patch_embed_cublaslt_status() {
  std::string why;
  return cuda::lt_available(&why) ? std::string() : why;
}

void patch_embed_register_folded(const at::Tensor& weight, const at::Tensor& bias) {
  const std::lock_guard<std::mutex> lock(registered_mu);
  for (const at::Tensor* t : {&weight, &bias}) {
    if (registered_folded.size() == kRegisteredFolded) registered_folded.erase(registered_folded.begin());
    registered_folded.push_back(*t);
  }
}

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
  const double alpha = unscale ? 1.0 / 255.0 : 1.0;
  const PatchEmbedGemm mode = patch_embed_gemm_mode();
  const bool tensor_cores = gemm == cuda::GemmType::kBFloat16 || gemm == cuda::GemmType::kFloat16;
  // kAuto: the cuBLAS path at every size, the position embedding in cuBLASLt's C operand below
  // kPatchEmbedLtMaxRows tokens and copied first from there. The 12ae393 H100 run (bf16, SigLIP
  // tiles): N=1 cuBLASLt 0.014 ms, copy + addmm 0.019, the wgmma kernel 0.029 (auto's choice until
  // then), the mma kernel 0.075; N=16 0.073 / 0.068 / 0.119; N=64 0.243 / 0.238 / 0.418.
  if (tensor_cores && M > 0 && s.dim > 0 &&
      (mode == PatchEmbedGemm::kWgmma || mode == PatchEmbedGemm::kWgmmaStaged)) {
    if (std::optional<at::Tensor> out = patch_embed_wgmma(s, tiles, weight, bias, pos_embed,
                                                          mode == PatchEmbedGemm::kWgmmaStaged, stream))
      return *out;
  }
  if (tensor_cores && M > 0 && s.dim > 0 && mode != PatchEmbedGemm::kMma) {
    TORCH_CHECK_VALUE(M < (int64_t{1} << 31), "patch_embed_cuda: at most 2^31 - 1 tokens per call, got ", M);
    const bool lt = mode == PatchEmbedGemm::kCublas ||
                    (mode != PatchEmbedGemm::kCublasCopy && M < kPatchEmbedLtMaxRows);
    return patch_embed_cublas(s, tiles, weight, bias, pos_embed, operand, unscale, gemm, lt, stream);
  }
  const at::Tensor w = ordered_weight(weight, bias, s.channels_last, operand, unscale, K, Kp, 0);  // [C, Kp]
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
  args.alpha = static_cast<float>(alpha);
  args.bias = b.const_data_ptr();
  args.pos_embed = pos.const_data_ptr();
  args.out = out.mutable_data_ptr();
  args.out_type = to_out_type(s.out_dtype);
  cuda::launch_patch_embed(args, gemm, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace interleave
