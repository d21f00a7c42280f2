"""The CPU kernels' SIMD layer (csrc/common/simd.h) at every vector width, and the note
`lostprune build` prints when a build cannot use this CPU's fast path."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from lostprune.ops import _build, _toolchain

ROOT = Path(__file__).resolve().parent.parent
X86 = platform.machine() in ("x86_64", "AMD64")


def _marches() -> list[str]:
    flags = _toolchain.cpu_flags()
    marches = ["x86-64"]  # SSE2: 16-byte vectors
    if {"avx2", "fma"} <= flags:
        marches.append("x86-64-v3")  # AVX2
    if "avx512f" in flags:
        marches.append("native")  # AVX-512 where the CPU has it
    return marches


@pytest.mark.skipif(not X86 or shutil.which("g++") is None, reason="needs g++ on x86-64")
@pytest.mark.parametrize("march", _marches())
def test_transposing_reduction_at_every_width(tmp_path, march):
    exe = tmp_path / "test_simd_arith"
    subprocess.run(
        [
            "g++",
            "-std=c++20",
            "-O2",
            f"-march={march}",
            "-Wall",
            "-Wextra",
            "-Werror",
            str(ROOT / "tests/cpp/test_simd_arith.cpp"),
            "-o",
            str(exe),
        ],
        check=True,
        timeout=300,
    )
    done = subprocess.run([str(exe)], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expect = {"x86-64": "SSE2", "x86-64-v3": "AVX2", "native": "AVX-512"}[march]
    assert f"vector ISA {expect}," in done.stdout


def test_vector_isa_note(monkeypatch):
    monkeypatch.setenv("LOSTPRUNE_MARCH", "x86-64-v3")
    avx512 = {"avx2", "fma", "avx512f"}
    note = _toolchain.vector_isa_note("AVX2", avx512)
    assert "built for AVX2 (LOSTPRUNE_MARCH=x86-64-v3) but this CPU has AVX-512" in note
    assert _toolchain.vector_isa_note("AVX-512", avx512) is None
    assert _toolchain.vector_isa_note("AVX2", {"avx2", "fma"}) is None
    assert "this CPU has AVX2" in _toolchain.vector_isa_note("SSE2", {"avx2", "fma"})
    assert "neither AVX2 nor AVX-512" in _toolchain.vector_isa_note("SSE2", {"sse2"})
    assert _toolchain.vector_isa_note("NEON", {"asimd"}) is None


def test_loaded_kernels_report_their_isa(compiled):
    assert _build.vector_isa() in _toolchain.VECTOR_ISAS
