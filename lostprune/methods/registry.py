"""Methods by name."""

from __future__ import annotations

from .base import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}


def register_method(name: str):
    def decorate(cls: type[PruningMethod]) -> type[PruningMethod]:
        key = name.lower()
        if key in _METHODS and _METHODS[key] is not cls:
            raise ValueError(f"a pruning method named {key!r} is already registered")
        cls.name = key
        _METHODS[key] = cls
        return cls

    return decorate


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(method: str | PruningMethod) -> PruningMethod:
    """A method instance from its name (case-insensitive) or an instance."""
    if isinstance(method, PruningMethod):
        return method
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(
            f"unknown pruning method {method!r}; valid methods: {', '.join(available_methods())}"
        )
    return _METHODS[method.lower()]()
