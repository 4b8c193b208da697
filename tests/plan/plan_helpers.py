"""A small model and synthetic sensitivity tables for the planning and report tests."""

from __future__ import annotations

import random

import torch
from torch import nn

from cnncompress.plan import CostModel, Delta, SensitivityTable


class ResDepthNet(nn.Module):
    """conv -> depthwise -> conv -> conv + residual -> pool -> fc -> fc: groups, ties and a flatten."""

    def __init__(self, c1: int = 8, c2: int = 12, hidden: int = 20) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.dw = nn.Conv2d(c1, c1, 3, padding=1, groups=c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.bn1(self.conv1(x)))))
        y = torch.relu(self.conv2(x))
        x = self.pool(torch.relu(self.conv3(y)) + y)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def layer_weights(model: nn.Module) -> int:
    """Conv and linear weights of a model: what the cost model's ``weights`` counts."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


PRUNE = (0.25, 0.5, 0.75)
BITS = (2, 4, 8)


def synthetic_table(cost: CostModel, seed: int) -> SensitivityTable:
    """Random but monotone deltas: pruning more and fewer bits always cost more."""
    rng = random.Random(seed)
    table = SensitivityTable(0.2, 95.0)
    for group in cost.groups:
        acc = 0.0
        for ratio in PRUNE:
            acc += rng.uniform(0.1, 3.0)
            table.add("prune", group, ratio, Delta(acc / 10, -acc))
    for layer in cost.layer_names:
        acc = 0.0
        for bits in sorted(BITS, reverse=True):
            acc += rng.uniform(0.0, 2.0)
            table.add("bits", layer, bits, Delta(acc / 10, -acc))
        table.add("sparsity", layer, 0.8, Delta(0.05, -rng.uniform(0.0, 1.0)))
    return table
