"""Pascal VOC segmentation through torchvision (local copy, no download).

``root`` holds ``VOCdevkit/VOC<year>/`` as torchvision expects. Images and masks are
transformed together (torchvision v2): training gets a random rescale (0.5-2x), a random
crop padded with the ignore label 255, and a flip; evaluation a resize of the shorter side and
a center crop. Targets are int64 H x W class maps with 255 on borders / ignored pixels. S is
held out of the ``train`` image set; VOC's ``val`` set is the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from .imagefolder import IMAGENET_MEAN, IMAGENET_STD
from .splits import DataSplits, check_split_size, stratified_split

CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
IGNORE_INDEX = 255


class SegmentationTransform:
    """Applies one torchvision v2 pipeline to an (image, mask) pair; returns (float image, int64 mask)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, image, mask):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        image = F.to_image(image)
        mask = tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.uint8, copy=True))[None])
        image, mask = self.pipeline(image, mask)
        return image, mask[0].long()


def segmentation_transforms(
    crop_size: int, *, augment: bool = True, normalize: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD
):
    """(train, evaluation) joint transforms for (image, mask) pairs."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    tail = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
    if normalize:
        tail.append(v2.Normalize(list(mean), list(std)))
    evaluate = [v2.Resize(crop_size, antialias=True), v2.CenterCrop(crop_size)]
    train = (
        [
            v2.RandomResize(crop_size // 2, crop_size * 2, antialias=True),
            v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Mask: IGNORE_INDEX, "others": 0}),
            v2.RandomHorizontalFlip(),
        ]
        if augment
        else evaluate
    )
    return SegmentationTransform(v2.Compose(train + tail)), SegmentationTransform(v2.Compose(evaluate + tail))


def load_voc(
    root: str | Path,
    *,
    year: str = "2012",
    crop_size: int = 320,
    s_size: int = 256,
    validation_size: int = 0,
    seed: int = 0,
    augment: bool = True,
    normalize: bool = True,
) -> DataSplits:
    """Pascal VOC segmentation (``train`` minus S / ``val``) as ``DataSplits`` with task "segmentation"."""
    from torchvision.datasets import VOCSegmentation

    check_split_size("s_size", s_size, minimum=2)
    check_split_size("validation_size", validation_size)
    root = Path(root).expanduser()
    base = root / "VOCdevkit" / f"VOC{year}"
    if not base.is_dir():
        raise FileNotFoundError(
            f"root: no {base}; expected root/VOCdevkit/VOC{year}/ with JPEGImages/, "
            f"SegmentationClass/ and ImageSets/Segmentation/ (lostprune never downloads)"
        )
    train_tf, eval_tf = segmentation_transforms(crop_size, augment=augment, normalize=normalize)
    train_aug = VOCSegmentation(str(root), year=year, image_set="train", transforms=train_tf)
    train_plain = VOCSegmentation(str(root), year=year, image_set="train", transforms=eval_tf)
    test = VOCSegmentation(str(root), year=year, image_set="val", transforms=eval_tf)
    index = stratified_split(
        np.zeros(len(train_aug)), {"validation": validation_size, "s": s_size, "train": None}, seed=seed
    )
    return DataSplits(
        name=f"voc{year}",
        train=Subset(train_aug, index["train"].tolist()),
        validation=Subset(train_plain, index["validation"].tolist()) if validation_size else None,
        s=Subset(train_plain, index["s"].tolist()),
        test=test,
        classes=list(CLASSES),
        input_size=(3, crop_size, crop_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        task="segmentation",
        normalized=normalize,
        info={"root": str(root), "year": year, "seed": seed, "ignore_index": IGNORE_INDEX},
    )
