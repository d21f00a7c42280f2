"""A small CNN for the built-in digits data (3×32×32): five conv-BN-ReLU layers, two
max-pools, global average pooling and a linear classifier (about 0.14 M parameters)."""

from __future__ import annotations

import torch.nn as nn


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w),
            *_conv_bn(w, w),
            nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w),
            *_conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
