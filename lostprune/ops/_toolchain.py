"""The toolchain a kernel build uses: the CUDA toolkit (found through nvcc itself), whether
to build the CUDA backend, the CPU's vector ISA and ``-march``, compiler flags, the CUDA
architectures and the compilers' identities that go into the cache key (``_build``)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import torch

DEFAULT_CUDA_ARCHES = "8.0;9.0+PTX"


def find_cuda_home() -> Path | None:
    """The CUDA toolkit root. ``nvcc`` on PATH may be a wrapper script, so ask nvcc itself
    where its toolkit lives (the ``#$ TOP=`` line of ``nvcc -v``) before guessing."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and (Path(value) / "bin" / "nvcc").exists():
            return Path(value)
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run(
                [nvcc, "-v", "-E", "-x", "cu", os.devnull, "-o", os.devnull],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            for line in (out.stderr + out.stdout).splitlines():
                if line.startswith("#$ TOP="):
                    top = Path(line.split("=", 1)[1].strip()).resolve()
                    if (top / "bin" / "nvcc").exists():
                        return top
        except (OSError, subprocess.SubprocessError):
            pass
        return Path(nvcc).resolve().parent.parent
    default = Path("/usr/local/cuda")
    return default if (default / "bin" / "nvcc").exists() else None


# --------------------------------------------------------------------------- configuration
def cuda_requested() -> bool:
    """Whether to compile the CUDA backend; raises when LOSTPRUNE_CUDA=1 cannot be met."""
    flag = os.environ.get("LOSTPRUNE_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise ValueError(f"LOSTPRUNE_CUDA must be 0 or 1 (or unset), got {flag!r}")
    if flag == "0":
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    home = find_cuda_home()
    if home is None:
        problems.append("nvcc was not found (set CUDA_HOME to the CUDA toolkit root)")
    if problems:
        if flag == "1":
            raise RuntimeError("LOSTPRUNE_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(problems))
        return False
    _configure_cuda_env(home)
    return True


def _configure_cuda_env(home: Path) -> None:
    os.environ.setdefault("CUDA_HOME", str(home))
    cpp = import_cpp_extension()

    if cpp.CUDA_HOME is None or not (Path(cpp.CUDA_HOME) / "bin" / "nvcc").exists():
        cpp.CUDA_HOME = str(home)  # torch guessed before we could tell it


def import_cpp_extension():
    # Importing it logs "No CUDA runtime is found" on GPU-less machines: expected here.
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp
    finally:
        log.setLevel(level)
    return cpp


def march_setting() -> str | None:
    value = os.environ.get("LOSTPRUNE_MARCH", "native").strip()
    return None if value in ("", "none") else value


def cpu_tag() -> str:
    """Distinguishes machines when compiling with -march=native into a shared cache."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    return hashlib.sha256((platform.machine() + flags).encode()).hexdigest()[:8]


def cpu_flags() -> set[str]:
    """This CPU's feature flags (/proc/cpuinfo; empty where it does not exist)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


# Vector ISAs of the CPU kernels (csrc/common/simd.h), narrowest first.
VECTOR_ISAS = ("SSE2", "NEON", "AVX", "AVX2", "AVX-512")


def vector_isa_note(built: str, flags: set[str]) -> str | None:
    """Why a build with CPU kernels for `built` cannot use this CPU's fast path, or None."""
    best = "AVX-512" if "avx512f" in flags else "AVX2" if {"avx2", "fma"} <= flags else None
    if built in ("AVX-512", "NEON") or (best is None and built == "AVX2"):
        return None
    march = march_setting() or "none"
    if best is None:
        return (
            f"this CPU has neither AVX2 nor AVX-512: the CPU kernels use {built} vectors, no fast path "
            "(the sensitivity pass costs several times more than on an AVX2 CPU)"
        )
    if VECTOR_ISAS.index(built) >= VECTOR_ISAS.index(best):
        return None
    return (
        f"the CPU kernels were built for {built} (LOSTPRUNE_MARCH={march}) but this CPU has {best}: "
        f"rebuild with LOSTPRUNE_MARCH=native (the default) for the {best} fast path"
    )


def compile_flags(cuda: bool, march: str | None) -> tuple[list[str], list[str], list[str]]:
    cflags = ["-O3", "-fopenmp", "-DLOSTPRUNE_WITH_CUDA" if cuda else "-DLOSTPRUNE_CPU_ONLY"]
    if march:
        cflags.append(f"-march={march}")
    # No --use_fast_math: it flushes denormals to zero and approximates division, so the CUDA
    # kernels would disagree with the CPU ones on small activations. -lineinfo lets
    # compute-sanitizer and ncu name source lines.
    cuda_flags = ["-O3", "-lineinfo"] if cuda else []
    ldflags = ["-fopenmp"]
    return cflags, cuda_flags, ldflags


def cuda_arch_list() -> str:
    """The CUDA architectures to compile, as a ``TORCH_CUDA_ARCH_LIST`` value: the variable
    when set; else the visible GPUs' (capped at the newest this torch supports, PTX for the
    newest, as torch does); else ``DEFAULT_CUDA_ARCHES``."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env and env != "native":
        return env
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        supported = [
            tuple(divmod(int(re.sub(r"\D", "", a.split("_")[1])), 10))
            for a in torch.cuda.get_arch_list()
            if a.startswith("sm_")
        ]
        newest = max(supported) if supported else (99, 9)
        arches = sorted(
            {min(newest, torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())}
        )
        names = [f"{major}.{minor}" for major, minor in arches]
        names[-1] += "+PTX"
        return ";".join(names)
    return DEFAULT_CUDA_ARCHES


@contextlib.contextmanager
def environment_vars(**values: str):
    """Sets environment variables for the block, then restores them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cuda_arch_flags(arch_list: str) -> list[str]:
    """The nvcc ``-gencode`` flags torch derives from ``arch_list`` (what is really compiled)."""
    cpp = import_cpp_extension()
    with environment_vars(TORCH_CUDA_ARCH_LIST=arch_list):
        return sorted(set(cpp._get_cuda_arch_flags()))


def arch_tag(flags: list[str]) -> str:
    """``-gencode=arch=compute_90,code=sm_90`` ... -> ``sm90.ptx90``: binaries (sm) and PTX."""
    codes = set()
    for flag in flags:
        for code in re.findall(r"\bcode=\[?([^\],]+(?:,[^\]]+)*)\]?", flag):
            for item in code.split(","):
                item = item.strip()
                if item.startswith("sm_"):
                    codes.add("sm" + item[3:])
                elif item.startswith("compute_"):
                    codes.add("ptx" + item[8:])
    if not codes:
        raise RuntimeError(f"lostprune: no CUDA architecture in the nvcc flags {flags}")
    return ".".join(sorted(codes, key=lambda c: (c.startswith("ptx"), c)))


def _tool_version(command: list[str]) -> str:
    """What ``command`` (a ``--version`` call) prints, or why it could not run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unusable ({type(exc).__name__}: {exc})"
    return (done.stdout + done.stderr).strip() or f"exit status {done.returncode}"


@functools.cache
def _toolchain_for(cxx: str, cuda_home: str | None) -> str:
    path = shutil.which(cxx)
    parts = [
        f"{cxx} = {os.path.realpath(path)}\n{_tool_version([path, '--version'])}"
        if path
        else f"{cxx}: not found"
    ]
    if cuda_home is not None:
        nvcc = Path(cuda_home) / "bin" / "nvcc"
        parts.append(f"nvcc = {nvcc.resolve()}\n{_tool_version([str(nvcc), '--version'])}")
    return "\n".join(parts)


def toolchain(cuda: bool) -> str:
    """The compilers a build uses, path and ``--version`` output: the host C++ compiler torch
    calls (``$CXX`` or ``c++``) and, for CUDA, nvcc. Part of the cache key, so a failed build
    is retried once the toolchain changes."""
    home = find_cuda_home() if cuda else None
    return _toolchain_for(os.environ.get("CXX", "c++"), str(home) if home is not None else None)


def nvcc_release(tools: str) -> str:
    found = re.search(r"release (\d+(?:\.\d+)*)", tools)
    return found.group(1) if found else "unknown"
