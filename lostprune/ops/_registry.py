"""The op families. Each module under lostprune/ops/ named here defines ``OPS`` (op name ->
plain-PyTorch reference) and ``register()`` (fake and autograd kernels for its ops), run
once after the compiled library has defined the schemas."""

from __future__ import annotations

import importlib

FAMILIES = ("gather", "nonzero", "sparse", "sensitivity", "pool")


def family_modules():
    return [importlib.import_module(f"lostprune.ops.{name}") for name in FAMILIES]


def register_all() -> None:
    for module in family_modules():
        module.register()


def all_ops() -> dict:
    """op name -> reference function, over every family."""
    table = {}
    for module in family_modules():
        table.update(module.OPS)
    return table
