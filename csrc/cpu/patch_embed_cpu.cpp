// CPU kernel of patch_embed.
//
// Mirrors transformers' SiglipVisionEmbeddings.forward (conv 14x14/14 + flatten/transpose + position
// embedding) with the processor's normalization folded into the weights by the caller. The
// reference makes five passes over big tensors (uint8 -> float pixels, normalize, conv, transpose,
// add); here every block of R token rows is gathered from the pixels into a cache-sized im2col
// buffer [R, K] (K = 588 for SigLIP), the output rows are initialised with bias + pos_embed and the
// GEMM accumulates into them (addmm_: MKL sgemm with beta = 1), so the output is written once and
// the pixels are read once. Blocks run in parallel (at::parallel_for), each GEMM single-threaded:
// on this machine MKL's own threading on M = 729-row calls is slower than one block per thread.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "../ops/patch_embed.h"
#include "output_alloc.h"

namespace interleave {
namespace {

constexpr int64_t kBlockRows = 256;  // A block: 256 x 588 floats = 588 KiB, about one L2

// A[r, :] = pixels of GEMM row r0 + r in the K order of `g`, converted to acc_t (exact for uint8).
template <typename acc_t, typename pix_t>
void gather_rows(const pix_t* pixels, const PatchGeometry& g, int64_t r0, int64_t rows,
                 acc_t* A) {
  const int64_t k = patch_k(g);
  for (int64_t r = 0; r < rows; ++r) {
    const pix_t* patch = pixels + patch_row_offset(g, r0 + r);
    acc_t* dst = A + r * k;
    for (int64_t o = 0; o < g.outer; ++o) {
      for (int64_t mi = 0; mi < g.middle; ++mi) {
        const pix_t* src = patch + o * g.outer_stride + mi * g.middle_stride;
        for (int64_t x = 0; x < g.run; ++x) dst[x] = static_cast<acc_t>(src[x]);
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

}  // namespace

at::Tensor patch_embed_cpu(const at::Tensor& tiles_arg, const at::Tensor& weight,
                           const at::Tensor& bias, const at::Tensor& pos_embed,
                           std::optional<at::ScalarType> out_dtype) {
  const PatchEmbedShape s = check_patch_embed_args(tiles_arg, weight, bias, pos_embed, out_dtype);
  TORCH_CHECK_VALUE(tiles_arg.is_cpu(), "patch_embed_cpu: tensors must be on the CPU");
  const PatchGeometry g = s.geometry;
  const int64_t M = s.rows(), K = patch_k(g), C = s.dim, T = g.tokens;
  // float64 in -> float64 math; everything else accumulates in float32 (bf16/fp16 weights are
  // widened once: exact, and MKL's sgemm is faster here than a bf16 GEMM without AMX).
  const bool dbl = s.out_dtype == at::kDouble || weight.scalar_type() == at::kDouble;
  const at::ScalarType acc = dbl ? at::kDouble : at::kFloat;
  at::Tensor out = empty_cpu_output({s.batch, T, C}, s.out_dtype);
  if (M == 0 || C == 0) return out;

  const at::Tensor w = patch_embed_weight_order(weight, s.channels_last, acc, K);  // [C, K]
  const at::Tensor bias_pos = at::add(pos_embed.to(acc), bias.to(acc).unsqueeze(0)).contiguous();  // [T, C]
  const at::Tensor& tiles = tiles_arg;  // contiguous (checked)
  const bool direct = s.out_dtype == acc;

  // Blocks of about kBlockRows rows, as many as a multiple of the thread count when there is
  // enough work, so both threads get equal shares (N = 1: 729 rows -> 4 blocks of 183).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t blocks = (M + kBlockRows - 1) / kBlockRows;
  if (M >= threads * 32) blocks = (blocks + threads - 1) / threads * threads;
  const int64_t R = (M + blocks - 1) / blocks;
  blocks = (M + R - 1) / R;

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
