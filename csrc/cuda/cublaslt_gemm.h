// A batched GEMM through cuBLASLt whose C operand is shared by every batch (batch stride 0), for
// patch_embed's cuBLAS path: out[n] = alpha * A[n] W^T + pos_embed for image n, so the position
// embedding enters the GEMM's epilogue instead of being copied into the output first (a 107 MB
// write and a 107 MB read at N=64 on the H100). No torch headers (the glue is patch_embed_cuda.cpp).
//
// cuBLASLt is loaded at run time (dlopen of the library torch itself loaded), so the extension has
// no link-time dependency on it and imports where it is missing; the header comes from the CUDA
// toolkit or NVIDIA's cuBLAS wheel (setup.py). Without the header, or where the library, a
// heuristic or the call fails, lt_gemm_broadcast_c returns false and the caller takes its other path.
// INTERLEAVE_CUBLASLT=0 in the environment turns it off for the process (bench/gpu_preflight.sh sets
// it when, with PREFLIGHT_ALL=1, bench/gpu_preflight.py finds it failing).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace interleave {
namespace cuda {

enum class LtType { kBFloat16, kFloat16 };

// Row-major, as torch stores them: for b in [0, batch)
//   d[b] (rows x cols, leading dimension ldd) = alpha * a[b] (rows x k, lda) * w^T (w: cols x k, ldw)
//                                               + beta * c (rows x cols, ldc; the same for every b)
// with a[b] = a + b * stride_a and d[b] = d + b * stride_d (elements). All four in `type`; fp32
// accumulation and scaling.
struct LtGemmBroadcastC {
  LtType type = LtType::kBFloat16;
  int64_t rows = 0, cols = 0, k = 0;
  int batch = 1;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* w = nullptr;
  int64_t ldw = 0;
  const void* c = nullptr;
  int64_t ldc = 0;
  void* d = nullptr;
  int64_t ldd = 0, stride_d = 0;
  float alpha = 1.f, beta = 1.f;
  // Time the heuristic's first 8 algorithms on the shape's first call and keep the fastest (host
  // syncs on that call; patch_embed's cublaslt_tune setting, off by default); else the first.
  bool tune = false;
};

// The workspace the call may use (the caller allocates it on the call's stream).
constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;

// Runs the GEMM on `stream` and returns true, or returns false having launched nothing (with the
// reason in *why when given): cuBLASLt not available, no algorithm for this problem, or the call
// refused. The verdict for a problem shape is remembered, so a refused shape costs one query.
bool lt_gemm_broadcast_c(const LtGemmBroadcastC& g, int device, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream, std::string* why = nullptr);

// Whether this build has the cuBLASLt path and the library loads (for `python -m interleave info`).
bool lt_available(std::string* why = nullptr);

}  // namespace cuda
}  // namespace interleave
