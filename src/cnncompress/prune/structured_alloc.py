"""How many channels each group keeps: uniform ratio, per-layer ratios, or global ranking with a cap,
or global ranking to a MACs target tracked exactly (:class:`MacTracker`, :func:`global_to_macs`).

Every rule keeps at least ``min_channels`` per group (never an empty layer) and rounds the kept
count up to a multiple of ``round_to`` (vector widths of the target hardware) when the group allows.
"""

from __future__ import annotations

import fnmatch
import heapq
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..graph import ChannelGraph, ChannelGroup


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


class MacTracker:
    """Exact MACs of the shrunk model for any kept channels, without shrinking anything.

    A conv/linear call's MACs are its full-width MACs times the kept fraction of its output rows and
    of its input columns (a grouped conv's per-group inputs stay), so integer arithmetic suffices.
    """

    def __init__(self, graph: ChannelGraph, model: nn.Module) -> None:
        self.groups = graph.groups
        self.base = graph.other_macs
        slot = {(b.module, b.role): k for k, b in enumerate(graph.bindings)}
        self.sizes = [b.size for b in graph.bindings]
        self.calls = []  # (full MACs, out slot, in slot or None)
        for call, full in zip(graph.calls, graph.call_macs(model), strict=True):
            self.calls.append((full, slot.get((call.module, "out")), slot.get((call.module, "in"))))
        self.calls_of: dict[int, list[int]] = defaultdict(list)
        for i, (_, out, inp) in enumerate(self.calls):
            for s in {out, inp} - {None}:
                self.calls_of[s].append(i)
        self.slots = [[slot[(b.module, b.role)] for b in g.bindings] for g in graph.groups]

    def call_macs(self, i: int, kept: list[int]) -> int:
        full, out, inp = self.calls[i]
        rows = 1 if out is None else kept[out]
        cols = 1 if inp is None else kept[inp]
        return full * rows * cols // ((1 if out is None else self.sizes[out]) * (1 if inp is None else self.sizes[inp]))

    def widths(self, kept: list[list[int]]) -> list[int]:
        """Kept entries of every binding's axis."""
        width = list(self.sizes)
        for g, keep in enumerate(kept):
            keep_set = set(keep)
            for k, classes in enumerate(self.groups[g].index):
                width[self.slots[g][k]] -= sum(len(idx) for c, idx in enumerate(classes) if c not in keep_set)
        return width

    def total(self, kept: list[list[int]]) -> int:
        width = self.widths(kept)
        return self.base + sum(self.call_macs(i, width) for i in range(len(self.calls)))


def _units(size: int, order: list[int], floor: int, round_to: int) -> list[list[int]]:
    """Channels (lowest scored first) in removal steps that keep a multiple of ``round_to``, down to ``floor``."""
    units, kept, pos = [], size, 0
    step = size % round_to or round_to
    while kept - step >= floor:
        units.append(order[pos:pos + step])
        pos, kept, step = pos + step, kept - step, round_to
    return units


def global_to_macs(groups: list[ChannelGroup], scores: list[torch.Tensor], rule: AllocationRule,
                   tracker: MacTracker, target: float, tolerance: float) -> tuple[list[list[int]], int]:
    """Remove the globally least important channels until the exact MACs are within ``tolerance`` of
    ``target`` (a step that would undershoot is skipped for the next cheapest), then, if the steps
    are too coarse, move one step in or out of a group at a time (or a pair) while that gets closer.
    Returns (kept channels per group, MACs reached)."""
    low, high = target * (1 - tolerance), target * (1 + tolerance)
    width = tracker.widths([list(range(g.size)) for g in groups])
    call_macs = [tracker.call_macs(i, width) for i in range(len(tracker.calls))]
    total = tracker.base + sum(call_macs)
    heap, units = [], []
    for g, (group, score) in enumerate(zip(groups, scores, strict=True)):
        floor = max(group.size - math.floor(rule.max_ratio * group.size), min(group.size, rule.min_channels))
        units.append(_units(group.size, torch.argsort(score, stable=True).tolist(), floor, rule.round_to))
        if units[g]:
            heapq.heappush(heap, (float(score[units[g][0]].mean()), g, 0))
    taken = [0] * len(groups)  # units removed per group, in order
    while heap and total > high:
        _, g, u = heapq.heappop(heap)
        touched = {i for s in _remove(tracker, groups[g], g, units[g][u], width) for i in tracker.calls_of[s]}
        after = total + sum(tracker.call_macs(i, width) - call_macs[i] for i in touched)
        if after < low:
            _remove(tracker, groups[g], g, units[g][u], width, sign=-1)  # undo: overshoots; try cheaper steps
            continue
        total = after
        for i in touched:
            call_macs[i] = tracker.call_macs(i, width)
        taken[g] += 1
        if u + 1 < len(units[g]):
            heapq.heappush(heap, (float(scores[g][units[g][u + 1]].mean()), g, u + 1))
    if total > high:
        taken, total = _refine(groups, units, taken, tracker, target, low, high)
    return _kept(groups, units, taken), total


def _kept(groups: list[ChannelGroup], units: list[list[list[int]]], taken: list[int]) -> list[list[int]]:
    gone = [{c for unit in units[g][:taken[g]] for c in unit} for g in range(len(groups))]
    return [[c for c in range(group.size) if c not in gone[g]] for g, group in enumerate(groups)]


def _refine(groups: list[ChannelGroup], units: list[list[list[int]]], taken: list[int], tracker: MacTracker,
            target: float, low: float, high: float, rounds: int = 50) -> tuple[list[int], int]:
    """Hill-climb on the distance to ``target``: one group one step in or out, or a pair of such steps."""
    def total(state: list[int]) -> int:
        return tracker.total(_kept(groups, units, state))

    best = total(taken)
    singles = [(g, d) for g in range(len(groups)) for d in (1, -1)]
    for _ in range(rounds):
        if low <= best <= high:
            break
        moves = [[m] for m in singles] + [[a, b] for a in singles for b in singles if a[0] < b[0]]
        scored = []
        for move in moves:
            state = list(taken)
            for g, d in move:
                state[g] += d
            if all(0 <= state[g] <= len(units[g]) for g, _ in move):
                scored.append((abs(total(state) - target), state))
        distance, state = min(scored, key=lambda s: s[0], default=(math.inf, taken))
        if distance >= abs(best - target):
            break
        taken, best = state, total(state)
    return taken, best


def _remove(tracker: MacTracker, group: ChannelGroup, g: int, channels: list[int], width: list[int],
            sign: int = 1) -> list[int]:
    """Take ``channels`` of group ``g`` out of ``width`` (``sign=-1`` puts them back); the slots touched."""
    for k, classes in enumerate(group.index):
        width[tracker.slots[g][k]] -= sign * sum(len(classes[c]) for c in channels)
    return tracker.slots[g]
