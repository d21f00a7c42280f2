"""Image folders (ImageNet and any ``root/<split>/<class>/<image>`` tree), decoded on the fly.

The standard ImageNet pipeline: training images get a random resized crop and a flip,
evaluation images a resize and a center crop. S and the optional validation split are held
out of the training folder (never the test folder) and use the evaluation transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Subset

from .splits import DataSplits, check_split_size, stratified_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _folder(root: Path, name: str, argument: str) -> Path:
    path = root / name
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(
            f"{argument}: no folder {path} (root holds {found or 'nothing'}); "
            f"expected root/{name}/<class>/<image>"
        )
    return path


def _image_folder(path: Path, transform, name: str):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(path, transform)
    except FileNotFoundError as exc:  # no class folders, or no image in them
        raise FileNotFoundError(
            f"root: {path} is not an image folder tree (expected root/{name}/<class>/<image>): {exc}"
        ) from None


def classification_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    augment: bool = True,
    normalize: bool = True,
    resize: int | None = None,
):
    """(train transform, evaluation transform) as torchvision v2 pipelines producing float tensors."""
    import torch
    from torchvision.transforms import v2

    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        tail.append(v2.Normalize(list(mean), list(std)))
    resize = resize or round(image_size * 256 / 224)
    train = (
        [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        if augment
        else [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    )
    evaluate = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(train + tail), v2.Compose(evaluate + tail)


def load_imagefolder(
    root: str | Path,
    *,
    train_folder: str = "train",
    test_folder: str = "test",
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    validation_size: int = 0,
    s_size: int = 256,
    seed: int = 0,
    augment: bool = True,
    normalize: bool = True,
    name: str = "imagefolder",
) -> DataSplits:
    """Any ``root/<train_folder>/<class>/*`` + ``root/<test_folder>/<class>/*`` tree as ``DataSplits``."""
    from torchvision.datasets import ImageFolder

    check_split_size("s_size", s_size, minimum=2)
    check_split_size("validation_size", validation_size)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"root: {root} is not a folder; expected root/{train_folder}/<class>/<image> "
            f"and root/{test_folder}/<class>/<image>"
        )
    train_dir, test_dir = (
        _folder(root, train_folder, "train_folder"),
        _folder(root, test_folder, "test_folder"),
    )
    train_tf, eval_tf = classification_transforms(image_size, mean, std, augment=augment, normalize=normalize)
    train_aug, train_plain = _image_folder(train_dir, train_tf, train_folder), ImageFolder(train_dir, eval_tf)
    test = _image_folder(test_dir, eval_tf, test_folder)
    if test.classes != train_aug.classes:
        raise ValueError(
            f"root: {test_folder}/ and {train_folder}/ hold different class folders: "
            f"{sorted(set(test.classes) ^ set(train_aug.classes))}"
        )
    index = stratified_split(
        train_aug.targets, {"validation": validation_size, "s": s_size, "train": None}, seed=seed
    )
    return DataSplits(
        name=name,
        train=Subset(train_aug, index["train"].tolist()),
        validation=Subset(train_plain, index["validation"].tolist()) if validation_size else None,
        s=Subset(train_plain, index["s"].tolist()),
        test=test,
        classes=list(train_aug.classes),
        input_size=(3, image_size, image_size),
        mean=tuple(mean),
        std=tuple(std),
        normalized=normalize,
        info={"root": str(root), "seed": seed},
    )


def load_imagenet(root: str | Path, **kwargs) -> DataSplits:
    """ImageNet (ILSVRC-2012) as ImageFolder: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``
    (the usual re-organized validation set, which serves as the test set)."""
    kwargs.setdefault("test_folder", "val")
    kwargs.setdefault("name", "imagenet")
    return load_imagefolder(root, **kwargs)
