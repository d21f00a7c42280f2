"""Functional (noise) similarity (docs/methods.md §Functional similarity): how much two networks'
outputs differ on the same noisy inputs. Label agreement = fraction of equal top-1 predictions;
softmax distance = mean over samples of ‖softmax(f̂(x)) − softmax(f(x))‖₂; both mean ± std over
noise draws. Compare a pruned network with its parent, and a separately trained network with the
parent as the reference for "an unrelated network"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .evaluation import evaluate_grid
from .shifts import Shift, noise_shift


@dataclass(frozen=True)
class Similarity:
    agreement: float
    agreement_std: float
    softmax_l2: float
    softmax_l2_std: float
    draws: int


def functional_similarity(
    model: nn.Module,
    reference: nn.Module,
    data,
    *,
    kind: str = "gaussian",
    level: float = 0.1,
    draws: int = 5,
    normalize=None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> Similarity:
    """Similarity of ``model`` to ``reference`` under input noise (level 0: on clean inputs).

    data: clean test images (pixels) with labels, as for ``evaluate_grid``; the labels are
    not used. normalize: (mean, std) the models expect; the noise is added after it."""
    shift = noise_shift(kind, level, draws) if level > 0 else Shift("clean")
    grid = evaluate_grid(
        {"model": model, "reference": reference},
        [shift],
        data,
        normalize=normalize,
        reference="reference",
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    s = shift.name
    return Similarity(
        grid.agreement["model"][s],
        grid.agreement_std["model"][s],
        grid.softmax_l2["model"][s],
        grid.softmax_l2_std["model"][s],
        shift.draws,
    )


def similarity_table(
    models: dict[str, nn.Module],
    reference: str,
    data,
    *,
    kind: str = "gaussian",
    levels: Sequence[float] = (0.0, 0.05, 0.1, 0.2),
    draws: int = 5,
    normalize=None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool | None = None,
) -> dict[str, dict[float, Similarity]]:
    """Similarity of every model (pruned networks, a separately trained one, ...) to
    ``models[reference]`` at several noise levels, in one pass over the data."""
    shifts = [noise_shift(kind, lv, draws) if lv > 0 else Shift("clean") for lv in levels]
    grid = evaluate_grid(
        models,
        shifts,
        data,
        normalize=normalize,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    return {
        m: {
            lv: Similarity(
                grid.agreement[m][s.name],
                grid.agreement_std[m][s.name],
                grid.softmax_l2[m][s.name],
                grid.softmax_l2_std[m][s.name],
                s.draws,
            )
            for lv, s in zip(levels, shifts)
        }
        for m in models
    }
