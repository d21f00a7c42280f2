"""Digital corruptions: brightness, contrast, saturate, jpeg_compression, pixelate,
elastic_transform."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _ops

PARAMS = {
    "brightness": {"cifar": [0.05, 0.1, 0.15, 0.2, 0.3], "imagenet": [0.1, 0.2, 0.3, 0.4, 0.5]},
    "contrast": {"cifar": [0.75, 0.5, 0.4, 0.3, 0.15], "imagenet": [0.4, 0.3, 0.2, 0.1, 0.05]},
    # (saturation factor, saturation offset)
    "saturate": {
        "cifar": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
        "imagenet": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    },
    "jpeg_compression": {"cifar": [80, 65, 58, 50, 40], "imagenet": [25, 18, 15, 10, 7]},
    "pixelate": {"cifar": [0.95, 0.9, 0.85, 0.75, 0.65], "imagenet": [0.6, 0.5, 0.4, 0.3, 0.25]},
    # CIFAR: (alpha, sigma, affine jitter) as fractions of the image size;
    # ImageNet (imagecorruptions): alpha, with sigma = 1 % and jitter 0.5 % of the size
    "elastic_transform": {
        "cifar": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
        "imagenet": [12.5, 16.25, 21.25, 25.0, 30.0],
    },
}


def _value_and_range(x: Tensor) -> tuple[Tensor, Tensor]:
    hi = x.amax(1, keepdim=True)
    return hi, hi - x.amin(1, keepdim=True)


def brightness(x: Tensor, shift: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """HSV value + shift (clipped to 1), hue and saturation kept: a scaling of the RGB
    triple by V'/V, the closed form of skimage's rgb2hsv → hsv2rgb round trip."""
    value, _ = _value_and_range(x)
    new = (value + shift).clamp(max=1.0)
    scaled = x * (new / value.clamp_min(1e-12))
    return torch.where(value > 0, scaled, new.expand_as(x)).clamp_(0, 1)


def contrast(x: Tensor, factor: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """(x − mean) · factor + mean, with the mean per image and channel."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp_(0, 1)


def saturate(x: Tensor, params, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """HSV saturation · factor + offset (clipped to [0, 1]), hue and value kept.

    With hue and value fixed, channel k is V·(1 − S·w_k) where w_k = (max − c_k)/(max − min)
    depends on the hue only; a gray pixel has hue 0, so w = (0, 1, 1) as in hsv2rgb."""
    factor, offset = params
    value, spread = _value_and_range(x)
    sat = torch.where(value > 0, spread / value.clamp_min(1e-12), 0.0)
    new_sat = (sat * factor + offset).clamp(0, 1)
    gray_weights = torch.tensor([0.0, 1.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    w = torch.where(spread > 0, (value - x) / spread.clamp_min(1e-12), gray_weights)
    return (value - new_sat * value * w).clamp_(0, 1)


def jpeg_compression(x: Tensor, quality: int, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """Encode as JPEG at ``quality`` (libjpeg, 4:2:0 chroma subsampling, like PIL) and decode."""
    from torchvision.io import decode_jpeg, encode_jpeg

    images = list(torch.round(x.clamp(0, 1) * 255).to(torch.uint8).cpu())
    decoded = decode_jpeg(encode_jpeg(images, quality=int(quality)))
    return torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255


def pixelate(x: Tensor, factor: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """PIL box downscale to factor × size, then back up (box for CIFAR, nearest for ImageNet)."""
    h, w = x.shape[-2:]
    small = _ops.pil_resize(_ops.quantize(x), (int(h * factor), int(w * factor)), "box")
    return _ops.pil_resize(small, (h, w), "box" if table == "cifar" else "nearest")


def _affine_sources(
    n: int, h: int, w: int, jitter: float, gen: torch.Generator, device
) -> tuple[Tensor, Tensor]:
    """Source coordinates of cv2.warpAffine under the CIFAR script's random affine: three
    points around the centre moved by U(−jitter, jitter) each."""
    center = torch.tensor([h // 2, w // 2], dtype=torch.float64)
    size = min(h, w) // 3
    src = torch.stack([center + size, torch.stack([center[0] + size, center[1] - size]), center - size])
    dst = src + _ops.uniform((n, 3, 2), -jitter, jitter, gen, device).cpu()
    # cv2 reads the points as (x, y); A solves [x y 1] @ A = [x' y']
    ones = torch.ones(3, 1, dtype=torch.float64)
    A = torch.linalg.solve(torch.cat([src, ones], 1).expand(n, 3, 3), dst)  # (n, 3, 2)
    M = A.transpose(1, 2)  # (n, 2, 3): dst = M @ [x, y, 1]
    lin_inv = torch.linalg.inv(M[:, :, :2])
    shift = -(lin_inv @ M[:, :, 2:])
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    pts = torch.stack([xs.flatten(), ys.flatten()])  # (2, HW) as (x, y)
    srcs = lin_inv @ pts + shift  # (n, 2, HW)
    return srcs[:, 1].view(n, h, w).to(device), srcs[:, 0].view(n, h, w).to(device)


def elastic_transform(x: Tensor, params, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """Smooth random displacement field (uniform noise, Gaussian-filtered, scaled), sampled
    bilinearly with mirrored borders. The CIFAR script first applies a random affine warp
    (its constants are fractions of the 32-px size; here of the image height)."""
    n, _c, h, w = x.shape
    dtype = x.dtype
    if table == "cifar":
        alpha, sigma, jitter = (v * h for v in params)
        ys, xs = _affine_sources(n, h, w, jitter, gen, x.device)
        x = _ops.grid_sample_pixels(x, ys.to(dtype), xs.to(dtype), "reflect101")
        amplitude, sigma = 1.0, float(sigma)
    else:
        alpha, sigma = params, (0.01 * h, 0.01 * w)
        amplitude = 0.005 * h
    fields = [
        _ops.gaussian_filter(
            _ops.uniform((n, 1, h, w), -amplitude, amplitude, gen, x.device),
            sigma,
            mode="reflect",
            truncate=3,
        )
        * alpha
        for _ in range(2)
    ]
    dx, dy = (f[:, 0].to(dtype) for f in fields)
    grid_y = torch.arange(h, device=x.device, dtype=dtype).view(1, h, 1)
    grid_x = torch.arange(w, device=x.device, dtype=dtype).view(1, 1, w)
    return _ops.grid_sample_pixels(x, grid_y + dy, grid_x + dx, "reflect").clamp_(0, 1)


FUNCTIONS = {
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
    "elastic_transform": elastic_transform,
}
