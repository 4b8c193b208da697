"""Choose channel keep ratios, weight bits and sparsity per layer to meet a budget at least accuracy cost.

The predicted accuracy cost of a candidate is the sum of its per-unit sensitivity deltas (additive
assumption). Two searches share one costing (``Space``):

* ``greedy``: from the uncompressed state, repeatedly take the single change with the best ratio
  of constraint violation removed to cost added until every limit holds, then repeatedly undo the
  compression whose removal saves the most cost while every limit still holds;
* ``exact``: a mixed-integer program (HiGHS via ``scipy.optimize.milp``, as in HAWQ-V3): one binary
  per group option and per layer option combination, with consistency rows tying each layer to its
  groups, so flash, MACs and every RAM step are linear constraints. Optimal for the discretised
  options, used when the program is small enough.

Latency limits become MAC limits through a ``LatencyModel`` calibrated on this host.
If even the most compressed state misses a limit, the result is ``Infeasible`` naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy.optimize import LinearConstraint, milp

from ..utils import atomic_write_text
from .budget import LABELS, Budget, format_limit
from .cost import Choice, CostModel, Prediction
from .devices import DeviceProfile
from .latency import LatencyModel
from .sensitivity import Delta, Objective, SensitivityTable
from .space import Figures, Space, State
from .units import format_bytes

Solver = Literal["auto", "greedy", "exact"]
_FIGURE_OF = {"flash_bytes": "flash_bytes", "ram_bytes": "ram_bytes", "macs": "macs", "latency_ms": "macs"}
_FLAGS = {"flash_bytes": "--flash", "ram_bytes": "--ram", "macs": "--macs", "latency_ms": "--latency"}


@dataclass(frozen=True)
class PlanOptions:
    """What the planner may change. ``min_keep`` drops keep ratios below it."""

    weight_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    act_bits: int = 8
    pin_first_last: bool = True
    pinned_bits: int = 8
    prune: bool = True
    sparsity: bool = False
    min_keep: float = 0.05
    objective: Objective = "accuracy"
    solver: Solver = "auto"
    exact_max_variables: int = 20000
    time_limit_s: float = 20.0
    frontier_points: int = 0  # extra exact solves along the tightest limit, for the trade-off plot
    ram_reserved_by: str = ""  # who reserves the cost model's scratch RAM, for messages ("the cortex-m7 profile")
    dense_weights: bool = False  # the target stores weights dense (a C target): sparsity is never suggested

    @classmethod
    def for_device(cls, device: DeviceProfile, **overrides: Any) -> PlanOptions:
        """Widths the device's kernels run; activations at its smallest width of 8 bits or more."""
        wide_enough = [b for b in device.activation_bits if b >= 8]
        act = min(wide_enough) if wide_enough else max(device.activation_bits)
        return replace(cls(weight_bits=device.weight_bits, act_bits=act, ram_reserved_by=f"the {device.name} profile",
                           dense_weights=device.c_target is not None), **overrides)


@dataclass
class GroupPlan:
    """Channels kept in one group; ``layers`` produce them. ``prune_ratio`` = removed / channels exactly,
    so a pruning stage that removes ``round(ratio * channels)`` keeps exactly ``kept``."""

    name: str
    channels: int
    kept: int
    keep_ratio: float
    prune_ratio: float
    cost: float
    layers: list[str]


@dataclass
class LayerPlan:
    name: str
    in_channels: int
    out_channels: int
    kept_in: int
    kept_out: int
    weight_bits: int
    act_bits: int
    sparsity: float
    cost: float
    flash_bytes: int
    macs: int


@dataclass
class Candidate:
    """A state the planner weighed (predicted figures), for the accuracy-vs-size plots."""

    source: str
    flash_bytes: int
    ram_bytes: int
    macs: int
    predicted_cost: float
    feasible: bool
    chosen: bool = False


@dataclass
class Plan:
    """A feasible assignment with its predicted figures (predictions, to be checked by ``verify``)."""

    choice: Choice
    groups: list[GroupPlan]
    layers: list[LayerPlan]
    predicted: Prediction
    predicted_accuracy_drop: float
    predicted_loss_increase: float
    objective: str
    solver: str
    budget: Budget
    candidates: list[Candidate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    feasible: bool = True

    def table(self) -> str:
        """Per-layer plan with totals, and how the prediction compares to each limit."""
        from ..report.tables import plan_table

        return plan_table(self.to_dict())

    def prune_ratios(self) -> dict[str, float]:
        """``{layer: fraction of its output channels to remove}`` for every pruned group's producing layers,
        the per-layer form a structured-pruning stage takes (``prune_channels(per_layer=...)``)."""
        return {layer: g.prune_ratio for g in self.groups if g.kept < g.channels for layer in g.layers}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["choice"] = {"keep": dict(self.choice.keep), "bits": dict(self.choice.bits),
                         "sparsity": dict(self.choice.sparsity), "act_bits": self.choice.act_bits}
        out["budget"] = self.budget.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        c = data["choice"]
        return cls(Choice(c["keep"], c["bits"], c["sparsity"], c["act_bits"]),
                   [GroupPlan(**g) for g in data["groups"]], [LayerPlan(**l) for l in data["layers"]],
                   Prediction(**data["predicted"]), data["predicted_accuracy_drop"],
                   data["predicted_loss_increase"], data["objective"], data["solver"], Budget(**data["budget"]),
                   [Candidate(**k) for k in data.get("candidates", [])], list(data.get("warnings", [])))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


@dataclass
class Infeasible:
    """No allowed setting meets ``constraint``: ``smallest`` is the least reachable value."""

    constraint: str
    limit: float
    smallest: float
    message: str
    binding: list[dict[str, Any]]
    suggestions: list[str]
    feasible: bool = False

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(cost_model: CostModel, table: SensitivityTable, budget: Budget, options: PlanOptions | None = None,
         latency: LatencyModel | None = None) -> Plan | Infeasible:
    """The cheapest predicted assignment meeting every limit of ``budget``, or ``Infeasible``."""
    options = options or PlanOptions()
    space = _space(cost_model, table, options)
    limits = _limits(budget, latency)
    refused = _unreachable(space, limits, budget, latency, options)
    if refused is not None:
        return refused
    greedy_state, candidates = greedy_search(space, limits)
    state, solver = greedy_state, "greedy"
    if options.solver == "exact" or (options.solver == "auto" and exact_size(space) <= options.exact_max_variables):
        exact_state, optimal = exact_search(space, limits, options.time_limit_s)
        if exact_state is not None:
            label = "exact" if optimal else "exact (time limit, not proven optimal)"
            candidates.append(_candidate(space, exact_state, label, limits))
            if space.cost(exact_state) <= space.cost(greedy_state):
                state, solver = exact_state, label
    if violation(space.figures(state), limits) > 0:
        raise RuntimeError("the planner found no feasible state although the most compressed one is feasible")
    chosen = max(i for i, c in enumerate(candidates) if c.source == solver)
    candidates[chosen].chosen = True
    if options.frontier_points > 0:
        candidates += frontier(space, limits, state, options.frontier_points, options.time_limit_s)
    return _build_plan(space, state, solver, budget, latency, candidates)


def unreachable(cost_model: CostModel, budget: Budget, options: PlanOptions | None = None,
                prune_options: tuple[float, ...] = (), sparsity_options: tuple[float, ...] = ()) -> Infeasible | None:
    """Before any sensitivity is measured: the ``Infeasible`` that :func:`plan` will return whatever the
    measurements say, or None when the most compressed plan meets every limit the cost model can judge.

    The most compressed plan depends only on which options exist (``prune_options`` per channel group,
    ``options.weight_bits`` per layer, ``sparsity_options`` per layer when ``options.sparsity``), not on
    their measured cost, so this needs no data. A latency limit needs a calibrated host and is left to plan().
    """
    options = options or PlanOptions()
    free = Delta(0.0, 0.0)
    table = SensitivityTable(0.0, 0.0)
    for group in cost_model.groups:
        for ratio in prune_options if options.prune else ():
            table.add("prune", group, ratio, free)
    widths = {*options.weight_bits, *((options.pinned_bits,) if options.pin_first_last else ())}
    for layer in cost_model.layer_names:
        for bits in widths:
            table.add("bits", layer, bits, free)
        for sparsity in sparsity_options if options.sparsity else ():
            table.add("sparsity", layer, sparsity, free)
    budget = replace(budget, latency_ms=None)
    return _unreachable(_space(cost_model, table, options), _limits(budget, None), budget, None, options)


def _unreachable(space: Space, limits: dict[str, float], budget: Budget, latency: LatencyModel | None,
                 options: PlanOptions) -> Infeasible | None:
    missed = _binding(space.figures(space.most()), limits, budget, latency)
    return _infeasible(missed, space, options) if missed else None


def _space(cost_model: CostModel, table: SensitivityTable, options: PlanOptions) -> Space:
    names = cost_model.layer_names
    pinned = {names[0]: options.pinned_bits, names[-1]: options.pinned_bits} if options.pin_first_last else {}
    return Space(cost_model, table, tuple(options.weight_bits), pinned, options.act_bits, options.prune,
                 options.sparsity, options.min_keep, options.objective)


def _limits(budget: Budget, latency: LatencyModel | None) -> dict[str, float]:
    """Limits on the figures the space computes; a latency limit becomes a MAC limit."""
    limits = {k: v for k, v in budget.limits().items() if k != "latency_ms"}
    if budget.latency_ms is not None:
        if latency is None:
            raise ValueError("the budget limits latency: pass a LatencyModel (plan.calibrate_latency) to plan it")
        cap = latency.max_macs(budget.latency_ms)
        limits["latency_ms"] = -1 if cap is None else cap
    return limits


def _figure(figures: Figures, key: str) -> float:
    return getattr(figures, _FIGURE_OF[key])


def violation(figures: Figures, limits: dict[str, float]) -> float:
    """Sum of relative excesses over the limits, 0 when all hold.

    RAM counts the excess of every step over the limit, not just the peak's, so shrinking any
    over-limit step is progress even while another step ties at the peak.
    """
    total = 0.0
    for key, limit in limits.items():
        if key == "ram_bytes":
            total += float(np.maximum(figures.live - limit, 0).sum()) / max(limit, 1.0)
        else:
            total += max(0.0, _figure(figures, key) - limit) / max(limit, 1.0)
    return total


def _moves(space: Space, state: State, down: bool) -> list[State]:
    """States differing from ``state`` in one decision, more (``down``) or less compressed."""
    out = []
    for attr, options in (("keep", space.group_options), ("bits", space.bit_options),
                          ("sparsity", space.sparsity_options)):
        current = getattr(state, attr)
        for i, opts in enumerate(options):
            targets = range(current[i] + 1, len(opts)) if down else range(current[i])
            for t in targets:
                out.append(replace(state, **{attr: current[:i] + (t,) + current[i + 1:]}))
    return out


def greedy_search(space: Space, limits: dict[str, float]) -> tuple[State, list[Candidate]]:
    """Marginal-cost descent to feasibility, then a recovery pass; returns the state and its path."""
    state = space.least()
    path = [_candidate(space, state, "greedy", limits)]
    v, cost = violation(space.figures(state), limits), space.cost(state)
    while v > 0:
        best, best_key = None, None
        for move in _moves(space, state, down=True):
            gain = v - violation(space.figures(move), limits)
            if gain <= 0:
                continue
            extra = space.cost(move) - cost
            key = (gain / max(extra, 1e-12), gain)
            if best_key is None or key > best_key:
                best, best_key = move, key
        if best is None:
            break
        state, v, cost = best, violation(space.figures(best), limits), space.cost(best)
        path.append(_candidate(space, state, "greedy", limits))
    while True:
        ups = [m for m in _moves(space, state, down=False)
               if space.cost(m) < cost and violation(space.figures(m), limits) == 0]
        if not ups:
            break
        state = min(ups, key=space.cost)
        cost = space.cost(state)
        path.append(_candidate(space, state, "greedy", limits))
    return state, path


def frontier(space: Space, limits: dict[str, float], state: State, points: int, time_limit_s: float
             ) -> list[Candidate]:
    """Optimal candidates with the tightest limit of ``state`` moved between its smallest reachable
    value and the uncompressed value: the accuracy-cost vs resource trade-off around the choice."""
    figures = space.figures(state)
    key = max(limits, key=lambda k: _figure(figures, k) / max(limits[k], 1.0))
    low, high = _figure(space.figures(space.most()), key), _figure(space.figures(space.least()), key)
    out = []
    for level in np.linspace(low, high, points):
        found, _ = exact_search(space, {**limits, key: float(level)}, time_limit_s)
        if found is not None:
            out.append(_candidate(space, found, "frontier", limits))
    return out


def _layer_combos(space: Space, pos: int) -> list[tuple[int | None, int | None, int, int]]:
    """(in option, out option, bits option, sparsity option) combinations of one layer."""
    layer = space.model.layers[pos]

    def indices(group: str | None) -> list[int | None]:
        return [None] if group is None else list(range(len(space.group_options[space.group_names.index(group)])))

    same = layer.in_group is not None and layer.in_group == layer.out_group
    pairs = ([(i, i) for i in indices(layer.in_group)] if same
             else [(i, o) for i in indices(layer.in_group) for o in indices(layer.out_group)])
    return [(i, o, b, s) for i, o in pairs for b in range(len(space.bit_options[pos]))
            for s in range(len(space.sparsity_options[pos]))]


def exact_size(space: Space) -> int:
    """Binary variables the exact program needs."""
    return sum(len(o) for o in space.group_options) + sum(
        len(_layer_combos(space, p)) for p in range(len(space.model.layers)))


def exact_search(space: Space, limits: dict[str, float], time_limit_s: float = 20.0) -> tuple[State | None, bool]:
    """(best state of the mixed-integer program, whether HiGHS proved it optimal); no state if none
    was found within the time limit."""
    program = _Program(space)
    with _quiet_stdout():
        res = milp(program.objective(), integrality=np.ones(program.n), bounds=(0, 1),
                   constraints=program.constraints(limits), options={"time_limit": time_limit_s})
    if res.x is None or res.status not in (0, 1):
        return None, False
    return program.state(np.round(res.x).astype(int)), res.status == 0


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 while HiGHS runs: it prints debug lines from C++ even with disp off,
    which would corrupt ``--json`` output on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Program:
    """Variable layout and rows of the exact formulation."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.group_offsets: list[int] = []
        n = 0
        for opts in space.group_options:
            self.group_offsets.append(n)
            n += len(opts)
        self.combos, self.combo_offsets = [], []
        for pos in range(len(space.model.layers)):
            self.combo_offsets.append(n)
            self.combos.append(_layer_combos(space, pos))
            n += len(self.combos[-1])
        self.n = n

    def objective(self) -> np.ndarray:
        c = np.zeros(self.n)
        for g, opts in enumerate(self.space.group_options):
            c[self.group_offsets[g]:self.group_offsets[g] + len(opts)] = [o.cost for o in opts]
        for pos, combos in enumerate(self.combos):
            bits, sps = self.space.bit_options[pos], self.space.sparsity_options[pos]
            c[self.combo_offsets[pos]:self.combo_offsets[pos] + len(combos)] = [
                bits[b].cost + sps[s].cost for _, _, b, s in combos]
        return c

    def constraints(self, limits: dict[str, float]) -> list[LinearConstraint]:
        rows, lo, hi = [], [], []

        def add(coeffs: dict[int, float], low: float, high: float) -> None:
            rows.append(coeffs)
            lo.append(low)
            hi.append(high)

        for g, opts in enumerate(self.space.group_options):
            add({self.group_offsets[g] + i: 1.0 for i in range(len(opts))}, 1, 1)
        for pos, combos in enumerate(self.combos):
            off = self.combo_offsets[pos]
            add({off + k: 1.0 for k in range(len(combos))}, 1, 1)
            self._consistency(pos, add)
        self._resources(limits, add)
        matrix = sparse.lil_array((len(rows), self.n))
        for r, coeffs in enumerate(rows):
            for col, val in coeffs.items():
                matrix[r, col] = val
        return [LinearConstraint(matrix.tocsr(), np.array(lo, dtype=float), np.array(hi, dtype=float))]

    def _consistency(self, pos: int, add) -> None:
        """Each layer's chosen combination uses the option chosen for its input and output groups."""
        layer, combos, off = self.space.model.layers[pos], self.combos[pos], self.combo_offsets[pos]
        for side, group in ((0, layer.in_group), (1, layer.out_group)):
            if group is None or (side == 1 and group == layer.in_group):
                continue
            g = self.space.group_names.index(group)
            for i in range(len(self.space.group_options[g])):
                coeffs = {off + k: 1.0 for k, combo in enumerate(combos) if combo[side] == i}
                coeffs[self.group_offsets[g] + i] = -1.0
                add(coeffs, 0, 0)

    def _resources(self, limits: dict[str, float], add) -> None:
        space = self.space
        const_flash = space.model.const_flash_bytes
        flash, macs = {}, {}
        for pos, combos in enumerate(self.combos):
            layer = space.model.layers[pos]
            for k, (i, o, b, s) in enumerate(combos):
                flash[self.combo_offsets[pos] + k], macs[self.combo_offsets[pos] + k] = space.layer_figures(
                    layer, i, o, b, s, pos)
        if "flash_bytes" in limits:
            add(flash, -np.inf, limits["flash_bytes"] - const_flash)
        mac_caps = [limits[k] for k in ("macs", "latency_ms") if k in limits]
        if mac_caps:
            add(macs, -np.inf, min(mac_caps))
        if "ram_bytes" in limits:
            self._ram_rows(limits["ram_bytes"] - space.model.fixed_ram_bytes, add)

    def _ram_rows(self, ram: float, add) -> None:
        fixed, parts = self.space.ram_rows()
        seen = set()
        for step in range(len(fixed)):
            coeffs = {self.group_offsets[g] + i: float(part[step]) for g, opts in enumerate(parts)
                      for i, part in enumerate(opts) if part[step]}
            key = (tuple(sorted(coeffs.items())), int(fixed[step]))
            if key not in seen:
                seen.add(key)
                add(coeffs, -np.inf, ram - fixed[step])

    def state(self, x: np.ndarray) -> State:
        keep = tuple(int(np.argmax(x[o:o + len(opts)]))
                     for o, opts in zip(self.group_offsets, self.space.group_options, strict=True))
        bits, sps = [], []
        for pos, combos in enumerate(self.combos):
            _, _, b, s = combos[int(np.argmax(x[self.combo_offsets[pos]:self.combo_offsets[pos] + len(combos)]))]
            bits.append(b)
            sps.append(s)
        return State(keep, tuple(bits), tuple(sps))


def _candidate(space: Space, state: State, source: str, limits: dict[str, float]) -> Candidate:
    f = space.figures(state)
    return Candidate(source, f.flash_bytes, f.ram_bytes, f.macs, space.cost(state), violation(f, limits) == 0)


def _binding(smallest: Figures, limits: dict[str, float], budget: Budget, latency: LatencyModel | None
             ) -> list[dict[str, Any]]:
    """Limits that even the most compressed state misses, with the smallest reachable value."""
    missed = []
    for key, limit in limits.items():
        value = _figure(smallest, key)
        if value <= limit:
            continue
        if key == "latency_ms" and latency is not None and budget.latency_ms is not None:
            missed.append({"constraint": key, "limit": budget.latency_ms, "smallest": latency.predict_ms(int(value))})
        else:
            missed.append({"constraint": key, "limit": limit, "smallest": value})
    return missed


def _extremes(key: str, space: Space, options: PlanOptions) -> str:
    """How the most compressed state compresses the resource ``key``, in words."""
    most = space.most()
    parts = []
    if key == "flash_bytes":
        pinned = _pinned_names(space, options)
        free_bits = [space.bit_options[i][b].value for i, b in enumerate(most.bits)
                     if space.layer_names[i] not in pinned]
        parts.append(f"{int(min(free_bits))}-bit weights" if free_bits else "no free weight widths")
        if pinned:
            parts.append(f"first/last layers at {options.pinned_bits} bits")
        sparsities = [space.sparsity_options[i][s].value for i, s in enumerate(most.sparsity)]
        if max(sparsities, default=0) > 0:
            parts.append(f"up to {100 * max(sparsities):.0f}% sparsity")
    channels = sum(space.model.groups.values())
    kept = sum(space.group_options[i][k].kept for i, k in enumerate(most.keep))
    parts.append(f"{100 * (1 - kept / channels):.0f}% of prunable channels removed" if channels
                 else "no prunable channels")
    if key == "ram_bytes":
        parts.append(f"{options.act_bits}-bit activations")
    return ", ".join(parts)


def _pinned_names(space: Space, options: PlanOptions) -> set[str]:
    return {space.layer_names[0], space.layer_names[-1]} if options.pin_first_last else set()


def _suggestions(key: str, space: Space, options: PlanOptions) -> list[str]:
    out = []
    if key == "flash_bytes":
        if not options.sparsity and not options.dense_weights:
            out.append("allow unstructured sparsity (sparse weight coding)")
        if options.pin_first_last:
            out.append(f"let the first/last layers go below {options.pinned_bits} bits")
        if min(options.weight_bits) > 1:
            out.append(f"allow weights narrower than {min(options.weight_bits)} bits (and measure their sensitivity)")
    if key in ("flash_bytes", "macs", "latency_ms"):
        out.append("allow channel pruning" if not options.prune else "measure sensitivity at higher prune ratios")
    if key == "ram_bytes":
        fixed = int(space.ram_rows()[0].max(initial=0))
        if space.model.scratch_bytes:
            out.append(f"reserve less than {space.model.scratch_bytes:,} B of scratch (a device profile YAML "
                       "with a smaller ram_reserved)")
        out.append(f"allow activations narrower than {options.act_bits} bits")
        out.append(f"note {fixed:,} B of the peak are buffers no plan can shrink (input image, channels fixed by "
                   "residual sums, padding or concatenation)")
    return out


def _terms(key: str, smallest: float, space: Space, options: PlanOptions, brief: bool = False) -> str:
    """How the smallest reachable value of ``key`` adds up, when it is a sum: `` = A activations (how) + B
    reserved ...``; otherwise `` with`` the compression that reaches it. ``brief``: the sum alone."""
    how = "" if brief else f" ({_extremes(key, space, options)})"
    model = space.model
    if key == "ram_bytes" and model.fixed_ram_bytes:
        by = f"by {options.ram_reserved_by} (ram_reserved)" if options.ram_reserved_by else "scratch"
        parts = [f"{format_bytes(smallest - model.fixed_ram_bytes)} peak activations{how}"]
        if model.scratch_bytes:
            parts.append(f"{format_bytes(model.scratch_bytes)} ({model.scratch_bytes:,} B) reserved {by}")
        if model.flash.runtime_ram_bytes:
            parts.append(f"{model.flash.runtime_ram_bytes:,} B the runtime needs (the kernels' stack)")
        return " = " + " + ".join(parts)
    if key == "flash_bytes":
        fixed = model.flash.fixed_bytes
        calls = model.const_flash_bytes - fixed - model.extra_flash_bytes
        parts = [f"{format_bytes(smallest - model.const_flash_bytes)} conv/linear layers{how}"]
        if fixed:
            parts.append(f"{format_bytes(fixed)} fixed per model (file header or kernel code)")
        if calls:
            parts.append(f"{format_bytes(calls)} calls of other kernels (add, pooling, ...)")
        if model.extra_flash_bytes:
            parts.append(f"{format_bytes(model.extra_flash_bytes)} other parameters")
        return " = " + " + ".join(parts)
    return "" if brief else f" with {_extremes(key, space, options)}"


def _infeasible(missed: list[dict[str, Any]], space: Space, options: PlanOptions) -> Infeasible:
    worst = max(missed, key=lambda m: m["smallest"] / max(m["limit"], 1e-12))
    key = worst["constraint"]
    label, flag = LABELS[key], _FLAGS[key]
    limit, smallest = format_limit(key, worst["limit"]), format_limit(key, worst["smallest"])
    suggestions = [f"relax {flag} to >= {smallest}", *_suggestions(key, space, options)]
    predicted = " (predicted on this host)" if key == "latency_ms" else ""
    message = (f"{label} {limit} cannot be met: smallest reachable{predicted} is {smallest}"
               f"{_terms(key, worst['smallest'], space, options)}; " + "; or ".join(suggestions))
    others = [m for m in missed if m is not worst]
    if others:
        message += " (also unreachable: " + ", ".join(
            f"{LABELS[m['constraint']]} {format_limit(m['constraint'], m['limit'])}, smallest "
            f"{format_limit(m['constraint'], m['smallest'])}"
            f"{_terms(m['constraint'], m['smallest'], space, options, brief=True)}" for m in others) + ")"
    return Infeasible(key, worst["limit"], worst["smallest"], message, missed, suggestions)


def _build_plan(space: Space, state: State, solver: str, budget: Budget, latency: LatencyModel | None,
                candidates: list[Candidate]) -> Plan:
    model = space.model
    choice = space.choice(state)
    predicted = model.predict(choice, latency)
    groups = []
    for i, (g, k) in enumerate(zip(space.group_names, state.keep, strict=True)):
        option, channels = space.group_options[i][k], model.groups[g]
        groups.append(GroupPlan(g, channels, option.kept, option.value, (channels - option.kept) / channels,
                                option.cost, model.group_layers(g)))
    layers = []
    for pos, layer in enumerate(model.layers):
        kin, kout = model.layer_io(choice, layer)
        flash, macs = space.layer_figures(layer, space.group_index_of(state, layer.in_group),
                                          space.group_index_of(state, layer.out_group), state.bits[pos],
                                          state.sparsity[pos], pos)
        cost = space.bit_options[pos][state.bits[pos]].cost + space.sparsity_options[pos][state.sparsity[pos]].cost
        layers.append(LayerPlan(layer.name, layer.in_channels, layer.out_channels, kin, kout,
                                choice.bits[layer.name], choice.act_bits, choice.sparsity[layer.name], cost,
                                flash, macs))
    chosen = space.chosen_options(state)
    drop = sum(max(-o.delta.accuracy, 0.0) for o in chosen)
    loss = sum(max(o.delta.loss, 0.0) for o in chosen)
    warnings = []
    if drop > budget.max_accuracy_drop:
        warnings.append(f"predicted accuracy drop {drop:.2f} pt (before fine-tuning, additive) exceeds the "
                        f"tolerance {budget.max_accuracy_drop:g} pt; fine-tuning/QAT has to recover the rest")
    return Plan(choice, groups, layers, predicted, drop, loss, space.objective, solver, budget, candidates,
                warnings)
