// Index math of patch_embed, shared by the CPU and CUDA kernels.
//
// Mirrors transformers' SiglipVisionEmbeddings.forward: Conv2d(Cin, C, kernel p, stride p, padding
// "valid") then flatten(2).transpose(1, 2), i.e. token t = py * grid_w + px (row-major) reads the
// pixels [py*p, py*p + p) x [px*p, px*p + p) of every channel; pixels past the last full patch are
// never read. The conv is a GEMM out[m, c] = sum_k A[m, k] * Wk[c, k] with m = n * T + t and A the
// im2col of the pixels ("implicit GEMM": the kernels gather A on the fly, never store it whole).
//
// The K order follows the pixel layout so that the innermost index walks contiguous memory:
//   uint8 tiles [N, H, W, Cin] (HWC, as anyres_tiles writes them): k = (i * p + j) * Cin + ch,
//       i.e. p runs of p*Cin contiguous bytes (one pixel row of the patch, channels interleaved);
//   float pixel_values [N, Cin, H, W] (NCHW, HF): k = (ch * p + i) * p + j, the conv weight's own
//       order, i.e. Cin*p runs of p contiguous values.
// Both are "outer x middle x run" with the run contiguous; the weight is laid out in the same order
// ([C, Cin, p, p] permuted to [C, p, p, Cin] for HWC), see patch_embed_weight_order.
#pragma once

#include <cstdint>

#include "macros.h"

namespace interleave {

struct PatchGeometry {
  // K = outer * middle * run; element offset of k inside a patch (relative to its top-left corner)
  // = o * outer_stride + mi * middle_stride + r for k = (o * middle + mi) * run + r.
  int64_t outer, middle, run;
  int64_t outer_stride, middle_stride;
  // Top-left corner of token t of image n: n * image_stride + py * row_stride + px * col_stride.
  int64_t image_stride, row_stride, col_stride;
  int64_t grid_w, tokens;  // T = grid_h * grid_w
};

// channels_last: uint8 [N, H, W, Cin]; otherwise [N, Cin, H, W].
IL_HD PatchGeometry make_patch_geometry(bool channels_last, int64_t channels, int64_t height,
                                        int64_t width, int64_t patch) {
  PatchGeometry g;
  const int64_t grid_h = height / patch, grid_w = width / patch;
  g.grid_w = grid_w;
  g.tokens = grid_h * grid_w;
  if (channels_last) {
    g.outer = 1;
    g.middle = patch;
    g.run = patch * channels;
    g.outer_stride = 0;
    g.middle_stride = width * channels;
    g.image_stride = height * width * channels;
    g.row_stride = patch * width * channels;
    g.col_stride = patch * channels;
  } else {
    g.outer = channels;
    g.middle = patch;
    g.run = patch;
    g.outer_stride = height * width;
    g.middle_stride = width;
    g.image_stride = channels * height * width;
    g.row_stride = patch * width;
    g.col_stride = patch;
  }
  return g;
}

IL_HD int64_t patch_k(const PatchGeometry& g) { return g.outer * g.middle * g.run; }

// Offset of the top-left pixel of GEMM row m = n * T + t.
IL_HD int64_t patch_row_offset(const PatchGeometry& g, int64_t m) {
  const int64_t n = m / g.tokens, t = m - n * g.tokens;
  const int64_t py = t / g.grid_w, px = t - py * g.grid_w;
  return n * g.image_stride + py * g.row_stride + px * g.col_stride;
}

// Offset of GEMM column k (k < K) relative to the patch's top-left pixel.
IL_HD int64_t patch_k_offset(const PatchGeometry& g, int64_t k) {
  const int64_t per_outer = g.middle * g.run;
  const int64_t o = k / per_outer, rem = k - o * per_outer;
  const int64_t mi = rem / g.run, r = rem - mi * g.run;
  return o * g.outer_stride + mi * g.middle_stride + r;
}

// The kernels' weight is [C, Kp] in the K order above, zero-padded to Kp (a multiple of this).
constexpr int64_t kPatchKAlign = 32;
IL_HD int64_t patch_k_padded(int64_t k) { return (k + kPatchKAlign - 1) / kPatchKAlign * kPatchKAlign; }

}  // namespace interleave
