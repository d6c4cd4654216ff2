"""pytest-benchmark suite for anyres_tiles: ours and Pillow (the tiling transformers' PIL processors
do) on the same images, grouped so pytest-benchmark prints them side by side.

    python -m pytest bench/bench_anyres_tiles.py --benchmark-only
"""
import pytest
import torch

from interleave import bench

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cases():
    for device in DEVICES:
        for case in bench.anyres_tiles_cases(device):
            yield pytest.param(case, id=f"{device}-{case.shape.replace(' ', '_')}")


@pytest.fixture(scope="module", params=list(_cases()))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", ["ours", "pillow"])
def test_anyres_tiles(benchmark, case, impl):
    fn = {"ours": case.ours, **case.baselines}[impl]
    benchmark.group = f"anyres_tiles {case.device} {case.shape}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    if case.device == "cuda" and impl == "ours":
        def call():
            fn()
            torch.cuda.synchronize()
    else:
        call = fn
    benchmark(call)
    if impl == "ours":
        assert torch.equal(case.ours().cpu(), case.baselines["pillow"]())
