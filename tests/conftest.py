import pytest
import torch

# Deterministic and quiet: tests never download and run on few threads. (CUDA builds take
# TORCH_CUDA_ARCH_LIST from the environment, else the visible GPU's or lostprune's default.)
torch.manual_seed(0)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def compiled():
    """The compiled op library; tests that compare kernels against references need it."""
    import lostprune.ops as ops

    if ops.backend() != "compiled":
        pytest.fail(f"lostprune kernels did not build: {ops.build_info()}")
    return ops
