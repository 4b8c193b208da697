"""A CIFAR ResNet-(6n+2) normalised with GroupNorm instead of BatchNorm.

GroupNorm ties the channels of each group together, so a pruner must remove whole groups; this net
exists to exercise that. Shape changes use a 1x1 projection shortcut (option B): the zoo's
option-A zero padding would shift channels across group boundaries.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from .blocks import ConvNormAct, FeatureClassifier, Norm, Residual, make_divisible

STAGE_WIDTHS = (16, 32, 64)


def _basic_block(cin: int, cout: int, stride: int, norm: Norm) -> Residual:
    body = nn.Sequential(ConvNormAct(cin, cout, 3, stride, norm=norm), ConvNormAct(cout, cout, 3, act=None, norm=norm))
    return Residual(body, cin, cout, stride, norm)


class ResNetGN(FeatureClassifier):
    def __init__(self, depth: int = 20, num_classes: int = 10, num_groups: int = 8, width_mult: float = 1.0,
                 in_channels: int = 3) -> None:
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        norm = partial(nn.GroupNorm, num_groups)
        # every width a multiple of num_groups, so each group holds whole channels
        widths = [make_divisible(w * width_mult, num_groups) for w in STAGE_WIDTHS]
        channels = widths[0]
        layers: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, norm=norm)]
        for stage, width in enumerate(widths):
            for i in range(blocks):
                layers.append(_basic_block(channels, width, 2 if stage > 0 and i == 0 else 1, norm))
                channels = width
        super().__init__(layers, channels, num_classes)
