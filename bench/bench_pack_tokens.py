"""pytest-benchmark suite for pack_tokens: ours and transformers' packing (pack_image_features for
8 mixed anyres_max_9 images; apply_pooling + newline for a 32-frame video) on the same inputs,
grouped so pytest-benchmark prints them side by side with their ratios.

    python -m pytest bench/bench_pack_tokens.py --benchmark-only [--benchmark-json out.json]

Shapes and baselines come from interleave.bench (the same cases `python -m interleave bench` runs).
CUDA cases synchronize after every call so the timer sees the kernel, not the launch.
"""
import pytest
import torch

from interleave import bench

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["ours", "transformers"]


def _cases():
    for device in DEVICES:
        for case in bench.pack_tokens_cases(device):
            shape = case.shape.split(" (")[0] + (" " + case.shape.split()[-1] if " (" in case.shape else "")
            yield pytest.param(case, id=f"{device}-{case.dtype}-{shape.replace(' ', '_')}")


@pytest.fixture(scope="module", params=list(_cases()))
def case(request):
    return request.param


@pytest.mark.parametrize("impl", IMPLS)
def test_pack_tokens(benchmark, case, impl):
    fn = {"ours": case.ours, **case.baselines}[impl]
    benchmark.group = f"pack_tokens {case.device} {case.dtype} {case.shape}"
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
        ours, ref = case.ours().double().cpu(), case.baselines["transformers"]().double().cpu()
        assert ours.shape == ref.shape
        assert float((ours - ref).abs().max()) <= case.tolerance * max(1.0, float(ref.abs().max()))
