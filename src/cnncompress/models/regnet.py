"""RegNetX (Radosavovic et al. 2020) for 32x32 inputs: residual bottlenecks around grouped 3x3 convs.

Stage depths and widths are RegNetX-200MF's (bottleneck ratio 1, group width 8). The stem and the
first stage keep stride 1 (the ImageNet net reduces 224 to 7 by 32x), so the stages see 32, 16, 8 and
4 pixels. Every stage width is a multiple of ``group_width`` so each 3x3 conv has whole groups.
"""

from __future__ import annotations

from torch import nn

from .blocks import ConvNormAct, FeatureClassifier, Residual, make_divisible

STAGE_DEPTHS = (1, 1, 4, 7)
STAGE_WIDTHS = (24, 56, 152, 368)
STAGE_STRIDES = (1, 2, 2, 2)
STEM_WIDTH = 32


def _x_block(cin: int, cout: int, stride: int, group_width: int) -> Residual:
    """1x1 -> grouped 3x3 (``cout / group_width`` groups) -> 1x1, added to the input."""
    body = nn.Sequential(ConvNormAct(cin, cout, 1), ConvNormAct(cout, cout, 3, stride, groups=cout // group_width),
                         ConvNormAct(cout, cout, 1, act=None))
    return Residual(body, cin, cout, stride)


class RegNetCifar(FeatureClassifier):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, group_width: int = 8,
                 in_channels: int = 3) -> None:
        channels = STEM_WIDTH
        layers: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, 1)]
        for depth, width, stride in zip(STAGE_DEPTHS, STAGE_WIDTHS, STAGE_STRIDES, strict=True):
            out = make_divisible(width * width_mult, group_width)
            for i in range(depth):
                layers.append(_x_block(channels, out, stride if i == 0 else 1, group_width))
                channels = out
        super().__init__(layers, channels, num_classes)
