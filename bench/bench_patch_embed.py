"""pytest-benchmark suite for patch_embed: ours (from uint8 tiles and from pixel_values) and every
baseline on the same inputs, grouped so pytest-benchmark prints them side by side with their ratios.

    python -m pytest bench/bench_patch_embed.py --benchmark-only [--benchmark-json out.json]

Shapes and baselines come from interleave.bench (the same cases `python -m interleave bench` runs):
N in {1, 16, 64} tiles of 384x384, SigLIP's patch 14 and width 1152, float32 and bfloat16.
"""
import pytest

from interleave import bench

IMPLS = ["ours", "ours_pixel_values", "transformers", "unfold_linear", "compiled"]


@pytest.fixture(scope="module", params=bench.suite_params(bench.patch_embed_cases))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", IMPLS)
def test_patch_embed(benchmark, case, impl):
    bench.suite_benchmark(benchmark, case, impl)
    if impl == "ours":
        bench.suite_check(case)  # not bitwise: within 2x the reference's float64 error
