"""Data: the built-in digits, splits, in-memory augmentation, CIFAR-10 / ImageFolder / VOC
loaders (on small fake copies written here), bad input."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import lostprune.data as data
from lostprune.data import cifar as cifar_module
from lostprune.data import digits as digits_module
from lostprune.data.splits import stratified_split
from lostprune.data.tensor_images import ImageTensorDataset, random_crop, random_flip


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


# ----------------------------------------------------------------------------- built-in digits
def test_digits_shapes_and_fixed_split_sizes(digits):
    assert (len(digits.train), len(digits.validation), len(digits.s), len(digits.test)) == (
        1129,
        180,
        128,
        360,
    )
    assert digits.input_size == (3, 32, 32) and digits.num_classes == 10 and digits.task == "classification"
    x, y = digits.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_digits_splits_are_disjoint_stratified_and_cover_everything():
    index = digits_module.split_indices()
    labels = digits_module.digits_tensors()[1]
    everything = torch.cat(list(index.values()))
    assert len(everything) == 1797 and len(everything.unique()) == 1797
    class_share = torch.bincount(labels, minlength=10).double() / 1797
    for name, idx in index.items():
        counts = torch.bincount(labels[idx], minlength=10).double()
        assert (counts - class_share * len(idx)).abs().max() <= 1.0, name
    assert not set(index["s"].tolist()) & set(index["test"].tolist())


def test_digits_are_real_labelled_digits():
    # A nearest-class-mean classifier fit on train must reach high test accuracy only if
    # images and labels belong together: the data are real digits, not noise.
    digits = data.load("digits", augment=False)

    def xy(split):
        x, y = split.batch(range(len(split)))
        return x.flatten(1), y

    xtr, ytr = xy(digits.train)
    xte, yte = xy(digits.test)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xte, means).argmin(1) == yte).double().mean().item()
    assert accuracy > 0.85


def test_digits_normalization_matches_training_split():
    raw = data.load("digits", normalize=False, augment=False)
    x, _ = raw.train.batch(range(len(raw.train)))
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x.mean().item() == pytest.approx(digits_module.MEAN[0], abs=5e-4)
    assert x.std().item() == pytest.approx(digits_module.STD[0], abs=5e-4)


def test_digits_are_deterministic_and_augment_only_training(digits):
    again = data.load("digits")
    assert torch.equal(digits.test.batch(range(50))[0], again.test.batch(range(50))[0])
    assert torch.equal(digits.s.batch(range(10))[0], digits.s.batch(range(10))[0])
    torch.manual_seed(1)
    first = digits.train.batch(range(64))[0]
    second = digits.train.batch(range(64))[0]
    assert not torch.equal(first, second)  # random shifts


def test_digits_disk_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSTPRUNE_CACHE", str(tmp_path))
    digits_module.digits_tensors.cache_clear()
    try:
        images, labels = digits_module.digits_tensors()
        cached = tmp_path / "data" / f"digits-32px-v{digits_module._CACHE_VERSION}.pt"
        assert cached.exists()
        digits_module.digits_tensors.cache_clear()
        monkeypatch.setattr(digits_module, "_upsample", lambda: pytest.fail("the cache was not used"))
        again, again_labels = digits_module.digits_tensors()
        assert torch.equal(images, again) and torch.equal(labels, again_labels)
        assert images.shape == (1797, 1, 32, 32) and images.dtype == torch.uint8
    finally:
        digits_module.digits_tensors.cache_clear()


def test_normalize_denormalize_round_trip(digits):
    x, _ = digits.test.batch(range(4))
    assert torch.allclose(digits.normalize(digits.denormalize(x)), x, atol=1e-6)
    assert torch.allclose(digits.normalize(digits.denormalize(x[0])), x[0], atol=1e-6)


def test_s_inputs_and_loader(digits):
    s = digits.s_inputs()
    assert s.shape == (128, 3, 32, 32)
    inputs, labels = next(iter(digits.loader("test", batch_size=50)))
    assert inputs.shape == (50, 3, 32, 32) and labels.shape == (50,)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        digits.loader("test", batch_size=0)
    with pytest.raises(ValueError, match="split must be one of train, validation, s, test"):
        digits.loader("holdout")


# ----------------------------------------------------------------------------- splits
def test_stratified_split_sizes_proportions_and_seed():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    a = stratified_split(labels, {"a": 10, "b": 20, "rest": None}, seed=0)
    assert [len(v) for v in a.values()] == [10, 20, 70]
    assert len(torch.cat(list(a.values())).unique()) == 100
    assert np.bincount(labels[a["a"]], minlength=3).tolist() == [5, 3, 2]
    assert np.bincount(labels[a["b"]], minlength=3).tolist() == [10, 6, 4]
    assert all(
        torch.equal(a[k], v) for k, v in stratified_split(labels, {"a": 10, "b": 20, "rest": None}).items()
    )
    assert not torch.equal(a["a"], stratified_split(labels, {"a": 10, "b": 20, "rest": None}, seed=1)["a"])


@pytest.mark.parametrize(
    "sizes, message",
    [
        ({"a": None, "b": None}, "at most one split may take the rest"),
        ({"a": 80, "b": 30}, "ask for 110 samples"),
        ({"a": 100, "b": None}, "plus a non-empty rest"),
        ({"a": -1, "b": None}, r"sizes\['a'\] must be an integer >= 0"),
    ],
)
def test_stratified_split_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        stratified_split(np.zeros(100), sizes)


# ----------------------------------------------------------------------------- batched augmentation
def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = torch.rand(16, 3, 9, 7)
    out = random_crop(images, 2, generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    gen = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 5, (16,), generator=gen), torch.randint(0, 5, (16,), generator=gen)
    for i in range(16):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 9, dx[i] : dx[i] + 7])
    assert len({(int(a), int(b)) for a, b in zip(dy, dx)}) > 1
    assert random_crop(images, 0) is images


def test_random_flip_mirrors_about_half():
    images = torch.rand(200, 1, 4, 5)
    out = random_flip(images, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert (flipped | kept).all() and 60 < int(flipped.sum()) < 140


def test_dataloader_fetches_whole_batches_through_getitems():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    dataset = ImageTensorDataset(images, torch.arange(10), mean=(0.5,) * 3, std=(0.25,) * 3)
    calls = []
    original = dataset.batch
    dataset.batch = lambda idx: calls.append(list(idx)) or original(idx)
    inputs, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert calls == [[0, 1, 2, 3]] and labels.tolist() == [0, 1, 2, 3]
    assert torch.allclose(inputs, (images[:4].float() / 255 - 0.5) / 0.25)


def test_image_tensor_dataset_bad_input():
    with pytest.raises(ValueError, match="images must be a uint8 N x C x H x W tensor"):
        ImageTensorDataset(torch.rand(2, 3, 4, 4), torch.zeros(2), mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="labels must hold one label per image"):
        ImageTensorDataset(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), mean=(0,) * 3, std=(1,) * 3
        )
    with pytest.raises(ValueError, match="mean and std need one value per channel"):
        ImageTensorDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), mean=(0,), std=(1,))


# ----------------------------------------------------------------------------- CIFAR-10 (fake local copies)
def _fake_cifar_arrays(n_train=100, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        np.arange(n_train) % 10,
        rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        np.arange(n_test) % 10,
    )


def _write_pickles(root, arrays):
    xtr, ytr, xte, yte = arrays
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(xtr)), 5)):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": xtr[chunk].reshape(len(chunk), -1), "labels": ytr[chunk].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": xte.reshape(len(xte), -1), "labels": yte.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def _write_folder(root, arrays, ext="png"):
    xtr, ytr, xte, yte = arrays
    for split, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            path = root / split / f"c{y}" / f"{i:04d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.transpose(1, 2, 0)).save(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSTPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cifar10_from_pickle_layout(tmp_path, cache):
    arrays = _fake_cifar_arrays()
    _write_pickles(tmp_path / "c10", arrays)
    splits = data.load(
        "cifar10", tmp_path / "c10", s_size=10, validation_size=20, augment=False, normalize=False
    )
    assert (len(splits.train), len(splits.validation), len(splits.s), len(splits.test)) == (70, 20, 10, 20)
    assert splits.classes == [f"class{i}" for i in range(10)] and splits.mean == cifar_module.MEAN
    x, y = splits.test.batch(range(20))
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(arrays[2]))
    assert torch.equal(y, torch.from_numpy(arrays[3]))
    train_images = torch.from_numpy(arrays[0]).flatten(1)
    held_out = (splits.s.images.flatten(1)[:, None] == train_images[None]).all(-1).any(1)
    assert held_out.all()  # S comes from the training images
    assert np.bincount(splits.s.labels, minlength=10).tolist() == [1] * 10


def test_cifar10_folder_tar_and_cache_agree(tmp_path, cache, monkeypatch):
    arrays = _fake_cifar_arrays(40, 10)
    _write_folder(tmp_path / "jpeg", arrays)
    with tarfile.open(tmp_path / "c10.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "jpeg" / "train", arcname="train")
        tar.add(tmp_path / "jpeg" / "test", arcname="test")
    from_folder = cifar_module.cifar10_tensors(tmp_path / "jpeg")
    from_tar = cifar_module.cifar10_tensors(tmp_path / "c10.tar.gz")
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(from_folder[key], from_tar[key]), key
    order = np.argsort([f"c{y}/{i:04d}" for i, y in enumerate(arrays[1])], kind="stable")
    assert torch.equal(from_folder["train_images"], torch.from_numpy(arrays[0][order]))  # PNG is lossless
    assert from_folder["classes"] == [f"c{i}" for i in range(10)]
    monkeypatch.setattr(cifar_module, "_read_folder_layout", lambda source: pytest.fail("cache not used"))
    assert torch.equal(
        cifar_module.cifar10_tensors(tmp_path / "c10.tar.gz")["test_images"], from_tar["test_images"]
    )
    splits = data.load("cifar10", tmp_path / "c10.tar.gz", s_size=4)
    assert len(splits.train) == 36 and splits.train.crop_padding == 4 and splits.train.flip


def test_cifar10_bad_input(tmp_path, cache):
    with pytest.raises(
        FileNotFoundError, match=r"root: .* does not exist; expected a folder holding cifar-10"
    ):
        data.load("cifar10", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="found no CIFAR-10 data"):
        data.load("cifar10", tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is a file but not a tar archive"):
        data.load("cifar10", tmp_path / "notes.txt")
    big = tmp_path / "big"
    for split in ("train", "test"):
        (big / split / "cat").mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(big / split / "cat" / "0.png")
    with pytest.raises(ValueError, match="is 64x64, but CIFAR-10 images are 32x32"):
        data.load("cifar10", big)
    _write_pickles(tmp_path / "c10", _fake_cifar_arrays())
    with pytest.raises(ValueError, match=r"s_size must be an integer >= 2 .*data-informed methods"):
        data.load("cifar10", tmp_path / "c10", s_size=1)
    with pytest.raises(ValueError, match=r"ask for 150 samples.* only 100"):
        data.load("cifar10", tmp_path / "c10", s_size=50, validation_size=100)


# ----------------------------------------------------------------------------- ImageFolder / ImageNet layout
def _image_tree(root, splits=("train", "val"), classes=("a", "b"), per_class=6, size=(40, 36)):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg")


def test_imagenet_layout_holds_s_out_of_train(tmp_path):
    _image_tree(tmp_path)
    splits = data.load("imagenet", tmp_path, image_size=32, s_size=4, validation_size=2)
    assert (len(splits.train), len(splits.validation), len(splits.s), len(splits.test)) == (6, 2, 4, 12)
    assert Path(splits.s.dataset.root).name == "train" and Path(splits.test.root).name == "val"
    assert not set(splits.s.indices) & set(splits.train.indices)
    x, _y = splits.s[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and splits.classes == ["a", "b"]
    assert splits.train[0][0].shape == (3, 32, 32)


def test_imagefolder_bad_input(tmp_path):
    _image_tree(tmp_path / "only_train", splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"test_folder: no folder .*val.*root holds \['train'\]"):
        data.load("imagenet", tmp_path / "only_train", s_size=2)
    _image_tree(tmp_path / "mixed", splits=("train",), classes=("a", "b"))
    _image_tree(tmp_path / "mixed", splits=("test",), classes=("a", "c"))
    with pytest.raises(ValueError, match="hold different class folders: \\['b', 'c'\\]"):
        data.load("imagefolder", tmp_path / "mixed", s_size=2)
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        data.load("imagefolder", tmp_path / "mixed", image_size=0)
    with pytest.raises(FileNotFoundError, match=r"root: .* is not a folder"):
        data.load("imagefolder", tmp_path / "nothing")


# ----------------------------------------------------------------------------- Pascal VOC
def _fake_voc(root, n_train=5, n_val=3):
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = {
        "train": [f"2012_{i:06d}" for i in range(n_train)],
        "val": [f"2012_{i:06d}" for i in range(n_train, n_train + n_val)],
    }
    for split, ids in names.items():
        (base / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for name in ids:
            Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(
                base / "JPEGImages" / f"{name}.jpg"
            )
            mask = rng.integers(0, 21, (20, 28)).astype(np.uint8)
            mask[0] = 255
            palette_mask = Image.fromarray(mask, mode="P")
            palette_mask.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
            palette_mask.save(base / "SegmentationClass" / f"{name}.png")


def test_voc_segmentation_pairs(tmp_path):
    _fake_voc(tmp_path)
    splits = data.load("voc", tmp_path, crop_size=24, s_size=2)
    assert splits.task == "segmentation" and splits.num_classes == 21
    assert (len(splits.train), len(splits.s), len(splits.test)) == (3, 2, 3)
    image, mask = splits.test[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert mask.shape == (24, 24) and mask.dtype == torch.int64
    values = set(mask.unique().tolist())
    assert values <= set(range(21)) | {255} and len(values) > 2
    torch.manual_seed(0)
    for _ in range(4):
        image, mask = splits.train[0]
        assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
        assert set(mask.unique().tolist()) <= set(range(21)) | {255}
    batch = next(iter(DataLoader(splits.s, batch_size=2)))
    assert batch[0].shape == (2, 3, 24, 24) and batch[1].shape == (2, 24, 24)


def test_voc_missing_devkit(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root: no .*VOCdevkit/VOC2012; .*never downloads"):
        data.load("voc", tmp_path)


# ----------------------------------------------------------------------------- registry
def test_load_by_name_errors():
    with pytest.raises(ValueError, match="unknown data set 'mnist'; available: cifar10, digits, imagefolder"):
        data.load("mnist")
    with pytest.raises(ValueError, match=r"root: the built-in digits .* take no root"):
        data.load("digits", "/tmp")
    with pytest.raises(ValueError, match=r"root: cifar10 needs the folder .* never downloads"):
        data.load("cifar10")


# ----------------------------------------------------------------------------- subsets and S
def test_balanced_subset_every_class_in_equal_share():
    from lostprune.data.splits import balanced_subset

    labels = np.repeat([0, 1, 2, 3], [50, 20, 35, 80])  # unbalanced on purpose
    for size in (40, 43, 80):
        index = balanced_subset(labels, size, seed=3)
        counts = np.bincount(labels[index.numpy()], minlength=4)
        assert index.tolist() == sorted(set(index.tolist())) and len(index) == size
        assert counts.min() >= 1 and counts.max() - counts.min() <= (0 if size % 4 == 0 else 1), (
            size,
            counts,
        )
    assert torch.equal(balanced_subset(labels, 40, seed=3), balanced_subset(labels, 40, seed=3))
    assert not torch.equal(balanced_subset(labels, 40, seed=3), balanced_subset(labels, 40, seed=4))
    with pytest.raises(
        ValueError, match=r"test_size=200 is larger than the split it is drawn from \(185 items\)"
    ):
        balanced_subset(labels, 200, argument="test_size")
    with pytest.raises(
        ValueError, match=r"test_size=100 needs 25 items of class 1, which has only 20 .* at most 80"
    ):
        balanced_subset(labels, 100, argument="test_size")
    with pytest.raises(ValueError, match="train_size must be an integer >= 1"):
        balanced_subset(labels, 0, argument="train_size")


def test_load_with_train_and_test_subsets_is_stratified_and_seeded():
    full = data.load("digits")
    cut = data.load("digits", train_size=200, test_size=100)
    assert (len(cut.train), len(cut.test), len(cut.s)) == (200, 100, len(full.s))
    for split in (cut.train, cut.test):
        assert torch.bincount(split.labels, minlength=10).tolist() == [len(split) // 10] * 10
    assert torch.equal(cut.test.images, data.load("digits", test_size=100).test.images)  # seeded
    assert not torch.equal(cut.test.images, data.load("digits", test_size=100, seed=1).test.images)
    assert cut.info["test_size"] == 100 and cut.train.crop_padding == full.train.crop_padding
    with pytest.raises(
        ValueError, match=r"test_size=1000 is larger than the split it is drawn from \(360 items\)"
    ):
        data.load("digits", test_size=1000)


def test_digits_s_size_moves_images_between_s_and_train_only(digits):
    small = data.load("digits", s_size=64)
    assert len(small.s) == 64 and len(small.train) == len(digits.train) + len(digits.s) - 64
    assert torch.equal(small.test.images, digits.test.images)
    with pytest.raises(ValueError, match="s_size=1300 leaves no training images"):
        data.load("digits", s_size=1300)


def test_s_overlapping_the_test_set_is_an_error(tmp_path, digits):
    import dataclasses

    leaked = dataclasses.replace(digits, s=digits.test.subset(torch.arange(4)))
    with pytest.raises(ValueError, match="4 of the 4 images of S are also in the test set"):
        leaked.check_s_held_out()
    with pytest.raises(ValueError, match="S is empty"):
        dataclasses.replace(digits, s=digits.s.subset(torch.arange(0))).check_s_held_out()
    _image_tree(tmp_path / "same", splits=("train",))
    with pytest.raises(ValueError, match="images of S are also in the test set"):  # the same folder twice
        data.load("imagefolder", tmp_path / "same", test_folder="train", image_size=32, s_size=2)
    _image_tree(tmp_path / "copies", splits=("train",))
    import shutil

    shutil.copytree(tmp_path / "copies" / "train", tmp_path / "copies" / "test")  # copied files
    with pytest.raises(ValueError, match="2 of the 2 images of S are also in the test set"):
        data.load("imagefolder", tmp_path / "copies", image_size=32, s_size=2)


def test_imagefolder_without_class_folders_names_root(tmp_path):
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"root: .*train is not an image folder tree"):
        data.load("imagefolder", tmp_path / "flat", s_size=2)
