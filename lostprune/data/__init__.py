"""Data: the built-in digits set, CIFAR-10, ImageFolder/ImageNet, VOC loaders and S splits,
and ``iter_inputs`` which turns any user data into validated input batches.

``load("digits")`` is the built-in set (real, no download); the others read a local copy:
``load("cifar10", root)``, ``load("imagenet", root)``, ``load("imagefolder", root)``,
``load("voc", root)``. Each returns ``DataSplits`` (train / validation / S / test); S, the
data of data-informed pruning methods, is always held out of the training images, never the
test set.
"""

from __future__ import annotations

from pathlib import Path

from .batches import first_batch, iter_inputs, iter_inputs_and_labels
from .cifar import load_cifar10
from .digits import load_digits
from .imagefolder import load_imagefolder, load_imagenet
from .splits import DataSplits, stratified_split
from .tensor_images import ImageTensorDataset
from .voc import load_voc

LOADERS = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "imagenet": load_imagenet,
    "imagefolder": load_imagefolder,
    "voc": load_voc,
}


def available() -> list[str]:
    return sorted(LOADERS)


def load(
    name: str,
    root: str | Path | None = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    **options,
) -> DataSplits:
    """The data set ``name`` (see ``available()``); ``root`` is its local copy (not used by "digits").

    ``train_size`` / ``test_size`` cut the training / test split to a random subset with an
    equal share of every class (``DataSplits.subset``, seeded by the loader's ``seed``,
    default 0; the digits' splits are fixed and their ``seed`` draws the subsets only).
    Raises ValueError when S shares an image with the test set."""
    key = str(name).lower()
    if key not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(available())}")
    seed = options.get("seed", 0)
    if key == "digits":
        if root is not None:
            raise ValueError("root: the built-in digits ship with scikit-learn and take no root")
        options.pop("seed", None)
        splits = load_digits(**options)
    elif root is None:
        raise ValueError(
            f"root: {key} needs the folder (or archive) of a local copy; lostprune never downloads"
        )
    else:
        splits = LOADERS[key](root, **options)
    splits.check_s_held_out()
    return splits.subset(train_size=train_size, test_size=test_size, seed=seed)


__all__ = [
    "LOADERS",
    "DataSplits",
    "ImageTensorDataset",
    "available",
    "first_batch",
    "iter_inputs",
    "iter_inputs_and_labels",
    "load",
    "load_cifar10",
    "load_digits",
    "load_imagefolder",
    "load_imagenet",
    "load_voc",
    "stratified_split",
]
