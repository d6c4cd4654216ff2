// Hopper (sm_90a) patch embedding: one implicit GEMM on warpgroup MMAs, uint8 tiles in, bf16/fp16
// tokens out, bias and position embedding in the epilogue. No torch headers (compile time); the glue
// is patch_embed_cuda.cpp, the primitives ptx_primitives.cuh. Mirrors SiglipVisionEmbeddings.forward
// (conv p x p / p, flatten/transpose, + position embedding) like the other patch_embed kernels.
//
// Why this kernel: the cuBLAS path (im2col kernel, position-embedding broadcast, addmm) spends about
// 0.34 ms of H100 device time at N=64, S=384, C=1152 (c6aacb5 profile), its GEMM alone 0.145 ms at
// this K = 588 shape; the issue's roofline bar (50% of the bf16 tensor-core rate) allows ~0.13 ms for
// the whole op. Here A never exists in memory and the output is written once.
//
// Layout of the work:
//  * A CTA owns one panel of 128 output channels and keeps the panel's whole weight (Kp x 128 fp16,
//    Kp = K rounded up to 16: 592 x 128 x 2 = 148 KiB for SigLIP) in shared memory for its lifetime,
//    in wgmma's no-swizzle K-major layout: 8x8 "core matrices" of 128 contiguous bytes, the two
//    k-halves of a 16-wide step 128 bytes apart (LBO), 8-channel groups Kp * 16 bytes apart (SBO).
//    The glue writes the panel in exactly that order (patch_embed_wgmma_panels), so loading it is a
//    straight 16-byte copy.
//  * Two warpgroups per CTA take 64-token tiles in turn (grid y strides over tiles); while one runs
//    its epilogue the other keeps the tensor cores busy.
//  * A is gathered from the uint8 pixels straight into the wgmma A-fragment registers (the
//    mma.m16n8k16 A layout per warp: row gid / gid + 8, k pairs 2t, 2t+1 and 2t+8, 2t+9): each k
//    pair is two adjacent bytes of one pixel row of the patch (K order (ky, kx, c), pairs never cross
//    a 42-byte patch row since its length is even), one 16-bit load; prmt puts 0x64 above each byte
//    (fp16 1024 + v) and one sub.f16x2 of 1024 leaves v exactly. The operands are fp16: pixels are
//    exact in it, and the weight W' * s (s a power of two that puts the largest |W' * s| in
//    (2^14, 2^15]; 1 / s applied to the fp32 accumulator) keeps 11 significant bits where bf16
//    keeps 8, with no risk of overflow.
//  * The k-steps go in chunks of kWgmmaChunk (8): a chunk's raw pixel pairs (8 x 4 16-bit loads per
//    thread) are converted in place, one fence, 8 wgmma m64n128k16 in one group; then the next
//    chunk's loads go into the other of two register buffers, once the group that last read that
//    buffer has retired (wait until one group is in flight). Until e857c2a each k-step had its own
//    fence with 8 k-steps of loads in flight: the H100 ran a k-step in ~900 cycles (0.49 ms at
//    N=64, 962 k-steps per warpgroup), about one memory latency per k-step, as if the fence
//    (WARPGROUP.ARRIVE in SASS) waited for every load in flight, not only the chunk's own. Now no
//    load is issued between a chunk's loads and its fence. The next tile's first chunk is loaded
//    before the epilogue, which hides its latency.
//  * kStaged (cuda_gemm("wgmma_staged")): the warpgroup first copies its tile's patch rows into
//    shared memory with 4-byte cp.async (WgmmaStagedLayout in patch_embed_kernels.h) and the chunks
//    read their pixel pairs from there; the epilogue's stage reuses that region.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "../common/macros.h"
#include "dispatch.cuh"
#include "patch_embed_kernels.h"
#include "ptx_primitives.cuh"

#if defined(IL_HAS_WGMMA) || defined(INTERLEAVE_EMULATION)
#define IL_WGMMA_BODY 1
#endif

namespace interleave {
namespace cuda {
namespace {

// Two uint8 pixels (low byte: the lower k) -> two exact fp16 lanes.
__device__ __forceinline__ uint32_t pixel_pair_half2(uint32_t pair) {
  return il_hsub2(il_prmt(pair, 0x64646464u, 0x4140u), 0x64006400u);
}

// The shared-memory matrix descriptor of k-step s of the resident panel (no swizzle, K-major):
// start address >> 4 in bits 0-13, LBO >> 4 in 16-29 (128 bytes: the second k-half), SBO >> 4 in
// 32-45 (Kp * 16 bytes: the next 8 channels), base offset 0, layout type 0 (bits 62-63).
__device__ __forceinline__ uint64_t panel_desc(uint32_t panel_addr, int step, int k_steps) {
  const uint32_t start = panel_addr + static_cast<uint32_t>(step) * kWgmmaStepBytes;
  return static_cast<uint64_t>((start >> 4) & 0x3FFFu) | static_cast<uint64_t>(128u >> 4) << 16 |
         static_cast<uint64_t>((static_cast<uint32_t>(k_steps) * kWgmmaStepBytes) >> 4) << 32;
}

template <typename OutT, bool kStaged>
__global__ void __launch_bounds__(kWgmmaThreads, 1) wgmma_patch_kernel(PatchEmbedWgmmaArgs args) {
#if defined(IL_WGMMA_BODY)
  IL_DYNAMIC_SMEM(uint4, smem);
  const int k_steps = args.k_steps;
  const int panel_vecs = k_steps * (kWgmmaStepBytes * (kWgmmaN / 8)) / 16;  // the panel in 16-byte vectors
  const PatchGeometry& g = args.geometry;
  const int tid = threadIdx.x;
  unsigned char* after_panel = reinterpret_cast<unsigned char*>(smem + panel_vecs);
  // Gathered: each k pair's offset inside a patch in global memory (-1: zero padding), then the two
  // warpgroups' epilogue stages. Staged (patch_embed_wgmma_staged_layout): the two A regions (each
  // also its warpgroup's epilogue stage), the tile's row offsets, each k pair's offset inside a
  // token's staged bytes (k >= K: 0, any staged byte; its weight is zero).
  const WgmmaStagedLayout& layout = args.layout;  // region 0 unless kStaged
  int32_t* koff = reinterpret_cast<int32_t*>(after_panel);  // gathered: [k_steps][4][2]
  int64_t* staged_rows = reinterpret_cast<int64_t*>(after_panel + kWgmmaGroups * layout.region);  // [2][64]
  int16_t* koff16 = reinterpret_cast<int16_t*>(staged_rows + kWgmmaGroups * kWgmmaRows);          // [k_steps][4][2]

  const uint4* src = args.panels + static_cast<int64_t>(blockIdx.x) * panel_vecs;
  for (int i = tid; i < panel_vecs; i += kWgmmaThreads) smem[i] = __ldg(src + i);
  for (int i = tid; i < k_steps * 8; i += kWgmmaThreads) {
    const int s = i >> 3, t4 = (i >> 1) & 3, upper = i & 1;
    const int k = s * 16 + t4 * 2 + upper * 8;
    if constexpr (kStaged) {
      const int mi = k / static_cast<int>(g.run), r = k - mi * static_cast<int>(g.run);
      koff16[i] = static_cast<int16_t>(k < args.k ? mi * layout.run_words * 4 + r : 0);
    } else {
      koff[i] = k < args.k ? static_cast<int32_t>(patch_k_offset(g, k)) : -1;
    }
  }
  il_fence_proxy_async_smem();  // wgmma reads the panel through the async proxy
  __syncthreads();

  const int wg = tid / 128, t = tid % 128, warp = t / 32, lane = t % 32, gid = lane / 4, tig = lane % 4;
  const int64_t m_tiles = (static_cast<int64_t>(args.rows) + kWgmmaRows - 1) / kWgmmaRows;
  const int64_t tile_stride = static_cast<int64_t>(gridDim.y) * kWgmmaGroups;
  int64_t tile = static_cast<int64_t>(blockIdx.y) * kWgmmaGroups + wg;
  if (tile >= m_tiles) return;  // uniform over the warpgroup; no block barrier follows
  const uint32_t panel_addr = il_smem_addr(smem);
  const uint8_t* pixels = args.pixels;
  unsigned char* region = after_panel + wg * layout.region;  // staged: this warpgroup's A region
  int64_t* rows_mine = staged_rows + wg * kWgmmaRows;

  // Top-left pixel offset of this thread's two rows of a tile (-1 past the last token).
  auto row_base = [&](int64_t tl, int upper) -> int64_t {
    const int64_t r = tl * kWgmmaRows + warp * 16 + gid + upper * 8;
    return r < args.rows ? patch_row_offset(g, r) : -1;
  };
  // Staged: where this thread's two rows start in the region (the token's first run's shift
  // included); gathered: their pixel offsets (row_base).
  int64_t b0 = 0, b1 = 0;
  // The staged variant's copy of tile `tl` into this warpgroup's region: each warp copies the 16
  // tokens whose fragments it reads, one token at a time, word q = mi * run_words + w of the token
  // by lane q % 32 (4-byte cp.async of every word holding a byte of run mi); then this thread's two
  // row starts. (mi, w) of a lane's first word and the per-pass step are fixed: no division per copy.
  const int32_t run_words = layout.run_words;
  const int32_t lane_mi = kStaged ? lane / run_words : 0, lane_w = lane - lane_mi * run_words;
  const int32_t pass_mi = kStaged ? 32 / run_words : 0, pass_w = 32 - pass_mi * run_words;
  auto stage_tile = [&](int64_t tl) {
    if (t < kWgmmaRows) {  // nobody reads rows_mine between the last staging's end and here
      const int64_t r = tl * kWgmmaRows + t;
      rows_mine[t] = r < args.rows ? patch_row_offset(g, r) : -1;
    }
    // The row offsets are in, and the region's previous use (the last epilogue's read-back) is done
    // before any copy below is issued.
    il_bar_sync_warpgroup(wg);
    const int32_t middle = static_cast<int32_t>(g.middle), run = static_cast<int32_t>(g.run);
    const int32_t per_token = middle * run_words, ms = static_cast<int32_t>(g.middle_stride);
    for (int j = warp * 16; j < warp * 16 + 16; ++j) {
      const int64_t base = rows_mine[j];
      if (base < 0) continue;  // warp-uniform: a token past the last
      const int32_t shift = static_cast<int32_t>(base & 3);
      const uint8_t* src_token = pixels + (base - shift);
      unsigned char* dst_token = region + j * layout.token_stride;
      int32_t mi = lane_mi, w = lane_w;
      for (int32_t q = lane; q < per_token; q += 32) {
        if (4 * w < shift + run)  // a word with no byte of the run may lie past the tensor's end
          il_cp_async4(dst_token + 4 * q, src_token + static_cast<int64_t>(mi) * ms + 4 * w);
        w += pass_w;
        if (w >= run_words) { w -= run_words; ++mi; }
        mi += pass_mi;
      }
    }
    il_cp_async_wait_all();
    il_bar_sync_warpgroup(wg);  // every thread's copies are in
    const int r0 = warp * 16 + gid, r1 = r0 + 8;
    b0 = static_cast<int64_t>(r0) * layout.token_stride + (rows_mine[r0] >= 0 ? (rows_mine[r0] & 3) : 0);
    b1 = static_cast<int64_t>(r1) * layout.token_stride + (rows_mine[r1] >= 0 ? (rows_mine[r1] & 3) : 0);
  };
  // The four raw pixel pairs of k-step s: (row gid, pair 2t), (gid + 8, 2t), (gid, 2t + 8), (gid + 8, 2t + 8).
  auto load_raw = [&](uint32_t (&raw)[4], int s) {
    if constexpr (kStaged) {
      const uint32_t ko = *reinterpret_cast<const uint32_t*>(koff16 + (s * 4 + tig) * 2);
      const int32_t lo = static_cast<int16_t>(ko & 0xFFFFu), hi = static_cast<int16_t>(ko >> 16);
      raw[0] = *reinterpret_cast<const unsigned short*>(region + b0 + lo);
      raw[1] = *reinterpret_cast<const unsigned short*>(region + b1 + lo);
      raw[2] = *reinterpret_cast<const unsigned short*>(region + b0 + hi);
      raw[3] = *reinterpret_cast<const unsigned short*>(region + b1 + hi);
    } else {
      const int2 ko = *reinterpret_cast<const int2*>(koff + (s * 4 + tig) * 2);
      raw[0] = (b0 >= 0 && ko.x >= 0) ? __ldg(reinterpret_cast<const unsigned short*>(pixels + b0 + ko.x)) : 0u;
      raw[1] = (b1 >= 0 && ko.x >= 0) ? __ldg(reinterpret_cast<const unsigned short*>(pixels + b1 + ko.x)) : 0u;
      raw[2] = (b0 >= 0 && ko.y >= 0) ? __ldg(reinterpret_cast<const unsigned short*>(pixels + b0 + ko.y)) : 0u;
      raw[3] = (b1 >= 0 && ko.y >= 0) ? __ldg(reinterpret_cast<const unsigned short*>(pixels + b1 + ko.y)) : 0u;
    }
  };

  // Two buffers of kWgmmaChunk k-steps of raw pixel pairs: a chunk's MMAs read one (converted in
  // place to fp16 pairs) while the next chunk's loads land in the other. The loads are issued only
  // right after a chunk's MMAs, never between a load and the next wgmma fence of the same registers'
  // chunk: the fence waits for the chunk's own loads, one latency per chunk (8 k-steps), not per
  // k-step.
  uint32_t raw[2][kWgmmaChunk][4];
  const auto load_chunk = [&](uint32_t (&buf)[kWgmmaChunk][4], int s0) {
#pragma unroll
    for (int j = 0; j < kWgmmaChunk; ++j)
      if (s0 + j < k_steps) load_raw(buf[j], s0 + j);
  };
  // Converts a chunk's pairs and issues its MMAs; the caller waits. A whole chunk is one fence and
  // one group with no branch between its MMAs (a wgmma under a condition of its own made ptxas
  // serialize them all, C7520); the last, partial chunk of a tile goes step by step, each step its
  // own group, as every step did before.
  const auto run_chunk = [&](float (&d)[64], uint32_t (&buf)[kWgmmaChunk][4], int s0) {
    if (s0 + kWgmmaChunk <= k_steps) {  // uniform
#pragma unroll
      for (int j = 0; j < kWgmmaChunk; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) buf[j][e] = pixel_pair_half2(buf[j][e]);
      il_wgmma_fence();
#pragma unroll
      for (int j = 0; j < kWgmmaChunk; ++j)
        il_wgmma_m64n128k16_f16(d, buf[j], panel_desc(panel_addr, s0 + j, k_steps), s0 + j);
      il_wgmma_commit();
    } else {
#pragma unroll
      for (int j = 0; j < kWgmmaChunk; ++j) {
        if (s0 + j < k_steps) {  // uniform
#pragma unroll
          for (int e = 0; e < 4; ++e) buf[j][e] = pixel_pair_half2(buf[j][e]);
          il_wgmma_fence();
          il_wgmma_m64n128k16_f16(d, buf[j], panel_desc(panel_addr, s0 + j, k_steps), s0 + j);
          il_wgmma_commit();
        }
      }
    }
  };
  if constexpr (!kStaged) {
    b0 = row_base(tile, 0);
    b1 = row_base(tile, 1);
    load_chunk(raw[0], 0);
  }

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  const OutT* pos = static_cast<const OutT*>(args.pos_embed);
  OutT* out = static_cast<OutT*>(args.out);
  const float alpha = __ldg(args.alpha);
  // The epilogue's fixed columns: lane l of every warp handles channels n_lane .. n_lane + 3.
  const int n_lane = blockIdx.x * kWgmmaN + 4 * lane;
  const float4 bias4 = *reinterpret_cast<const float4*>(args.bias + n_lane);  // padded to whole panels
  float* stage = kStaged ? reinterpret_cast<float*>(region)
                         : reinterpret_cast<float*>(koff + k_steps * 8) + wg * kWgmmaRows * kWgmmaStageStride;

  for (;;) {
    if constexpr (kStaged) {
      stage_tile(tile);
      load_chunk(raw[0], 0);
    }
    // raw[0] holds chunk 0 (gathered: loaded before the previous tile's epilogue, or above).
    for (int s0 = 0; s0 < k_steps; s0 += 2 * kWgmmaChunk) {
      run_chunk(acc, raw[0], s0);
      il_wgmma_wait<1>();  // the group that read raw[1] (two chunks back) retired
      if (s0 + kWgmmaChunk < k_steps) {
        load_chunk(raw[1], s0 + kWgmmaChunk);
        run_chunk(acc, raw[1], s0 + kWgmmaChunk);
        il_wgmma_wait<1>();  // the group that read raw[0] retired
        if (s0 + 2 * kWgmmaChunk < k_steps) load_chunk(raw[0], s0 + 2 * kWgmmaChunk);
      }
    }
    il_wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 64; ++i) il_reg_fence(acc[i]);

    const int64_t next = tile + tile_stride;
    if constexpr (!kStaged) {
      // The next tile's first chunk goes out before the epilogue, which hides its latency.
      if (next < m_tiles) {
        b0 = row_base(next, 0);
        b1 = row_base(next, 1);
        load_chunk(raw[0], 0);
      }
    }

    // Epilogue: out[r, n] = alpha * acc + bias[n] + pos[r % T, n] (alpha = 1 / s). acc[4j + e] holds
    // row gid (e < 2) or gid + 8, channels 8j + 2t + (e & 1) of the panel: in that layout, the stores and
    // the position-embedding loads would touch 8 rows per instruction (about 2000 L1 wavefronts per
    // tile, as many as the tile's tensor-core cycles). So the tile goes through this warpgroup's
    // shared-memory stage first and comes back row-contiguous: a warp reads one row per pass, four
    // channels per lane, with 8-byte position-embedding loads and output stores.
    il_bar_sync_warpgroup(wg);  // the stage's previous read-back (staged: every A read) is done
#pragma unroll
    for (int j = 0; j < kWgmmaN / 8; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<float2*>(stage + (warp * 16 + gid + 8 * h) * kWgmmaStageStride + 8 * j + 2 * tig) =
            make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
    il_bar_sync_warpgroup(wg);
    if (n_lane < args.dim) {  // C % 4 == 0 (glue): the lane's four channels are all in or all out
      const int32_t tile_row0 = static_cast<int32_t>(tile * kWgmmaRows);
      int32_t tok = (tile_row0 + warp) % static_cast<int32_t>(g.tokens);
#pragma unroll 4
      for (int row = warp; row < kWgmmaRows; row += 4) {
        const int32_t r = tile_row0 + row;
        if (r >= args.rows) break;
        const float4 v = *reinterpret_cast<const float4*>(stage + row * kWgmmaStageStride + 4 * lane);
        const uint2 p = *reinterpret_cast<const uint2*>(pos + static_cast<int64_t>(tok) * args.dim + n_lane);
        uint2 o;
        const float2 p01 = unpack2<OutT>(p.x), p23 = unpack2<OutT>(p.y);
        o.x = pack2(from_float<OutT>(fmaf(alpha, v.x, bias4.x) + p01.x), from_float<OutT>(fmaf(alpha, v.y, bias4.y) + p01.y));
        o.y = pack2(from_float<OutT>(fmaf(alpha, v.z, bias4.z) + p23.x), from_float<OutT>(fmaf(alpha, v.w, bias4.w) + p23.y));
        *reinterpret_cast<uint2*>(out + static_cast<int64_t>(r) * args.dim + n_lane) = o;
        tok += 4;
        while (tok >= g.tokens) tok -= static_cast<int32_t>(g.tokens);
      }
    }
    if (next >= m_tiles) break;
    tile = next;
  }
#endif
}

// 1 where this build's code for the running device has the wgmma kernel (an sm_90a cubin), read
// once per device by patch_embed_wgmma_compiled().
__device__ int wgmma_compiled_flag =
#if defined(IL_HAS_WGMMA)
    1;
#else
    0;
#endif

}  // namespace

#if !defined(INTERLEAVE_EMULATION)
bool patch_embed_wgmma_compiled(int device) {
  static std::atomic<int> cached[64] = {};  // 0 unknown, 1 no, 2 yes (a race only repeats the query)
  if (device < 0 || device >= 64) return false;
  if (cached[device].load() == 0) {
    int major = 0, minor = 0, flag = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    bool yes = major == 9 && minor == 0 &&
               cudaMemcpyFromSymbol(&flag, wgmma_compiled_flag, sizeof(int)) == cudaSuccess && flag == 1;
    cudaGetLastError();  // a device without a matching cubin reports it here; that just means "no"
    cached[device].store(yes ? 2 : 1);
  }
  return cached[device].load() == 2;
}

void launch_patch_embed_wgmma(const PatchEmbedWgmmaArgs& in, bool staged, cudaStream_t stream) {
  if (in.rows == 0 || in.dim == 0) return;
  PatchEmbedWgmmaArgs args = in;
  args.layout = WgmmaStagedLayout{};
  if (staged) {
    const WgmmaStagedLayout l = patch_embed_wgmma_staged_layout(args.geometry, args.k_steps);
    staged = l.ok && reinterpret_cast<uintptr_t>(args.pixels) % 4 == 0;
    if (staged) args.layout = l;
  }
  const int panels = (args.dim + kWgmmaN - 1) / kWgmmaN;
  const int64_t m_tiles = (static_cast<int64_t>(args.rows) + kWgmmaRows - 1) / kWgmmaRows;
  int device = 0, sms = 132;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  // One CTA per SM (the panel fills shared memory): as many tile slices per panel as fit the SMs.
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(sms / panels, (m_tiles + kWgmmaGroups - 1) / kWgmmaGroups));
  const size_t smem = staged ? args.layout.smem : patch_embed_wgmma_smem_bytes(args.k_steps);
  const dim3 grid(static_cast<unsigned>(panels), static_cast<unsigned>(std::min<int64_t>(slices, 65535)));
  static std::atomic<bool> opted_in[64] = {};
  opt_in_dynamic_smem(opted_in, device, kWgmmaMaxSmem, wgmma_patch_kernel<__nv_bfloat16, false>,
                      wgmma_patch_kernel<__half, false>, wgmma_patch_kernel<__nv_bfloat16, true>,
                      wgmma_patch_kernel<__half, true>);
  const bool bf16 = args.out_type == OutType::kBFloat16;
  if (staged && bf16)
    wgmma_patch_kernel<__nv_bfloat16, true><<<grid, kWgmmaThreads, smem, stream>>>(args);
  else if (staged)
    wgmma_patch_kernel<__half, true><<<grid, kWgmmaThreads, smem, stream>>>(args);
  else if (bf16)
    wgmma_patch_kernel<__nv_bfloat16, false><<<grid, kWgmmaThreads, smem, stream>>>(args);
  else
    wgmma_patch_kernel<__half, false><<<grid, kWgmmaThreads, smem, stream>>>(args);
}
#endif

}  // namespace cuda
}  // namespace interleave
