"""ShuffleNetV2 (Ma et al. 2018) for 32x32 inputs: channel split, concat and channel shuffle.

The stem keeps stride 1 and drops the max-pool (the ImageNet net reduces 224 to 56 before the first
stage), so a 32x32 image reaches the three stages at 32, 16 and 8 pixels and leaves at 4x4.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct, FeatureClassifier, make_divisible

#: stage output channels of the 1.0x net, scaled by ``width_mult``
STAGE_CHANNELS = (116, 232, 464)
STAGE_REPEATS = (4, 8, 4)


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups: reshape, transpose, flatten back (the paper's design)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.size()
        x = x.view(batch, self.groups, channels // self.groups, height, width)
        x = x.transpose(1, 2).contiguous()
        return x.view(batch, channels, height, width)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def _branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    """1x1 -> depthwise 3x3 (linear) -> 1x1, the branch that transforms half of the channels."""
    return nn.Sequential(ConvNormAct(cin, cout, 1), ConvNormAct(cout, cout, 3, stride, groups=cout, act=None),
                         ConvNormAct(cout, cout, 1))


class ShuffleUnit(nn.Module):
    """Stride 1: split the channels in two, pass the left half, transform the right one.

    Stride 2: both branches transform the whole input (the left one is depthwise 3x3 -> 1x1), halving
    the map size and doubling the channels.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        if stride == 1:
            self.left: nn.Sequential | None = None
            self.right = _branch(half, half, 1)
        else:
            self.left = nn.Sequential(ConvNormAct(cin, cin, 3, stride, groups=cin, act=None), ConvNormAct(cin, half, 1))
            self.right = _branch(cin, half, stride)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            left, right = x.chunk(2, dim=1)
            out = torch.cat([left, self.right(right)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.shuffle(out)


class ShuffleNetV2(FeatureClassifier):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> None:
        channels = 24
        layers: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, 1)]
        for base, repeats in zip(STAGE_CHANNELS, STAGE_REPEATS, strict=True):
            out = make_divisible(base * width_mult, 4)  # even halves on both sides of the split
            layers += [ShuffleUnit(channels if i == 0 else out, out, 2 if i == 0 else 1) for i in range(repeats)]
            channels = out
        last = 2048 if width_mult > 1.5 else 1024  # as in the paper's 2.0x net
        layers.append(ConvNormAct(channels, last, 1))
        super().__init__(layers, last, num_classes)
