"""Small instances of torchvision's architecture families, built with their own classes and
blocks (constructor arguments), so that tests of structured pruning run in seconds."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import inception as tv_inception
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.efficientnet import FusedMBConvConfig, MBConvConfig
from torchvision.models.mobilenetv3 import InvertedResidualConfig
from torchvision.models.regnet import BlockParams
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

import lostprune.models as models


class SmallInception(nn.Module):
    """Inception v3's own blocks: a branchy A block (1x1, 5x5, double 3x3, average pool with
    padding), a B block (stride-2 branches beside a max pool), concatenated channels."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = tv_inception.BasicConv2d(3, 16, kernel_size=3, stride=2)
        self.mixed_a = tv_inception.InceptionA(16, pool_features=8)  # 64 + 64 + 96 + 8 = 232
        self.mixed_b = tv_inception.InceptionB(232)  # 384 + 96 + 232 = 712
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(712, num_classes)

    def forward(self, x):
        x = self.mixed_b(self.mixed_a(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _mobilenet_v3() -> nn.Module:
    c = partial(InvertedResidualConfig, width_mult=1.0)
    settings = [
        c(16, 3, 16, 16, True, "RE", 2, 1),
        c(16, 3, 72, 24, False, "RE", 2, 1),
        c(24, 5, 96, 40, True, "HS", 2, 1),
        c(40, 5, 120, 40, True, "HS", 1, 1),
    ]
    return tvm.MobileNetV3(settings, last_channel=64, num_classes=10)


def _vit() -> nn.Module:
    model = tvm.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero: no signal
    return model


FAMILIES = {
    "convnext": lambda: tvm.ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], num_classes=10),
    "vit": _vit,
    "swin": lambda: tvm.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10),
    "swin_v2": lambda: tvm.SwinTransformer(
        [4, 4],
        16,
        [2, 2],
        [2, 4],
        [4, 4],
        num_classes=10,
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
    ),
    "inception": SmallInception,
    "shufflenet": lambda: tvm.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=10),
    "regnet": lambda: tvm.RegNet(
        BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25),
        num_classes=10,
        stem_width=16,
    ),
    "efficientnet": lambda: tvm.EfficientNet(
        [
            MBConvConfig(1, 3, 1, 16, 16, 1),
            MBConvConfig(4, 3, 2, 16, 24, 2),
            MBConvConfig(4, 5, 2, 24, 32, 1),
        ],
        dropout=0.2,
        num_classes=10,
        last_channel=64,
    ),
    "efficientnet_v2": lambda: tvm.EfficientNet(
        [
            FusedMBConvConfig(1, 3, 1, 16, 16, 1),
            FusedMBConvConfig(4, 3, 2, 16, 24, 2),
            MBConvConfig(4, 3, 2, 24, 32, 1),
        ],
        dropout=0.2,
        num_classes=10,
        last_channel=64,
        norm_layer=partial(nn.BatchNorm2d, eps=1e-3),
    ),
    "mobilenet_v3": _mobilenet_v3,
    "densenet": lambda: tvm.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10
    ),
}
INPUT = (3, 32, 32)


def create(name: str, seed: int = 0) -> nn.Module:
    """A small ``name`` model in eval mode with trained-like norm statistics (a removed filter
    then leaves a nonzero constant behind) and layer scales (ConvNeXt starts them at 1e-6:
    its blocks would add nothing)."""
    torch.manual_seed(seed)
    model = models.randomize_norm_statistics(FAMILIES[name](), seed).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("layer_scale"):
                param.uniform_(0.5, 1.5)
    return model
