"""VGG16 with batch norm for 32×32 inputs (the CIFAR variant of Li et al. 2017): thirteen
3×3 convolutions, five max-pools, then a 512→512→classes head."""

from __future__ import annotations

import torch.nn as nn

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    def __init__(self, config=VGG16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, item, 3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x))
