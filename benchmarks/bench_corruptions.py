"""Corruptions: throughput against the `imagecorruptions` package, and parity with it.

Throughput: all 19 corruptions at severity 3 on 1,000 CIFAR-10 test images (32×32 uint8),
lostprune batched on the CPU against the package image by image (in its own venv, timed
inside that process). Parity: the same images through both, ImageNet parameters on 224×224
crops of scikit-image's sample photographs (the package) and CIFAR parameters on CIFAR-10
test images (the CIFAR-10-C formulas); deterministic corruptions by mean absolute
difference, random ones by the mean and std of the pixel change.

    bash benchmarks/make_imagecorruptions_venv.sh /tmp/ic-venv   # once
    IMAGECORRUPTIONS_PYTHON=/tmp/ic-venv/bin/python python benchmarks/bench_corruptions.py
    python -m pytest benchmarks/bench_corruptions.py --benchmark-enable     # lostprune side only
"""

from __future__ import annotations

import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._imagecorruptions import ReferenceWorker, frost_dir, reference_python
from benchmarks._util import write_section
from lostprune.robustness import corrupt
from lostprune.robustness.corruptions import (
    DETERMINISTIC,
    NAMES,
    REGISTRY,
    corruption_params,
    frost_textures,
    weather,
)

CIFAR_TAR = Path("/work/shared/data/cifar10-jpeg.tar.gz")
# compared pixel by pixel: no random draws, or the reference's draws fed to lostprune
PIXELWISE = (*DETERMINISTIC, "motion_blur", "glass_blur")


def cifar_test_images(n: int = 1000) -> np.ndarray:
    """The first n CIFAR-10 test images (sorted by path), N×32×32×3 uint8."""
    from PIL import Image

    root = Path(os.environ.get("LOSTPRUNE_CIFAR_DIR", "/tmp/lostprune-cifar10"))
    if not (root / "test").is_dir():
        if not CIFAR_TAR.is_file():
            pytest.skip(f"no CIFAR-10 images: {CIFAR_TAR} missing")
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR_TAR) as tar:
            tar.extractall(root, filter="data")
    paths = sorted((root / "test").rglob("*.*"))
    step = max(1, len(paths) // n)  # spread over the classes
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[::step][:n]])


def photo_crops(size: int = 224, per_photo: int = 2) -> np.ndarray:
    """224×224 crops of scikit-image's bundled sample photographs."""
    import skimage.data as data
    from PIL import Image

    crops = []
    rng = np.random.default_rng(0)
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "retina",
        "hubble_deep_field",
        "stereo_motorcycle",
    ):
        img = getattr(data, name)()
        img = img[0] if isinstance(img, tuple) else img
        if min(img.shape[:2]) > 2 * size:
            scale = 2 * size / min(img.shape[:2])
            img = np.asarray(
                Image.fromarray(img).resize(
                    (int(img.shape[1] * scale), int(img.shape[0] * scale)), Image.BICUBIC
                )
            )
        for _ in range(per_photo):
            top = rng.integers(0, img.shape[0] - size + 1)
            left = rng.integers(0, img.shape[1] - size + 1)
            crops.append(img[top : top + size, left : left + size, :3])
    return np.stack(crops)


def to_tensor(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()


def ours_with_reference_draws(
    x: torch.Tensor, name: str, severity: int, table: str, seed: int
) -> torch.Tensor:
    """lostprune's corruption, fed the reference's own random draws where the corruption's
    randomness is a few numbers (motion blur angle, glass blur shifts), so that the two can
    be compared pixel by pixel."""
    params = corruption_params(name, severity, table)
    xf = x.float() / 255
    gen = torch.Generator().manual_seed(seed)
    states = [np.random.RandomState(seed + i) for i in range(len(x))]
    if name == "motion_blur":
        angles = torch.tensor([s.uniform(-45, 45) for s in states])
        out = REGISTRY[name].function(xf, params, gen, table=table, angles=angles)
    elif name == "glass_blur":
        _sigma, delta, iterations = params
        h, w = x.shape[-2:]
        visited = (h - 2 * delta) * (w - 2 * delta)
        draws = torch.from_numpy(
            np.stack([s.randint(-delta, delta, size=(iterations * visited, 2)) for s in states])
        )
        offsets = list(draws.view(len(x), iterations, visited, 2).unbind(1))
        out = REGISTRY[name].function(xf, params, gen, table=table, offsets=offsets)
    elif name == "frost" and frost_textures.texture_dir() is not None:
        which, tops, lefts = [], [], []
        for s in states:
            k = s.randint(5)
            rows, cols = weather.frost_crop_range(k, *x.shape[-2:], table)
            which.append(k)
            tops.append(s.randint(0, rows - x.shape[-2]))
            lefts.append(s.randint(0, cols - x.shape[-1]))
        out = REGISTRY[name].function(
            xf, params, gen, table=table, crops=(torch.tensor(which), torch.tensor(tops), torch.tensor(lefts))
        )
    else:
        return corrupt(x, name, severity, seed=seed, table=table)
    return torch.floor(out.clamp(0, 1) * 255 + 1e-4).to(torch.uint8)


def parity_rows(
    worker: ReferenceWorker,
    images: np.ndarray,
    table: str,
    severities=(1, 2, 3, 4, 5),
    draws: int = 8,
    names=NAMES,
) -> list[tuple]:
    """One row per corruption and severity. Pixel-by-pixel (MAD) where the two can share the
    random draws, else statistics of the change pooled over ``draws`` runs. The reference
    seeds image i of a run with seed + i, so runs are len(images) seeds apart: no image
    shares its random numbers with another."""
    seeds = [k * len(images) for k in range(draws)]
    worker.load(images)
    x = to_tensor(images)
    clean = x.float()
    pixelwise = PIXELWISE + (("frost",) if frost_textures.texture_dir() is not None else ())
    rows = []
    for name in names:
        for sev in severities:
            if name in pixelwise:
                ref = to_tensor(worker.corrupt(name, sev, table, seeds[0])).float()
                ours = ours_with_reference_draws(x, name, sev, table, seeds[0]).float()
                mad = float((ours - ref).abs().mean())
                rows.append((name, sev, "MAD", f"{mad:.3f}/255", "pass" if mad <= 2 else "FAIL"))
                continue
            d_ref = torch.cat([to_tensor(worker.corrupt(name, sev, table, s)).float() - clean for s in seeds])
            d_ours = torch.cat([corrupt(x, name, sev, seed=s, table=table).float() - clean for s in seeds])
            m_ref, m_ours = float(d_ref.mean()), float(d_ours.mean())
            s_ref, s_ours = float(d_ref.std()), float(d_ours.std())
            rel_s = abs(s_ours - s_ref) / max(s_ref, 1e-9)
            # a mean change near 0 makes a relative error meaningless: judge it against the std
            rel_m = abs(m_ours - m_ref) / max(abs(m_ref), 0.1 * s_ref, 1e-9)
            ok = rel_m <= 0.10 and rel_s <= 0.10
            rows.append(
                (
                    name,
                    sev,
                    "Δ mean / Δ std",
                    f"{m_ours:.2f} vs {m_ref:.2f} / {s_ours:.2f} vs {s_ref:.2f}",
                    "pass" if ok else "FAIL",
                )
            )
    return rows


def _suite(x: torch.Tensor, table: str | None):
    for name in NAMES:
        corrupt(x, name, 3, seed=0, table=table)


def throughput(worker: ReferenceWorker, images: np.ndarray, rounds: int = 3) -> tuple[list[str], float]:
    worker.load(images)
    x = to_tensor(images)
    _suite(x[:8], None)  # warm caches (frost textures, filter matrices)
    _suite(x[:8], "imagenet")
    per_ref: dict[str, list[float]] = {n: [] for n in NAMES}
    per_ours: dict[str, list[float]] = {n: [] for n in NAMES}
    per_ours_in: dict[str, list[float]] = {n: [] for n in NAMES}
    for _ in range(rounds):  # interleaved: machine noise hits both sides alike
        for name in NAMES:
            per_ref[name].append(worker.run(name, 3, "imagenet"))
            t = time.perf_counter()
            corrupt(x, name, 3, seed=0)
            per_ours[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            corrupt(x, name, 3, seed=0, table="imagenet")
            per_ours_in[name].append(time.perf_counter() - t)
    lines = [
        (
            "| corruption | imagecorruptions (s) | lostprune, CIFAR table (s) | speedup | "
            "lostprune, ImageNet table (s) | speedup |"
        ),
        "|---|---|---|---|---|---|",
    ]
    tot = [0.0, 0.0, 0.0]
    for name in NAMES:
        r, o, oi = (statistics.median(v[name]) for v in (per_ref, per_ours, per_ours_in))
        tot = [tot[0] + r, tot[1] + o, tot[2] + oi]
        lines.append(f"| {name} | {r:.3f} | {o:.3f} | {r / o:.0f}× | {oi:.3f} | {r / oi:.0f}× |")
    lines.append(
        f"| **all 19** | **{tot[0]:.2f}** | **{tot[1]:.2f}** | **{tot[0] / tot[1]:.1f}×** | "
        f"**{tot[2]:.2f}** | **{tot[0] / tot[2]:.1f}×** |"
    )
    return lines, tot[0] / tot[1]


@pytest.fixture(scope="module")
def cifar_batch():
    return to_tensor(cifar_test_images(1000))


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_severity3(benchmark, cifar_batch, name):
    benchmark(corrupt, cifar_batch, name, 3, 0)


def main() -> None:
    # the package runs on one core (NumPy, per image); measure lostprune on one thread as well,
    # which also keeps the ratio stable on a shared machine
    torch.set_num_threads(int(os.environ.get("LOSTPRUNE_BENCH_THREADS", "1")))
    if reference_python() is None:
        sys.exit(
            "no imagecorruptions venv: run benchmarks/make_imagecorruptions_venv.sh "
            "and set IMAGECORRUPTIONS_PYTHON"
        )
    cifar = cifar_test_images(1000)
    photos = photo_crops()
    with ReferenceWorker() as worker:
        # the stand-in textures first, then the package's photographs for everything else
        os.environ.pop("LOSTPRUNE_FROST_DIR", None)
        procedural = (
            []
            if frost_textures.texture_dir() is not None
            else [
                (f"frost, procedural textures ({table})", 3, *row[2:])
                for table, imgs in (("imagenet", photos), ("cifar", cifar[:200]))
                for row in parity_rows(worker, imgs, table, (3,), names=("frost",))
            ]
        )
        if frost_textures.texture_dir() is None and frost_dir():
            os.environ["LOSTPRUNE_FROST_DIR"] = frost_dir()
        speed, _total = throughput(worker, cifar)
        print("\n".join(speed))
        photo_rows = parity_rows(worker, photos, "imagenet")
        cifar_rows = parity_rows(worker, cifar[:200], "cifar") + procedural
    header = [
        "| corruption | severity | measure | lostprune vs reference | within bound |",
        "|---|---|---|---|---|",
    ]

    def table(rows):
        return "\n".join(header + [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows])

    fails = [r for r in photo_rows + cifar_rows if r[-1] != "pass"]
    n_rows = len(photo_rows) + len(cifar_rows)
    body = f"""
All 19 corruptions at severity 3 on 1,000 CIFAR-10 test images (32×32, uint8). `imagecorruptions`
1.1.2 runs image by image in its own venv (NumPy 1.23, scikit-image 0.18) and has only the
ImageNet parameters; lostprune runs the batch with the CIFAR table (its default at 32 px) and
with the ImageNet table (the same parameters as the package), on one thread like the package
(`LOSTPRUNE_BENCH_THREADS` changes that). Median of 3 interleaved rounds.

{chr(10).join(speed)}

### Parity

Deterministic corruptions: mean absolute difference on the same images (bound 2/255); motion
blur, glass blur and frost get the reference's own random draws (angle, shifts, texture and
crop), so they are compared pixel by pixel too. Random corruptions: mean and std of the pixel
change (corrupted − clean, 0..255) pooled over 8 runs, bound 10 % (the mean judged against
max(|mean|, std/10)). Frost textures: the package's photographs (the last two rows:
lostprune's procedural stand-in, statistics only). {len(fails)} of {n_rows} rows outside the bound.

ImageNet parameters, 16 crops of 224×224 from scikit-image's sample photographs, against the
`imagecorruptions` package:

{table(photo_rows)}

CIFAR parameters, 200 CIFAR-10 test images, against the CIFAR-10-C formulas
(benchmarks/imagecorruptions_worker.py):

{table(cifar_rows)}
"""
    print(
        write_section(
            "corruptions",
            "Corruptions: throughput and parity with imagecorruptions (CPU)",
            "IMAGECORRUPTIONS_PYTHON=/tmp/ic-venv/bin/python python benchmarks/bench_corruptions.py",
            body,
        )
    )


if __name__ == "__main__":
    main()
