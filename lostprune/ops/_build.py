"""Compile ``csrc/`` on first use and load it as the ``torch.ops.lostprune`` library.

The library is built with ``torch.utils.cpp_extension.load`` (ninja) into a cache directory
keyed by lostprune version, torch version, backend (CPU, or CUDA: torch's CUDA version, the
nvcc release and the architectures actually compiled), the compilers (path and version) and
a hash of every source file, so a later process only hashes the sources and loads a ``.so``.
A new key starts from a copy of the newest sibling build, so ninja recompiles only the
files that changed. Builds are serialized with a file lock (a process that waits says so)
and published with an atomic rename: two processes building at once never see a
half-written cache entry; scratch folders of killed builds are removed by the next build.

If the build fails (or no compiler exists) lostprune warns once, naming the log file, and
every op runs its plain-PyTorch reference; a failed build is retried once the sources or
the toolchain change (or with ``lostprune build --force``). A cache directory that cannot
be written falls back to a private temporary directory for the process (one warning), and
to the references when that fails too. Environment:

- ``LOSTPRUNE_BACKEND``: ``auto`` (default), ``reference`` (never compile), ``compiled``
  (compile or raise).
- ``LOSTPRUNE_CUDA``: ``0`` builds CPU kernels only, ``1`` requires CUDA kernels (raises
  when torch has no CUDA or nvcc is missing); unset builds CUDA kernels when possible.
- ``LOSTPRUNE_CACHE``: cache directory (default ``$XDG_CACHE_HOME/lostprune``).
- ``LOSTPRUNE_CSRC``: build these sources instead of the packaged ``csrc/``.
- ``LOSTPRUNE_MARCH``: value for ``-march`` (default ``native``; ``none`` to omit).
- ``TORCH_CUDA_ARCH_LIST``: CUDA architectures; unset, those of the visible GPUs, or without
  one ``8.0;9.0+PTX`` (PTX of the newest, so later GPUs compile it when loading).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._process import pid_alive
from .._version import __version__
from ._toolchain import (
    arch_tag,
    compile_flags,
    cpu_tag,
    cuda_arch_flags,
    cuda_arch_list,
    cuda_requested,
    environment_vars,
    import_cpp_extension,
    march_setting,
    nvcc_release,
    toolchain,
)

LIBRARY_NAME = "lostprune_C"
_SOURCE_SUFFIXES = (".cpp", ".cu")
_HASHED_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")
# Files whose stem ends like this need CUDA (nvcc or the CUDA headers).
_CUDA_ONLY_STEMS = ("_cuda", "_cuda_glue")
# Without a visible GPU: Ampere and Hopper binaries, plus Hopper PTX that newer GPUs compile.
# Scratch folders of builds in progress: ".<key>.tmp<pid>" in the cache, and private
# fallback caches "lostprune-kernels-<pid>-*" in the temporary directory.
_SCRATCH_GLOB = ".*.tmp*"
_PRIVATE_PREFIX = "lostprune-kernels-"


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
    note: str = ""  # a warning for a build that worked around a fault (e.g. an unwritable cache)
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


def vector_isa() -> str | None:
    """The vector ISA the loaded CPU kernels were compiled for (None without compiled kernels)."""
    state = ensure_loaded()
    if state.backend != "compiled" or not torch._C._dispatch_has_kernel_for_dispatch_key(
        "lostprune::cpu_vector_isa", "CompositeExplicitAutograd"
    ):
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


def build_key(root: Path, cuda: bool) -> tuple[str, str]:
    """(prefix, key): prefix names the configuration, key adds the source hash."""
    march = march_setting()
    backend = "cpu"
    tools = toolchain(cuda)
    if cuda:  # torch's CUDA runtime, the compiler's release, the code really compiled
        arches = arch_tag(cuda_arch_flags(cuda_arch_list()))
        backend = f"cuda{torch.version.cuda}-nvcc{nvcc_release(tools)}-{arches}"
    machine = f"{platform.machine()}-{march or 'generic'}"
    if march == "native":
        machine += "-" + cpu_tag()
    tools = hashlib.sha256(tools.encode()).hexdigest()[:8]
    torch_version = torch.__version__.replace("+", "_")
    prefix = f"v{__version__}-torch{torch_version}-{backend}-{machine}-cc{tools}"
    return prefix, f"{prefix}-{source_hash(root)[:16]}"


# --------------------------------------------------------------------------- building
class _CacheUnwritable(Exception):
    """The cache directory (or a file in it) cannot be created or written."""

    def __init__(self, root: Path, error: OSError):
        super().__init__(f"{root}: {error.strerror or error}")
        self.root, self.error = root, error


@contextlib.contextmanager
def _writing(root: Path):
    """Turns an OSError of the block into _CacheUnwritable (read-only, no space, not a directory)."""
    try:
        yield
    except OSError as exc:
        raise _CacheUnwritable(root, exc) from exc


@contextlib.contextmanager
def _file_lock(path: Path, what: str):
    """An exclusive lock on ``path``; a process that has to wait says who it waits for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            print(f"lostprune: waiting for {holder} to finish {what} ...", file=sys.stderr, flush=True)
            start = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            print(f"lostprune: waited {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_scratch(root: Path) -> None:
    """Scratch folders of builds that were killed. Called under the build lock: every build
    in progress in ``root`` holds it, so any scratch folder left is stale."""
    for stale in root.glob(_SCRATCH_GLOB):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _remove_stale_private_caches() -> None:
    """Private caches (``lostprune-kernels-<pid>-*`` in the temporary directory) of processes
    that are gone (killed before their exit handler removed them)."""
    for stale in Path(tempfile.gettempdir()).glob(_PRIVATE_PREFIX + "*"):
        pid = stale.name[len(_PRIVATE_PREFIX) :].split("-", 1)[0]
        if stale.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _seed_from_sibling(root: Path, prefix: str, target: Path) -> None:
    """Copy the newest finished build of the same configuration, so ninja only
    recompiles what changed (objects are named relative to the build directory)."""
    siblings = [p for p in root.glob(prefix + "-*") if (p / f"{LIBRARY_NAME}.so").is_file()]
    if siblings:
        newest = max(siblings, key=lambda p: (p / f"{LIBRARY_NAME}.so").stat().st_mtime)
        shutil.copytree(newest, target, symlinks=True, dirs_exist_ok=True)


def _compile(sources: list[Path], build_dir: Path, cuda: bool, verbose: bool) -> Path:
    load = import_cpp_extension().load
    cflags, cuda_flags, ldflags = compile_flags(cuda, march_setting())
    # The architectures of the cache key, whatever torch would infer by itself.
    arches = {"TORCH_CUDA_ARCH_LIST": cuda_arch_list()} if cuda else {}
    with environment_vars(**arches):
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


@dataclass
class _Build:
    """One build request: the sources, the backend and the cache key."""

    src: Path
    cuda: bool
    prefix: str
    key: str
    mode: str  # LOSTPRUNE_BACKEND: auto or compiled
    verbose: bool
    start: float

    def fallback(self, reason: str, log: Path | None) -> BuildState:
        if self.mode == "compiled":
            raise RuntimeError(f"lostprune: {reason}" + (f"; see {log}" if log else ""))
        warning = f"lostprune: {reason}; all ops run their PyTorch references."
        if log is not None:
            warning += f" Build log: {log}. Fix and rebuild with `lostprune build --force`."
        return BuildState("reference", cuda=False, log=log, key=self.key, reason=reason, note=warning)

    def compiled(self, library: Path, reason: str, note: str = "") -> BuildState:
        return BuildState(
            "compiled",
            cuda=self.cuda,
            library=library,
            key=self.key,
            reason=reason,
            seconds=time.perf_counter() - self.start,
            note=note,
        )


def _build_into(b: _Build, root: Path, force: bool, seed_from: Path | None = None) -> BuildState:
    """Loads or builds the library in cache ``root``; raises _CacheUnwritable when a file
    that the build needs cannot be written there."""
    target = root / b.key
    library = target / f"{LIBRARY_NAME}.so"
    failed = root / f"{b.key}.failed.log"
    if force:
        with _writing(root):
            failed.unlink(missing_ok=True)
    if library.is_file():
        torch.ops.load_library(str(library))
        return b.compiled(library, "loaded from cache")
    if failed.is_file():
        return b.fallback("an earlier build of these sources with this toolchain failed", failed)
    with contextlib.ExitStack() as locked:
        with _writing(root):
            locked.enter_context(
                _file_lock(root / ".build.lock", f"building the lostprune kernels in {root}")
            )
        if library.is_file():  # another process built it while this one waited
            torch.ops.load_library(str(library))
            return b.compiled(library, "loaded from cache")
        if failed.is_file():
            return b.fallback("an earlier build of these sources with this toolchain failed", failed)
        scratch = root / f".{b.key}.tmp{os.getpid()}"
        with _writing(root):
            _remove_stale_scratch(root)
            _seed_from_sibling(seed_from or root, b.prefix, scratch)
            scratch.mkdir(parents=True, exist_ok=True)
        try:
            built = _compile(list_sources(b.src, b.cuda), scratch, b.cuda, b.verbose)
        except Exception as exc:  # noqa: BLE001 - compiler missing, compile or link error
            shutil.rmtree(scratch, ignore_errors=True)
            with _writing(root):
                failed.write_text(
                    f"lostprune kernel build failed ({b.key})\nsources: {b.src}\n"
                    f"{toolchain(b.cuda)}\n\n{exc}\n"
                )
            return b.fallback(f"kernel build failed ({type(exc).__name__})", failed)
        with _writing(root):
            shutil.rmtree(target, ignore_errors=True)
            os.replace(scratch, target)  # publish atomically; the mapped .so stays valid
        return b.compiled(target / built.name, "built now")


def _build_private(b: _Build, shared: Path, fault: _CacheUnwritable) -> BuildState:
    """The cache cannot be written: build in a private temporary directory, removed at exit
    (its log stays when the build fails); references when that fails too. One warning."""
    problem = f"the kernel cache {fault.root} cannot be written ({fault.error.strerror or fault.error})"
    _remove_stale_private_caches()
    try:
        private = Path(tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-"))
    except OSError as exc:
        return b.fallback(f"{problem}, nor a temporary directory ({exc.strerror or exc})", None)
    try:
        state = _build_into(b, private, force=False, seed_from=shared if shared.is_dir() else None)
    except _CacheUnwritable as again:
        return b.fallback(f"{problem}, nor the temporary directory {private} ({again.error.strerror})", None)
    if state.backend != "compiled":  # the log stays for the user to read
        return b.fallback(f"{problem}, and the build in {private} failed", state.log)
    atexit.register(shutil.rmtree, private, True)
    state.reason = f"built in a private temporary directory ({problem})"
    state.note = (
        f"lostprune: {problem}; the kernels were built in {private} for this process only "
        "(set LOSTPRUNE_CACHE to a writable directory to keep them)"
    )
    return state


def _load(force: bool, verbose: bool) -> BuildState:
    mode = os.environ.get("LOSTPRUNE_BACKEND", "auto").strip() or "auto"
    if mode not in ("auto", "reference", "compiled"):
        raise ValueError(f"LOSTPRUNE_BACKEND must be auto, reference or compiled, got {mode!r}")
    if mode == "reference":
        return BuildState("reference", reason="LOSTPRUNE_BACKEND=reference")
    start = time.perf_counter()
    cuda = cuda_requested()

    aot = None if force else _aot_library()
    if aot is not None:
        torch.ops.load_library(str(aot))
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("lostprune::gather_channels", "CUDA")
        return BuildState(
            "compiled",
            cuda=has_cuda,
            library=aot,
            reason="built at install time",
            seconds=time.perf_counter() - start,
        )

    src = csrc_dir()
    prefix, key = build_key(src, cuda)
    b = _Build(src, cuda, prefix, key, mode, verbose, start)
    root = cache_root()
    try:
        return _build_into(b, root, force)
    except _CacheUnwritable as fault:
        return _build_private(b, root, fault)


def ensure_loaded(force: bool = False, verbose: bool = False) -> BuildState:
    """Build (if needed) and load the kernels once per process; never raises for a failed
    build unless LOSTPRUNE_BACKEND=compiled or LOSTPRUNE_CUDA=1 asks for it."""
    global _state
    if _state is not None and not force:
        return _state
    with _lock:
        if _state is None or force:
            if force and _state is not None and _state.backend == "compiled":
                raise RuntimeError(
                    "lostprune: kernels are already loaded in this process; "
                    "run the build in a fresh process to rebuild"
                )
            _state = _load(force, verbose)
            _kernel_answers.clear()
            if _state.backend == "compiled":
                from . import _registry  # fake and autograd kernels need the schemas

                _registry.register_all()
            if _state.note:
                warnings.warn(_state.note, LostpruneBuildWarning, stacklevel=3)
    return _state


# (op, device type) -> use_kernel's answer; asking the dispatcher costs microseconds per call.
_kernel_answers: dict[tuple[str, str], bool] = {}


def kernels_loaded() -> bool:
    """True when this process has loaded the compiled kernels already (never starts a build)."""
    return _state is not None and _state.backend == "compiled"


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
        warnings.warn(
            f"lostprune.{op}: no compiled {device_type} kernel in this build; using the PyTorch reference",
            LostpruneBuildWarning,
            stacklevel=3,
        )
    return False
