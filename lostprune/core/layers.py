"""Which layers a method may prune: Conv2d and Linear by default, selected by name or type;
layers that share one weight Parameter (tied weights) are one prunable tensor."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import torch.nn as nn
from torch import Tensor

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

LayerSelector = str | type | Callable[[str, nn.Module], bool]


def _selectors(value, arg: str) -> list[LayerSelector] | None:
    """``value`` as a list of selectors: one selector (a name, a type, a predicate) or an
    iterable of them; each checked, so a typo fails here with the argument named."""
    if value is None:
        return None
    if isinstance(value, (str, type)) or (callable(value) and not isinstance(value, nn.Module)):
        value = [value]
    try:
        selectors = list(value)
    except TypeError:
        raise TypeError(
            f"{arg} must be a module name, a module type, a predicate (name, module) -> bool, or a "
            f"list of them; got {type(value).__name__}"
        ) from None
    for index, selector in enumerate(selectors):
        if isinstance(selector, type) and not issubclass(selector, nn.Module):
            raise TypeError(f"{arg}[{index}] is the type {selector.__name__}, which is not an nn.Module type")
        if not isinstance(selector, (str, type)) and not callable(selector):
            raise TypeError(
                f"{arg}[{index}] is {selector!r} ({type(selector).__name__}); expected a module name, "
                "a module type or a predicate (name, module) -> bool"
            )
    return selectors


def _matches(name: str, module: nn.Module, selector: LayerSelector, arg: str) -> bool:
    if isinstance(selector, str):
        return name == selector or name.startswith(selector + ".")
    if isinstance(selector, type):
        return isinstance(module, selector)
    try:
        return bool(selector(name, module))
    except TypeError as exc:  # most often the predicate's signature
        raise TypeError(
            f"{arg}: the predicate {getattr(selector, '__qualname__', selector)!r} failed on "
            f"({name!r}, {type(module).__name__}): {exc}; predicates take (name, module)"
        ) from exc


def prunable_layers(
    model: nn.Module,
    layers: Iterable[LayerSelector] | LayerSelector | None = None,
    exclude: Iterable[LayerSelector] | LayerSelector | None = None,
) -> dict[str, nn.Module]:
    """Conv2d/Linear layers of ``model`` in definition order, as {qualified name: module}.

    ``layers`` keeps only modules matching any selector: a qualified name (a prefix selects a
    whole submodule, e.g. ``"layer1"``), a module type, or a predicate ``(name, module) -> bool``;
    one selector or a list. ``exclude`` drops matches; a name in either must exist in the
    model. Selected modules must be Conv2d or Linear. A module registered under several
    names is listed once; layers sharing a weight Parameter are all listed (``shared_weights``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    include = _selectors(layers, "layers")
    drop = _selectors(exclude, "exclude") or []
    named = dict(model.named_modules())
    for arg, selectors in (("layers", include or []), ("exclude", drop)):
        for selector in selectors:
            if isinstance(selector, str) and selector not in named:
                raise ValueError(f"{arg}: no module named {selector!r} in the model")
            if (
                isinstance(selector, str)
                and not isinstance(named[selector], PRUNABLE_TYPES)
                and not any(isinstance(m, PRUNABLE_TYPES) for m in named[selector].modules())
            ):
                raise ValueError(
                    f"{arg}: {selector!r} is a {type(named[selector]).__name__}, which holds no "
                    f"prunable layer (supported: {', '.join(t.__name__ for t in PRUNABLE_TYPES)})"
                )
    selected = {}
    for name, module in named.items():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if include is not None and not any(_matches(name, module, s, "layers") for s in include):
            continue
        if any(_matches(name, module, s, "exclude") for s in drop):
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


def weight_of(layer: nn.Module) -> Tensor:
    """A prunable layer's weight (orig * mask once pruned). nn.Module's attribute access is
    typed ``Tensor | Module``; every layer discover_layers returns has a tensor weight."""
    return cast(Tensor, layer.weight)


def weight_parameter(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The Parameter behind ``module.<name>`` (``<name>_orig`` once pruned)."""
    return module._parameters.get(f"{name}_orig", module._parameters.get(name))


def weight_users(model: nn.Module) -> dict[int, list[str]]:
    """{id of a weight Parameter: the names of the modules using it, in definition order}."""
    users: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        param = weight_parameter(module)
        if param is not None:
            users.setdefault(id(param), []).append(name)
    return users


def split_shared(
    model: nn.Module, layers: dict[str, nn.Module]
) -> tuple[dict[str, nn.Module], dict[str, list[str]]]:
    """(``layers`` with one entry per weight Parameter, {kept layer: the other selected layers
    sharing its weight}). A shared weight is one prunable tensor with one mask: the first
    layer using it stands for all. Raises when a Conv2d / Linear outside the selection shares
    a selected weight (pruning it would prune that layer too); other modules sharing it (a
    tied embedding) read the pruned Parameter."""
    users = weight_users(model)
    named = dict(model.named_modules())
    kept: dict[str, nn.Module] = {}
    shared: dict[str, list[str]] = {}
    taken: set[str] = set()
    for name, module in layers.items():
        if name in taken:
            continue
        kept[name] = module
        others = [n for n in users.get(id(weight_parameter(module)), []) if n != name]
        outside = [n for n in others if n not in layers and isinstance(named[n], PRUNABLE_TYPES)]
        if outside:
            raise ValueError(
                f"layers {name!r} and {outside[0]!r} share one weight Parameter (tied weights), but only "
                f"{name!r} is selected: select both or neither (layers= / exclude=)"
            )
        aliases = [n for n in others if n in layers]
        if aliases:
            shared[name] = aliases
            taken.update(aliases)
    return kept, shared


def weight_count(layers: dict[str, nn.Module]) -> int:
    return sum(weight_of(m).numel() for m in layers.values())
