"""Shifted test distributions (docs/methods.md §Corruptions, docs/methods.md §Noise shifts): the 19
corruptions of CIFAR-10-C / ImageNet-C on batches of tensors, input noise in normalized space, and
readers for the published CIFAR-10-C, CIFAR-10.1 and ImageNet-C files."""

from .corruptions import NAMES as CORRUPTIONS
from .corruptions import corrupt, corruption_names, corruption_params, table_for
from .loaders import ArrayImageDataset, cifar10_1, cifar10c, imagenet_c
from .noise import GaussianNoise, InputNoise, UniformNoise, add_noise, noise_like

__all__ = [
    "CORRUPTIONS",
    "ArrayImageDataset",
    "GaussianNoise",
    "InputNoise",
    "UniformNoise",
    "add_noise",
    "cifar10_1",
    "cifar10c",
    "corrupt",
    "corruption_names",
    "corruption_params",
    "imagenet_c",
    "noise_like",
    "table_for",
]
