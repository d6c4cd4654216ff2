// Run-wide switches read from the environment once by their callers. Header-only; no torch.
#pragma once

#include <cstdlib>
#include <cstring>

namespace interleave {

// True unless the environment sets `name` to "0" (INTERLEAVE_HUGEPAGES, INTERLEAVE_CUBLASLT,
// INTERLEAVE_IM2COL_STAGED: paths on by default that bench/gpu_check.sh or a user can turn off for
// a whole process).
inline bool env_switch_on(const char* name) {
  const char* v = std::getenv(name);
  return !(v != nullptr && std::strcmp(v, "0") == 0);
}

// True only where the environment sets `name` to "1" (INTERLEAVE_MERGE_LOOKBACK,
// INTERLEAVE_CUBLASLT_TUNE: paths off by default that a user can turn on for a whole process).
inline bool env_opt_in(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace interleave
