"""The 19 corruptions of CIFAR-10-C / ImageNet-C (docs/methods.md §Corruptions) on batches of tensors.

``corrupt(images, name, severity, seed=None)`` takes N×C×H×W (or C×H×W) images, float in
[0, 1] or uint8, on any device, and returns the corrupted batch in the same dtype, shape and
device. Parameters follow the original generation scripts: the CIFAR-10-C table for images
up to 64 px, the ImageNet-C table (as packaged by ``imagecorruptions``) above; ``table=``
overrides. uint8 results are truncated to 8 bits like the scripts' ``np.uint8``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import blur, digital, noise, weather
from ._ops import rgb_to_gray

FAMILIES = {"noise": noise, "blur": blur, "weather": weather, "digital": digital}

# the benchmark's order: the 15 of the papers' mean corruption error, then the 4 held-out ones
NAMES = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
# the corruptions that draw no random numbers
DETERMINISTIC = (
    "defocus_blur",
    "zoom_blur",
    "gaussian_blur",
    "brightness",
    "contrast",
    "saturate",
    "jpeg_compression",
    "pixelate",
)
TABLES = ("cifar", "imagenet")
CIFAR_MAX_SIDE = 64


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str
    function: Callable[..., Tensor]
    params: dict  # table -> list of 5 parameter sets, severity 1..5


REGISTRY: dict[str, Corruption] = {
    name: Corruption(name, family, module.FUNCTIONS[name], module.PARAMS[name])
    for family, module in FAMILIES.items()
    for name in module.FUNCTIONS
}
assert set(REGISTRY) == set(NAMES)


def corruption_names(family: str | None = None) -> list[str]:
    """All 19 names, or those of one family (noise, blur, weather, digital)."""
    if family is None:
        return list(NAMES)
    if family not in FAMILIES:
        raise ValueError(f"unknown corruption family {family!r}; families: {', '.join(FAMILIES)}")
    return [n for n in NAMES if REGISTRY[n].family == family]


def _check_name(name: str) -> Corruption:
    if name not in REGISTRY:
        raise ValueError(f"unknown corruption {name!r}; available: {', '.join(NAMES)}")
    return REGISTRY[name]


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return severity


def table_for(height: int, width: int) -> str:
    """'cifar' for images up to 64 px on their longer side, else 'imagenet'."""
    return "cifar" if max(height, width) <= CIFAR_MAX_SIDE else "imagenet"


def corruption_params(name: str, severity: int, table: str):
    """The generation scripts' parameters of one corruption at one severity."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    return _check_name(name).params[table][_check_severity(severity) - 1]


def _as_float_batch(images: Tensor) -> tuple[Tensor, bool, bool]:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    squeeze = images.dim() == 3
    if images.dim() not in (3, 4):
        raise ValueError(f"images must have shape N×C×H×W or C×H×W, got shape {tuple(images.shape)}")
    x = images.unsqueeze(0) if squeeze else images
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (dim 1 of N×C×H×W), got {x.shape[1]}")
    if min(x.shape[-2:]) < 8:
        raise ValueError(f"images must be at least 8×8 pixels, got {x.shape[-2]}×{x.shape[-1]}")
    is_uint8 = x.dtype == torch.uint8
    if is_uint8:
        return x.float() / 255, True, squeeze
    if not x.is_floating_point():
        raise TypeError(f"images must be float in [0, 1] or uint8, got {x.dtype}")
    if x.numel():
        lo, hi = float(x.amin()), float(x.amax())
        if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                "(pass pixels before normalization, or uint8)"
            )
    return x.float(), False, squeeze


def make_generator(seed: int | None, device) -> torch.Generator:
    """A generator on ``device``; seed None draws one from torch's global generator, so
    ``torch.manual_seed`` makes unseeded calls reproducible too."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    return torch.Generator(device=device).manual_seed(int(seed))


def corrupt(
    images: Tensor, name: str, severity: int, seed: int | None = None, *, table: str | None = None
) -> Tensor:
    """Corrupt a batch of images with one of the 19 corruptions at severity 1..5.

    images: N×C×H×W or C×H×W, float in [0, 1] or uint8, C in {1, 3}, any device.
    table: 'cifar' or 'imagenet' parameters; default by size (CIFAR up to 64 px).
    seed: makes the result reproducible (same device, same batch).
    """
    spec = _check_name(name)
    severity = _check_severity(severity)
    x, is_uint8, squeeze = _as_float_batch(images)
    table = table or table_for(*x.shape[-2:])
    params = corruption_params(name, severity, table)
    gray = x.shape[1] == 1
    if gray:
        x = x.expand(-1, 3, -1, -1)
    out = (
        spec.function(x.contiguous(), params, make_generator(seed, x.device), table=table) if x.numel() else x
    )
    if gray:
        out = rgb_to_gray(out)
    if is_uint8:  # truncated like the scripts' np.uint8; the 1e-4 absorbs float32 round-off
        out = torch.floor(out.clamp(0, 1) * 255 + 1e-4).to(torch.uint8)
    else:
        out = out.to(images.dtype)
    return out[0] if squeeze else out


__all__ = [
    "DETERMINISTIC",
    "NAMES",
    "REGISTRY",
    "TABLES",
    "Corruption",
    "corrupt",
    "corruption_names",
    "corruption_params",
    "make_generator",
    "table_for",
]
