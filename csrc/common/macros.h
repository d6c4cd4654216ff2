// Portability macros shared by the CPU and CUDA sources. Header-only; no torch includes.
#pragma once

#if defined(__CUDACC__)
#define IL_HD __host__ __device__ __forceinline__
#else
#define IL_HD inline
#endif

// `#pragma unroll` for device loops without gcc's unknown-pragma warning on the host.
#if defined(__CUDACC__)
#define IL_UNROLL _Pragma("unroll")
#else
#define IL_UNROLL
#endif
