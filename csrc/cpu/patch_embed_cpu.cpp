// CPU kernel of patch_embed.
//
// Mirrors transformers' SiglipVisionEmbeddings.forward (conv 14x14/14 + flatten/transpose + position
// embedding) with the processor's normalization folded into the weights by the caller. The
// reference makes five passes over big tensors (uint8 -> float pixels, normalize, conv, transpose,
// add); here every block of R token rows is gathered from the pixels into a cache-sized im2col
// buffer [R, K] (K = 588 for SigLIP), the output rows are initialised with bias + pos_embed and the
// GEMM accumulates into them (addmm_: MKL sgemm with beta = 1), so the output is written once and
// the pixels are read once. Blocks run in parallel (at::parallel_for), each GEMM single-threaded
// (MKL runs sequentially inside a parallel region): here a single-threaded sgemm on such blocks
// ran at ~96 GFLOP/s, and the op reaches ~0.19 TFLOP/s on 2 threads (python -m interleave bench).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "../ops/patch_embed.h"
#include "output_alloc.h"

namespace interleave {
namespace {

constexpr int64_t kBlockRows = 256;  // A block: 256 x 588 floats = 588 KiB, about one L2

// A[r, :] = pixels of GEMM row r0 + r in the K order of `g`, converted to acc_t (exact for uint8),
// minus 128 when `centered` (uint8 only: -128..127 is exact in bf16).
template <typename acc_t, typename pix_t, bool centered = false>
void gather_rows(const pix_t* pixels, const PatchGeometry& g, int64_t r0, int64_t rows,
                 acc_t* A) {
  const int64_t k = patch_k(g);
  for (int64_t r = 0; r < rows; ++r) {
    const pix_t* patch = pixels + patch_row_offset(g, r0 + r);
    acc_t* dst = A + r * k;
    for (int64_t o = 0; o < g.outer; ++o) {
      for (int64_t mi = 0; mi < g.middle; ++mi) {
        const pix_t* src = patch + o * g.outer_stride + mi * g.middle_stride;
        if constexpr (centered) {
          for (int64_t x = 0; x < g.run; ++x) dst[x] = static_cast<acc_t>(static_cast<int>(src[x]) - 128);
        } else {
          for (int64_t x = 0; x < g.run; ++x) dst[x] = static_cast<acc_t>(src[x]);
        }
        dst += g.run;
      }
    }
  }
}

template <typename F>
void with_pixel_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kByte: f(uint8_t{}); break;
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK_TYPE(false, "patch_embed: unsupported pixel dtype ", t);
  }
}

template <typename F>
void with_out_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK_TYPE(false, "patch_embed: unsupported output dtype ", t);
  }
}

// Rows of about kBlockRows, as many blocks as a multiple of the thread count when there is enough
// work, so both threads get equal shares (N = 1: 729 rows -> 4 blocks of 183). Returns {R, blocks}.
std::pair<int64_t, int64_t> row_blocks(int64_t M) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t blocks = (M + kBlockRows - 1) / kBlockRows;
  if (M >= threads * 32) blocks = (blocks + threads - 1) / threads * threads;
  const int64_t R = (M + blocks - 1) / blocks;
  return {R, (M + R - 1) / R};
}

// bf16 output: A gathered as bf16 (exact for uint8), W' rounded once to bf16, Y = A W'^T by
// oneDNN's bf16 matmul (fp32 accumulation, rounded to bf16), then out = bf16(Y + bias' + pos) in
// float: the same two roundings as the reference's bf16 conv followed by its bf16 add. uint8
// pixels enter as u8 - 128, and bias' gains 128 * sum_k W'_bf16[c, k] (exact in real arithmetic):
// with all-positive raw bytes Y would carry a large common offset that bias' cancels, and rounding
// Y to bf16 at that magnitude cost ~3x the reference's error (measured: 1.3e-2 vs 3.6e-3).
at::Tensor patch_embed_cpu_bf16(const PatchEmbedShape& s, const at::Tensor& tiles,
                                const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& pos_embed) {
  const PatchGeometry g = s.geometry;
  const int64_t M = s.rows(), K = patch_k(g), C = s.dim, T = g.tokens;
  at::Tensor out = empty_cpu_output({s.batch, T, C}, at::kBFloat16);
  if (M == 0 || C == 0) return out;
  const at::Tensor wt = patch_embed_weight_order(weight, s.channels_last, at::kBFloat16, K).t();  // [K, C]
  at::Tensor bias_c = bias.to(at::kFloat);
  if (s.channels_last) bias_c = at::add(bias_c, wt.to(at::kFloat).sum(0), 128.0);
  const at::Tensor bias_pos = at::add(pos_embed.to(at::kFloat), bias_c.unsqueeze(0)).contiguous();
  const float* bp = bias_pos.const_data_ptr<float>();
  c10::BFloat16* dst = static_cast<c10::BFloat16*>(out.mutable_data_ptr());
  const auto [R, blocks] = row_blocks(M);
  with_pixel_type(tiles.scalar_type(), [&](auto pix_tag) {
    using pix_t = decltype(pix_tag);
    const pix_t* pixels = static_cast<const pix_t*>(tiles.const_data_ptr());
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see patch_embed_cpu
      std::unique_ptr<c10::BFloat16[]> A(new c10::BFloat16[R * K]);
      std::unique_ptr<c10::BFloat16[]> Y(new c10::BFloat16[R * C]);
      const auto options = wt.options();
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * R, rows = std::min(R, M - r0);
        if constexpr (std::is_same_v<pix_t, uint8_t>)
          gather_rows<c10::BFloat16, pix_t, true>(pixels, g, r0, rows, A.get());
        else
          gather_rows(pixels, g, r0, rows, A.get());
        at::Tensor y = at::from_blob(Y.get(), {rows, C}, options);
        at::mm_out(y, at::from_blob(A.get(), {rows, K}, options), wt);
        for (int64_t r = 0; r < rows; ++r) {
          const c10::BFloat16* yr = Y.get() + r * C;
          const float* br = bp + ((r0 + r) % T) * C;
          c10::BFloat16* o = dst + (r0 + r) * C;
          for (int64_t c = 0; c < C; ++c) o[c] = c10::BFloat16(static_cast<float>(yr[c]) + br[c]);
        }
      }
    });
  });
  return out;
}

}  // namespace

at::Tensor patch_embed_cpu(const at::Tensor& tiles_arg, const at::Tensor& weight,
                           const at::Tensor& bias, const at::Tensor& pos_embed,
                           std::optional<at::ScalarType> out_dtype) {
  const PatchEmbedShape s = check_patch_embed_args(tiles_arg, weight, bias, pos_embed, out_dtype);
  TORCH_CHECK_VALUE(tiles_arg.is_cpu(), "patch_embed_cpu: tensors must be on the CPU");
  const PatchGeometry g = s.geometry;
  const int64_t M = s.rows(), K = patch_k(g), C = s.dim, T = g.tokens;
  // float64 in -> float64 math. bf16 out -> bf16 GEMM operands (oneDNN, fp32 accumulation; about
  // 2.1x MKL's sgemm rate on this AVX512-BF16 CPU), as the CUDA kernel and the bf16 reference do.
  // Everything else computes in float32 (fp16 weights are widened once: exact).
  const bool dbl = s.out_dtype == at::kDouble || weight.scalar_type() == at::kDouble;
  if (s.out_dtype == at::kBFloat16 && !dbl) return patch_embed_cpu_bf16(s, tiles_arg, weight, bias, pos_embed);
  const at::ScalarType acc = dbl ? at::kDouble : at::kFloat;
  at::Tensor out = empty_cpu_output({s.batch, T, C}, s.out_dtype);
  if (M == 0 || C == 0) return out;

  const at::Tensor w = patch_embed_weight_order(weight, s.channels_last, acc, K);  // [C, K]
  const at::Tensor bias_pos = at::add(pos_embed.to(acc), bias.to(acc).unsqueeze(0)).contiguous();  // [T, C]
  const at::Tensor& tiles = tiles_arg;  // contiguous (checked)
  const bool direct = s.out_dtype == acc;

  const auto [R, blocks] = row_blocks(M);

  // at::parallel_for does not carry the caller's dispatch state into its OpenMP workers: the
  // worker's GEMM call re-enters the dispatcher below autograd explicitly (as the caller is), on
  // tensors that wrap the thread's own buffers (from_blob: no allocation, no copy).
  const at::Tensor wt = w.t();  // [K, C]
  AT_DISPATCH_FLOATING_TYPES(acc, "patch_embed_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* bp = bias_pos.const_data_ptr<acc_t>();
    with_pixel_type(tiles.scalar_type(), [&](auto pix_tag) {
      using pix_t = decltype(pix_tag);
      const pix_t* pixels = static_cast<const pix_t*>(tiles.const_data_ptr());
      with_out_type(s.out_dtype, [&](auto out_tag) {
        using out_t = decltype(out_tag);
        out_t* dst = static_cast<out_t*>(out.mutable_data_ptr());
        at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
          const at::AutoDispatchBelowADInplaceOrView below_autograd;
          std::unique_ptr<acc_t[]> A(new acc_t[R * K]);
          std::unique_ptr<acc_t[]> Y(direct ? nullptr : new acc_t[R * C]);
          const auto options = bias_pos.options();
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t r0 = b * R, rows = std::min(R, M - r0);
            gather_rows(pixels, g, r0, rows, A.get());
            acc_t* y = direct ? reinterpret_cast<acc_t*>(dst) + r0 * C : Y.get();
            // Epilogue first: rows start as bias' + pos_embed[t], the GEMM adds onto them.
            for (int64_t r = 0; r < rows; ++r)
              std::memcpy(y + r * C, bp + ((r0 + r) % T) * C, sizeof(acc_t) * C);
            at::Tensor y_rows = at::from_blob(y, {rows, C}, options);
            y_rows.addmm_(at::from_blob(A.get(), {rows, K}, options), wt);  // MKL gemm, beta = 1
            if (!direct) {
              out_t* o = dst + r0 * C;
              for (int64_t i = 0; i < rows * C; ++i) o[i] = static_cast<out_t>(y[i]);
            }
          }
        });
      });
    });
  });
  return out;
}

}  // namespace interleave
