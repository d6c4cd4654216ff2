// Argument checks of patch_embed, run before any kernel so that bad input never reaches one.
#include "patch_embed.h"

#include <ATen/ops/constant_pad_nd.h>
#include <c10/util/Exception.h>

#include "../common/env.h"

namespace interleave {
namespace {

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

}  // namespace

PatchEmbedShape check_patch_embed_args(const at::Tensor& tiles, const at::Tensor& weight,
                                       const at::Tensor& bias, const at::Tensor& pos_embed,
                                       std::optional<at::ScalarType> out_dtype) {
  TORCH_CHECK_TYPE(tiles.scalar_type() == at::kByte || supported_float(tiles.scalar_type()),
                   "patch_embed: tiles must be uint8 [N, S, S, 3] or float [N, 3, S, S], got ",
                   tiles.scalar_type());
  TORCH_CHECK_VALUE(tiles.dim() == 4, "patch_embed: tiles must be 4-D (uint8 [N, S, S, 3] or float "
                    "[N, 3, S, S]), got shape ", tiles.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.size(2) >= 1,
                    "patch_embed: weight must be the conv weight [C, Cin, p, p], got shape ",
                    weight.sizes());
  TORCH_CHECK_TYPE(supported_float(weight.scalar_type()) && supported_float(bias.scalar_type()) &&
                       supported_float(pos_embed.scalar_type()),
                   "patch_embed: weight, bias and pos_embed must be float32/float64/bfloat16/float16, "
                   "got ", weight.scalar_type(), ", ", bias.scalar_type(), ", ", pos_embed.scalar_type());
  PatchEmbedShape s;
  s.channels_last = tiles.scalar_type() == at::kByte;
  s.dim = weight.size(0);
  s.channels = weight.size(1);
  s.patch = weight.size(2);
  s.batch = tiles.size(0);
  if (s.channels_last) {
    TORCH_CHECK_VALUE(tiles.size(3) == s.channels, "patch_embed: uint8 tiles must be [N, S, S, ",
                      s.channels, "] (channels last, as anyres_tiles writes them) for a weight with ",
                      s.channels, " input channels, got shape ", tiles.sizes());
    s.height = tiles.size(1);
    s.width = tiles.size(2);
  } else {
    TORCH_CHECK_VALUE(tiles.size(1) == s.channels, "patch_embed: float pixel_values must be [N, ",
                      s.channels, ", S, S] (channels first, as HF processors return them) for a "
                      "weight with ", s.channels, " input channels, got shape ", tiles.sizes());
    s.height = tiles.size(2);
    s.width = tiles.size(3);
  }
  TORCH_CHECK_VALUE(s.height >= s.patch && s.width >= s.patch, "patch_embed: the image (",
                    s.height, "x", s.width, ") is smaller than one patch (", s.patch, "x", s.patch, ")");
  TORCH_CHECK_VALUE(tiles.is_contiguous(), "patch_embed: tiles must be contiguous (got strides ",
                    tiles.strides(), " for shape ", tiles.sizes(), "); call .contiguous() first, "
                    "and pass uint8 tiles channels last [N, S, S, 3], not a permuted view");
  s.geometry = make_patch_geometry(s.channels_last, s.channels, s.height, s.width, s.patch);
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == s.dim, "patch_embed: bias must be [", s.dim,
                    "], got shape ", bias.sizes());
  TORCH_CHECK_VALUE(pos_embed.dim() == 2 && pos_embed.size(0) == s.geometry.tokens &&
                        pos_embed.size(1) == s.dim,
                    "patch_embed: pos_embed must be [T, C] = [", s.geometry.tokens, ", ", s.dim,
                    "] for ", s.height, "x", s.width, " pixels and patch ", s.patch, " (T = (",
                    s.height, " // ", s.patch, ") * (", s.width, " // ", s.patch, ")), got shape ",
                    pos_embed.sizes());
  TORCH_CHECK_VALUE(weight.device() == tiles.device() && bias.device() == tiles.device() &&
                        pos_embed.device() == tiles.device(),
                    "patch_embed: all tensors must be on one device, got tiles on ", tiles.device(),
                    ", weight on ", weight.device(), ", bias on ", bias.device(), ", pos_embed on ",
                    pos_embed.device());
  s.out_dtype = out_dtype.value_or(weight.scalar_type());
  TORCH_CHECK_TYPE(supported_float(s.out_dtype),
                   "patch_embed: out_dtype must be float32/float64/bfloat16/float16, got ", s.out_dtype);
  return s;
}

at::Tensor patch_embed_weight_order(const at::Tensor& weight, bool channels_last,
                                    at::ScalarType dtype, int64_t padded_k) {
  // [C, Cin, p, p] -> [C, p, p, Cin] for HWC pixels (k = (i * p + j) * Cin + ch); as is otherwise.
  const at::Tensor ordered = channels_last ? weight.permute({0, 2, 3, 1}) : weight;
  at::Tensor w = ordered.to(dtype).contiguous().reshape({weight.size(0), -1});
  const int64_t k = w.size(1);
  if (padded_k > k) w = at::constant_pad_nd(w, {0, padded_k - k}, 0);
  return w.contiguous();
}

at::Tensor patch_embed_wgmma_layout(const at::Tensor& weight, bool channels_last, double scale, int64_t k_steps,
                                    int64_t panel_width) {
  TORCH_CHECK_VALUE(panel_width > 0 && panel_width % 8 == 0 && k_steps > 0,
                    "patch_embed_wgmma_layout: panel_width must be a positive multiple of 8 and k_steps positive");
  const int64_t kp = k_steps * 16, dim = weight.size(0);
  TORCH_CHECK_VALUE(kp >= weight[0].numel(), "patch_embed_wgmma_layout: ", k_steps, " k-steps hold ", kp,
                    " columns, fewer than the weight's ", weight[0].numel());
  const int64_t panels = (dim + panel_width - 1) / panel_width;
  at::Tensor w = patch_embed_weight_order(weight.to(at::kFloat).mul(scale), channels_last, at::kHalf, kp);
  if (panels * panel_width > dim) w = at::constant_pad_nd(w, {0, 0, 0, panels * panel_width - dim}, 0);
  // [C, Kp] -> [panel, n / 8, k / 8, n % 8, k % 8]: 8x8 core matrices of 128 contiguous bytes, the
  // k-halves of a step 128 bytes apart, 8-channel groups Kp * 16 bytes apart.
  return w.view({panels, panel_width / 8, 8, kp / 8, 8}).permute({0, 1, 3, 2, 4}).contiguous().view({panels, -1});
}

PatchEmbedGemm& patch_embed_gemm_mode() {
  static PatchEmbedGemm mode = PatchEmbedGemm::kAuto;
  return mode;
}

bool& patch_embed_im2col_staged() {
  static bool staged = env_switch_on("INTERLEAVE_IM2COL_STAGED");
  return staged;
}

bool& patch_embed_cublaslt_tune() {
  static bool tune = env_opt_in("INTERLEAVE_CUBLASLT_TUNE");
  return tune;
}

}  // namespace interleave
