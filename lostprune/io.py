"""Network files: a model's weights and masks plus what is needed to rebuild it by name.

save_network("net.pt", model, network="resnet20")
model = load_network("net.pt")            # masks restored in nn.utils.prune format
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from . import models
from ._files import save_atomic
from .core.masks import load_pruned

FORMAT = "lostprune-network/1"


def save_network(
    path: str | Path,
    model: nn.Module,
    network: str,
    num_classes: int | None = None,
    options: dict | None = None,
    **meta,
) -> Path:
    """Write atomically (a crash never leaves half a file). ``options`` are the keyword
    arguments ``lostprune.models.create`` needs to rebuild the architecture (e.g. width)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(network, str) or network.lower() not in models.available():
        raise ValueError(
            f"network must name the architecture lostprune.models.create rebuilds on loading, got "
            f"{network!r}; available: {', '.join(models.available())}"
        )
    if num_classes is None:
        num_classes = _num_classes(model)
    payload = {
        "format": FORMAT,
        "network": network,
        "num_classes": num_classes,
        "options": dict(options or {}),
        "input_size": getattr(model, "input_size", None),
        "state_dict": model.state_dict(),
        "meta": meta,
    }
    return save_atomic(payload, path)


def read_network_file(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"network file {str(path)!r} is a directory; pass the file saved by lostprune.io.save_network"
        )
    if not path.is_file():
        raise FileNotFoundError(f"network file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip and EOF errors alike: not a checkpoint
        lines = str(exc).strip().splitlines()
        raise ValueError(
            f"network file {str(path)!r} is not a torch checkpoint ({type(exc).__name__}: "
            f"{lines[0] if lines else 'empty file' if path.stat().st_size == 0 else ''}); expected a "
            f"lostprune network file ({FORMAT}) written by lostprune.io.save_network"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a lostprune network file (expected format {FORMAT}); save one with "
            "lostprune.io.save_network"
        )
    return payload


def load_network(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network by name and load weights and masks."""
    payload = read_network_file(path)
    model = models.create(
        payload["network"], num_classes=payload["num_classes"], **payload.get("options", {})
    )
    load_pruned(model, payload["state_dict"])
    model.meta = payload.get("meta", {})
    model.network_name = payload["network"]
    return model.to(device)


def _num_classes(model: nn.Module) -> int | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d):
            last = module.out_channels
    return last
