"""Packaging. The kernels compile on first use (see lostprune/ops/_build.py), so a plain
``pip install .`` runs no compiler. ``LOSTPRUNE_AOT=1 pip install --no-build-isolation .``
builds them now with torch's BuildExtension instead (needs torch in the build env)."""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
CSRC_GLOBS = ["*.h", "*.cuh", "*.cpp", "*.cu", "*/*.h", "*/*.cuh", "*/*.cpp", "*/*.cu"]

packages = find_packages(include=["lostprune", "lostprune.*"]) + ["lostprune.csrc"]
kwargs = {}

if os.environ.get("LOSTPRUNE_AOT") == "1":
    sys.path.insert(0, str(HERE))
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    from lostprune.ops import _build, _toolchain

    cuda = _toolchain.cuda_requested()
    csrc = HERE / "csrc"
    cflags, cuda_flags, ldflags = _toolchain.compile_flags(cuda, march=os.environ.get("LOSTPRUNE_MARCH"))
    extension = (CUDAExtension if cuda else CppExtension)(
        name="lostprune._C",
        sources=[str(p.relative_to(HERE)) for p in _build.list_sources(csrc, cuda)],
        extra_compile_args={"cxx": cflags, "nvcc": cuda_flags},
        extra_link_args=ldflags,
    )
    # The loader uses the AOT library only while the sources still hash the same.
    (HERE / "lostprune" / "_C.sourcehash").write_text(_build.source_hash(csrc))
    kwargs = {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}

setup(
    packages=packages,
    package_dir={"lostprune.csrc": "csrc"},
    package_data={"lostprune.csrc": CSRC_GLOBS, "lostprune": ["_C.sourcehash", "configs/*.yaml"]},
    **kwargs,
)
