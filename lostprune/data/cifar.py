"""CIFAR-10 from a local copy, held in memory as uint8 tensors (no download).

``root`` may be the torchvision pickle layout (a folder holding ``cifar-10-batches-py/`` or
the ``data_batch_*`` files themselves), an ImageFolder tree with ``train/`` and ``test/``
class folders (such as the JPEG copy in the project's shared data), or a ``.tar``/``.tar.gz``
archive of either, read in place without extracting. Decoded images are cached under
``$LOSTPRUNE_CACHE/data`` keyed by the source's path, size and modification time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from .._files import data_cache_dir, save_atomic
from .._progress import bar_disabled
from .splits import DataSplits, check_split_size, stratified_split
from .tensor_images import ImageTensorDataset

# docs/methods.md §Prune–retrain (the paper's normalization).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
_PICKLE_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_PICKLE_TEST = "test_batch"
_LAYOUTS = (
    "a folder holding cifar-10-batches-py/ (torchvision pickle layout), the data_batch_1..5 / test_batch "
    "files themselves, an ImageFolder tree with train/ and test/ class folders, or a .tar / .tar.gz of one"
)


def _unpickle(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = pickle.loads(blob, encoding="latin1")
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)


def _decode(blob: bytes, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        array = np.asarray(image.convert("RGB"))
    if array.shape != (32, 32, 3):
        raise ValueError(f"root: {name} is {array.shape[1]}x{array.shape[0]}, but CIFAR-10 images are 32x32")
    return array.transpose(2, 0, 1)


class _Source:
    """Uniform read access to a folder or a tar archive: relative path -> bytes."""

    def __init__(self, root: Path):
        self.root = root
        if root.is_dir():
            self.tar = None
            self.names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        else:
            self.tar = tarfile.open(root)  # noqa: SIM115 - open while the source is read; close() closes it
            self.members = {m.name.lstrip("./"): m for m in self.tar.getmembers() if m.isfile()}
            self.names = sorted(self.members)

    def read(self, name: str) -> bytes:
        if self.tar is None:
            return (self.root / name).read_bytes()
        return self.tar.extractfile(self.members[name]).read()

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _read_pickle_layout(source: _Source) -> dict | None:
    by_base = {}
    for name in source.names:
        by_base.setdefault(name.rsplit("/", 1)[-1], name)
    if not all(b in by_base for b in [*_PICKLE_TRAIN, _PICKLE_TEST]):
        return None
    train = [_unpickle(source.read(by_base[b])) for b in _PICKLE_TRAIN]
    test = _unpickle(source.read(by_base[_PICKLE_TEST]))
    classes = [str(i) for i in range(10)]
    if "batches.meta" in by_base:
        classes = list(pickle.loads(source.read(by_base["batches.meta"]), encoding="latin1")["label_names"])
    return {
        "train_images": np.concatenate([t[0] for t in train]),
        "train_labels": np.concatenate([t[1] for t in train]),
        "test_images": test[0],
        "test_labels": test[1],
        "classes": classes,
    }


def _read_folder_layout(source: _Source) -> dict | None:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    from tqdm.auto import tqdm

    files: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    prefix = None
    for name in source.names:
        parts = name.split("/")
        if len(parts) < 3 or not name.lower().endswith(IMG_EXTENSIONS):
            continue
        split, label = parts[-3], parts[-2]
        if split in files and (prefix is None or prefix == parts[:-3]):
            prefix = parts[:-3]
            files[split].append((label, name))
    if not files["train"] or not files["test"]:
        return None
    classes = sorted({label for label, _ in files["train"]})
    unknown = sorted({label for label, _ in files["test"]} - set(classes))
    if unknown:
        raise ValueError(f"root: test/ has class folders that train/ lacks: {unknown}")
    index = {c: i for i, c in enumerate(classes)}
    out = {"classes": classes}
    total = len(files["train"]) + len(files["test"])
    with tqdm(
        total=total,
        desc="decoding CIFAR-10 images (cached afterwards)",
        unit="img",
        disable=bar_disabled(None),
    ) as bar:
        for split, items in files.items():
            images = np.empty((len(items), 3, 32, 32), dtype=np.uint8)
            for i, (_, name) in enumerate(items):
                images[i] = _decode(source.read(name), name)
                bar.update()
            out[f"{split}_images"] = images
            out[f"{split}_labels"] = np.array([index[label] for label, _ in items], dtype=np.int64)
    return out


def _cache_key(root: Path) -> str:
    stat = root.stat()
    newest = (
        max((p.stat().st_mtime_ns for p in root.rglob("*")), default=stat.st_mtime_ns) if root.is_dir() else 0
    )
    text = f"{root}|{stat.st_size}|{stat.st_mtime_ns}|{newest}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cifar10_tensors(root: str | Path, *, cache: bool = True) -> dict:
    """Train and test images (uint8 N x 3 x 32 x 32), labels and class names from ``root``."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"root: {root} does not exist; expected {_LAYOUTS}")
    path = data_cache_dir() / f"cifar10-{_cache_key(root)}.pt"
    if cache and path.exists():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError):
            pass
    if root.is_file() and not tarfile.is_tarfile(root):
        raise ValueError(f"root: {root} is a file but not a tar archive; expected {_LAYOUTS}")
    source = _Source(root)
    try:
        arrays = _read_pickle_layout(source) or _read_folder_layout(source)
    finally:
        source.close()
    if arrays is None:
        raise ValueError(f"root: found no CIFAR-10 data in {root}; expected {_LAYOUTS}")
    data = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    if cache:
        with contextlib.suppress(OSError):
            save_atomic(data, path)
    return data


def load_cifar10(
    root: str | Path,
    *,
    validation_size: int = 0,
    s_size: int = 256,
    seed: int = 0,
    augment: bool = True,
    normalize: bool = True,
    cache: bool = True,
) -> DataSplits:
    """CIFAR-10 as ``DataSplits``: S (``s_size`` images, docs/methods.md §Sensitivities: 256 by
    default) and an optional validation split are held out of the 50,000 training images, stratified
    by ``seed``; the 10,000 test images stay the test set. Training augmentation (``augment``) is
    docs/methods.md §Prune–retrain's pad-4 random crop and horizontal flip."""
    check_split_size("s_size", s_size, minimum=2)
    check_split_size("validation_size", validation_size)
    data = cifar10_tensors(root, cache=cache)
    train = ImageTensorDataset(
        data["train_images"],
        data["train_labels"],
        mean=MEAN,
        std=STD,
        normalize=normalize,
        classes=data["classes"],
    )
    test = ImageTensorDataset(
        data["test_images"],
        data["test_labels"],
        mean=MEAN,
        std=STD,
        normalize=normalize,
        classes=data["classes"],
    )
    index = stratified_split(
        data["train_labels"].numpy(), {"validation": validation_size, "s": s_size, "train": None}, seed=seed
    )
    return DataSplits(
        name="cifar10",
        train=train.subset(index["train"], crop_padding=4 if augment else 0, flip=augment),
        validation=train.subset(index["validation"]) if validation_size else None,
        s=train.subset(index["s"]),
        test=test,
        classes=list(data["classes"]),
        input_size=(3, 32, 32),
        mean=MEAN,
        std=STD,
        normalized=normalize,
        info={"root": str(root), "seed": seed},
    )
