"""Small test graphs for 1x8x8 digits inputs, one per channel coupling the graph must handle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, groups: int = 1, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=bias), nn.BatchNorm2d(cout)]


class ConcatNet(nn.Module):
    """Two branches concatenated on the channel axis, read by one conv (offsets into its input)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(*conv_bn(1, 6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(1, 10, 3, padding=1, bias=True), nn.ReLU())
        self.c = nn.Sequential(*conv_bn(16, 12), nn.ReLU())
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.c(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SplitNet(nn.Module):
    """chunk and a size-computed split feeding parallel branches that are added back together."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 12), nn.ReLU())
        self.left = nn.Sequential(*conv_bn(6, 8))
        self.right = nn.Sequential(*conv_bn(6, 8))
        self.mix = nn.Sequential(*conv_bn(8, 8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        y = F.relu(self.left(a) + self.right(b))
        p, q = torch.split(y, y.size(1) // 2, dim=1)
        y = self.mix(torch.cat([p, q], dim=1) * y)
        return self.fc(y.mean((2, 3)))


class SENet(nn.Module):
    """A squeeze-and-excitation gate (elementwise multiply), then flatten of a 4x4 map into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16), nn.ReLU())
        self.fc1 = nn.Linear(16, 4)
        self.fc2 = nn.Linear(4, 16)
        self.body = nn.Sequential(*conv_bn(16, 16), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
        x = self.body(x * gate.view(x.size(0), x.size(1), 1, 1))
        return self.fc(x.view(x.size(0), -1))


class DepthwiseNet(nn.Module):
    """Depthwise-separable blocks with an inverted residual (depthwise channels pass through)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16), nn.ReLU6())
        self.dw1 = nn.Sequential(*conv_bn(16, 16, groups=16), nn.ReLU6())
        self.pw1 = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.expand = nn.Sequential(nn.Conv2d(24, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw2 = nn.Sequential(*conv_bn(48, 48, groups=48), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.pw1(self.dw1(self.stem(x)))
        x = x + self.project(self.dw2(self.expand(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class GroupedNet(nn.Module):
    """A grouped conv (groups=2): pruned a whole group at a time, its input and output together."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 8), nn.ReLU())
        self.grouped = nn.Sequential(*conv_bn(8, 8, groups=2), nn.ReLU())
        self.head = nn.Sequential(*conv_bn(8, 16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.head(self.grouped(self.stem(x))).mean((2, 3)))


class ChannelPadNet(nn.Module):
    """F.pad on the channel axis written in forward code: its constants cannot be rewritten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 8), nn.ReLU())
        self.body = nn.Sequential(*conv_bn(8, 12), nn.ReLU())
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.body(x) + F.pad(x, (0, 0, 0, 0, 2, 2))
        return self.fc(x.mean((2, 3)))


class Gate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


class UntraceableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 8), nn.ReLU())
        self.gate = Gate()
        self.head = nn.Sequential(*conv_bn(8, 8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.head(self.gate(self.stem(x))).mean((2, 3)))


TEST_NETS = {"concat": ConcatNet, "split": SplitNet, "se_gate": SENet, "depthwise": DepthwiseNet,
             "grouped": GroupedNet}
