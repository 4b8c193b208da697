"""EfficientNet-B0 (Tan & Le 2019) for 32x32 inputs: MBConv blocks with SiLU, sigmoid SE, stochastic depth.

The stem and the second stage keep stride 1 (the ImageNet net reduces 224 to 7 by 32x), so a 32x32
image reaches the last stages at 4x4, as in the zoo's MobileNetV2. ``width_mult`` and ``depth_mult``
are the compound-scaling multipliers (B0 is 1.0, 1.0).
"""

from __future__ import annotations

import math

from torch import nn

from .blocks import ConvNormAct, FeatureClassifier, InvertedResidual, SqueezeExcite, make_divisible

# (expansion, kernel, first stride, output channels, repeats)
B0_SETTINGS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 1, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
)


def _mbconv(cin: int, cout: int, expansion: int, kernel: int, stride: int, drop_prob: float) -> InvertedResidual:
    hidden = cin * expansion
    se = SqueezeExcite(hidden, max(1, cin // 4), act=nn.SiLU, gate=nn.Sigmoid)
    return InvertedResidual(cin, hidden, cout, kernel, stride, nn.SiLU, se, drop_prob)


class EfficientNetB0(FeatureClassifier):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, depth_mult: float = 1.0,
                 drop_path_rate: float = 0.2, in_channels: int = 3) -> None:
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, 1, act=nn.SiLU)]
        stages = [(t, k, s, make_divisible(c * width_mult), math.ceil(n * depth_mult)) for t, k, s, c, n in B0_SETTINGS]
        total = sum(n for *_, n in stages)
        for expansion, kernel, stride, out, repeats in stages:
            for i in range(repeats):
                # the drop probability grows linearly with depth, as in the paper
                drop_prob = drop_path_rate * (len(layers) - 1) / total
                layers.append(_mbconv(channels, out, expansion, kernel, stride if i == 0 else 1, drop_prob))
                channels = out
        last = 4 * channels
        layers.append(ConvNormAct(channels, last, 1, act=nn.SiLU))
        super().__init__(layers, last, num_classes)
