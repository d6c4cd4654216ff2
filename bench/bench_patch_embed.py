"""pytest-benchmark suite for patch_embed: ours (from uint8 tiles and from pixel_values) and every
baseline on the same inputs, grouped so pytest-benchmark prints them side by side with their ratios.

    python -m pytest bench/bench_patch_embed.py --benchmark-only [--benchmark-json out.json]

Shapes and baselines come from interleave.bench (the same cases `python -m interleave bench` runs):
N in {1, 16, 64} tiles of 384x384, SigLIP's patch 14 and width 1152, float32 and bfloat16.
CUDA cases synchronize after every call so the timer sees the kernel, not the launch.
"""
import pytest
import torch

from interleave import bench

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["ours", "ours_pixel_values", "transformers", "unfold_linear", "compiled"]


def _cases():
    for device in DEVICES:
        for case in bench.patch_embed_cases(device):
            yield pytest.param(case, id=f"{device}-{case.dtype}-{case.shape.replace(' ', '_')}")


@pytest.fixture(scope="module", params=list(_cases()))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", IMPLS)
def test_patch_embed(benchmark, case, impl):
    fn = {"ours": case.ours, **case.variants, **case.baselines}[impl]
    benchmark.group = f"patch_embed {case.device} {case.dtype} {case.shape}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    benchmark.extra_info["flops"] = case.flops
    if case.device == "cuda":
        def call():
            fn()
            torch.cuda.synchronize()
    else:
        call = fn
    out = benchmark(call)
    del out
    if impl == "ours":
        # Not bitwise (a different summation order): within 2x the reference's float64 error.
        result = bench.run_case(bench.Case(case.op, case.device, case.shape, case.dtype, case.ours,
                                           {"transformers": case.baselines["transformers"]},
                                           case.bytes_moved, truth=case.truth), reps=1)
        assert bench.result_ok(result)
