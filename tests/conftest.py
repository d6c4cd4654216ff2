import pytest
import torch

CUDA = torch.cuda.is_available()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def poison_allocator(nbytes: int, device: str) -> None:
    """Fill then free a block of `nbytes`, so that an op whose output reuses it (the CUDA caching
    allocator does, glibc malloc does for small blocks) shows unwritten elements as NaN."""
    block = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    block.fill_(0xFF)  # 0xFFFF.. is NaN in every float dtype
    del block
