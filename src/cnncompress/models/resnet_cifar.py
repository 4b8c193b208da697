"""CIFAR ResNets of He et al. (2016) with the parameter-free "option A" shortcut.

Module and parameter names match the public akamaster/pytorch_resnet_cifar10 checkpoints in
``../shared/pretrained`` so their state_dicts load unchanged (after stripping ``module.``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels ``before``/``after``.

    It has no weights; the padded zeros carry no input channel, which the channel graph relies on.
    Pruning changes the pad widths, so they are structural attributes saved with checkpoints.
    """

    STRUCTURAL_ATTRS = ("pad_before", "pad_after")

    def __init__(self, pad_before: int, pad_after: int, stride: int = 2) -> None:
        super().__init__()
        self.pad_before = pad_before
        self.pad_after = pad_after
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"pad_before={self.pad_before}, pad_after={self.pad_after}, stride={self.stride}"

    def export_equivalent(self, x: torch.Tensor) -> nn.Conv2d:
        """The same map on inputs like ``x`` as a strided 1x1 conv with 0/1 weights, for export.

        Exact (each output is one input times 1 plus zeros). Runtimes' blocked-layout CPU kernels
        cover convs but not Slice and Pad, and fuse a conv into the residual add that follows.
        """
        channels = x.shape[1]
        conv = nn.Conv2d(channels, channels + self.pad_before + self.pad_after, 1, stride=self.stride,
                         bias=False, device=x.device, dtype=x.dtype)
        weight = torch.zeros_like(conv.weight)
        kept = torch.arange(channels, device=x.device)
        weight[self.pad_before + kept, kept] = 1
        conv.weight = nn.Parameter(weight, requires_grad=False)
        return conv


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            extra = planes - in_planes
            self.shortcut: nn.Module = PadShortcut(extra // 2, extra - extra // 2, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: widths 16/32/64, global average pooling, one linear layer."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.avgpool(x)))
