"""The on-the-fly build: cache, fallback to references, forced modes, concurrent builds."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lostprune._process import pid_alive
from lostprune.ops import _build, _toolchain

PROBE = textwrap.dedent(
    """
    import json, warnings, torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import lostprune.ops as ops
        state = ops.build_info()
        out, = ops.gather_channels([torch.arange(6.0).reshape(3, 2)], [[2, 0]])
    print(json.dumps({
        "backend": state.backend, "reason": state.reason, "cuda": state.cuda,
        "log": str(state.log) if state.log else None, "seconds": state.seconds,
        "library": str(state.library) if state.library else None,
        "warnings": [str(w.message) for w in caught if "lostprune" in str(w.message)],
        "result": out.tolist(),
    }))
    """
)


def probe(env_update: dict, cwd=None) -> dict:
    import json

    env = {**os.environ, "LOSTPRUNE_CUDA": "0", **env_update}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_probe(env_update: dict) -> subprocess.Popen:
    env = {**os.environ, "LOSTPRUNE_CUDA": "0", **env_update}
    return subprocess.Popen(
        [sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def broken_csrc(tmp_path) -> Path:
    copy = tmp_path / "csrc"
    shutil.copytree(_build.csrc_dir(), copy)
    with open(copy / "registration.cpp", "a") as f:
        f.write("\nthis is not C++;\n")
    return copy


def test_compile_error_falls_back_with_one_warning(broken_csrc, tmp_path):
    env = {"LOSTPRUNE_CSRC": str(broken_csrc), "LOSTPRUNE_CACHE": str(tmp_path / "cache")}
    first = probe(env)
    assert first["backend"] == "reference"
    assert first["result"] == [[4.0, 5.0], [0.0, 1.0]]  # the reference still answers
    assert len(first["warnings"]) == 1
    log = Path(first["log"])
    assert str(log) in first["warnings"][0]
    assert "this is not C++" in log.read_text() or "error" in log.read_text()
    # A second process does not retry the same failing sources; it warns at once.
    second = probe(env)
    assert second["backend"] == "reference" and second["reason"].startswith("an earlier build")
    assert len(second["warnings"]) == 1


def test_reference_backend_is_forced_without_building(tmp_path):
    result = probe({"LOSTPRUNE_BACKEND": "reference", "LOSTPRUNE_CACHE": str(tmp_path / "cache")})
    assert result["backend"] == "reference" and result["warnings"] == []
    assert not (tmp_path / "cache").exists()


def test_compiled_backend_raises_when_build_fails(broken_csrc, tmp_path):
    env = {
        **os.environ,
        "LOSTPRUNE_CUDA": "0",
        "LOSTPRUNE_BACKEND": "compiled",
        "LOSTPRUNE_CSRC": str(broken_csrc),
        "LOSTPRUNE_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-c", "import lostprune.ops as o; o.backend()"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0 and "kernel build failed" in done.stderr


def test_cuda_forced_without_nvcc_fails_loudly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(LOSTPRUNE_CUDA="1", PATH=str(tmp_path), LOSTPRUNE_CACHE=str(tmp_path / "cache"))
    code = "import lostprune.ops._build as b, lostprune.ops._toolchain as t; t.find_cuda_home = lambda: None; b.ensure_loaded()"
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and "LOSTPRUNE_CUDA=1 but CUDA kernels cannot be built" in done.stderr


def test_bad_environment_values(monkeypatch):
    monkeypatch.setenv("LOSTPRUNE_CUDA", "yes")
    with pytest.raises(ValueError, match="LOSTPRUNE_CUDA must be 0 or 1"):
        _toolchain.cuda_requested()


def test_concurrent_first_builds_both_succeed_then_load_from_cache(tmp_path):
    cache = tmp_path / "cache"
    (cache / ".v0-killed-build.tmp4242" / "half-written.o").mkdir(parents=True)  # left by a killed build
    env = {"LOSTPRUNE_CACHE": str(cache)}
    procs = [start_probe(env) for _ in range(2)]
    import json

    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert all(r["backend"] == "compiled" and r["warnings"] == [] for r in results)
    assert sorted(r["reason"] for r in results) == ["built now", "loaded from cache"]
    assert all(r["result"] == [[4.0, 5.0], [0.0, 1.0]] for r in results)
    entries = sorted(p.name for p in cache.iterdir() if not p.name.startswith(".build.lock"))
    assert len(entries) == 1 and not entries[0].startswith(
        "."
    )  # no scratch directory left, stale ones removed
    later = probe(env)
    assert later["reason"] == "loaded from cache" and later["library"].startswith(str(cache))


def test_source_hash_changes_with_any_source(tmp_path):
    copy = tmp_path / "csrc"
    shutil.copytree(_build.csrc_dir(), copy)
    before = _build.source_hash(copy)
    (copy / "gather" / "gather.h").write_text((copy / "gather" / "gather.h").read_text() + "\n// edit\n")
    assert _build.source_hash(copy) != before


def test_cuda_sources_join_only_with_cuda():
    root = _build.csrc_dir()
    cpu = {p.name for p in _build.list_sources(root, cuda=False)}
    cuda = {p.name for p in _build.list_sources(root, cuda=True)}
    assert "gather_cuda.cu" in cuda and "gather_cuda_glue.cpp" in cuda
    assert not any("_cuda" in name for name in cpu)
    assert "gather_cpu.cpp" in cpu and "registration.cpp" in cpu


# --------------------------------------------------------------------------- CUDA configuration
def test_default_arch_list_embeds_ptx_for_the_newest(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(_build.torch.cuda, "is_available", lambda: False)
    assert _toolchain.cuda_arch_list() == _toolchain.DEFAULT_CUDA_ARCHES == "8.0;9.0+PTX"
    flags = _toolchain.cuda_arch_flags(_toolchain.cuda_arch_list())
    assert "-gencode=arch=compute_90,code=compute_90" in flags  # PTX: newer GPUs compile it at load
    assert "-gencode=arch=compute_80,code=sm_80" in flags and "-gencode=arch=compute_90,code=sm_90" in flags
    assert _toolchain.arch_tag(flags) == "sm80.sm90.ptx90"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")  # the variable wins
    assert (
        _toolchain.cuda_arch_list() == "8.6"
        and _toolchain.arch_tag(_toolchain.cuda_arch_flags("8.6")) == "sm86"
    )


def test_arch_list_of_the_visible_gpus(monkeypatch):
    cuda = _build.torch.cuda
    capabilities = [(9, 0), (8, 6), (12, 0)]  # the last is newer than this torch supports: capped
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(cuda, "get_device_capability", lambda i: capabilities[i])
    monkeypatch.setattr(cuda, "get_arch_list", lambda: ["sm_80", "sm_86", "sm_90", "compute_90"])
    assert _toolchain.cuda_arch_list() == "8.6;9.0+PTX"


def test_arch_tag_reads_every_gencode_form():
    assert _toolchain.arch_tag(["-gencode=arch=compute_90a,code=[sm_90a,compute_90a]"]) == "sm90a.ptx90a"
    assert _toolchain.arch_tag(["-gencode=arch=compute_80,code=sm_80"]) == "sm80"
    with pytest.raises(RuntimeError, match="no CUDA architecture"):
        _toolchain.arch_tag(["-O3"])


def test_cache_key_holds_architectures_cuda_version_and_toolchain(monkeypatch):
    root = _build.csrc_dir()
    monkeypatch.setattr(
        _build,
        "toolchain",
        lambda cuda: (
            "c++ = /usr/bin/g++\ng++ 12\nnvcc = /cuda/bin/nvcc\n"
            "Cuda compilation tools, release 13.0, V13.0.88"
        ),
    )
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    prefix, key = _build.build_key(root, cuda=True)
    assert key.startswith(prefix) and f"cuda{_build.torch.version.cuda}-nvcc13.0-sm80.sm90.ptx90-" in prefix
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    hopper, _ = _build.build_key(root, cuda=True)
    assert "-sm90-" in hopper and hopper != prefix  # another binary, another cache entry
    monkeypatch.setattr(_build.torch.version, "cuda", "12.8")
    older_runtime, _ = _build.build_key(root, cuda=True)
    assert "cuda12.8-" in older_runtime and older_runtime != hopper
    monkeypatch.setattr(_build, "toolchain", lambda cuda: "c++ = /usr/bin/g++\ng++ 13")
    cpu_before = _build.build_key(root, cuda=False)[0]
    monkeypatch.setattr(_build, "toolchain", lambda cuda: "c++ = /opt/gcc/bin/g++\ng++ 13")
    assert _build.build_key(root, cuda=False)[0] != cpu_before  # another compiler: another entry


def test_toolchain_names_the_compilers_path_and_version(monkeypatch, tmp_path):
    _toolchain._toolchain_for.cache_clear()
    monkeypatch.setenv("CXX", "c++")
    described = _toolchain.toolchain(cuda=False)
    assert described.startswith(f"c++ = {os.path.realpath(shutil.which('c++'))}") and "\n" in described
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert "not found" in _toolchain.toolchain(cuda=False)
    home = _toolchain.find_cuda_home()
    if home is not None:
        assert "nvcc = " in _toolchain.toolchain(cuda=True) and "release" in _toolchain.toolchain(cuda=True)


def test_no_fast_math_and_line_info_for_the_sanitizer():
    _, cuda_flags, _ = _toolchain.compile_flags(cuda=True, march=None)
    assert "--use_fast_math" not in cuda_flags and "-lineinfo" in cuda_flags
    cmake = Path(_build.csrc_dir()).parent / "CMakeLists.txt"
    if cmake.is_file():  # the CMake build compiles the same way
        assert "use_fast_math" not in cmake.read_text() and "9.0+PTX" in cmake.read_text()


# --------------------------------------------------------------------------- cache faults
def _unwritable(tmp_path: Path) -> Path:
    """A cache path that cannot be created, even by root: its parent is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    return blocker / "cache"


def _dead_pid() -> int:
    pid = 4_000_000
    while pid_alive(pid):
        pid += 1
    return pid


@pytest.mark.slow
def test_unwritable_cache_builds_in_a_private_temporary_directory(tmp_path):
    tmp = tmp_path / "tmp"
    stale = tmp / f"{_build._PRIVATE_PREFIX}{_dead_pid()}-left"  # a killed process's private cache
    (stale / "junk").mkdir(parents=True)
    result = probe({"LOSTPRUNE_CACHE": str(_unwritable(tmp_path)), "TMPDIR": str(tmp)})
    assert result["backend"] == "compiled" and result["result"] == [[4.0, 5.0], [0.0, 1.0]]
    assert len(result["warnings"]) == 1
    assert "cannot be written" in result["warnings"][0] and "for this process only" in result["warnings"][0]
    assert result["library"].startswith(str(tmp / _build._PRIVATE_PREFIX))
    assert not stale.exists()  # cleaned
    assert list(tmp.iterdir()) == []  # and the private cache is gone with the process


def test_unwritable_cache_and_failing_build_fall_back_to_references_with_one_warning(broken_csrc, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = probe(
        {
            "LOSTPRUNE_CSRC": str(broken_csrc),
            "LOSTPRUNE_CACHE": str(_unwritable(tmp_path)),
            "TMPDIR": str(tmp),
        }
    )
    assert result["backend"] == "reference" and result["result"] == [[4.0, 5.0], [0.0, 1.0]]
    assert len(result["warnings"]) == 1
    warning = result["warnings"][0]
    assert "cannot be written" in warning and "failed" in warning and result["log"] in warning
    assert Path(result["log"]).is_file()  # the log stays for the user to read


def test_a_fixed_toolchain_builds_again_without_force(broken_csrc, tmp_path):
    compiler = tmp_path / "cc"

    def install(version: str) -> None:  # a compiler that reports a version and fails everything else
        compiler.write_text(
            f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{version}'; exit 0; fi\nexit 1\n"
        )
        compiler.chmod(0o755)

    cache = tmp_path / "cache"
    env = {"LOSTPRUNE_CACHE": str(cache), "CXX": str(compiler), "LOSTPRUNE_CSRC": str(broken_csrc)}
    install("fakecc 1.0")
    first = probe(env)
    assert first["backend"] == "reference" and first["reason"].startswith("kernel build failed")
    again = probe(env)
    assert again["reason"].startswith("an earlier build")  # the same toolchain is not retried
    install("fakecc 1.1")  # the toolchain changed: a new attempt, no --force needed
    fixed = probe(env)
    assert fixed["reason"].startswith("kernel build failed") and fixed["log"] != first["log"]
    assert len(list(cache.glob("*.failed.log"))) == 2


def test_waiting_for_the_build_lock_says_so(tmp_path, capsys):
    lock = tmp_path / ".build.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import fcntl, sys, time
        with open({str(lock)!r}, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write("pid 424242 on buildhost"); f.flush()
            print("locked", flush=True)
            time.sleep(1.5)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with _build._file_lock(lock, "building the kernels"):
        assert lock.read_text().startswith(f"pid {os.getpid()}")  # the holder names itself
    holder.wait(timeout=60)
    err = capsys.readouterr().err
    assert "waiting for pid 424242 on buildhost to finish building the kernels" in err and "waited" in err


def test_stale_scratch_folders_are_removed_under_the_lock(tmp_path):
    (tmp_path / ".v0-key.tmp123" / "obj").mkdir(parents=True)
    (tmp_path / "v0-key-finished").mkdir()
    _build._remove_stale_scratch(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0-key-finished"]
