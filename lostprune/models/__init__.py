"""Models by name. ``create(name)`` returns a freshly initialized network (no downloaded
weights) whose ``input_size`` attribute gives the (C, H, W) it expects."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from .cifar_resnet import CifarResNet
from .small_cnn import SmallCNN
from .statistics import randomize_norm_statistics
from .vgg import CifarVGG

_CIFAR = (3, 32, 32)
_IMAGENET = (3, 224, 224)


def _torchvision(builder: str, **fixed) -> Callable[..., nn.Module]:
    def make(num_classes: int = 1000, **kwargs) -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, builder)(weights=None, num_classes=num_classes, **fixed, **kwargs)

    return make


def _deeplab(num_classes: int = 21, **kwargs) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    return deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False, **kwargs
    )


# name -> (builder, default num_classes, input size, task)
REGISTRY: dict[str, tuple[Callable[..., nn.Module], int, tuple[int, int, int], str]] = {
    "small_cnn": (SmallCNN, 10, _CIFAR, "classification"),
    "resnet20": (
        lambda num_classes=10, **kw: CifarResNet(20, num_classes, **kw),
        10,
        _CIFAR,
        "classification",
    ),
    "resnet56": (
        lambda num_classes=10, **kw: CifarResNet(56, num_classes, **kw),
        10,
        _CIFAR,
        "classification",
    ),
    "resnet110": (
        lambda num_classes=10, **kw: CifarResNet(110, num_classes, **kw),
        10,
        _CIFAR,
        "classification",
    ),
    "vgg16_bn": (
        lambda num_classes=10, **kw: CifarVGG(num_classes=num_classes, **kw),
        10,
        _CIFAR,
        "classification",
    ),
    "resnet18": (_torchvision("resnet18"), 1000, _IMAGENET, "classification"),
    "resnet50": (_torchvision("resnet50"), 1000, _IMAGENET, "classification"),
    "resnet101": (_torchvision("resnet101"), 1000, _IMAGENET, "classification"),
    "mobilenet_v2": (_torchvision("mobilenet_v2"), 1000, _IMAGENET, "classification"),
    "densenet121": (_torchvision("densenet121"), 1000, _IMAGENET, "classification"),
    "deeplabv3_resnet50": (_deeplab, 21, (3, 224, 224), "segmentation"),
}


def available() -> list[str]:
    return sorted(REGISTRY)


def create(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """A new, randomly initialized model. ``model.input_size`` is its (C, H, W)."""
    key = name.lower()
    if key not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    builder, default_classes, input_size, task = REGISTRY[key]
    model = builder(num_classes=num_classes or default_classes, **kwargs)
    model.input_size = input_size
    model.task = task
    return model


__all__ = [
    "REGISTRY",
    "CifarResNet",
    "CifarVGG",
    "SmallCNN",
    "available",
    "create",
    "randomize_norm_statistics",
]
