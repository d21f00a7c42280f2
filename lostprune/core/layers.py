"""Which layers a method may prune: Conv2d and Linear by default, selected by name or type."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch.nn as nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

LayerSelector = str | type | Callable[[str, nn.Module], bool]


def _matches(name: str, module: nn.Module, selector: LayerSelector) -> bool:
    if isinstance(selector, str):
        return name == selector or name.startswith(selector + ".")
    if isinstance(selector, type):
        return isinstance(module, selector)
    return bool(selector(name, module))


def prunable_layers(model: nn.Module, layers: Iterable[LayerSelector] | None = None,
                    exclude: Iterable[LayerSelector] | None = None) -> dict[str, nn.Module]:
    """Conv2d/Linear layers of ``model`` in definition order, as {qualified name: module}.

    ``layers`` keeps only modules matching any selector: a qualified name (a prefix selects a
    whole submodule, e.g. ``"layer1"``), a module type, or a predicate ``(name, module) -> bool``.
    ``exclude`` drops matches. Selected modules must be Conv2d or Linear.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    include = list(layers) if layers is not None else None
    drop = list(exclude) if exclude is not None else []
    named = dict(model.named_modules())
    if include is not None:
        for selector in include:
            if isinstance(selector, str) and selector not in named:
                raise ValueError(f"layers: no module named {selector!r} in the model")
            if isinstance(selector, str) and not isinstance(named[selector], PRUNABLE_TYPES) \
                    and not any(isinstance(m, PRUNABLE_TYPES) for m in named[selector].modules()):
                raise ValueError(f"layers: {selector!r} is a {type(named[selector]).__name__}, which holds no "
                                 f"prunable layer (supported: {', '.join(t.__name__ for t in PRUNABLE_TYPES)})")
    selected = {}
    for name, module in named.items():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if include is not None and not any(_matches(name, module, s) for s in include):
            continue
        if any(_matches(name, module, s) for s in drop):
            continue
        selected[name] = module
    if not selected:
        found = sorted({type(m).__name__ for m in model.modules() if m is not model})
        raise ValueError(
            "model has nothing to prune: no Conv2d or Linear layer "
            + ("matches layers/exclude" if include is not None or drop else "found")
            + f" (module types present: {', '.join(found[:12]) or 'none'})"
        )
    return selected


def weight_count(layers: dict[str, nn.Module]) -> int:
    return sum(m.weight.numel() for m in layers.values())
