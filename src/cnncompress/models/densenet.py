"""DenseNet-BC (Huang et al. 2017) for CIFAR: pre-activation bottleneck layers, dense concatenation.

Each layer reads the concatenation of every earlier feature map of its block (one many-way concat per
layer, as in the reference design) and each transition halves the channels and the map size.
Depth counts the convs of the three blocks (two per layer) plus the stem, two transitions and the
classifier: ``depth = 6n + 4`` with ``n`` layers per block (DenseNet-BC-100 has n = 16).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .blocks import FeatureClassifier

#: a transition keeps this share of the channels (the "C" of DenseNet-BC)
COMPRESSION = 0.5
#: the bottleneck 1x1 conv widens to this many times the growth rate (the "B")
BOTTLENECK = 4


class PreActConv(nn.Sequential):
    """BatchNorm -> ReLU -> conv: the norm opens the layer instead of following a conv."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(OrderedDict(norm=nn.BatchNorm2d(cin), act=nn.ReLU(),
                                     conv=nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)))


class DenseBlock(nn.Module):
    """``layers`` bottleneck layers, each adding ``growth`` channels to the concatenated features."""

    def __init__(self, cin: int, layers: int, growth: int) -> None:
        super().__init__()
        width = BOTTLENECK * growth
        self.layers = nn.ModuleList(
            nn.Sequential(PreActConv(cin + i * growth, width, 1), PreActConv(width, growth, 3)) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class DenseNetCifar(FeatureClassifier):
    def __init__(self, depth: int = 40, growth_rate: int = 12, num_classes: int = 10, in_channels: int = 3) -> None:
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 (40, 100, 190), got {depth}")
        per_block = (depth - 4) // 6
        channels = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for block in range(3):
            layers.append(DenseBlock(channels, per_block, growth_rate))
            channels += per_block * growth_rate
            if block < 2:
                out = int(channels * COMPRESSION)
                layers += [PreActConv(channels, out, 1), nn.AvgPool2d(2)]
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        super().__init__(layers, channels, num_classes)
