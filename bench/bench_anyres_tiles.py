"""pytest-benchmark suite for anyres_tiles: ours and Pillow (the tiling transformers' PIL processors
do) on the same images, grouped so pytest-benchmark prints them side by side.

    python -m pytest bench/bench_anyres_tiles.py --benchmark-only
"""
import pytest

from interleave import bench


@pytest.fixture(scope="module", params=bench.suite_params(bench.anyres_tiles_cases))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", ["ours", "pillow"])
def test_anyres_tiles(benchmark, case, impl):
    bench.suite_benchmark(benchmark, case, impl)
    if impl == "ours":
        bench.suite_check(case)  # bitwise equal to Pillow
