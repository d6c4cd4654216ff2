"""Hardware counters of the kernels whose bars are not met, for bench/gpu_check.sh under Nsight Compute.

bench/gpu_profile.py says how long each kernel runs; this says why, for the few kernels where the
next change depends on it: is anyres' pass 1 issue-bound or latency-bound, is the tensor-core pass 1
stalled on shared memory or on its loads, is the wgmma patch_embed kernel held by its pixel gathers
(LSU) or by the tensor cores, is the im2col at the device's bandwidth, is merge's copy?

It runs each named case variant (bench/gpu_profile.py's names: op:shape-substring:dtype, then
@variant, "ours" by default) a few times to warm up and then once more inside an NVTX range named
"ncu", so that ncu, told to look inside that range only, reads the kernels of one warm call however
many kernels a call launches:

    ncu --clock-control none --nvtx --nvtx-include ncu/ --section SpeedOfLight \
        python3 bench/gpu_ncu.py anyres_tiles:16.frames:uint8@ours_mma
Without ncu it prints what it ran (the CPU tests check the case names that way).
"""
import functools
import sys

import torch

from interleave.bench import CASES

WARMUP = 2


@functools.lru_cache(maxsize=None)
def _cases(op, device):
    # Built once per op: the CPU test resolves several specs of one op in one process.
    return CASES[op](device, quick=False, compile_reference=False)


def find(spec):
    """The callable of op:shape:dtype[@variant] from interleave.bench's cases, with its label."""
    case_spec, _, variant = spec.partition("@")
    op, shape, dtype = case_spec.split(":")
    shape = shape.replace(".", " ")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [c for c in _cases(op, device) if shape in c.shape and c.dtype == dtype]
    if not cases:
        raise SystemExit(f"gpu_ncu: no case {case_spec!r} on {device}")
    case = cases[0]
    variant = variant or "ours"
    fn = case.ours if variant == "ours" else case.variants.get(variant)
    if fn is None:
        raise SystemExit(f"gpu_ncu: case {case_spec!r} has no variant {variant!r} "
                         f"(it has: ours, {', '.join(case.variants)})")
    return f"{op} {case.shape} {case.dtype} @{variant}", fn


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    for spec in argv:
        label, fn = find(spec)
        for _ in range(WARMUP):
            fn()
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_push("ncu")
        fn()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_pop()
        print(f"ran {label}: {WARMUP} warm-up calls, then the one ncu reads", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
