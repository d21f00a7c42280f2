"""Corruptions, input noise and the shifted-test-set loaders: behaviour, exactness of the
building blocks against the libraries the original scripts used, and bad input."""

import re

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image

from lostprune.robustness import (
    CORRUPTIONS,
    GaussianNoise,
    InputNoise,
    UniformNoise,
    add_noise,
    cifar10_1,
    cifar10c,
    corrupt,
    corruption_names,
    corruption_params,
    imagenet_c,
    table_for,
)
from lostprune.robustness.corruptions import DETERMINISTIC, _ops, blur, digital, frost_textures, weather


def natural_like(n=2, size=32, seed=0) -> torch.Tensor:
    """Smooth random colour images with edges, uint8 N×3×H×W."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.1 * torch.rand(n, 3, size, size, generator=g)
    x[:, :, size // 3 : size // 2, :] *= 0.3
    return (x.clamp(0, 1) * 255).to(torch.uint8)


# ---------------------------------------------------------------- every corruption


@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_cifar_table(name, severity):
    x = natural_like(3, 32)
    out = corrupt(x, name, severity, seed=1)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert (out.float() - x.float()).abs().mean() > 0.1, "the corruption changed nothing"
    assert torch.equal(out, corrupt(x, name, severity, seed=1)), "same seed, different result"
    xf = x.float() / 255
    outf = corrupt(xf, name, severity, seed=1)
    assert outf.dtype == torch.float32 and float(outf.min()) >= 0 and float(outf.max()) <= 1
    assert (torch.floor(outf * 255 + 1e-4) - out.float()).abs().max() <= 1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_imagenet_table(name):
    x = natural_like(1, 72)  # above 64 px: the ImageNet table
    assert table_for(72, 72) == "imagenet"
    out = corrupt(x, name, 2, seed=0)
    assert out.shape == x.shape and (out.float() - x.float()).abs().mean() > 0.1


def test_random_corruptions_depend_on_seed_only():
    x = natural_like(2)
    for name in (n for n in CORRUPTIONS if n not in DETERMINISTIC):
        a, b = corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=7)
        assert not torch.equal(a, b), name
    torch.manual_seed(3)
    a = corrupt(x, "gaussian_noise", 3)
    torch.manual_seed(3)
    assert torch.equal(a, corrupt(x, "gaussian_noise", 3)), "unseeded calls follow torch.manual_seed"


@pytest.mark.parametrize(
    "name",
    [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "speckle_noise",
        "defocus_blur",
        "gaussian_blur",
        "zoom_blur",
        "contrast",
        "brightness",
        "fog",
    ],
)
def test_damage_grows_with_severity(name):
    x = natural_like(8, 32)
    change = [float((corrupt(x, name, s, seed=0).float() - x.float()).abs().mean()) for s in range(1, 6)]
    assert change[-1] > change[0] and sorted(change) == pytest.approx(change, rel=0.15), change


def test_gray_and_single_image_inputs():
    x = natural_like(2)
    gray = x.float().mean(1, keepdim=True).round().to(torch.uint8)
    out = corrupt(gray, "contrast", 3)
    assert out.shape == gray.shape
    expected = corrupt(gray.expand(-1, 3, -1, -1), "contrast", 3).float().mean(1, keepdim=True)
    assert (out.float() - expected).abs().max() <= 1.5
    assert corrupt(x[0], "fog", 2, seed=0).shape == x[0].shape
    assert torch.equal(corrupt(x[0], "jpeg_compression", 2), corrupt(x[:1], "jpeg_compression", 2)[0])
    assert corrupt(x.double() / 255, "brightness", 1).dtype == torch.float64
    assert corrupt(x[:0], "snow", 1).shape == (0, 3, 32, 32)


def test_names_families_and_tables():
    assert len(CORRUPTIONS) == 19 and len(set(CORRUPTIONS)) == 19
    assert sum(len(corruption_names(f)) for f in ("noise", "blur", "weather", "digital")) == 19
    assert corruption_params("gaussian_noise", 3, "cifar") == 0.08
    assert corruption_params("gaussian_noise", 3, "imagenet") == 0.18
    assert corruption_params("jpeg_compression", 5, "imagenet") == 7
    assert table_for(32, 32) == "cifar" and table_for(64, 48) == "cifar" and table_for(65, 32) == "imagenet"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, match",
    [
        (("fogg", 1), "unknown corruption 'fogg'; available: gaussian_noise, shot_noise"),
        (("fog", 0), "severity must be an integer in 1..5, got 0"),
        (("fog", 6), "severity must be an integer in 1..5, got 6"),
        (("fog", 2.0), "severity must be an integer in 1..5"),
        (("fog", True), "severity must be an integer in 1..5"),
    ],
)
def test_bad_name_or_severity(args, match):
    with pytest.raises(ValueError, match=match):
        corrupt(natural_like(1), *args)


def test_bad_images():
    x = natural_like(1).float() / 255
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values in \[0, 2"):
        corrupt(x * 2, "fog", 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(x - 0.5, "fog", 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(torch.full_like(x, float("nan")), "fog", 1)
    with pytest.raises(ValueError, match=r"N×C×H×W or C×H×W, got shape \(32, 32\)"):
        corrupt(x[0, 0], "fog", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(x[:, :2], "fog", 1)
    with pytest.raises(TypeError, match=r"float in \[0, 1\] or uint8, got torch.int32"):
        corrupt(x.to(torch.int32), "fog", 1)
    with pytest.raises(TypeError, match=re.escape("torch.Tensor")):
        corrupt(np.zeros((1, 3, 32, 32)), "fog", 1)
    with pytest.raises(ValueError, match="at least 8×8"):
        corrupt(x[..., :4, :4], "fog", 1)
    with pytest.raises(ValueError, match="table must be one of"):
        corrupt(x, "fog", 1, table="tiny")


# ---------------------------------------------------------------- building blocks vs the originals' libraries


@pytest.mark.parametrize("mode", ["nearest", "reflect"])
@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.0, (1.5, 0.7)])
def test_gaussian_filter_matches_scipy(mode, sigma):
    x = torch.rand(2, 3, 21, 34, dtype=torch.float64)
    truncate = 3.0 if mode == "reflect" else 4.0
    ours = _ops.gaussian_filter(x, sigma, mode=mode, truncate=truncate)
    s = (0, 0) + (sigma if isinstance(sigma, tuple) else (sigma, sigma))
    ref = ndi.gaussian_filter(x.numpy(), s, mode=mode, truncate=truncate)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)


def test_brightness_and_saturate_equal_the_hsv_round_trip():
    from skimage.color import hsv2rgb, rgb2hsv

    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    x[0, :, 0, :4] = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, -1)  # gray pixels, black, white
    hsv = rgb2hsv(x[0].permute(1, 2, 0).numpy())
    for table in ("cifar", "imagenet"):
        for sev in range(1, 6):
            c = corruption_params("brightness", sev, table)
            v = hsv.copy()
            v[..., 2] = np.clip(v[..., 2] + c, 0, 1)
            ours = digital.brightness(x, c, None)[0].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(ours, np.clip(hsv2rgb(v), 0, 1), atol=1e-9)
            f, o = corruption_params("saturate", sev, table)
            v = hsv.copy()
            v[..., 1] = np.clip(v[..., 1] * f + o, 0, 1)
            ours = digital.saturate(x, (f, o), None)[0].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(ours, np.clip(hsv2rgb(v), 0, 1), atol=1e-9)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_pixelate_matches_pil(table):
    x = natural_like(2, 37)
    for sev in (1, 3, 5):
        c = corruption_params("pixelate", sev, table)
        ours = corrupt(x, "pixelate", sev, table=table)
        for i in range(2):
            img = Image.fromarray(x[i].permute(1, 2, 0).numpy())
            small = img.resize((int(37 * c), int(37 * c)), Image.BOX)
            ref = np.asarray(small.resize((37, 37), Image.BOX if table == "cifar" else Image.NEAREST))
            assert np.abs(ours[i].permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).max() <= 1


def test_jpeg_matches_pil():
    import io

    x = natural_like(2, 32)
    ours = corrupt(x, "jpeg_compression", 3)
    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=58)
        ref = np.asarray(Image.open(buf)).astype(float)
        assert np.abs(ours[i].permute(1, 2, 0).numpy() - ref).mean() <= 1.0


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("zoom", [1.0, 1.07, 1.25, 2.25, 4.5])
def test_clipped_zoom_matches_scipy_zoom(zoom, centered):
    x = torch.rand(1, 1, 29, 29, dtype=torch.float64)
    h = 29
    crop = int(np.ceil(h / zoom))
    top = (h - crop) // 2
    z = ndi.zoom(x[0, 0, top : top + crop, top : top + crop].numpy(), zoom, order=1)
    start = (z.shape[0] - h) // 2 if centered else 0
    np.testing.assert_allclose(
        _ops.clipped_zoom(x, zoom, centered)[0, 0].numpy(),
        z[start : start + h, start : start + h],
        atol=1e-12,
    )


def _glass_loop(img: np.ndarray, delta: int, offsets: np.ndarray) -> np.ndarray:
    """The scripts' loop, verbatim semantics: numpy views make the 'swap' a copy."""
    y = img.copy()
    h, w = y.shape[:2]
    k = 0
    for hh in range(h - delta, delta, -1):
        for ww in range(w - delta, delta, -1):
            dx, dy = offsets[k]
            k += 1
            y[hh, ww], y[hh + dy, ww + dx] = y[hh + dy, ww + dx], y[hh, ww]
    return y


@pytest.mark.parametrize("delta, size", [(1, 12), (2, 15), (4, 20)])
def test_glass_shuffle_equals_the_sequential_loop(delta, size):
    rng = np.random.default_rng(delta)
    img = rng.integers(0, 255, size=(size, size + 3, 3)).astype(np.uint8)
    visited = (size - 2 * delta) * (size + 3 - 2 * delta)
    offsets = rng.integers(-delta, delta, size=(visited, 2))
    src = blur.glass_sources(1, size, size + 3, delta, torch.from_numpy(offsets).unsqueeze(0))
    flat = torch.from_numpy(img).view(-1, 3)
    ours = flat[src[0]].view(size, size + 3, 3).numpy()
    np.testing.assert_array_equal(ours, _glass_loop(img, delta, offsets))


def test_motion_blur_equals_shifted_copies():
    import math

    x = torch.rand(2, 3, 20, 23, dtype=torch.float64)
    angles = torch.tensor([-30.0, 41.0])
    radius, sigma = 6, 2.0
    ours = _ops.motion_blur(x, radius, sigma, angles)
    width = 2 * radius + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k /= k.sum()
    for n in range(2):
        img = x[n].permute(1, 2, 0).numpy()
        ref = np.zeros_like(img)
        a = math.radians(float(angles[n]))
        for i in range(width):
            dy, dx = -math.ceil(i * math.sin(a) - 0.5), -math.ceil(i * math.cos(a) - 0.5)
            rows = np.clip(np.arange(20) - dy, 0, 19)
            cols = np.clip(np.arange(23) - dx, 0, 22)
            ref += k[i] * img[rows][:, cols]
        np.testing.assert_allclose(ours[n].permute(1, 2, 0).numpy(), ref, atol=1e-12)


def test_disk_kernel():
    k = blur.disk_kernel(3, 0.1)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6) and k.shape[0] % 2 == 1
    assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    assert blur.disk_kernel(0.3, 0.4).shape == (3, 3)  # a point blurred by a 3×3 Gaussian


def test_distance_and_equalization_helpers(monkeypatch):
    zero = torch.zeros(1, 1, 30, 30, dtype=torch.bool)
    zero[0, 0, 5, 7] = zero[0, 0, 22, 25] = True
    ref = np.minimum(ndi.distance_transform_edt(~zero[0, 0].numpy()), 20.0)
    np.testing.assert_allclose(_ops.distance_to(zero, 20.0)[0, 0].numpy(), ref, atol=1e-5)
    monkeypatch.setattr(_ops, "_UNFOLD_LIMIT", 0)  # the large-image path (one op per offset)
    np.testing.assert_allclose(_ops.distance_to(zero, 20.0)[0, 0].numpy(), ref, atol=1e-5)
    v = torch.tensor([[[[10.0, 10.0, 20.0, 30.0]]]])
    assert _ops.equalize_hist(v).flatten().tolist() == [0.0, 0.0, 128.0, 255.0]
    assert _ops.equalize_hist(torch.full((1, 1, 2, 2), 7.0)).flatten().tolist() == [7.0] * 4


def test_canny_finds_square_outline():
    img = torch.zeros(1, 1, 24, 24)
    img[..., 8:16, 8:16] = 200.0
    edges = _ops.canny(img, 50, 150)[0, 0]
    assert edges.any() and not edges[12, 12] and not edges[2, 2]
    assert edges[7:9, 8:16].any(dim=0).all()  # the top side is traced along its whole length


def test_noise_corruption_statistics():
    x = torch.full((4, 3, 64, 64), 0.5)
    out = corrupt(x, "gaussian_noise", 3, seed=0, table="imagenet")
    assert float((out - x).std()) == pytest.approx(0.18, rel=0.05)
    out = corrupt(x, "impulse_noise", 5, seed=0, table="cifar")
    changed = out != x
    assert float(changed.float().mean()) == pytest.approx(0.07, rel=0.1)
    assert set(out[changed].unique().tolist()) <= {0.0, 1.0}


def test_frost_uses_a_texture_folder(tmp_path, monkeypatch):
    for name in frost_textures.FILES:
        Image.fromarray(np.full((120, 160, 3), 255, np.uint8)).save(tmp_path / name)
    monkeypatch.setenv("LOSTPRUNE_FROST_DIR", str(tmp_path))
    assert frost_textures.source() == str(tmp_path)
    x = natural_like(2).float() / 255
    out = corrupt(x, "frost", 3, seed=0)  # CIFAR: 0.9 x + 0.4 · white
    torch.testing.assert_close(out, (0.9 * x + 0.4).clamp(0, 1))


def test_frost_procedural_fallback(monkeypatch):
    monkeypatch.delenv("LOSTPRUNE_FROST_DIR", raising=False)
    monkeypatch.setattr(frost_textures, "texture_dir", lambda: None)
    assert frost_textures.source() == "procedural"
    tex = frost_textures.textures()
    assert len(tex) == 5
    for t, (h, w, mean, _std) in zip(tex, frost_textures._PHOTO_STATS):
        assert t.shape == (3, h, w)
        assert t.mean((1, 2)).tolist() == pytest.approx(mean, abs=0.03)
    crops = (torch.tensor([1, 4]), torch.tensor([0, 3]), torch.tensor([2, 5]))
    x = natural_like(2).float() / 255
    out = weather.frost(x, (1.0, 0.3), None, table="cifar", crops=crops)
    tex4 = weather._scaled_texture(4, 32, 32, "cifar", "cpu")
    torch.testing.assert_close(out[1], (x[1] + 0.3 * tex4[:, 3:35, 5:37]).clamp(0, 1))


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_cuda_matches_cpu_where_deterministic(name):
    x = natural_like(2)
    out = corrupt(x.cuda(), name, 3, seed=0)
    assert out.device.type == "cuda" and out.shape == x.shape
    if name in DETERMINISTIC:
        assert (out.cpu().float() - corrupt(x, name, 3).float()).abs().max() <= 1


# ---------------------------------------------------------------- input noise


def test_input_noise():
    x = torch.zeros(20000)
    u = add_noise(x, "uniform", 0.1, seed=0)
    assert float(u.abs().max()) <= 0.1 and float(u.std()) == pytest.approx(0.1 / 3**0.5, rel=0.05)
    g = add_noise(x, "gaussian", 0.2, seed=0)
    assert float(g.std()) == pytest.approx(0.2, rel=0.05)
    assert torch.equal(g, add_noise(x, "gaussian", 0.2, seed=0))
    assert torch.equal(add_noise(x, "gaussian", 0.0, seed=0), x)
    model = torch.nn.Sequential(GaussianNoise(0.1, seed=1), torch.nn.Identity())
    assert float(model(x).std()) == pytest.approx(0.1, rel=0.05)
    assert "uniform" in repr(UniformNoise(0.05))
    with pytest.raises(ValueError, match="noise kind must be one of"):
        InputNoise("salt", 0.1)
    with pytest.raises(ValueError, match=re.escape("noise level must be a finite number >= 0, got -0.1")):
        add_noise(x, "uniform", -0.1)
    with pytest.raises(TypeError, match="floating-point"):
        add_noise(torch.zeros(3, dtype=torch.long), "uniform", 0.1)


# ---------------------------------------------------------------- loaders


def test_cifar10c_loader(tmp_path):
    images = np.stack([np.full((32, 32, 3), i, np.uint8) for i in range(10)])
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(10) % 3)
    ds = cifar10c(tmp_path, "fog", 3)
    assert len(ds) == 2
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and float(x[0, 0, 0]) == pytest.approx(5 / 255) and y == 5 % 3
    imgs, labels = ds.tensors()
    assert imgs.dtype == torch.uint8 and imgs.shape == (2, 3, 32, 32) and labels.tolist() == [1, 2]
    assert cifar10c(tmp_path, "fog", 1, transform=lambda t: t * 2)[0][0].max() == 0
    with pytest.raises(
        FileNotFoundError, match=re.escape("snow.npy not found; the folder has fog.npy, labels.npy")
    ):
        cifar10c(tmp_path, "snow", 1)
    with pytest.raises(ValueError, match="unknown corruption 'fug'"):
        cifar10c(tmp_path, "fug", 1)
    with pytest.raises(ValueError, match=re.escape("severity must be an integer in 1..5")):
        cifar10c(tmp_path, "fog", 6)


def test_cifar10_1_loader(tmp_path):
    np.save(tmp_path / "cifar10.1_v6_data.npy", np.zeros((4, 32, 32, 3), np.uint8))
    np.save(tmp_path / "cifar10.1_v6_labels.npy", np.array([0, 1, 2, 3]))
    ds = cifar10_1(tmp_path)
    assert len(ds) == 4 and ds[3][1] == 3
    with pytest.raises(FileNotFoundError, match=re.escape("cifar10.1_v4_data.npy not found")):
        cifar10_1(tmp_path, "v4")
    with pytest.raises(ValueError, match="'v4' or 'v6'"):
        cifar10_1(tmp_path, "v5")


def test_imagenet_c_loader(tmp_path):
    for cls in ("n01", "n02"):
        folder = tmp_path / "fog" / "2" / cls
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.JPEG")
    ds = imagenet_c(tmp_path, "fog", 2)
    assert len(ds) == 2 and ds.classes == ["n01", "n02"]
    with pytest.raises(FileNotFoundError, match="fog/3 not found"):
        imagenet_c(tmp_path, "fog", 3)
    with pytest.raises(ValueError, match="unknown corruption 'snow'; available: fog"):
        imagenet_c(tmp_path, "snow", 1)
