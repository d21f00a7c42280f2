"""Weather corruptions: snow, frost, fog, spatter."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops, frost_textures

PARAMS = {
    # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
    "snow": {
        "cifar": [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        "imagenet": [
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ],
    },
    # (image weight, frost weight)
    "frost": {
        "cifar": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "imagenet": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    },
    # (fog strength, wibble decay)
    "fog": {
        "cifar": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "imagenet": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
    },
    # (mean, std, sigma, threshold, strength or mud sigma, mud: 0 water / 1 mud)
    "spatter": {
        "cifar": [
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ],
        "imagenet": [
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ],
    },
}

WATER = (175 / 255, 238 / 255, 238 / 255)
MUD = (63 / 255, 42 / 255, 20 / 255)


def snow(x: Tensor, params, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """A zoomed, thresholded Gaussian snow layer, motion-blurred at an angle in [-135, -45]
    degrees, added twice (once turned by 180°) to the image brightened towards its gray."""
    loc, scale, zoom, threshold, radius, sigma, weight = params
    n, _, h, w = x.shape
    layer = torch.randn((n, 1, h, w), generator=gen, device=x.device, dtype=x.dtype) * scale + loc
    # imagecorruptions blurs the whole zoomed layer and crops it afterwards: the pixels beyond
    # the image reach into the blur near the bottom and right edges
    cifar = table == "cifar"
    layer = _ops.clipped_zoom(layer, zoom, centered=cifar, full=not cifar)
    layer = torch.where(layer < threshold, 0.0, layer).clamp_(0, 1)
    if cifar:  # the CIFAR script blurs an 8-bit PNG of the layer with ImageMagick
        layer = torch.floor(layer * 255) / 255
    angles = _ops.uniform((n,), -135, -45, gen, x.device)
    layer = torch.round(_ops.motion_blur(layer, radius, sigma, angles) * 255) / 255
    layer = layer[..., :h, :w]
    x = weight * x + (1 - weight) * torch.maximum(x, _ops.rgb_to_gray(x) * 1.5 + 0.5)
    return (x + layer + torch.rot90(layer, 2, dims=(-2, -1))).clamp_(0, 1)


def _scaled_texture(index: int, height: int, width: int, table: str, device: str) -> Tensor:
    return _scaled_texture_from(frost_textures.source(), index, height, width, table, device)


@lru_cache(maxsize=64)
def _scaled_texture_from(source: str, index: int, height: int, width: int, table: str, device: str) -> Tensor:
    """A frost texture resized as the scripts do: by 0.2 (bilinear) for CIFAR, else by 1.1×
    the factor that makes it cover the image (bicubic); never smaller than the image."""
    tex = frost_textures.textures()[index]
    th, tw = tex.shape[-2:]
    if table == "cifar" and th * 0.2 > height and tw * 0.2 > width:
        size, mode = (round(th * 0.2), round(tw * 0.2)), "bilinear"
    else:
        factor = 1.1 * max(1.0, height / th, width / tw)
        size, mode = (math.ceil(th * factor), math.ceil(tw * factor)), "bicubic"
    out = F.interpolate(tex.unsqueeze(0), size=size, mode=mode, align_corners=False)
    return _ops.quantize(out[0]).to(device)


def frost(
    x: Tensor,
    params,
    gen: torch.Generator,
    table: str = "cifar",
    crops: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """image weight · x + frost weight · (a random crop of one of five frost textures).

    ``crops`` = (texture index, top, left) per image replaces the random draws, for tests."""
    image_weight, frost_weight = params
    n, _c, h, w = x.shape
    if crops is None:
        which = torch.randint(0, len(frost_textures.FILES), (n,), generator=gen, device=x.device).cpu()
        draws = torch.rand((n, 2), generator=gen, device=x.device, dtype=torch.float64).cpu()
    else:
        which = crops[0].cpu().long()
    ice = torch.empty_like(x)
    for k in which.unique().tolist():
        tex = _scaled_texture(k, h, w, table, str(x.device))
        members = (which == k).nonzero().flatten()
        if crops is None:  # np.random.randint(0, size - crop): start in [0, size - crop)
            top = (draws[members, 0] * (tex.shape[1] - h)).long()
            left = (draws[members, 1] * (tex.shape[2] - w)).long()
        else:
            top, left = crops[1].cpu().long()[members], crops[2].cpu().long()[members]
        rows = top.to(x.device).view(-1, 1, 1) + torch.arange(h, device=x.device).view(1, -1, 1)
        cols = left.to(x.device).view(-1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, -1)
        ice[members.to(x.device)] = tex[:, rows, cols].permute(1, 0, 2, 3).to(x.dtype)
    return (image_weight * x + frost_weight * ice).clamp_(0, 1)


def frost_crop_range(index: int, height: int, width: int, table: str) -> tuple[int, int]:
    """(rows, cols) of texture ``index`` as scaled for an image of this size."""
    tex = _scaled_texture(index, height, width, table, "cpu")
    return tex.shape[1], tex.shape[2]


def fog(x: Tensor, params, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """Adds a diamond-square plasma, then rescales by max / (max + strength) per image."""
    strength, decay = params
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    plasma = _ops.plasma_fractal(n, size, decay, gen, x.device)[:, None, :h, :w].to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * plasma) * peak / (peak + strength)).clamp_(0, 1)


def _water_mask(liquid8: Tensor) -> Tensor:
    """The scripts' water-drop shading from the 8-bit liquid layer: distance to the drop
    edges (Canny), capped at 20, smoothed, equalized and embossed."""
    edges = _ops.canny(liquid8, 50, 150)
    dist = _ops.distance_to(edges, cap=20.0)
    dist = torch.floor(_ops.box_blur3(dist))
    dist = _ops.equalize_hist(dist)
    emboss = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    dist = _ops.correlate2d(dist, emboss, "reflect101").round_().clamp_(0, 255)
    dist = torch.round(_ops.box_blur3(dist))
    m = liquid8 * dist
    peak = m.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, m / peak.clamp_min(1e-12), 0.0)


def spatter(x: Tensor, params, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """Water drops (pale turquoise highlights) for the milder severities, mud (brown
    blotches replacing the image) for the stronger ones."""
    loc, scale, sigma, threshold, strength, mud = params
    n, _c, h, w = x.shape
    liquid = torch.randn((n, 1, h, w), generator=gen, device=x.device, dtype=x.dtype) * scale + loc
    liquid = _ops.gaussian_filter(liquid, sigma)
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    if not mud:
        m = _water_mask(torch.floor(liquid * 255).clamp_(0, 255)) * strength
        color = torch.tensor(WATER, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x + m * color).clamp_(0, 1)
    m = _ops.gaussian_filter((liquid > threshold).to(x.dtype), strength)
    m = torch.where(m < 0.8, 0.0, m)
    color = torch.tensor(MUD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * (1 - m) + color * m).clamp_(0, 1)


FUNCTIONS = {"snow": snow, "frost": frost, "fog": fog, "spatter": spatter}
