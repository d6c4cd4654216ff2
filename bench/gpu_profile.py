"""Where does a benchmark case's time go on the GPU? A kernel table per case, for bench/gpu_check.sh.

The benchmark (interleave/bench.py) gives one median per implementation; this profiles the same
cases (same inputs, same calls) under torch.profiler and prints, for ours and the case's first
baseline, the CUDA kernels with their total and per-call device time, plus the wall time of the
calls, so that host overhead (launch and Python) shows against device time.

    python3 bench/gpu_profile.py patch_embed:N=64:bfloat16 anyres_tiles:16.frames:uint8
Each argument is op:shape-substring:dtype (a dot in the shape part matches a space).
"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from interleave.bench import CASES


CPU_BASELINES = ("pillow", "transformers_pil")


def profile_call(name, fn, reps=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) / reps * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    # Kernels and copies only: our record_function ranges ("interleave/...") also show on the GPU
    # timeline and would count their kernels twice.
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
              and not e.key.startswith("interleave/")]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    device_ms = sum(e.self_device_time_total for e in events) / reps / 1e3
    print(f"  {name}: wall {wall_ms:.3f} ms/call (back to back), device {device_ms:.3f} ms/call")
    for e in events[:8]:
        print(f"    {e.self_device_time_total / reps / 1e3:8.4f} ms/call  x{e.count // reps:<3} {e.key[:110]}")


def main(argv):
    built_op, built = None, []
    for spec in argv:
        op, shape, dtype = spec.split(":")
        shape = shape.replace(".", " ")
        if op != built_op:  # consecutive specs of one op share its cases (built once: seconds each)
            built = []  # the previous op's tensors are freed before the next op's are made
            torch.cuda.empty_cache()
            built_op, built = op, CASES[op]("cuda", quick=False, compile_reference=False)
        cases = [c for c in built if shape in c.shape and c.dtype == dtype]
        if not cases:
            print(f"{spec}: no such case")
            continue
        case = cases[0]
        print(f"== {op} {case.shape} {case.dtype}")
        profile_call("ours", case.ours)
        for name, fn in list(case.variants.items())[:3]:
            profile_call(name, fn)
        # The first baseline that runs on the GPU (Pillow and transformers' PIL processor run on the
        # host: seconds of profiling that show no kernel).
        ref = next((n for n in case.baselines if n not in CPU_BASELINES), None)
        if ref is not None:
            profile_call(ref, case.baselines[ref])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
