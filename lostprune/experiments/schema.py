"""Dataclass schemas read from YAML: every key checked against its field's type and range,
errors that name the key path (``train.lr must be > 0, got -1``) and suggest a close key."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range."""


def choice(*values):
    return {"choices": values}


def value_range(low=None, high=None, *, low_open=False):
    return {"low": low, "high": high, "low_open": low_open}


def check_value(value, tp, meta: dict, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(value, inner[0], meta, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path} must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, "
                f"got {value!r}"
            )
        return build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [check_value(v, args[0], meta, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (tp is int and not float(value).is_integer())
        ):
            raise ConfigError(f"{path} must be {'an integer' if tp is int else 'a number'}, got {value!r}")
        value = tp(value)
        low, high, open_low = meta.get("low"), meta.get("high"), meta.get("low_open")
        too_low = low is not None and (value < low or (open_low and value == low))
        if too_low or (high is not None and value > high):
            if high is None:
                allowed = f"> {low}" if open_low else f">= {low}"
            else:
                allowed = f"in {'(' if open_low else '['}{low}, {high}]"
            raise ConfigError(f"{path} must be {allowed}, got {value:g}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{path} must be one of {', '.join(choices)}; got {value!r}")
        return value
    return value


def build(cls, data: dict, path: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {join_key(path, key)!r}{hint} (allowed: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = join_key(path, name)
        if name in data:
            values[name] = check_value(data[name], hints[name], dict(f.metadata), key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}")
    return cls(**values)


def join_key(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)
