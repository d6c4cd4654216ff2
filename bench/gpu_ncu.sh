#!/usr/bin/env bash
# Nsight Compute counters of one warm call of each case below (bench/gpu_ncu.py), for
# bench/gpu_check.sh and bench/gpu_focus.sh. ncu reads the hardware counters on the Firecracker H100
# machines (the device library's KINDS.md); where it is missing or cannot, this says so and stops.
# NCU_SPECS overrides the cases; NCU_BUDGET_S (default 100) caps the whole step.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ]; then echo "ncu: not found"; exit 0; fi
# What each answers: anyres pass 1 (SIMT, issue-bound at 12ae393; then the integer tensor-core
# pass 1: memory-bound now, or stalled on its loads (L1 wavefronts of its 8-row 32-bit loads) or
# the MMA chain? and with its rows staged by cp.async), the wgmma patch_embed kernel (0.49 ms at
# N=64 against ~0.13 ms of tensor-core work: pixel-gather LSU wavefronts or MMA waits?), the
# cuBLAS path's kernels (im2col and GEMM against the device's bandwidth and tensor rate), merge's
# sync-free copy at D=1024 bf16 (80% of a copy).
specs=${NCU_SPECS:-"anyres_tiles:16.frames:uint8@ours anyres_tiles:16.frames:uint8@ours_imma anyres_tiles:16.frames:uint8@ours_imma_staged
patch_embed:N=64:bfloat16@ours_wgmma patch_embed:N=64:bfloat16@ours_wgmma_staged patch_embed:N=64:bfloat16@ours_cublas
merge_tokens:D=1024:bfloat16@ours_sync_free"}
# MemoryWorkloadAnalysis_Tables: L1/TEX requests, wavefronts and sectors per access kind (does the
# integer pass 1's direct loads' ~8 lines per instruction bind, against its staged rows?).
sections="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
  --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats --section InstructionStats
  --section LaunchStats --section Occupancy"
budget=${NCU_BUDGET_S:-100}
for spec in $specs; do
  [ "$SECONDS" -lt $(( budget - 15 )) ] || { echo "ncu: out of time before $spec"; break; }
  echo "--- ncu $spec"
  # --clock-control none: the clocks the benchmarks ran at (the device library's METHOD.md).
  out=$(timeout $(( budget - SECONDS )) "$NCU" --clock-control none --nvtx --nvtx-include "ncu/" $sections \
    "$PY" bench/gpu_ncu.py "$spec" 2>&1)
  if echo "$out" | grep -q "No kernels were profiled"; then
    # The NVTX filter matched nothing (its syntax differs between ncu releases): the first launches
    # of our kernels and cuBLAS's instead (the warm-up call's).
    echo "ncu: the NVTX filter matched no kernel; first launches of our and cuBLAS's kernels instead"
    out=$(timeout $(( budget - SECONDS )) "$NCU" --clock-control none -k "regex:interleave|nvjet|gemm|sm90" \
      --launch-count 4 $sections "$PY" bench/gpu_ncu.py "$spec" 2>&1)
  fi
  echo "$out" | grep -vE "^==PROF==|^\s*$|^    -{5,}" | cut -c1-160
done
