// PTX primitives of the tensor-core kernels, one instruction (or one fixed sequence) each, shared by
// anyres_tiles_kernels.cu and patch_embed_wgmma.cu. tests/emulate/cuda_emu.h defines the same names
// for the host emulation (INTERLEAVE_EMULATION) with the instructions' documented semantics, so the
// kernels that use them are checked on machines without a GPU; keep the two in step.
#pragma once

#include <cstdint>

#if !defined(INTERLEAVE_EMULATION)
__device__ __forceinline__ uint32_t il_prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
  return d;
}
// a - b on two fp16 lanes.
__device__ __forceinline__ uint32_t il_hsub2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}
// Two ints (exactly representable) as fp16 lanes, lo in the low half.
__device__ __forceinline__ uint32_t il_int2_to_half2(int32_t lo, int32_t hi) {
  uint32_t d;
  asm("{\n .reg .f16 l, h;\n cvt.rn.f16.s32 l, %1;\n cvt.rn.f16.s32 h, %2;\n mov.b32 %0, {l, h};\n}"
      : "=r"(d) : "r"(lo), "r"(hi));
  return d;
}
// c += A (16 x 16, row) * B (16 x 8, col), fp16 in, fp32 accumulate; the fragments of
// mma.sync.m16n8k16 (as patch_embed's mma kernel uses them).
__device__ __forceinline__ void il_mma_f16_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// The same with bf16 operands (patch_embed's mma kernel for bf16 outputs).
__device__ __forceinline__ void il_mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// c += A (16 x 32, row, uint8) * B (32 x 8, col, int8 or uint8), int32 accumulate: the fragments of
// mma.sync.m16n8k32 (PTX ISA "Matrix Fragments for mma.m16n8k32": groupID g = lane / 4, t = lane % 4;
// A: a[0] row g, k 4t..4t+3 (byte i = k 4t + i), a[1] row g + 8, a[2] / a[3] the same at k + 16; B:
// b[0] k 4t..4t+3 of column g, b[1] at k + 16; C: c[0..1] row g, columns 2t..2t+1, c[2..3] row
// g + 8). anyres' integer pass 1 (imma_pass1_block) keeps every sum inside int32.
__device__ __forceinline__ void il_imma_u8s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void il_imma_u8u8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// ---- Hopper warpgroup MMA (sm_90a only: the `a` target features) ---------------------------------
// Compiled only where the target has them (TORCH_CUDA_ARCH_LIST 9.0a); elsewhere the primitives
// trap, and the host never launches a kernel that uses them (patch_embed_wgmma_compiled()).
#if !defined(INTERLEAVE_EMULATION)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define IL_HAS_WGMMA 1
#endif

// The 32-bit shared-memory address of a generic pointer into shared memory (matrix descriptors).
__device__ __forceinline__ uint32_t il_smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes from global to shared memory, asynchronously and past L1 (cp.async.cg, sm_80 and
// later): both addresses 16-byte aligned. The copy belongs to the thread's next
// il_cp_async_commit() group and has landed, for this thread, once il_cp_async_wait_group<N>()
// returns with it among the older groups; other threads see it after that and a barrier
// (__syncwarp among a warp's lanes).
__device__ __forceinline__ void il_cp_async16(void* smem_dst, const void* gmem_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(il_smem_addr(smem_dst)), "l"(gmem_src) : "memory");
}
// Closes this thread's group of cp.async copies (an empty group is allowed).
__device__ __forceinline__ void il_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most Pending of this thread's committed groups, the newest, are still in flight.
template <int Pending>
__device__ __forceinline__ void il_cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}
// Makes ordinary stores to shared memory visible to the async proxy that wgmma reads B through.
__device__ __forceinline__ void il_fence_proxy_async_smem() {
#if defined(IL_HAS_WGMMA)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Orders this thread's earlier register writes (A fragments, accumulators) before the next wgmma.
__device__ __forceinline__ void il_wgmma_fence() {
#if defined(IL_HAS_WGMMA)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void il_wgmma_commit() {
#if defined(IL_HAS_WGMMA)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most `Pending` committed groups of this warpgroup are still in flight.
template <int Pending>
__device__ __forceinline__ void il_wgmma_wait() {
#if defined(IL_HAS_WGMMA)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
#endif
}
// 4 bytes from global to shared memory, asynchronously (cp.async, LDGSTS in SASS): no register is
// written, so a wgmma fence does not wait for it. Both addresses 4-byte aligned. Visible to this
// thread after il_cp_async_wait_all(), to others after that and a barrier.
__device__ __forceinline__ void il_cp_async4(void* smem_dst, const void* gmem_src) {
#if defined(IL_HAS_WGMMA)
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(il_smem_addr(smem_dst)), "l"(gmem_src) : "memory");
#endif
}
// Waits for every cp.async this thread has issued.
__device__ __forceinline__ void il_cp_async_wait_all() {
#if defined(IL_HAS_WGMMA)
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
#endif
}
// A barrier of the 128 threads of warpgroup `wg` only (named barrier 1 + wg; 0 is __syncthreads).
__device__ __forceinline__ void il_bar_sync_warpgroup(int wg) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
}
// Keeps the compiler from moving reads or writes of `r` across this point (the asm "changes" it):
// accumulators are written by the tensor cores asynchronously, until the wait that retires them.
__device__ __forceinline__ void il_reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void il_reg_fence(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

// d (64 x 128, fp32, the warpgroup's accumulator fragment) = A (64 x 16, fp16, registers: the
// mma.m16n8k16 A fragment per warp, warp w holding rows 16w..16w+15) * B (16 x 128, fp16, K-major in
// shared memory, described by `desc`) + (scale_d ? d : 0). Asynchronous: a and d stay in use until
// an il_wgmma_wait retires the group it was committed in.
__device__ __forceinline__ void il_wgmma_m64n128k16_f16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc,
                                                        int scale_d) {
#if defined(IL_HAS_WGMMA)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
#else
  __trap();
#endif
}
#endif  // !INTERLEAVE_EMULATION
