"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 CIFAR inputs: depthwise convs, inverted residuals.

As in the usual CIFAR port, the stem and the second stage use stride 1 so the 32x32 map is not
reduced to 1x1 before the last stage.
"""

from __future__ import annotations

from torch import nn

from .blocks import init_conv_weights, make_divisible

# (expansion t, output channels c, repeats n, first stride s)
CIFAR_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn_relu(cin, hidden, 1)
        layers += _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = _conv_bn_relu(in_channels, channels, 3, 1)
        for t, c, n, s in CIFAR_SETTINGS:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers += _conv_bn_relu(channels, last, 1)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)
        init_conv_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))
