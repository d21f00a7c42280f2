"""Blur corruptions: defocus_blur, glass_blur, motion_blur, zoom_blur, gaussian_blur."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import _ops

PARAMS = {
    # (disk radius, alias blur sigma)
    "defocus_blur": {
        "cifar": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "imagenet": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    },
    # (sigma, max shift, iterations)
    "glass_blur": {
        "cifar": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "imagenet": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    },
    # (radius, sigma); the angle is uniform in [-45, 45] degrees per image
    "motion_blur": {
        "cifar": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        "imagenet": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    },
    # zoom factors np.arange(1, stop, step): (stop, step)
    "zoom_blur": {
        "cifar": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
        "imagenet": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
    },
    "gaussian_blur": {"cifar": [0.4, 0.6, 0.7, 0.8, 1], "imagenet": [1, 2, 3, 4, 6]},
}


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The scripts' anti-aliased disk: a binary disk on a grid of at least 17×17, normalized,
    smoothed by cv2.GaussianBlur (3×3, or 5×5 for radius > 8)."""
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = int(radius), 5
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2) <= radius**2).to(torch.float64)
    disk /= disk.sum()
    taps = _ops.cv2_gaussian_taps(ksize, alias_blur)
    n = disk.shape[0]
    m = _ops.filter_matrix(n, taps, "reflect101", "cpu", torch.float64)
    kernel = m @ disk @ m.T
    # trim all-zero borders: same correlation, fewer taps
    rows = kernel.abs().sum(1).nonzero().flatten()
    r = int(max(half - int(rows.min()), int(rows.max()) - half))
    return kernel[half - r : half + r + 1, half - r : half + r + 1].to(torch.float32)


def defocus_blur(x: Tensor, params, gen: torch.Generator, table: str = "cifar") -> Tensor:
    radius, alias_blur = params
    return _ops.correlate2d(x, disk_kernel(radius, alias_blur), "reflect101").clamp_(0, 1)


def glass_sources(n: int, h: int, w: int, delta: int, offsets: Tensor) -> Tensor:
    """Where each pixel takes its value from after one pass of the scripts' local shuffle.

    The scripts walk h = H-δ..δ+1 and w = W-δ..δ+1 downwards and run
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views, which copies the pixel at
    (h', w') = (h + dy, w + dx) into (h, w) and leaves (h', w') as it was. A pixel copied
    from a position visited earlier gets that position's new value, so the sources form
    chains, resolved here by pointer jumping instead of a sequential loop.

    offsets: (n, visited, 2) integer (dx, dy) in [-δ, δ), in visiting order. Returns (n, H·W)
    flat source indices."""
    device = offsets.device
    hs = torch.arange(h - delta, delta, -1, device=device)
    ws = torch.arange(w - delta, delta, -1, device=device)
    visited = (hs.view(-1, 1) * w + ws.view(1, -1)).reshape(-1)  # descending flat index
    dx, dy = offsets[..., 0], offsets[..., 1]
    targets = visited.unsqueeze(0) + dy * w + dx  # (n, visited)
    order = torch.full((h * w,), -1, dtype=torch.long, device=device)
    order[visited] = torch.arange(visited.numel(), device=device)
    ident = torch.arange(h * w, device=device).expand(n, h * w)
    target = ident.clone()
    target[:, visited] = targets
    # a visited pixel whose source was visited before it continues the chain from there
    step_of_source = order[targets]
    chained = (step_of_source >= 0) & (step_of_source < order[visited].unsqueeze(0))
    nxt = ident.clone()
    nxt[:, visited] = torch.where(chained, targets, visited.unsqueeze(0).expand_as(targets))
    for _ in range(max(1, math.ceil(math.log2(max(visited.numel(), 2)))) + 1):
        jumped = nxt.gather(1, nxt)
        if torch.equal(jumped, nxt):  # every chain has reached its end (chains are short)
            break
        nxt = jumped
    return target.gather(1, nxt)


def glass_blur(
    x: Tensor, params, gen: torch.Generator, table: str = "cifar", offsets: list[Tensor] | None = None
) -> Tensor:
    """Gaussian blur, 8-bit truncation, ``iterations`` passes of the local shuffle, blur again.

    ``offsets`` (one (N, visited, 2) tensor per pass) replaces the random draws, for tests."""
    sigma, delta, iterations = params
    n, c, h, w = x.shape
    y = torch.floor(_ops.gaussian_filter(x, sigma) * 255) / 255
    if h > 2 * delta and w > 2 * delta:
        visited = (h - 2 * delta) * (w - 2 * delta)
        flat = y.reshape(n, c, h * w)
        for it in range(iterations):
            off = (
                offsets[it]
                if offsets is not None
                else torch.randint(-delta, delta, (n, visited, 2), generator=gen, device=x.device)
            )
            src = glass_sources(n, h, w, delta, off.to(x.device))
            flat = flat.gather(2, src.unsqueeze(1).expand(n, c, h * w))
        y = flat.view(n, c, h, w)
    return _ops.gaussian_filter(y, sigma).clamp_(0, 1)


def motion_blur(
    x: Tensor, params, gen: torch.Generator, table: str = "cifar", angles: Tensor | None = None
) -> Tensor:
    radius, sigma = params
    if angles is None:
        angles = _ops.uniform((x.shape[0],), -45, 45, gen, x.device)
    return _ops.motion_blur(x, radius, sigma, angles).clamp_(0, 1)


def zoom_factors(stop: float, step: float) -> list[float]:
    return [float(z) for z in np.arange(1, stop, step)]  # numpy's arange: the scripts' exact factors


def zoom_blur(x: Tensor, params, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """Mean of the image and its centre zooms by each factor (the CIFAR script trims the zoomed
    image symmetrically, ``imagecorruptions`` keeps its top-left corner)."""
    centered = table == "cifar"
    factors = zoom_factors(*params)
    out = x.clone()
    for z in factors:
        out += _ops.clipped_zoom(x, z, centered)
    return (out / (len(factors) + 1)).clamp_(0, 1)


def gaussian_blur(x: Tensor, sigma: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    return _ops.gaussian_filter(x, sigma).clamp_(0, 1)


FUNCTIONS = {
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "gaussian_blur": gaussian_blur,
}
