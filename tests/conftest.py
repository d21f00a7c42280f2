import os

import pytest
import torch

# Deterministic and quiet: tests never download and run on few threads. (CUDA builds take
# TORCH_CUDA_ARCH_LIST from the environment, else the visible GPU's or lostprune's default.)
# convert() times layers afresh: timings taken under a test run's load must not land in the
# autotune cache beside the kernels (tests of the cache point it at a temporary file).
os.environ["LOSTPRUNE_AUTOTUNE"] = "0"
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
