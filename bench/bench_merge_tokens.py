"""pytest-benchmark suite for merge_tokens: ours and every baseline on the same inputs, grouped so
pytest-benchmark prints them side by side with their ratios.

    python -m pytest bench/bench_merge_tokens.py --benchmark-only [--benchmark-json out.json]

Shapes and baselines come from interleave.bench (the same cases `python -m interleave bench` runs).
CUDA cases synchronize after every call so the timer sees the kernel, not the launch.
"""
import pytest
import torch

from interleave import bench

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["ours", "ours_sync_free", "transformers", "index_put", "compiled"]


def _cases():
    for device in DEVICES:
        for case in bench.merge_tokens_cases(device):
            yield pytest.param(case, id=f"{device}-{case.dtype}-{case.shape.replace(' ', '_')}")


@pytest.fixture(scope="module", params=list(_cases()))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", IMPLS)
def test_merge_tokens(benchmark, case, impl):
    fn = {"ours": case.ours, **case.variants, **case.baselines}[impl]
    benchmark.group = f"merge_tokens {case.device} {case.dtype} {case.shape}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    if case.device == "cuda":
        def call():
            fn()
            torch.cuda.synchronize()
    else:
        call = fn
    out = benchmark(call)
    del out
    if impl == "ours":
        assert torch.equal(case.ours(), case.baselines["transformers"]())  # the semantic reference
