"""The reference side of the corruption parity check and benchmark. Runs under a Python that
has the ``imagecorruptions`` package (made by benchmarks/make_imagecorruptions_venv.sh:
older NumPy / scikit-image, which the package needs), not under lostprune's environment.

ImageNet parameters: the package itself. CIFAR parameters: the CIFAR-10-C generation
formulas (Hendrycks & Dietterich), written here with the same libraries the original script
used and the package's helpers; motion blur uses the package's shifted-copy form, since
the original's ImageMagick call is not available everywhere.

Protocol: one JSON command per stdin line, one JSON answer per stdout line.
  {"op": "load", "images": "x.npy"}                                   N×H×W×3 uint8
  {"op": "run", "name": ..., "severity": s, "table": "imagenet"|"cifar", "seed": k, "out": "y.npy"|null}
      image i is corrupted after np.random.seed(k + i); answers {"seconds": ...}
  {"op": "quit"}
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from io import BytesIO

import cv2
import numpy as np
import skimage as sk
from imagecorruptions import corrupt
from imagecorruptions import corruptions as ic
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scizoom
from skimage.filters import gaussian

warnings.simplefilter("ignore")


def _clipped_zoom_centered(img, factor):
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    img = scizoom(img[top : top + ch, top : top + ch], (factor, factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim : trim + h, trim : trim + h]


def _hsv(x, fn):
    x = sk.color.rgb2hsv(np.array(x) / 255.0)
    fn(x)
    return np.clip(sk.color.hsv2rgb(x), 0, 1) * 255


def cifar(img: Image.Image, name: str, severity: int) -> np.ndarray:
    """The CIFAR-10-C formulas with the CIFAR table."""
    s = severity - 1
    x = np.array(img) / 255.0
    h, w = x.shape[:2]
    if name == "gaussian_noise":
        return (
            np.clip(x + np.random.normal(size=x.shape, scale=[0.04, 0.06, 0.08, 0.09, 0.10][s]), 0, 1) * 255
        )
    if name == "shot_noise":
        c = [500, 250, 100, 75, 50][s]
        return np.clip(np.random.poisson(x * c) / c, 0, 1) * 255
    if name == "impulse_noise":
        return (
            np.clip(sk.util.random_noise(x, mode="s&p", amount=[0.01, 0.02, 0.03, 0.05, 0.07][s]), 0, 1) * 255
        )
    if name == "speckle_noise":
        return (
            np.clip(x + x * np.random.normal(size=x.shape, scale=[0.06, 0.1, 0.12, 0.16, 0.2][s]), 0, 1) * 255
        )
    if name == "gaussian_blur":
        return np.clip(gaussian(x, sigma=[0.4, 0.6, 0.7, 0.8, 1][s], multichannel=True), 0, 1) * 255
    if name == "glass_blur":
        sigma, d, iters = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s]
        y = np.uint8(gaussian(x, sigma=sigma, multichannel=True) * 255)
        for _ in range(iters):
            for hh in range(h - d, d, -1):
                for ww in range(w - d, d, -1):
                    dx, dy = np.random.randint(-d, d, size=(2,))
                    y[hh, ww], y[hh + dy, ww + dx] = y[hh + dy, ww + dx], y[hh, ww]
        return np.clip(gaussian(y / 255.0, sigma=sigma, multichannel=True), 0, 1) * 255
    if name == "defocus_blur":
        r, a = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s]
        k = ic.disk(radius=r, alias_blur=a)
        return np.clip(np.stack([cv2.filter2D(x[:, :, c], -1, k) for c in range(3)], 2), 0, 1) * 255
    if name == "motion_blur":
        r, sig = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s]
        return np.clip(
            ic._motion_blur(np.array(img), radius=r, sigma=sig, angle=np.random.uniform(-45, 45)), 0, 255
        )
    if name == "zoom_blur":
        factors = np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][s], 0.01)
        xf = x.astype(np.float32)
        out = np.zeros_like(xf)
        for z in factors:
            out += _clipped_zoom_centered(xf, z)
        return np.clip((xf + out) / (len(factors) + 1), 0, 1) * 255
    if name == "snow":
        c = [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ][s]
        xf = x.astype(np.float32)
        layer = np.random.normal(size=(h, w), loc=c[0], scale=c[1])
        layer = _clipped_zoom_centered(layer[..., None], c[2])
        layer[layer < c[3]] = 0
        layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8) / 255.0
        layer = ic._motion_blur(layer, radius=c[4], sigma=c[5], angle=np.random.uniform(-135, -45))
        layer = (np.round(layer * 255) / 255.0)[..., None]
        gray = cv2.cvtColor(xf, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
        xf = c[6] * xf + (1 - c[6]) * np.maximum(xf, gray * 1.5 + 0.5)
        return np.clip(xf + layer + np.rot90(layer, k=2), 0, 1) * 255
    if name == "frost":
        c = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s]
        idx = np.random.randint(5)
        fname = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][idx]
        frost = cv2.imread(str(__import__("pathlib").Path(ic.__file__).parent / "frost" / fname))
        frost = cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)
        xs, ys = np.random.randint(0, frost.shape[0] - h), np.random.randint(0, frost.shape[1] - w)
        frost = frost[xs : xs + h, ys : ys + w][..., [2, 1, 0]]
        return np.clip(c[0] * np.array(img) + c[1] * frost, 0, 255)
    if name == "fog":
        c = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s]
        peak = x.max()
        x = x + c[0] * ic.plasma_fractal(mapsize=32, wibbledecay=c[1])[:h, :w][..., None]
        return np.clip(x * peak / (peak + c[0]), 0, 1) * 255
    if name == "spatter":
        return _spatter_cifar(x.astype(np.float32), s)
    if name == "contrast":
        c = [0.75, 0.5, 0.4, 0.3, 0.15][s]
        m = x.mean(axis=(0, 1), keepdims=True)
        return np.clip((x - m) * c + m, 0, 1) * 255
    if name == "brightness":
        c = [0.05, 0.1, 0.15, 0.2, 0.3][s]

        def shift(v):
            v[:, :, 2] = np.clip(v[:, :, 2] + c, 0, 1)

        return _hsv(img, shift)
    if name == "saturate":
        c = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][s]

        def scale(v):
            v[:, :, 1] = np.clip(v[:, :, 1] * c[0] + c[1], 0, 1)

        return _hsv(img, scale)
    if name == "jpeg_compression":
        out = BytesIO()
        img.save(out, "JPEG", quality=[80, 65, 58, 50, 40][s])
        return np.array(Image.open(out))
    if name == "pixelate":
        c = [0.95, 0.9, 0.85, 0.75, 0.65][s]
        return np.array(img.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))
    if name == "elastic_transform":
        return _elastic_cifar(x.astype(np.float32), s)
    raise ValueError(name)


def _spatter_cifar(x, s):
    c = [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ][s]
    liquid = gaussian(np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1]), sigma=c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= c[4]
        color = np.concatenate([v / 255.0 * np.ones_like(m[..., :1]) for v in (175, 238, 238)], axis=2)
        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    m = gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), sigma=c[4])
    m[m < 0.8] = 0
    color = (
        np.concatenate([v / 255.0 * np.ones_like(x[..., :1]) for v in (63, 42, 20)], axis=2) * m[..., None]
    )
    return np.clip(x * (1 - m[..., None]) + color, 0, 1) * 255


def _elastic_cifar(image, s):
    size = image.shape[0]
    c = [
        (size * 0, size * 0, size * 0.08),
        (size * 0.05, size * 0.2, size * 0.07),
        (size * 0.08, size * 0.06, size * 0.06),
        (size * 0.1, size * 0.04, size * 0.05),
        (size * 0.1, size * 0.03, size * 0.03),
    ][s]
    shape = image.shape
    center = np.float32(shape[:2]) // 2
    sq = min(shape[:2]) // 3
    pts1 = np.float32([center + sq, [center[0] + sq, center[1] - sq], center - sq])
    pts2 = pts1 + np.random.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    image = cv2.warpAffine(
        image, cv2.getAffineTransform(pts1, pts2), shape[:2][::-1], borderMode=cv2.BORDER_REFLECT_101
    )
    dx = (gaussian(np.random.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(
        np.float32
    )
    dy = (gaussian(np.random.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(
        np.float32
    )
    xx, yy, zz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    idx = (
        np.reshape(yy + dy[..., None], (-1, 1)),
        np.reshape(xx + dx[..., None], (-1, 1)),
        np.reshape(zz, (-1, 1)),
    )
    return np.clip(map_coordinates(image, idx, order=1, mode="reflect").reshape(shape), 0, 1) * 255


def run(images: np.ndarray, name: str, severity: int, table: str, seed: int) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        np.random.seed(seed + i)
        if table == "imagenet":
            out[i] = corrupt(img, corruption_name=name, severity=severity)
        else:
            out[i] = np.uint8(cifar(Image.fromarray(img), name, severity))
    return out


def main() -> None:
    images = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "load":
            images = np.load(cmd["images"])
            answer = {"n": len(images)}
        elif cmd["op"] == "run":
            start = time.perf_counter()
            result = run(
                images, cmd["name"], cmd["severity"], cmd.get("table", "imagenet"), cmd.get("seed", 0)
            )
            answer = {"seconds": time.perf_counter() - start}
            if cmd.get("out"):
                np.save(cmd["out"], result)
        else:
            answer = {"error": f"unknown op {cmd['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
