"""Evaluate many models on many test distributions in one pass over the data.

``evaluate_grid(models, shifts, data)`` walks the clean test data once; for each batch it
makes every shifted version once (corruption on the pixels, then normalization, then input
noise, per docs/methods.md §Noise shifts), on the CPU, and moves it to each model's device, so
models on different devices see the very same inputs. Results: error (and its std over noise draws)
per model and shift and, against a reference model, functional similarity on the very same shifted
inputs. The reference's outputs can be kept (``keep_outputs``) and passed back
(``reference_outputs``), so a parent compared with many pruned networks runs once per shift.
Segmentation models (per-pixel labels) are scored by 1 − mIoU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._progress import bar_disabled
from ..robustness.corruptions import corrupt
from ..robustness.noise import noise_like
from .potential import (
    DEFAULT_DELTA,
    excess_error,
    fit_excess_error,
    prune_potential,
    prune_potential_over_draws,
    summarize,
)
from .segmentation import confusion_matrix, iou_from_confusion
from .shifts import Shift, nominal


def _seed(*parts) -> int:
    """A stable 63-bit seed from the shift, draw and batch: results do not depend on the
    order models or shifts are listed in."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def iter_labeled_batches(data, batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    """(inputs, labels) batches from an (images, labels) pair of tensors, a Dataset of
    (image, label) items, a DataLoader, or any iterable of (inputs, labels) pairs."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        images, labels = data
        if len(images) != len(labels):
            raise ValueError(f"data: {len(images)} images but {len(labels)} labels")
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size], labels[i : i + batch_size]
        return
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise TypeError("data must yield (inputs, labels) pairs")
        yield torch.as_tensor(item[0]), torch.as_tensor(item[1])


def _pixels(x: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise TypeError(f"data: inputs must be float or uint8 images, got {x.dtype}")
    return x


def _normalizer(normalize, device) -> tuple[Tensor, Tensor] | None:
    if normalize is None:
        return None
    mean, std = normalize
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if (std <= 0).any():
        raise ValueError("normalize: std must be positive")
    return mean, std


def model_outputs(model: nn.Module, x: Tensor) -> Tensor:
    """Logits of a classifier (N×K) or segmentation model (N×K×H×W; torchvision's dict
    outputs are unpacked)."""
    out = model(x)
    if isinstance(out, Mapping):
        out = out["out"]
    return out


class _Accumulator:
    """Error, and agreement / softmax distance to the reference, of one model on one shift
    and one draw, summed over batches."""

    def __init__(self):
        self.wrong = 0.0
        self.count = 0
        self.confusion: Tensor | None = None
        self.agree = 0.0
        self.l2 = 0.0
        self.compared = 0

    def add(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None, ignore_index: int) -> None:
        pred = logits.argmax(1)
        if logits.dim() == 2:
            self.wrong += float((pred != labels).sum())
            self.count += labels.numel()
        else:
            cm = confusion_matrix(pred, labels, logits.shape[1], ignore_index)
            self.confusion = cm if self.confusion is None else self.confusion + cm
        if ref_logits is not None:
            # per sample (a segmentation sample: the mean over its pixels), summed over the batch
            same = (pred == ref_logits.argmax(1)).float().reshape(len(pred), -1).mean(1)
            dist = (logits.softmax(1) - ref_logits.softmax(1)).norm(dim=1).reshape(len(pred), -1).mean(1)
            self.agree += float(same.sum())
            self.l2 += float(dist.sum())
            self.compared += logits.shape[0]

    def error(self) -> float:
        if self.confusion is not None:
            return 1.0 - float(np.nanmean(iou_from_confusion(self.confusion)))
        return self.wrong / max(self.count, 1)


@dataclass
class EvaluationGrid:
    """Results of ``evaluate_grid``; every value is the mean over the shift's noise draws,
    ``*_std`` the std over them (0 for deterministic shifts)."""

    models: list[str]
    shifts: list[Shift]
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    error_std: dict[str, dict[str, float]] = field(default_factory=dict)
    reference: str | None = None
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)
    agreement_std: dict[str, dict[str, float]] = field(default_factory=dict)
    softmax_l2: dict[str, dict[str, float]] = field(default_factory=dict)
    softmax_l2_std: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: int = 0
    # per-draw errors (the original's prune potential under noise is one P per draw)
    error_draws: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # keep_outputs: model -> shift -> outputs, draws × samples × classes (float32, CPU)
    outputs: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def error(self, model: str, shift: str = "nominal") -> float:
        return self.errors[model][shift]

    def prune_potential(
        self,
        parent: str,
        ratios: Mapping[str, float],
        shift: str = "nominal",
        delta: float = DEFAULT_DELTA,
        reading: str = "any",
        boundary: str = "inclusive",
        per_draw: bool = False,
    ) -> float:
        """P_δ on one shift; ``ratios`` maps the pruned models' names to their prune ratios.
        ``per_draw``: the mean over noise draws of each draw's P_δ (the original's reading)
        instead of P_δ of the errors averaged over the draws."""
        names = list(ratios)
        r = [ratios[n] for n in names]
        if per_draw:
            draws = self.error_draws
            return prune_potential_over_draws(
                r, [draws[n][shift] for n in names], draws[parent][shift], delta, reading, boundary
            ).mean
        errors = self.errors
        return prune_potential(
            r, [errors[n][shift] for n in names], errors[parent][shift], delta, reading, boundary
        )

    def excess_error(
        self, model: str, parent: str, shifts: str | Sequence[str], nominal_shift: str = "nominal"
    ) -> float:
        shifts = [shifts] if isinstance(shifts, str) else list(shifts)
        return excess_error(
            self.errors[model][nominal_shift],
            [self.errors[model][s] for s in shifts],
            self.errors[parent][nominal_shift],
            [self.errors[parent][s] for s in shifts],
        )

    def excess_error_fit(
        self,
        parent: str,
        ratios: Mapping[str, float],
        shifts: str | Sequence[str],
        nominal_shift: str = "nominal",
        bootstrap: int = 0,
    ):
        names = list(ratios)
        values = [self.excess_error(n, parent, shifts, nominal_shift) for n in names]
        return fit_excess_error([ratios[n] for n in names], values, bootstrap=bootstrap)

    def rows(self) -> list[dict]:
        """One dict per (model, shift), for tables and stores."""
        out = []
        for m in self.models:
            for s in self.shifts:
                row = {
                    "model": m,
                    "shift": s.name,
                    "error": self.errors[m][s.name],
                    "error_std": self.error_std[m][s.name],
                    "draws": s.draws,
                }
                if self.reference is not None:
                    row.update(agreement=self.agreement[m][s.name], softmax_l2=self.softmax_l2[m][s.name])
                out.append(row)
        return out


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def evaluate_grid(
    models: Mapping[str, nn.Module],
    shifts: Sequence[Shift] | None = None,
    data=None,
    *,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    reference: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    ignore_index: int = 255,
    progress: bool | None = None,
    keep_outputs: Sequence[str] = (),
    reference_outputs: Mapping[str, Tensor] | None = None,
) -> EvaluationGrid:
    """Errors of every model on every shift, each shifted batch made once and shared.

    models: name -> model (put in eval mode here; each stays on its device).
    shifts: test distributions (default: nominal only); names must be unique.
    data: clean test data as pixels in [0, 1] (float) or uint8, with labels (class indices,
        or per-pixel maps for segmentation): an (images, labels) pair, a Dataset, a DataLoader.
    normalize: (mean, std) applied after corruption, before noise; None when the models take
        pixels (then noise is added to pixels).
    reference: a key of ``models``; fills agreement / softmax_l2 of every model against it.
        With ``reference_outputs`` it names the model those outputs came from instead, which
        is then not run.
    seed: all randomness derives from it, the shift and the batch index.
    keep_outputs: models whose outputs to return in ``grid.outputs`` (draws × samples × ...).
    reference_outputs: shift name -> the reference's ``grid.outputs`` from an earlier call on
        the same data, shifts, seed and batch size.
    """
    if not models:
        raise ValueError("evaluate_grid: no models")
    if data is None:
        raise ValueError("evaluate_grid: data is required")
    shifts = list(shifts) if shifts is not None else [nominal()]
    names = [s.name for s in shifts]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluate_grid: shift names must be unique, got {names}")
    if reference_outputs is not None:
        if reference is None or reference in models:
            raise ValueError(
                "evaluate_grid: with reference_outputs, reference must name the model they came from "
                f"(not one of the models run here), got {reference!r}"
            )
        for s in shifts:
            out = reference_outputs.get(s.name)
            if out is None or out.shape[0] != s.draws:
                raise ValueError(
                    f"evaluate_grid: reference_outputs[{s.name!r}] must hold the reference's outputs "
                    f"for its {s.draws} draw(s), got {None if out is None else tuple(out.shape)}"
                )
    elif reference is not None and reference not in models:
        raise ValueError(f"evaluate_grid: reference {reference!r} is not one of the models {list(models)}")
    unknown = [k for k in keep_outputs if k not in models]
    if unknown:
        raise ValueError(f"evaluate_grid: keep_outputs {unknown} are not among the models {list(models)}")
    kept: dict[tuple[str, str, int], list[Tensor]] = {
        (m, s.name, d): [] for m in keep_outputs for s in shifts for d in range(s.draws)
    }
    acc = {(m, s.name, d): _Accumulator() for m in models for s in shifts for d in range(s.draws)}
    was_training = {m: model.training for m, model in models.items()}
    for model in models.values():
        model.eval()
    try:
        from tqdm.auto import tqdm

        batches = tqdm(
            iter_labeled_batches(data, batch_size),
            desc="evaluate",
            unit="batch",
            disable=bar_disabled(progress),
            leave=False,
        )
        samples = 0
        with torch.inference_mode():
            for b, (x, y) in enumerate(batches):
                if x.dim() != 4:
                    raise ValueError(f"data: inputs must be N×C×H×W, got shape {tuple(x.shape)}")
                pixels = _pixels(x).cpu()
                for shift in shifts:
                    given = None
                    if reference_outputs is not None:
                        given = reference_outputs[shift.name][:, samples : samples + len(x)]
                        if given.shape[1] != len(x):
                            raise ValueError(
                                f"evaluate_grid: reference_outputs[{shift.name!r}] holds fewer samples "
                                "than data; pass the outputs of the same data"
                            )
                    _run_shift(
                        models,
                        shift,
                        pixels,
                        y,
                        b,
                        seed,
                        normalize,
                        reference,
                        ignore_index,
                        acc,
                        kept,
                        given,
                    )
                samples += len(x)
    finally:
        for m, model in models.items():
            model.train(was_training[m])
    if samples == 0:
        raise ValueError("data: the test set is empty; errors and similarities need at least one image")
    if reference_outputs is not None:
        longer = [s.name for s in shifts if reference_outputs[s.name].shape[1] != samples]
        if longer:
            raise ValueError(
                f"evaluate_grid: reference_outputs of {longer} hold more samples than data ({samples}); "
                "pass the outputs of the same data"
            )
    grid = EvaluationGrid(list(models), shifts, reference=reference, samples=samples)
    for m in keep_outputs:
        grid.outputs[m] = {
            s.name: torch.stack([torch.cat(kept[(m, s.name, d)]) for d in range(s.draws)]) for s in shifts
        }
    for m in models:
        for field_name in (
            "errors",
            "error_std",
            "agreement",
            "agreement_std",
            "softmax_l2",
            "softmax_l2_std",
        ):
            getattr(grid, field_name)[m] = {}
        for s in shifts:
            runs = [acc[(m, s.name, d)] for d in range(s.draws)]
            grid.error_draws.setdefault(m, {})[s.name] = [r.error() for r in runs]
            err = summarize(grid.error_draws[m][s.name])
            grid.errors[m][s.name], grid.error_std[m][s.name] = err.mean, err.std
            if reference is not None:
                agree = summarize([r.agree / max(r.compared, 1) for r in runs])
                l2 = summarize([r.l2 / max(r.compared, 1) for r in runs])
                grid.agreement[m][s.name], grid.agreement_std[m][s.name] = agree.mean, agree.std
                grid.softmax_l2[m][s.name], grid.softmax_l2_std[m][s.name] = l2.mean, l2.std
    return grid


def _run_shift(
    models,
    shift: Shift,
    pixels: Tensor,
    labels: Tensor,
    batch: int,
    seed: int,
    normalize,
    reference,
    ignore_index,
    acc,
    kept,
    reference_outputs: Tensor | None,
) -> None:
    base = pixels
    if shift.corruption is not None:
        base = corrupt(pixels, shift.corruption, shift.severity, seed=_seed(seed, shift.name, batch))
    norm = _normalizer(normalize, base.device)
    if norm is not None:
        base = (base - norm[0]) / norm[1]
    y = labels.to(torch.long).cpu()
    for draw in range(shift.draws):
        x = base
        if (
            shift.random and shift.noise is not None
        ):  # made once, on the CPU, and moved: every device sees the same noise
            gen = torch.Generator().manual_seed(_seed(seed, shift.name, batch, draw))
            x = base + noise_like(base, shift.noise, shift.level, gen)
        on_device: dict[torch.device, Tensor] = {}
        outputs = {}
        for name, model in models.items():
            device = _device_of(model)
            if device not in on_device:
                on_device[device] = x.to(device)
            outputs[name] = model_outputs(model, on_device[device]).float().cpu()
            if (name, shift.name, draw) in kept:
                kept[(name, shift.name, draw)].append(outputs[name])
        ref = None
        if reference is not None:
            ref = reference_outputs[draw] if reference_outputs is not None else outputs[reference]
        for name in models:
            acc[(name, shift.name, draw)].add(outputs[name], y, ref, ignore_index)
