// cuBLASLt batched GEMM with a broadcast C operand (see cublaslt_gemm.h).
#include "cublaslt_gemm.h"

#include "../common/env.h"

#include <dlfcn.h>

#include <array>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(INTERLEAVE_HAVE_CUBLASLT)
#include <cublasLt.h>
#endif

namespace interleave {
namespace cuda {

#if defined(INTERLEAVE_HAVE_CUBLASLT)
namespace {

// The cuBLASLt entry points, from the library of the major version this file was compiled against
// (the one torch's CUDA build ships and has already loaded).
struct LtApi {
  decltype(&cublasLtCreate) create = nullptr;
  decltype(&cublasLtMatmulDescCreate) desc_create = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set = nullptr;
  decltype(&cublasLtMatrixLayoutCreate) layout_create = nullptr;
  decltype(&cublasLtMatrixLayoutSetAttribute) layout_set = nullptr;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic = nullptr;
  decltype(&cublasLtMatmul) matmul = nullptr;
  std::string error;  // empty once every entry point is found
};

const LtApi& lt_api() {
  static const LtApi api = [] {
    LtApi r;
    if (!env_switch_on("INTERLEAVE_CUBLASLT")) {
      r.error = "disabled by INTERLEAVE_CUBLASLT=0";
      return r;
    }
    const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);  // torch's copy, if loaded
    if (lib == nullptr) lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* e = dlerror();
      r.error = "cannot load " + name + (e ? std::string(": ") + e : std::string());
      return r;
    }
    bool found = true;
    const auto sym = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
      found = found && fn != nullptr;
    };
    sym(r.create, "cublasLtCreate");
    sym(r.desc_create, "cublasLtMatmulDescCreate");
    sym(r.desc_set, "cublasLtMatmulDescSetAttribute");
    sym(r.layout_create, "cublasLtMatrixLayoutCreate");
    sym(r.layout_set, "cublasLtMatrixLayoutSetAttribute");
    sym(r.pref_create, "cublasLtMatmulPreferenceCreate");
    sym(r.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(r.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(r.matmul, "cublasLtMatmul");
    if (!found) r.error = name + " lacks a cuBLASLt entry point";
    return r;
  }();
  return api;
}

// What a problem shape resolved to: descriptors and the heuristic's algorithm, or the reason none.
struct LtPlan {
  bool ok = false;
  std::string why;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  // With LtGemmBroadcastC::tune: the heuristic's first kLtTuneCandidates algorithms, timed on the
  // shape's first call; `algo` is then the fastest, `tuned` true and the list emptied (every call
  // copies its plan out of the map: an empty list copies without allocating).
  std::vector<cublasLtMatmulAlgo_t> candidates;
  bool tuned = false;
};

// Largest power of two up to 256 dividing every address the GEMM will form from `ptr`
// (ptr + b * stride for every batch b): cuBLASLt's kernels assume the alignment the preference
// states (256 bytes by default).
uint32_t alignment(const void* ptr, int64_t stride_bytes) {
  uint64_t v = reinterpret_cast<uintptr_t>(ptr) | static_cast<uint64_t>(stride_bytes) | 256u;
  return static_cast<uint32_t>(v & (~v + 1));  // the lowest set bit
}

using PlanKey = std::tuple<int, int, int64_t, int64_t, int64_t, int, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, uint32_t, uint32_t, uint32_t, uint32_t, size_t, bool>;

std::string status_text(const char* what, cublasStatus_t s) {
  return std::string(what) + " returned cuBLAS status " + std::to_string(static_cast<int>(s));
}

constexpr int kLtTuneCandidates = 8;

LtPlan make_plan(const LtApi& api, cublasLtHandle_t handle, const LtGemmBroadcastC& g, size_t workspace_bytes,
                 const std::array<uint32_t, 4>& align) {
  LtPlan p;
  const cudaDataType_t type = g.type == LtType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
  const cublasOperation_t trans_w = CUBLAS_OP_T, trans_a = CUBLAS_OP_N;
  // Row-major out[b] (rows x cols) is column-major (cols x rows): out^T = W * A[b]^T, so cuBLASLt's
  // "A" is W (stored row-major cols x k = column-major k x cols, transposed), its "B" is A[b]
  // (column-major k x rows), C and D are (cols x rows) column-major. m = cols, n = rows.
  cublasStatus_t s = api.desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (s != CUBLAS_STATUS_SUCCESS) { p.why = status_text("cublasLtMatmulDescCreate", s); return p; }
  api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_w, sizeof(trans_w));
  api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_a, sizeof(trans_a));
  const auto layout = [&](cublasLtMatrixLayout_t* out, int64_t r, int64_t c, int64_t ld, int64_t stride) {
    cublasStatus_t st = api.layout_create(out, type, static_cast<uint64_t>(r), static_cast<uint64_t>(c), ld);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    const int32_t count = g.batch;
    api.layout_set(*out, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count));
    return api.layout_set(*out, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride));
  };
  if ((s = layout(&p.a, g.k, g.cols, g.ldw, 0)) != CUBLAS_STATUS_SUCCESS ||
      (s = layout(&p.b, g.k, g.rows, g.lda, g.stride_a)) != CUBLAS_STATUS_SUCCESS ||
      (s = layout(&p.c, g.cols, g.rows, g.ldc, 0)) != CUBLAS_STATUS_SUCCESS ||
      (s = layout(&p.d, g.cols, g.rows, g.ldd, g.stride_d)) != CUBLAS_STATUS_SUCCESS) {
    p.why = status_text("cublasLtMatrixLayoutCreate/SetAttribute", s);
    return p;
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if ((s = api.pref_create(&pref)) != CUBLAS_STATUS_SUCCESS) {
    p.why = status_text("cublasLtMatmulPreferenceCreate", s);
    return p;
  }
  const uint64_t ws = workspace_bytes;
  api.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  // cuBLASLt's A is our W, its B our A.
  api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align[1], sizeof(uint32_t));
  api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align[0], sizeof(uint32_t));
  api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align[2], sizeof(uint32_t));
  api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align[3], sizeof(uint32_t));
  std::array<cublasLtMatmulHeuristicResult_t, kLtTuneCandidates> results{};
  int found = 0;
  s = api.heuristic(handle, p.desc, p.a, p.b, p.c, p.d, pref, g.tune ? kLtTuneCandidates : 1, results.data(), &found);
  // The preference is not kept (its destroy entry point is not loaded: a few bytes per shape).
  if (s != CUBLAS_STATUS_SUCCESS || found == 0) {
    p.why = s != CUBLAS_STATUS_SUCCESS ? status_text("cublasLtMatmulAlgoGetHeuristic", s)
                                       : "cuBLASLt has no algorithm for this batched GEMM with a shared C";
    return p;
  }
  p.algo = results[0].algo;
  for (int i = 0; g.tune && i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates.push_back(results[i].algo);
  p.tuned = p.candidates.size() < 2;
  if (p.tuned) p.candidates.clear();
  p.ok = true;
  return p;
}

// Times each candidate algorithm of `plan` on this very call (the real operands: D is rewritten,
// never read, C is separate, so the result does not depend on how often it runs): one warm-up and
// three timed runs each, between CUDA events on `stream`, and returns the fastest. Costs host syncs,
// once per shape. Returns the heuristic's choice where the stream is being captured or an event
// call fails; a candidate the library refuses is skipped.
cublasLtMatmulAlgo_t fastest_algo(const LtApi& api, cublasLtHandle_t handle, const LtPlan& plan,
                                  const LtGemmBroadcastC& g, void* workspace, size_t workspace_bytes,
                                  cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
    (void)cudaGetLastError();
    return plan.algo;
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
    (void)cudaGetLastError();
    if (start != nullptr) cudaEventDestroy(start);
    return plan.algo;
  }
  const float alpha = g.alpha, beta = g.beta;
  const auto run = [&](const cublasLtMatmulAlgo_t& algo) {
    return api.matmul(handle, plan.desc, &alpha, g.w, plan.a, g.a, plan.b, &beta, g.c, plan.c, g.d, plan.d, &algo,
                      workspace, workspace_bytes, stream) == CUBLAS_STATUS_SUCCESS;
  };
  cublasLtMatmulAlgo_t best = plan.algo;
  float best_ms = -1.f;
  for (const cublasLtMatmulAlgo_t& algo : plan.candidates) {
    if (!run(algo)) continue;
    bool ok = cudaEventRecord(start, stream) == cudaSuccess;
    for (int r = 0; r < 3 && ok; ++r) ok = run(algo);
    float ms = 0.f;
    ok = ok && cudaEventRecord(stop, stream) == cudaSuccess && cudaEventSynchronize(stop) == cudaSuccess &&
         cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
    if (!ok) {
      (void)cudaGetLastError();
      continue;
    }
    if (best_ms < 0.f || ms < best_ms) {
      best_ms = ms;
      best = algo;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

std::mutex lt_mu;
std::map<PlanKey, LtPlan> lt_plans;            // never erased: one per shape and alignment seen
std::array<cublasLtHandle_t, 64> lt_handles{};  // per device, created on first use

}  // namespace

bool lt_available(std::string* why) {
  const LtApi& api = lt_api();
  if (why) *why = api.error;
  return api.error.empty();
}

bool lt_gemm_broadcast_c(const LtGemmBroadcastC& g, int device, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream, std::string* why) {
  const LtApi& api = lt_api();
  if (!api.error.empty()) {
    if (why) *why = api.error;
    return false;
  }
  if (device < 0 || device >= static_cast<int>(lt_handles.size()) || g.batch < 1) {
    if (why) *why = "device index or batch out of range";
    return false;
  }
  const int64_t es = 2;  // bf16 / fp16
  const std::array<uint32_t, 4> align = {alignment(g.a, g.stride_a * es), alignment(g.w, 0), alignment(g.c, 0),
                                         alignment(g.d, g.stride_d * es)};
  const PlanKey key{device, static_cast<int>(g.type), g.rows, g.cols, g.k, g.batch, g.lda, g.stride_a, g.ldw,
                    g.ldc, g.ldd, g.stride_d, align[0], align[1], align[2], align[3], workspace_bytes, g.tune};
  LtPlan plan;
  cublasLtHandle_t handle = nullptr;
  {
    const std::lock_guard<std::mutex> lock(lt_mu);
    if (lt_handles[device] == nullptr) {
      const cublasStatus_t s = api.create(&lt_handles[device]);
      if (s != CUBLAS_STATUS_SUCCESS) {
        lt_handles[device] = nullptr;
        if (why) *why = status_text("cublasLtCreate", s);
        return false;
      }
    }
    handle = lt_handles[device];
    auto it = lt_plans.find(key);
    if (it == lt_plans.end()) it = lt_plans.emplace(key, make_plan(api, handle, g, workspace_bytes, align)).first;
    plan = it->second;
  }
  if (!plan.ok) {
    if (why) *why = plan.why;
    return false;
  }
  if (!plan.tuned) {  // the shape's first tuned call: time the candidates, keep the fastest
    plan.algo = fastest_algo(api, handle, plan, g, workspace, workspace_bytes, stream);
    plan.tuned = true;
    const std::lock_guard<std::mutex> lock(lt_mu);
    LtPlan& kept = lt_plans[key];
    kept.algo = plan.algo;
    kept.tuned = true;
    kept.candidates = {};
  }
  const float alpha = g.alpha, beta = g.beta;
  const cublasStatus_t s = api.matmul(handle, plan.desc, &alpha, g.w, plan.a, g.a, plan.b, &beta, g.c, plan.c, g.d,
                                      plan.d, &plan.algo, workspace, workspace_bytes, stream);
  if (s != CUBLAS_STATUS_SUCCESS) {
    const std::lock_guard<std::mutex> lock(lt_mu);
    lt_plans[key].ok = false;  // refused once, refused for good: the caller's other path from now on
    lt_plans[key].why = status_text("cublasLtMatmul", s);
    if (why) *why = lt_plans[key].why;
    return false;
  }
  return true;
}

#else  // no cublasLt.h at build time

bool lt_available(std::string* why) {
  if (why) *why = "built without cublasLt.h (setup.py found neither the toolkit's nor NVIDIA's cuBLAS wheel's)";
  return false;
}

bool lt_gemm_broadcast_c(const LtGemmBroadcastC&, int, void*, size_t, cudaStream_t, std::string* why) {
  lt_available(why);
  return false;
}

#endif

}  // namespace cuda
}  // namespace interleave
