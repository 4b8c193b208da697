"""The discrete search space the planners walk: options per channel group and per layer, costed fast.

Each channel group offers keep ratios (1.0 plus the measured prune ratios), each layer weight widths
(allowed by the device and measured, or pinned) and optionally sparsities. Index 0 of every option
list is the least compressed; higher indices compress more. A *state* is one index per decision.
Figures per layer and per RAM step are cached so greedy and exact search share one costing that
matches ``CostModel.predict`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cost import Choice, CostModel, LayerSpec, kept_channels
from .sensitivity import Delta, Objective, SensitivityTable


@dataclass(frozen=True)
class Option:
    """One value of a decision with its sensitivity delta (zero delta for 'no change')."""

    value: float
    delta: Delta
    cost: float
    kept: int = 0  # kept channels, for group options


@dataclass(frozen=True)
class State:
    """Option indices: per group, per layer weight bits, per layer sparsity."""

    keep: tuple[int, ...]
    bits: tuple[int, ...]
    sparsity: tuple[int, ...]


@dataclass(frozen=True)
class Figures:
    """Predicted totals; ``live`` holds activation bytes per step (plus scratch) for RAM excess."""

    flash_bytes: int
    ram_bytes: int
    macs: int
    live: np.ndarray = field(compare=False, repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))


NO_CHANGE = Delta(0.0, 0.0)


class Space:
    """Options and fast figures for ``cost_model`` under a table, allowed widths and switches."""

    def __init__(self, cost_model: CostModel, table: SensitivityTable, weight_bits: tuple[int, ...],
                 pinned: dict[str, int], act_bits: int, prune: bool, sparsity: bool, min_keep: float,
                 objective: Objective) -> None:
        self.model = cost_model
        self.objective = objective
        self.act_bits = act_bits
        self.group_names = list(cost_model.groups)
        self.layer_names = [layer.name for layer in cost_model.layers]
        self.group_options = [self._group_options(g, table, prune, min_keep) for g in self.group_names]
        self.bit_options = [self._bit_options(l, table, weight_bits, pinned.get(l)) for l in self.layer_names]
        self.sparsity_options = [self._sparsity_options(l, table, sparsity) for l in self.layer_names]
        self._group_index = {g: i for i, g in enumerate(self.group_names)}
        self._layer_cache: dict[tuple, tuple[int, int]] = {}
        self._ram_fixed, self._ram_parts = self._ram_tables()

    def _option(self, value: float, delta: Delta, kept: int = 0) -> Option:
        return Option(value, delta, delta.cost(self.objective), kept)

    def _group_options(self, group: str, table: SensitivityTable, prune: bool, min_keep: float) -> list[Option]:
        channels = self.model.groups[group]
        by_kept = {channels: self._option(1.0, NO_CHANGE, channels)}
        for ratio, delta in sorted(table.prune.get(group, {}).items()) if prune else ():
            keep = 1.0 - ratio
            if keep < min_keep:
                continue
            kept = kept_channels(channels, keep)
            option = self._option(keep, delta, kept)
            if kept not in by_kept or option.cost < by_kept[kept].cost:
                by_kept[kept] = option
        return [by_kept[k] for k in sorted(by_kept, reverse=True)]

    def _bit_options(self, layer: str, table: SensitivityTable, allowed: tuple[int, ...], pinned: int | None
                     ) -> list[Option]:
        widths = (pinned,) if pinned is not None else allowed
        measured = table.bits.get(layer, {})
        options = [self._option(b, NO_CHANGE if b == 32 else measured[b]) for b in sorted(widths, reverse=True)
                   if b == 32 or b in measured]
        if not options:
            raise ValueError(f"layer {layer!r}: the sensitivity table has no entry for any allowed weight width "
                             f"{sorted(widths)} (measured: {sorted(measured)})")
        return options

    def _sparsity_options(self, layer: str, table: SensitivityTable, allowed: bool) -> list[Option]:
        options = [self._option(0.0, NO_CHANGE)]
        if allowed:
            options += [self._option(s, d) for s, d in sorted(table.sparsity.get(layer, {}).items()) if s > 0]
        return options

    # -- states -------------------------------------------------------------------------------------------
    def least(self) -> State:
        return State((0,) * len(self.group_options), (0,) * len(self.bit_options), (0,) * len(self.sparsity_options))

    def most(self) -> State:
        """Every decision at its most compressed option: the minimum of every resource at once."""
        return State(*(tuple(len(o) - 1 for o in opts)
                       for opts in (self.group_options, self.bit_options, self.sparsity_options)))

    def choice(self, state: State) -> Choice:
        keep = {g: self.group_options[i][k].value for i, (g, k) in enumerate(zip(self.group_names, state.keep,
                                                                                   strict=True))}
        bits = {l: int(self.bit_options[i][b].value) for i, (l, b) in enumerate(zip(self.layer_names, state.bits,
                                                                                      strict=True))}
        sparsity = {l: self.sparsity_options[i][s].value
                    for i, (l, s) in enumerate(zip(self.layer_names, state.sparsity, strict=True))}
        return Choice(keep, bits, sparsity, self.act_bits)

    def chosen_options(self, state: State) -> list[Option]:
        return ([self.group_options[i][k] for i, k in enumerate(state.keep)]
                + [self.bit_options[i][b] for i, b in enumerate(state.bits)]
                + [self.sparsity_options[i][s] for i, s in enumerate(state.sparsity)])

    def cost(self, state: State) -> float:
        return sum(o.cost for o in self.chosen_options(state))

    # -- figures ------------------------------------------------------------------------------------------
    def group_kept(self, group: str | None, index: int | None) -> int | None:
        if group is None or index is None:
            return None
        return self.group_options[self._group_index[group]][index].kept

    def layer_figures(self, layer: LayerSpec, in_index: int | None, out_index: int | None, bit_index: int,
                      sparsity_index: int, position: int) -> tuple[int, int]:
        """(flash bytes, MACs) of one layer for the given option indices (cached)."""
        key = (position, in_index, out_index, bit_index, sparsity_index)
        if key not in self._layer_cache:
            kin, kout = self.group_kept(layer.in_group, in_index), self.group_kept(layer.out_group, out_index)
            kin = layer.in_channels if kin is None else kin
            kout = layer.out_channels if kout is None else kout
            bits = int(self.bit_options[position][bit_index].value)
            sparsity = self.sparsity_options[position][sparsity_index].value
            self._layer_cache[key] = (self.model.layer_flash(layer, kin, kout, bits, sparsity),
                                      layer.scaled(layer.macs, kin, kout))
        return self._layer_cache[key]

    def group_index_of(self, state: State, group: str | None) -> int | None:
        return None if group is None else state.keep[self._group_index[group]]

    def _ram_tables(self) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """Live bytes per step from fixed buffers, and per group option from that group's buffers."""
        fixed = np.zeros(self.model.steps, dtype=np.int64)
        parts = [[np.zeros(self.model.steps, dtype=np.int64) for _ in opts] for opts in self.group_options]
        for b in self.model.buffers:
            if b.group is None:
                fixed[b.first:b.last + 1] += self.model.buffer_bytes(b, None, self.act_bits)
                continue
            gi = self._group_index[b.group]
            for oi, option in enumerate(self.group_options[gi]):
                parts[gi][oi][b.first:b.last + 1] += self.model.buffer_bytes(b, option.kept, self.act_bits)
        return fixed, parts

    def ram_rows(self) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        return self._ram_fixed, self._ram_parts

    def figures(self, state: State) -> Figures:
        flash = self.model.const_flash_bytes
        macs = 0
        for pos, layer in enumerate(self.model.layers):
            f, m = self.layer_figures(layer, self.group_index_of(state, layer.in_group),
                                      self.group_index_of(state, layer.out_group), state.bits[pos],
                                      state.sparsity[pos], pos)
            flash += f
            macs += m
        live = self._ram_fixed.copy()
        for gi, oi in enumerate(state.keep):
            live += self._ram_parts[gi][oi]
        live += self.model.fixed_ram_bytes
        return Figures(flash, int(live.max(initial=self.model.fixed_ram_bytes)), macs, live)
