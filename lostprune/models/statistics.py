"""Give a freshly initialized network the BatchNorm statistics a trained one has.

A fresh network's BN layers have running mean 0, variance 1 and shift 0, so a filter that
pruning removes leaves exactly zero behind. Trained networks leave a nonzero constant (the
BN shift), which slicing must fold; tests and benchmarks of slicing use this to get there
without training.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def randomize_norm_statistics(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Random BN running statistics, scales and shifts (and conv/linear biases), in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * scale)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=gen) * scale)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * scale)
    return model
