// The extension's one registration unit: op schemas (torch.library), their CPU/CUDA kernels, and a
// small pybind11 module carrying build facts for `python -m interleave info`.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ops/anyres_tiles.h"
#include "ops/merge_tokens.h"
#include "ops/pack_tokens.h"
#include "ops/patch_embed.h"
#include "cpu/resample_simd.h"

#ifndef INTERLEAVE_TORCH_VERSION
#define INTERLEAVE_TORCH_VERSION "unknown"
#endif
#ifndef INTERLEAVE_ARCH_LIST
#define INTERLEAVE_ARCH_LIST ""
#endif
#ifndef INTERLEAVE_CUDA_VERSION
#define INTERLEAVE_CUDA_VERSION ""
#endif

namespace {
// interleave.ops.patch_embed's fold cache calls this for each new folded (weight, bias): on CUDA the
// op then keeps the GEMM operands derived from them (patch_embed.h); nothing to keep on the CPU.
// An op, not a pybind11 function: this module has no pybind11 caster for tensors.
void register_folded(const at::Tensor& weight, const at::Tensor& bias) {
#ifdef INTERLEAVE_WITH_CUDA
  if (weight.is_cuda() && bias.is_cuda()) interleave::patch_embed_register_folded(weight, bias);
#else
  (void)weight;
  (void)bias;
#endif
}
}  // namespace

TORCH_LIBRARY(interleave, m) {
  m.def(
      "merge_tokens(Tensor input_ids, Tensor embed_weight, Tensor visual, int[] image_token_ids, "
      "int? num_placeholders=None, int padding_idx=-1) -> Tensor");
  m.def(
      "merge_tokens_backward(Tensor grad_output, Tensor input_ids, int[] image_token_ids, "
      "int num_embeddings, int num_visual, ScalarType visual_dtype, int padding_idx, "
      "bool weight_grad, bool visual_grad) -> (Tensor, Tensor)");
  m.def("anyres_tiles(Tensor[] images, Tensor jobs, int num_tiles, int tile, Tensor? lut=None) -> Tensor");
  m.def("pack_tokens(Tensor features, Tensor? newline, Tensor layout, int num_rows, int side) -> Tensor");
  m.def(
      "pack_tokens_backward(Tensor grad, Tensor? features, Tensor layout, int num_features, int side, "
      "bool newline_grad) -> (Tensor, Tensor)");
  m.def("patch_embed(Tensor tiles, Tensor weight, Tensor bias, Tensor pos_embed, ScalarType? out_dtype=None) -> Tensor");
  // The wgmma kernel's weight panels, built from tensor ops on any device (a composite op; tests of
  // the layout and of the emulated kernel call it on the CPU).
  m.def("_patch_embed_wgmma_layout(Tensor weight, bool channels_last, float scale, int k_steps, int panel_width) -> Tensor",
        &interleave::patch_embed_wgmma_layout);
  m.def("_patch_embed_register_folded(Tensor weight, Tensor bias) -> ()", &register_folded);
}

TORCH_LIBRARY_IMPL(interleave, CPU, m) {
  m.impl("merge_tokens", &interleave::merge_tokens_cpu);
  m.impl("merge_tokens_backward", &interleave::merge_tokens_backward_cpu);
  m.impl("anyres_tiles", &interleave::anyres_tiles_cpu);
  m.impl("pack_tokens", &interleave::pack_tokens_cpu);
  m.impl("pack_tokens_backward", &interleave::pack_tokens_backward_cpu);
  m.impl("patch_embed", &interleave::patch_embed_cpu);
}

#ifdef INTERLEAVE_WITH_CUDA
TORCH_LIBRARY_IMPL(interleave, CUDA, m) {
  m.impl("merge_tokens", &interleave::merge_tokens_cuda);
  m.impl("merge_tokens_backward", &interleave::merge_tokens_backward_cuda);
  m.impl("anyres_tiles", &interleave::anyres_tiles_cuda);
  m.impl("pack_tokens", &interleave::pack_tokens_cuda);
  m.impl("pack_tokens_backward", &interleave::pack_tokens_backward_cuda);
  m.impl("patch_embed", &interleave::patch_embed_cuda);
}
#endif

// Importing the module loads the library and runs the registrations above; its attributes
// describe how it was built.
namespace {
// The diagnosis' bad merge_tokens input: two placeholders (id 5) against three visual rows.
at::Tensor diag_merge_ids() {
  at::Tensor ids = at::empty({1, 4}, at::kLong);
  int64_t* p = ids.data_ptr<int64_t>();
  p[0] = 1; p[1] = 5; p[2] = 5; p[3] = 2;
  return ids;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "interleave kernels: ops are registered under torch.ops.interleave";
#ifdef INTERLEAVE_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("torch_version") = INTERLEAVE_TORCH_VERSION;
  m.attr("cuda_version") = INTERLEAVE_CUDA_VERSION;
  m.attr("arch_list") = INTERLEAVE_ARCH_LIST;
  // Diagnosis of the error-path crash seen on the first H100 machine (bench/errpath_diag.py): a C++
  // exception thrown and caught inside this module, and one thrown through pybind11 to Python,
  // without the dispatcher, tell an unwinding problem in this .so from one in the op call path.
  m.def("_diag_throw_and_catch", []() {
    try {
      TORCH_CHECK_VALUE(false, "caught inside the module");
    } catch (const c10::Error&) {
      return true;
    }
    return false;
  });
  // Selects the CUDA patch_embed GEMM for bf16/fp16 outputs: 0 auto, 1 cuBLAS, 2 the mma kernel,
  // 3 the wgmma kernel where it applies, 4 cuBLAS with the position embedding copied first, 5 the
  // wgmma kernel's staged variant; returns the previous setting (tests and the benchmark's variants).
  m.def("_set_patch_embed_gemm", [](int mode) {
    TORCH_CHECK_VALUE(mode >= 0 && mode <= 5, "_set_patch_embed_gemm: mode must be 0 (auto), 1 (cublas), 2 (mma), 3 (wgmma), 4 (cublas_copy) or 5 (wgmma_staged), got ", mode);
    return static_cast<int>(std::exchange(interleave::patch_embed_gemm_mode(), static_cast<interleave::PatchEmbedGemm>(mode)));
  });
  // Whether the wgmma patch_embed kernel can run on CUDA device `device` (an sm_90a build on a
  // compute-capability-9.0 GPU); False in CPU-only builds. Initializes CUDA: call it only where a GPU is meant.
  m.def("_patch_embed_wgmma_available", [](int device) {
#ifdef INTERLEAVE_WITH_CUDA
    return interleave::patch_embed_wgmma_available(device);
#else
    (void)device;
    return false;
#endif
  });
  // Whether patch_embed's im2col of uint8 tiles uses the staged kernel (see
  // patch_embed_im2col_staged); returns the previous setting (bench/gpu_preflight.py compares both).
  m.def("_set_patch_embed_im2col_staged", [](bool staged) {
    return std::exchange(interleave::patch_embed_im2col_staged(), staged);
  });
  // Whether the cuBLASLt GEMM tunes its algorithm per shape (patch_embed_cublaslt_tune).
  m.def("_set_patch_embed_cublaslt_tune", [](bool tune) {
    return std::exchange(interleave::patch_embed_cublaslt_tune(), tune);
  });
  // "" where patch_embed's cuBLAS path can use cuBLASLt (the position embedding in the GEMM's C
  // operand), else why not; "" is never returned by a CPU-only build. Loads cuBLASLt, not CUDA.
  m.def("_patch_embed_cublaslt_status", []() -> std::string {
#ifdef INTERLEAVE_WITH_CUDA
    return interleave::patch_embed_cublaslt_status();
#else
    return "a CPU-only build";
#endif
  });
  // More layers of the same diagnosis: a c10 error through pybind11 (no dispatcher); our CPU kernel
  // called directly (its own throw site, no dispatcher); our op through the C++ dispatcher below
  // autograd, caught here (crosses libtorch_cpu's frames, no Python, no libtorch_python).
  m.def("_diag_throw_c10", []() { TORCH_CHECK_VALUE(false, "a c10::ValueError through pybind11"); });
  m.def("_diag_merge_direct", []() {
    const at::Tensor ids = diag_merge_ids();
    interleave::merge_tokens_cpu(ids, at::zeros({10, 4}), at::zeros({3, 4}), std::vector<int64_t>{5}, std::nullopt, -1);
  });
  m.def("_diag_merge_dispatcher_caught", []() -> std::string {
    const at::Tensor ids = diag_merge_ids();
    const std::vector<int64_t> ph{5};
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("interleave::merge_tokens", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 at::IntArrayRef, std::optional<int64_t>, int64_t)>();
    try {
      const at::AutoDispatchBelowAutograd below;
      op.call(ids, at::zeros({10, 4}), at::zeros({3, 4}), ph, std::nullopt, -1);
    } catch (const c10::Error& e) {
      return std::string("caught: ") + e.what_without_backtrace();
    }
    return "no error";
  });
  // Minimum positions per block of the CUDA merge_tokens kernels (default 32); returns the old one.
  m.def("_set_merge_min_chunk", [](int64_t chunk) {
    TORCH_CHECK_VALUE(chunk >= 1 && chunk <= 4096, "_set_merge_min_chunk: chunk must be in [1, 4096], got ", chunk);
    return std::exchange(interleave::merge_cuda_min_chunk(), chunk);
  });
  // The sync-free CUDA forward's one-launch limit in positions (0: always the count kernel) and
  // its count rotation; each returns the previous setting (tests and the benchmark's variants).
  m.def("_set_merge_self_count_max", [](int64_t positions) {
    TORCH_CHECK_VALUE(positions >= 0 && positions <= (int64_t{1} << 20),
                      "_set_merge_self_count_max: positions must be in [0, 2^20], got ", positions);
    return std::exchange(interleave::merge_cuda_self_count_max(), positions);
  });
  m.def("_set_merge_count_rotation", [](bool on) { return std::exchange(interleave::merge_cuda_count_rotation(), on); });
  m.def("_set_merge_lookback", [](bool on) { return std::exchange(interleave::merge_cuda_lookback(), on); });
  m.def("_set_merge_flat_loads", [](int64_t loads) {
    TORCH_CHECK_VALUE(loads == 8 || loads == 16, "_set_merge_flat_loads: loads must be 8 or 16, got ", loads);
    return std::exchange(interleave::merge_cuda_flat_loads(), loads);
  });
  // Whether CUDA anyres_tiles may run pass 1 on tensor cores (exact either way); returns the old one.
  m.def("_set_anyres_mma", [](bool allowed) { return std::exchange(interleave::anyres_cuda_mma(), allowed); });
  m.def("_set_anyres_imma", [](bool allowed) { return std::exchange(interleave::anyres_cuda_imma(), allowed); });
  m.def("_set_anyres_arena_cache",
        [](bool cached) { return std::exchange(interleave::anyres_cuda_arena_cache(), cached); });
  m.def("_set_anyres_imma_staged",
        [](bool staged) { return std::exchange(interleave::anyres_cuda_imma_staged(), staged); });
  m.def("_set_anyres_fused", [](bool allowed) { return std::exchange(interleave::anyres_cuda_fused(), allowed); });
  m.def("_set_anyres_simt_rows", [](int64_t rows) {
    TORCH_CHECK_VALUE(rows == 1 || rows == 4, "_set_anyres_simt_rows: rows must be 1 or 4, got ", rows);
    return std::exchange(interleave::anyres_cuda_simt_rows(), rows);
  });
  // Instruction-set level of the CPU anyres_tiles loops: -1 the best this CPU supports, 0 portable,
  // 1 AVX2, 2 AVX-512 (VNNI + VBMI), capped at what the CPU has; returns the old request.
  m.def("_set_anyres_cpu_simd", [](int level) {
    TORCH_CHECK_VALUE(level >= -1 && level <= 2, "_set_anyres_cpu_simd: level must be -1 (best), 0 (generic), 1 (avx2) or 2 (avx512), got ", level);
    return interleave::set_anyres_cpu_simd(level);
  });
  // The level in use now and the best one this CPU supports.
  m.def("_anyres_cpu_simd", []() { return static_cast<int>(interleave::anyres_cpu_simd()); });
  m.def("_anyres_cpu_simd_supported", []() { return static_cast<int>(interleave::anyres_cpu_simd_supported()); });
  // Grid cap of the CUDA pack_tokens row kernels (0: none); returns the old one.
  m.def("_set_pack_max_blocks", [](int64_t blocks) {
    TORCH_CHECK_VALUE(blocks >= 0, "_set_pack_max_blocks: blocks must be >= 0, got ", blocks);
    return std::exchange(interleave::pack_cuda_max_blocks(), blocks);
  });
  m.def("_diag_throw_std", []() { throw std::runtime_error("a std::runtime_error through pybind11"); });
  // The 2026-11-27 backtrace (404b09f) stopped inside std::ostream::operator<<(long) while
  // TORCH_CHECK built its message, before any throw: number formatting with no exception at all.
  m.def("_diag_format_c10", [](int64_t n) { return c10::str("n = ", n); });
  m.def("_diag_format_ostream", [](int64_t n) {
    std::ostringstream s;
    s << "n = " << n;
    return s.str();
  });
}
