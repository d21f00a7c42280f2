"""Client for benchmarks/imagecorruptions_worker.py, which runs the `imagecorruptions`
package in its own venv (see make_imagecorruptions_venv.sh); IMAGECORRUPTIONS_PYTHON names
that venv's python (default /tmp/ic-venv/bin/python)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

WORKER = Path(__file__).resolve().parent / "imagecorruptions_worker.py"


def reference_python() -> str | None:
    path = os.environ.get("IMAGECORRUPTIONS_PYTHON", "/tmp/ic-venv/bin/python")
    return path if Path(path).is_file() else None


def frost_dir(python: str | None = None) -> str | None:
    """The package's folder of frost photographs, found by the reference python."""
    python = python or reference_python()
    if python is None:
        return None
    out = subprocess.run(
        [
            python,
            "-c",
            (
                "import imagecorruptions, os; "
                "print(os.path.join(os.path.dirname(imagecorruptions.__file__), 'frost'))"
            ),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or None


class ReferenceWorker:
    """A persistent worker process: images are sent once, each run is timed inside it."""

    def __init__(self, python: str | None = None):
        python = python or reference_python()
        if python is None:
            raise RuntimeError(
                "no imagecorruptions venv: run benchmarks/make_imagecorruptions_venv.sh "
                "and set IMAGECORRUPTIONS_PYTHON"
            )
        self.tmp = tempfile.TemporaryDirectory(prefix="lp-ic-")
        self.proc = subprocess.Popen(
            [python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def load(self, images_nhwc: np.ndarray) -> None:
        path = Path(self.tmp.name) / "images.npy"
        np.save(path, np.ascontiguousarray(images_nhwc, dtype=np.uint8))
        self._ask(op="load", images=str(path))

    def run(self, name: str, severity: int, table: str = "imagenet", seed: int = 0) -> float:
        """Seconds the package took inside the worker."""
        return self._ask(op="run", name=name, severity=severity, table=table, seed=seed, out=None)["seconds"]

    def corrupt(self, name: str, severity: int, table: str = "imagenet", seed: int = 0) -> np.ndarray:
        out = Path(self.tmp.name) / "out.npy"
        self._ask(op="run", name=name, severity=severity, table=table, seed=seed, out=str(out))
        return np.load(out)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
