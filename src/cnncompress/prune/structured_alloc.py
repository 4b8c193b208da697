"""How many channels each group keeps: uniform ratio, per-layer ratios, or global ranking with a cap.

Every rule keeps at least ``min_channels`` per group (never an empty layer) and rounds the kept
count up to a multiple of ``round_to`` (vector widths of the target hardware) when the group allows.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch

from ..graph import ChannelGroup


@dataclass
class AllocationRule:
    """Allocation settings; ``per_layer`` maps module names (fnmatch patterns) to their own ratio."""

    global_ranking: bool = False
    per_layer: dict[str, float] = field(default_factory=dict)
    max_ratio: float = 0.9  # cap: no group loses more than this fraction (global ranking)
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.max_ratio < 1:
            raise ValueError(f"max_ratio must be in [0, 1), got {self.max_ratio}")
        if self.min_channels < 1:
            raise ValueError(f"min_channels must be >= 1, got {self.min_channels}")
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        for name, ratio in self.per_layer.items():
            _check_ratio(ratio, f"per-layer ratio of {name!r}")

    @property
    def kind(self) -> str:
        return "global" if self.global_ranking else "per-layer" if self.per_layer else "uniform"

    def kept_count(self, size: int, ratio: float) -> int:
        """Channels a group of ``size`` keeps when asked to drop ``ratio`` of them."""
        keep = size - round(ratio * size)
        keep = max(keep, min(size, self.min_channels))
        return min(size, math.ceil(keep / self.round_to) * self.round_to)

    def group_ratio(self, group: ChannelGroup, default: float) -> float:
        """The largest per-layer ratio matching the group's producing layers, else ``default``."""
        found = [r for pattern, r in self.per_layer.items() for m in group.modules
                 if fnmatch.fnmatchcase(m, pattern)]
        return max(found) if found else default


def _check_ratio(ratio: float, what: str) -> None:
    if not (isinstance(ratio, int | float) and 0 <= ratio < 1):
        raise ValueError(f"{what} must be in [0, 1), got {ratio!r}")


def allocate(groups: list[ChannelGroup], scores: list[torch.Tensor], ratio: float,
             rule: AllocationRule) -> list[list[int]]:
    """Kept channel indices (sorted) for every group at overall prune ``ratio``."""
    _check_ratio(ratio, "ratio")
    if rule.global_ranking:
        counts = _global_counts(groups, scores, ratio, rule)
    else:
        counts = [rule.kept_count(g.size, rule.group_ratio(g, ratio)) for g in groups]
    return [sorted(torch.argsort(s, descending=True, stable=True)[:k].tolist())
            for s, k in zip(scores, counts, strict=True)]


def _global_counts(groups: list[ChannelGroup], scores: list[torch.Tensor], ratio: float,
                   rule: AllocationRule) -> list[int]:
    """Drop the globally lowest-scored channels, ``ratio`` of all, never past a group's cap."""
    floor = [max(g.size - math.floor(rule.max_ratio * g.size), min(g.size, rule.min_channels))
             for g in groups]
    entries = sorted((float(v), gi) for gi, s in enumerate(scores) for v in s)
    budget = round(ratio * sum(g.size for g in groups))
    keep = [g.size for g in groups]
    for _, gi in entries:
        if budget == 0:
            break
        if keep[gi] > floor[gi]:
            keep[gi] -= 1
            budget -= 1
    return [min(g.size, math.ceil(k / rule.round_to) * rule.round_to)
            for g, k in zip(groups, keep, strict=True)]
