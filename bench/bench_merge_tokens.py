"""pytest-benchmark suite for merge_tokens: ours and every baseline on the same inputs, grouped so
pytest-benchmark prints them side by side with their ratios.

    python -m pytest bench/bench_merge_tokens.py --benchmark-only [--benchmark-json out.json]

Shapes and baselines come from interleave.bench (the same cases `python -m interleave bench` runs);
the suite helpers there (suite_params / suite_benchmark / suite_check) are shared by every suite.
"""
import pytest

from interleave import bench


@pytest.fixture(scope="module", params=bench.suite_params(bench.merge_tokens_cases))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", ["ours", "ours_sync_free", "transformers", "index_put", "compiled"])
def test_merge_tokens(benchmark, case, impl):
    bench.suite_benchmark(benchmark, case, impl)
    if impl == "ours":
        bench.suite_check(case)  # bitwise equal to the transformers path
