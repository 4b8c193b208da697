"""Tiny CNNs, one per operator family of the networks people deploy (digits-sized: 1x8x8 in, 10 classes).

Shared by the pruning, quantization and export tests: each model stresses one family (SE gating,
hardswish/SiLU, pre-activation BatchNorm with concat, channel shuffle, upsampling, GroupNorm and
LayerNorm, average pooling of every kind, grouped convs) and stays small enough to train in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class SENet(nn.Module):
    """Squeeze-and-excitation (MobileNetV3/EfficientNet): ``x * gate(x)`` with a sigmoid or hardsigmoid gate."""

    def __init__(self, gate: str = "sigmoid", width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        self.reduce = nn.Conv2d(width, width // 2, 1)
        self.expand = nn.Conv2d(width // 2, width, 1)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        scale = F.adaptive_avg_pool2d(x, 1)
        x = x * self.gate(self.expand(F.relu(self.reduce(scale))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SwishNet(nn.Module):
    """MobileNetV3 / EfficientNet activations: hardswish (module and by hand, with scalar ops) and SiLU."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        self.act = nn.Hardswish()
        self.dw = conv_bn(width, width, groups=width)
        self.pw = conv_bn(width, width, 1)
        self.silu = nn.SiLU()
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        y = self.dw(x)
        x = y * F.relu6(torch.add(y, 3.0)) / 6.0  # hand-written hardswish: scalar add, relu6, div
        x = F.silu(self.pw(x)) + self.silu(x)
        return self.fc(x.mean((2, 3)))


class DenseNet(nn.Module):
    """Pre-activation DenseNet: every layer opens with a BatchNorm no conv precedes; features concatenated."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + i * growth), nn.ReLU(), nn.Conv2d(8 + i * growth, growth, 3, padding=1))
            for i in range(2))
        width = 8 + 2 * growth
        self.norm = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = F.relu(self.norm(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, width)


class ShuffleNet(nn.Module):
    """ShuffleNetV2 unit: chunk, one branch convolved, concat, channel shuffle (``x.size()``), then an
    unequal split and a permute."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        half = width // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), nn.ReLU(), conv_bn(half, half, groups=half))
        self.side = nn.Conv2d(3 * width // 4, width, 1)
        self.fc = nn.Linear(width + width // 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        left, right = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([left, F.relu(self.branch(right))], 1), 2)
        small, big = torch.split(x, [x.shape[1] // 4, 3 * x.shape[1] // 4], dim=1)
        big = self.side(big).permute(0, 1, 3, 2)
        x = torch.cat([small, F.relu(big)], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class UpsampleNet(nn.Module):
    """Encoder-decoder style: stride-2 conv, nearest (``F.interpolate``) and bilinear (``nn.Upsample``) back up."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        self.down = conv_bn(width, width, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.mix = nn.Conv2d(2 * width, width, 1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        low = F.relu(self.down(x))
        x = x + F.interpolate(low, scale_factor=2, mode="nearest")
        x = F.relu(self.mix(torch.cat([x, self.up(low)], 1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class NormNet(nn.Module):
    """GroupNorm and LayerNorm (over C, H, W) instead of BatchNorm, and an ELU (no hand-written emitter)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.gn = nn.GroupNorm(2, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.ln = nn.LayerNorm([width, 4, 4])
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn(self.conv1(x)))
        x = F.elu(self.ln(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PoolNet(nn.Module):
    """Average pooling of every kind: AvgPool2d, ``F.avg_pool2d``, adaptive to 2x2 and to 1, ``x.mean``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.conv = conv_bn(width, width)
        self.adaptive = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Conv2d(width, width, 1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.conv(self.pool(x)))
        x = F.relu(self.head(self.adaptive(F.avg_pool2d(x, 2))))
        pooled = torch.cat([x.mean((2, 3)), torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)], 1)
        return self.fc(pooled)


class GroupedNet(nn.Module):
    """RegNet/ResNeXt-style grouped convs (groups > 1, not depthwise) in a residual block, dropout."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        self.g1 = conv_bn(width, width, groups=2)
        self.g2 = conv_bn(width, width, groups=4)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.g2(F.relu(self.g1(x))))
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


class InceptionNet(nn.Module):
    """GoogLeNet/Inception block: four branches (1x1, 3x3, 5x5 as two 3x3, pool + 1x1) concatenated."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        self.b1 = conv_bn(width, 4, 1)
        self.b3 = nn.Sequential(conv_bn(width, 4, 1), nn.ReLU(), conv_bn(4, 6))
        self.b5 = nn.Sequential(conv_bn(width, 2, 1), nn.ReLU(), conv_bn(2, 4), nn.ReLU(), conv_bn(4, 4))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(width, 2, 1))
        self.mix = conv_bn(16, width, 1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(b(x)) for b in (self.b1, self.b3, self.b5, self.bp)], 1)
        return self.fc(F.relu(self.mix(x)).mean((2, 3)))


class ChannelsLastNet(nn.Module):
    """ConvNeXt-style block: permute to channels-last, LayerNorm over C, two Linear layers with GELU,
    permute back, residual add; then a LayerNorm on the pooled (N, C) features."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(1, width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.ln = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.head_ln = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        x = x + self.down(F.gelu(self.up(y))).permute(0, 3, 1, 2)
        return self.fc(self.head_ln(x.mean((2, 3))))


class SplitSizesNet(nn.Module):
    """``torch.split`` into unequal pieces of constant sizes (3 and 5), each feeding its own conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 8)
        self.a = conv_bn(3, 16)
        self.b = conv_bn(5, 24)
        self.fc = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small, big = torch.split(F.relu(self.stem(x)), [3, 5], dim=1)
        x = torch.cat([F.relu(self.a(small)), F.relu(self.b(big))], 1)
        return self.fc(x.mean((2, 3)))


class ShuffleV2Net(nn.Module):
    """Two ShuffleNetV2 units whose branch is 1x1, depthwise 3x3, 1x1 (its inner channels prune freely)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        half = width // 2
        self.stem = conv_bn(1, width)
        self.branches = nn.ModuleList(
            nn.Sequential(conv_bn(half, half, 1), nn.ReLU(), conv_bn(half, half, groups=half), conv_bn(half, half, 1),
                          nn.ReLU()) for _ in range(2))
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for branch in self.branches:
            left, right = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat([left, branch(right)], 1), 2)
        return self.fc(x.mean((2, 3)))


OPNETS: dict[str, Callable[[], nn.Module]] = {
    "se_sigmoid": lambda: SENet("sigmoid"),
    "se_hardsigmoid": lambda: SENet("hardsigmoid"),
    "swish": SwishNet,
    "densenet": DenseNet,
    "shufflenet": ShuffleNet,
    "upsample": UpsampleNet,
    "norms": NormNet,
    "pools": PoolNet,
    "grouped": GroupedNet,
    "inception": InceptionNet,
    "channels_last": ChannelsLastNet,
    "split_sizes": SplitSizesNet,
    "shufflev2": ShuffleV2Net,
}


class OddNet(nn.Module):
    """Depthwise conv, ReLU6, residual add, channel concat, option-A shortcut, pooling, a 1x1 conv (3x16x16 in)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(8, 8, 1)
        self.side = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(12, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.pw(self.act(self.dw(x))) + x  # residual add
        short = F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))  # option-A shortcut: slice + zero pad
        z = torch.cat([self.pool(y), self.side(y) + short[:, :4]], dim=1)  # concat of different grids
        return self.tail(z)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(z), 1), 1))


def build(name: str) -> nn.Module:
    """A user-style factory over the table, for specs (``ModelSpec("<this file>:build", {"name": ...})``)."""
    return OPNETS[name]()
