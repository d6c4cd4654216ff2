"""pytest-benchmark suite for pack_tokens: ours and transformers' packing (pack_image_features for
8 mixed anyres_max_9 images; apply_pooling + newline for a 32-frame video) on the same inputs,
grouped so pytest-benchmark prints them side by side with their ratios.

    python -m pytest bench/bench_pack_tokens.py --benchmark-only [--benchmark-json out.json]

Shapes and baselines come from interleave.bench (the same cases `python -m interleave bench` runs).
"""
import pytest

from interleave import bench


@pytest.fixture(scope="module", params=bench.suite_params(bench.pack_tokens_cases))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", ["ours", "transformers"])
def test_pack_tokens(benchmark, case, impl):
    bench.suite_benchmark(benchmark, case, impl)
    if impl == "ours":
        bench.suite_check(case)  # copies bitwise, bilinear within the case's tolerance
