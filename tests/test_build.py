"""The on-the-fly build: cache, fallback to references, forced modes, concurrent builds."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lostprune.ops import _build

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
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd=cwd,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_probe(env_update: dict) -> subprocess.Popen:
    env = {**os.environ, "LOSTPRUNE_CUDA": "0", **env_update}
    return subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


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
    env = {**os.environ, "LOSTPRUNE_CUDA": "0", "LOSTPRUNE_BACKEND": "compiled",
           "LOSTPRUNE_CSRC": str(broken_csrc), "LOSTPRUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", "import lostprune.ops as o; o.backend()"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "kernel build failed" in done.stderr


def test_cuda_forced_without_nvcc_fails_loudly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(LOSTPRUNE_CUDA="1", PATH=str(tmp_path), LOSTPRUNE_CACHE=str(tmp_path / "cache"))
    code = ("import lostprune.ops._build as b; b.find_cuda_home = lambda: None; b.ensure_loaded()")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "LOSTPRUNE_CUDA=1 but CUDA kernels cannot be built" in done.stderr


def test_bad_environment_values(monkeypatch):
    monkeypatch.setenv("LOSTPRUNE_CUDA", "yes")
    with pytest.raises(ValueError, match="LOSTPRUNE_CUDA must be 0 or 1"):
        _build._cuda_requested()


def test_concurrent_first_builds_both_succeed_then_load_from_cache(tmp_path):
    cache = tmp_path / "cache"
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
    assert len(entries) == 1 and not entries[0].startswith(".")  # no scratch directory left behind
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
