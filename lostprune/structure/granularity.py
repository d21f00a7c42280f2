"""How many output channels the fastest convolution kernels compute at a time.

A convolution's cost grows in steps of this many output channels, not one by one: oneDNN's
CPU kernels tile them by one vector register (16 float32 on AVX-512, 8 on AVX2), so a layer
that keeps 34 of 64 filters costs as much as one that keeps 48 (measured in
``benchmarks/results/slicing.md``); tensor cores tile them by 8. Pruning with
``round_to="auto"`` keeps multiples of it, and ``SliceReport`` says how much of a sliced
model's convolution work falls on the padding.
"""

from __future__ import annotations

import torch


def channel_multiple(device: torch.device | str | None = None) -> int:
    """The output-channel tile of convolution kernels on ``device`` (default: CPU)."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cpu":
        return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    return 8  # CUDA tensor cores (TF32, FP16, BF16) and other accelerators: multiples of 8


def padded(channels: int, multiple: int) -> int:
    """``channels`` rounded up to a multiple of ``multiple``: what the kernels really compute."""
    return -(-channels // multiple) * multiple


__all__ = ["channel_multiple", "padded"]
