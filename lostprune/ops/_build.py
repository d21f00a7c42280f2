"""Compile ``csrc/`` on first use and load it as the ``torch.ops.lostprune`` library.

The library is built with ``torch.utils.cpp_extension.load`` (ninja) into a cache directory
keyed by lostprune version, torch version, backend (CPU or CUDA + architectures) and a hash
of every source file, so a later process only hashes the sources and loads a ``.so``.
A new key starts from a copy of the newest sibling build, so ninja recompiles only the
files that changed. Builds are serialized with a file lock and published with an atomic
rename: two processes building at once never see a half-written cache entry.

If the build fails (or no compiler exists) lostprune warns once, naming the log file, and
every op runs its plain-PyTorch reference. Environment:

- ``LOSTPRUNE_BACKEND``: ``auto`` (default), ``reference`` (never compile), ``compiled``
  (compile or raise).
- ``LOSTPRUNE_CUDA``: ``0`` builds CPU kernels only, ``1`` requires CUDA kernels (raises
  when torch has no CUDA or nvcc is missing); unset builds CUDA kernels when possible.
- ``LOSTPRUNE_CACHE``: cache directory (default ``$XDG_CACHE_HOME/lostprune``).
- ``LOSTPRUNE_CSRC``: build these sources instead of the packaged ``csrc/``.
- ``LOSTPRUNE_MARCH``: value for ``-march`` (default ``native``; ``none`` to omit).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__

LIBRARY_NAME = "lostprune_C"
_SOURCE_SUFFIXES = (".cpp", ".cu")
_HASHED_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")
# Files whose stem ends like this need CUDA (nvcc or the CUDA headers).
_CUDA_ONLY_STEMS = ("_cuda", "_cuda_glue")


class LostpruneBuildWarning(UserWarning):
    """The kernels could not be built; PyTorch references run instead."""


@dataclass
class BuildState:
    backend: str  # "compiled" or "reference"
    cuda: bool = False  # CUDA kernels compiled in
    library: Path | None = None
    log: Path | None = None
    reason: str = ""
    key: str = ""
    seconds: float = 0.0
    warned_ops: set = field(default_factory=set)


_lock = threading.Lock()
_state: BuildState | None = None


# --------------------------------------------------------------------------- locations
def csrc_dir() -> Path:
    """The kernel sources: ``LOSTPRUNE_CSRC``, the packaged copy, or the repository's."""
    env = os.environ.get("LOSTPRUNE_CSRC")
    if env:
        return Path(env).resolve()
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "registration.cpp").is_file():
            return candidate
    raise FileNotFoundError(
        f"lostprune: kernel sources not found beside {package} (expected csrc/registration.cpp)"
    )


def cache_root() -> Path:
    env = os.environ.get("LOSTPRUNE_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "lostprune"


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
                capture_output=True, text=True, timeout=60,
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
def _cuda_requested() -> bool:
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
    cpp = _import_cpp_extension()

    if cpp.CUDA_HOME is None or not (Path(cpp.CUDA_HOME) / "bin" / "nvcc").exists():
        cpp.CUDA_HOME = str(home)  # torch guessed before we could tell it
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch cannot infer architectures without a visible GPU (and crashes trying).
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"


def _import_cpp_extension():
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


def _march() -> str | None:
    value = os.environ.get("LOSTPRUNE_MARCH", "native").strip()
    return None if value in ("", "none") else value


def _cpu_tag() -> str:
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
    if built in ("AVX-512", "NEON") or best is None and built == "AVX2":
        return None
    march = _march() or "none"
    if best is None:
        return (f"this CPU has neither AVX2 nor AVX-512: the CPU kernels use {built} vectors, no fast path "
                "(the sensitivity pass costs several times more than on an AVX2 CPU)")
    if VECTOR_ISAS.index(built) >= VECTOR_ISAS.index(best):
        return None
    return (f"the CPU kernels were built for {built} (LOSTPRUNE_MARCH={march}) but this CPU has {best}: "
            f"rebuild with LOSTPRUNE_MARCH=native (the default) for the {best} fast path")


def vector_isa() -> str | None:
    """The vector ISA the loaded CPU kernels were compiled for (None without compiled kernels)."""
    state = ensure_loaded()
    if state.backend != "compiled" or not torch._C._dispatch_has_kernel_for_dispatch_key(
            "lostprune::cpu_vector_isa", "CompositeExplicitAutograd"):
        return None
    return torch.ops.lostprune.cpu_vector_isa()


def list_sources(root: Path, cuda: bool) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix in _SOURCE_SUFFIXES)
    if not cuda:
        files = [p for p in files if not p.stem.endswith(_CUDA_ONLY_STEMS)]
    stems: dict[str, Path] = {}
    for p in files:  # torch names objects by file stem: stems must be unique
        key = p.stem + (".cu" if p.suffix == ".cu" else "")
        if key in stems:
            raise RuntimeError(f"lostprune: two kernel sources share the name {p.name}: {stems[key]} and {p}")
        stems[key] = p
    return files


def source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(p for p in root.rglob("*") if p.suffix in _HASHED_SUFFIXES):
        digest.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return digest.hexdigest()


def compile_flags(cuda: bool, march: str | None) -> tuple[list[str], list[str], list[str]]:
    cflags = ["-O3", "-fopenmp", "-DLOSTPRUNE_WITH_CUDA" if cuda else "-DLOSTPRUNE_CPU_ONLY"]
    if march:
        cflags.append(f"-march={march}")
    cuda_flags = ["-O3", "--use_fast_math", "-lineinfo"] if cuda else []
    ldflags = ["-fopenmp"]
    return cflags, cuda_flags, ldflags


def build_key(root: Path, cuda: bool) -> tuple[str, str]:
    """(prefix, key): prefix names the configuration, key adds the source hash."""
    march = _march()
    backend = "cpu"
    if cuda:
        arches = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible").replace(";", "_").replace(" ", "_")
        backend = f"cuda{torch.version.cuda}-{arches}"
    machine = f"{platform.machine()}-{march or 'generic'}"
    if march == "native":
        machine += "-" + _cpu_tag()
    torch_version = torch.__version__.replace("+", "_")
    prefix = f"v{__version__}-torch{torch_version}-{backend}-{machine}"
    return prefix, f"{prefix}-{source_hash(root)[:16]}"


# --------------------------------------------------------------------------- building
@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _seed_from_sibling(root: Path, prefix: str, target: Path) -> None:
    """Copy the newest finished build of the same configuration, so ninja only
    recompiles what changed (objects are named relative to the build directory)."""
    siblings = [p for p in root.glob(prefix + "-*") if (p / f"{LIBRARY_NAME}.so").is_file()]
    if siblings:
        newest = max(siblings, key=lambda p: (p / f"{LIBRARY_NAME}.so").stat().st_mtime)
        shutil.copytree(newest, target, symlinks=True, dirs_exist_ok=True)


def _compile(sources: list[Path], build_dir: Path, cuda: bool, verbose: bool) -> Path:
    load = _import_cpp_extension().load
    cflags, cuda_flags, ldflags = compile_flags(cuda, _march())
    load(
        name=LIBRARY_NAME,
        sources=[str(s) for s in sources],
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_flags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        with_cuda=cuda,
        is_python_module=False,
        verbose=verbose,
    )
    return build_dir / f"{LIBRARY_NAME}.so"


def _aot_library() -> Path | None:
    """A library built at install time (LOSTPRUNE_AOT=1) for exactly these sources."""
    package = Path(__file__).resolve().parent.parent
    stamp = package / "_C.sourcehash"
    libs = sorted(package.glob("_C*.so"))
    if not libs or not stamp.is_file():
        return None
    try:
        if stamp.read_text().strip() != source_hash(csrc_dir()):
            return None  # sources edited since the install: rebuild on the fly instead
    except FileNotFoundError:
        pass  # installed without sources: trust the stamp
    return libs[0]


def _load(force: bool, verbose: bool) -> BuildState:
    mode = os.environ.get("LOSTPRUNE_BACKEND", "auto").strip() or "auto"
    if mode not in ("auto", "reference", "compiled"):
        raise ValueError(f"LOSTPRUNE_BACKEND must be auto, reference or compiled, got {mode!r}")
    if mode == "reference":
        return BuildState("reference", reason="LOSTPRUNE_BACKEND=reference")
    start = time.perf_counter()
    cuda = _cuda_requested()

    aot = None if force else _aot_library()
    if aot is not None:
        torch.ops.load_library(str(aot))
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("lostprune::gather_channels", "CUDA")
        return BuildState("compiled", cuda=has_cuda, library=aot, reason="built at install time",
                          seconds=time.perf_counter() - start)

    root = cache_root()
    src = csrc_dir()
    prefix, key = build_key(src, cuda)
    target = root / key
    library = target / f"{LIBRARY_NAME}.so"
    failed = root / f"{key}.failed.log"

    def fallback(reason: str, log: Path) -> BuildState:
        if mode == "compiled":
            raise RuntimeError(f"lostprune: {reason}; see {log}")
        return BuildState("reference", cuda=False, log=log, key=key, reason=reason)

    if force:
        failed.unlink(missing_ok=True)
    if not library.is_file() and failed.is_file():
        return fallback("an earlier build of these sources failed", failed)
    if not library.is_file():
        with _file_lock(root / ".build.lock"):
            if not library.is_file():  # another process may have built it meanwhile
                if failed.is_file():
                    return fallback("an earlier build of these sources failed", failed)
                scratch = root / f".{key}.tmp{os.getpid()}"
                shutil.rmtree(scratch, ignore_errors=True)
                _seed_from_sibling(root, prefix, scratch)
                try:
                    built = _compile(list_sources(src, cuda), scratch, cuda, verbose)
                except Exception as exc:  # compiler missing, compile or link error
                    failed.write_text(f"lostprune kernel build failed ({key})\nsources: {src}\n\n{exc}\n")
                    shutil.rmtree(scratch, ignore_errors=True)
                    return fallback(f"kernel build failed ({type(exc).__name__})", failed)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(scratch, target)  # publish atomically; the mapped .so stays valid
                return BuildState("compiled", cuda=cuda, library=target / built.name, key=key,
                                  reason="built now", seconds=time.perf_counter() - start)
    torch.ops.load_library(str(library))
    return BuildState("compiled", cuda=cuda, library=library, key=key, reason="loaded from cache",
                      seconds=time.perf_counter() - start)


def ensure_loaded(force: bool = False, verbose: bool = False) -> BuildState:
    """Build (if needed) and load the kernels once per process; never raises for a failed
    build unless LOSTPRUNE_BACKEND=compiled or LOSTPRUNE_CUDA=1 asks for it."""
    global _state
    if _state is not None and not force:
        return _state
    with _lock:
        if _state is None or force:
            if force and _state is not None and _state.backend == "compiled":
                raise RuntimeError("lostprune: kernels are already loaded in this process; "
                                   "run the build in a fresh process to rebuild")
            _state = _load(force, verbose)
            _kernel_answers.clear()
            if _state.backend == "compiled":
                from . import _registry  # fake and autograd kernels need the schemas

                _registry.register_all()
            elif _state.log is not None:
                warnings.warn(
                    f"lostprune: {_state.reason}; all ops run their PyTorch references. "
                    f"Build log: {_state.log}. Fix and rebuild with `lostprune build --force`.",
                    LostpruneBuildWarning, stacklevel=3,
                )
    return _state


# (op, device type) -> use_kernel's answer; asking the dispatcher costs microseconds per call.
_kernel_answers: dict[tuple[str, str], bool] = {}


@torch.compiler.assume_constant_result
def use_kernel(op: str, device: torch.device | str) -> bool:
    """True when ``torch.ops.lostprune.<op>`` has a compiled kernel for this device.
    A constant for torch.compile: the answer cannot change within a process."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    answer = _kernel_answers.get((op, device_type))
    if answer is None:
        answer = _kernel_answers[(op, device_type)] = _has_kernel(op, device_type)
    return answer


def _has_kernel(op: str, device_type: str) -> bool:
    state = ensure_loaded()
    if state.backend != "compiled":
        return False
    if device_type == "meta":
        return True
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"lostprune::{op}", key):
        return True
    if (op, device_type) not in state.warned_ops:
        state.warned_ops.add((op, device_type))
        warnings.warn(f"lostprune.{op}: no compiled {device_type} kernel in this build; "
                      "using the PyTorch reference", LostpruneBuildWarning, stacklevel=3)
    return False
