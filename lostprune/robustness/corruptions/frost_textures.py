"""The frost corruption's ice textures.

The generation scripts blend crops of six photographs of frost (five of them drawn) into
the images. Those photographs ship inside the ``imagecorruptions`` package; when it is
installed (it need not import: ``pip install --no-deps imagecorruptions`` suffices) or
``LOSTPRUNE_FROST_DIR`` names a folder holding ``frost1.png`` ... ``frost5.jpg``, they are
used. Otherwise lostprune makes a documented procedural stand-in: for each of the five
photographs, an image of the same size whose channels have the photograph's mean and
standard deviation, shaped as a mix of smooth diamond-square noise and its ridged form
(1 − |2n − 1|, thin bright filaments like ice crystals), quantized to 8 bits. With the
stand-in, frost changes images by about the same amount as with the photographs, but frost
numbers are then not comparable to published CIFAR-10-C / ImageNet-C results.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import _ops

FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

# (height, width, channel means, channel stds) of the five photographs, RGB in [0, 1]
_PHOTO_STATS = (
    (600, 900, (0.305, 0.585, 0.650), (0.106, 0.065, 0.060)),
    (315, 560, (0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
    (315, 560, (0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
    (350, 527, (0.540, 0.599, 0.648), (0.112, 0.112, 0.117)),
    (495, 660, (0.441, 0.484, 0.528), (0.174, 0.170, 0.163)),
)


def texture_dir() -> Path | None:
    """The folder with the original frost photographs, or None."""
    env = os.environ.get("LOSTPRUNE_FROST_DIR")
    candidates = [Path(env)] if env else []
    spec = importlib.util.find_spec("imagecorruptions")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "frost" for p in spec.submodule_search_locations]
    for folder in candidates:
        if all((folder / name).is_file() for name in FILES):
            return folder
    return None


def source() -> str:
    """Where the textures come from: the photographs' folder, or 'procedural'."""
    folder = texture_dir()
    return str(folder) if folder is not None else "procedural"


def _procedural(index: int) -> Tensor:
    h, w, mean, std = _PHOTO_STATS[index]
    gen = torch.Generator().manual_seed(1000 + index)
    size = 1 << max(h - 1, w - 1).bit_length()
    smooth = _ops.plasma_fractal(3, size, 1.6, gen, "cpu")[:, :h, :w]
    ridged = 1 - (2 * _ops.plasma_fractal(3, size, 2.2, gen, "cpu")[:, :h, :w] - 1).abs()
    t = 0.5 * smooth + 0.5 * ridged**4
    t = (t - t.mean((1, 2), keepdim=True)) / t.std((1, 2), keepdim=True)
    t = t * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return _ops.quantize(t)


@lru_cache(maxsize=4)
def _textures_cpu(folder: str | None) -> tuple[Tensor, ...]:
    if folder is None:
        return tuple(_procedural(i) for i in range(len(FILES)))
    from PIL import Image

    out = []
    for name in FILES:
        with Image.open(Path(folder) / name) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(arr).permute(2, 0, 1).contiguous())
    return tuple(out)


def textures() -> tuple[Tensor, ...]:
    """The five frost textures, (3, h, w) float in [0, 1] on the CPU."""
    folder = texture_dir()
    return _textures_cpu(None if folder is None else str(folder))
