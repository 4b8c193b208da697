"""MobileNetV3-Small (Howard et al. 2019) for 32x32 inputs: hardswish, hard-sigmoid SE gates.

The stem and the first block keep stride 1 (the ImageNet net reduces 224 to 7 by 32x), so a 32x32
image reaches the last stage at 4x4, as in the zoo's MobileNetV2.
"""

from __future__ import annotations

from torch import nn

from .blocks import ConvNormAct, FeatureClassifier, InvertedResidual, SqueezeExcite, make_divisible

RE, HS = nn.ReLU, nn.Hardswish
# (kernel, expanded channels, output channels, squeeze-and-excite, activation, stride)
SMALL_SETTINGS: tuple[tuple[int, int, int, bool, type[nn.Module], int], ...] = (
    (3, 16, 16, True, RE, 1), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
    (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
    (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1), (5, 288, 96, True, HS, 2),
    (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1),
)


def _se(hidden: int) -> SqueezeExcite:
    return SqueezeExcite(hidden, make_divisible(hidden // 4), act=nn.ReLU, gate=nn.Hardsigmoid)


class MobileNetV3Small(FeatureClassifier):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> None:
        channels = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, 1, act=nn.Hardswish)]
        for kernel, expanded, out, use_se, act, stride in SMALL_SETTINGS:
            hidden, out = make_divisible(expanded * width_mult), make_divisible(out * width_mult)
            layers.append(InvertedResidual(channels, hidden, out, kernel, stride, act, _se(hidden) if use_se else None))
            channels = out
        last = 6 * channels
        layers.append(ConvNormAct(channels, last, 1, act=nn.Hardswish))
        super().__init__(layers, last, num_classes, hidden=make_divisible(1024 * width_mult))
