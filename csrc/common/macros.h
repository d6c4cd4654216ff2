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

// Dynamic shared memory of a kernel (the launch's third <<<>>> argument). Under the host emulator
// of tests/emulate/cuda_emu.h it is a buffer of the emulated launch's size.
#if defined(INTERLEAVE_EMULATION)
#define IL_DYNAMIC_SMEM(type, name) type* name = emu::dynamic_shared<type>()
#else
#define IL_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#endif
