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


def save_network(path: str | Path, model: nn.Module, network: str, num_classes: int | None = None,
                 options: dict | None = None, **meta) -> Path:
    """Write atomically (a crash never leaves half a file). ``options`` are the keyword
    arguments ``lostprune.models.create`` needs to rebuild the architecture (e.g. width)."""
    if num_classes is None:
        num_classes = _num_classes(model)
    payload = {"format": FORMAT, "network": network, "num_classes": num_classes, "options": dict(options or {}),
               "input_size": getattr(model, "input_size", None), "state_dict": model.state_dict(), "meta": meta}
    return save_atomic(payload, path)


def read_network_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"network file {str(path)!r} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lostprune network file (expected format {FORMAT}); save one with "
                         "lostprune.io.save_network")
    return payload


def load_network(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network by name and load weights and masks."""
    payload = read_network_file(path)
    model = models.create(payload["network"], num_classes=payload["num_classes"], **payload.get("options", {}))
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
