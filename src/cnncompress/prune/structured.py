"""Structured pruning that physically removes channels: the model really gets smaller and faster.

``StructuredPruner.run`` traces the model into a :class:`~cnncompress.graph.ChannelGraph`, scores
every group with an importance criterion, allocates kept channels (uniform, per-layer or global
ranking), and shrinks every coupled layer through the :mod:`.shrink` table. A MACs target is met by
bisecting the prune ratio with the graph's exact MAC count and, where uniform ratios cannot land
within tolerance, by ranking channels globally while tracking MACs exactly (a params target bisects
on shrunk copies). The reported figures are counted on the shrunk model. A prune that drops far
fewer channels than asked logs a warning and records it with the graph's reasons.

The result is the same model class with narrower layers. Only one thing is
not a tensor shape: the pad widths of option-A shortcuts; they are returned in
``PruneRecord.module_attrs`` and stored in checkpoint meta under :data:`MODULE_ATTRS_KEY`, so a
checkpoint rebuilds from the original spec with :func:`cnncompress.models.load_model`.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..analysis.inputs import ExampleInput, model_device, one_image
from ..data import as_image_set
from ..graph import Binding, ChannelGraph, build_channel_graph
from ..models import ModuleAttrs
from ..utils import check_finite
from .importance import Batches, Importance, get_importance
from .shrink import Axis, Kept, shrink
from .structured_alloc import AllocationRule, MacTracker, allocate, global_to_macs

log = logging.getLogger(__name__)


class TargetNotReached(ValueError):
    """No allocation brings the model within tolerance of the requested MACs/params fraction."""


@dataclass
class PruneRecord:
    """What a structured pruning run did; every figure is measured on the shrunk model.

    ``kept_whole`` lists the channel sets the graph could not prune, each with its reasons;
    ``warnings`` says when far fewer channels went than asked, and why; ``notes`` how a target was met.
    """

    criterion: str
    allocation: str
    ratio: float
    target: dict[str, float] | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    layers: dict[str, dict[str, list[int]]]  # module -> role -> [channels before, after]
    groups: list[dict[str, Any]]
    kept_because: dict[str, list[str]]
    module_attrs: ModuleAttrs
    search: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    kept_whole: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / max(self.macs_before, 1)

    @property
    def params_fraction(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macs_fraction": self.macs_fraction, "params_fraction": self.params_fraction}


@dataclass
class StructuredPruner:
    """Structured pruning settings; give exactly one of ``ratio``, ``target_macs``, ``target_params``."""

    ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    criterion: str | Importance = "l1"
    rule: AllocationRule = field(default_factory=AllocationRule)
    exclude: Sequence[str] = ()
    leaf_modules: Sequence[str | type[nn.Module]] = ()
    tolerance: float = 0.02  # relative distance to a MACs/params target that counts as reached

    def __post_init__(self) -> None:
        given = [v for v in (self.ratio, self.target_macs, self.target_params) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of ratio, target_macs, target_params")
        for name in ("target_macs", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name} is a fraction of the unpruned model in (0, 1], got {value}")
        self.importance = get_importance(self.criterion)

    def run(self, model: nn.Module, example_input: ExampleInput,
            data: Batches | Any | None = None) -> tuple[nn.Module, PruneRecord]:
        """Return a pruned copy of ``model`` (the original is untouched) and the record."""
        check_finite(model, "prune")
        began = time.perf_counter()
        base = copy.deepcopy(model)
        example = one_image(example_input, model_device(base))
        graph = build_channel_graph(base, example, self.leaf_modules, self.exclude)
        self.importance.prepare(base, graph, _batches(data, model_device(base)) if data is not None else None)
        scores = [self.importance.score(base, g) for g in graph.groups]
        before = _Costs(graph.macs(base), _params(base))
        notes: list[str] = []
        if self.ratio is not None:
            ratio, search, kept = self.ratio, [], allocate(graph.groups, scores, self.ratio, self.rule)
        else:
            ratio, search, kept = self._search(base, graph, scores, before, notes)
        pruned, widths, attrs = _apply(base, graph, kept, in_place=True)
        after = _Costs(graph.macs(pruned), _params(pruned))
        record = PruneRecord(
            criterion=self.importance.name, allocation=self.rule.kind, ratio=ratio,
            target=_target_dict(self.target_macs, self.target_params), macs_before=before.macs,
            macs_after=after.macs, params_before=before.params, params_after=after.params, layers=widths,
            groups=[{"id": g.id, "channels": g.size, "kept": len(k), "modules": g.modules}
                    for g, k in zip(graph.groups, kept, strict=True)],
            kept_because=graph.fixed, module_attrs=attrs, search=search, kept_whole=graph.kept,
            warnings=self._shortfall(graph, kept), notes=notes, seconds=time.perf_counter() - began)
        for message in record.warnings:
            log.warning("%s", message)
        pruned.train(model.training)
        return pruned, record

    def _search(self, base: nn.Module, graph: ChannelGraph, scores: list[torch.Tensor], before: _Costs,
                notes: list[str]) -> tuple[float, list[dict[str, float]], list[list[int]]]:
        """Bisect the prune ratio under the rule; where that misses the target, rank channels globally."""
        target, key = (self.target_macs, "macs") if self.target_macs is not None else (self.target_params, "params")
        tracker = MacTracker(graph, base)

        def measure(kept: list[list[int]]) -> float:
            if key == "macs":
                return tracker.total(kept) / before.macs
            return _params(_apply(base, graph, kept)[0]) / before.params

        ratio, got, steps, kept = self._bisect(graph, scores, self.rule, measure, target)
        if self._reached(got, target):
            return ratio, steps, kept
        tried = f"{self.rule.kind} ratios reach {got:.3f} at best"
        if key == "macs":
            kept, fallback = global_to_macs(graph.groups, scores, self.rule, tracker, target * before.macs,
                                            self.tolerance)
            fallback /= before.macs
        elif not self.rule.global_ranking:
            _, fallback, more, kept = self._bisect(graph, scores, replace(self.rule, global_ranking=True),
                                                   measure, target)
            steps += more
        else:
            fallback = got
        if not self._reached(fallback, target):
            closest = min(got, fallback, key=lambda f: abs(f - target))
            raise TargetNotReached(
                f"cannot reach {key} {target:.3f} of the unpruned model within {self.tolerance:.0%}: the closest "
                f"reachable is {closest:.3f} ({tried}, global ranking {fallback:.3f}); "
                f"{_limits(graph, self.rule)}")
        notes.append(f"{tried}: channels were ranked globally across groups instead, reaching {fallback:.3f}")
        log.info("%s", notes[-1])
        removed = sum(g.size - len(k) for g, k in zip(graph.groups, kept, strict=True))
        return removed / max(sum(g.size for g in graph.groups), 1), steps, kept

    def _bisect(self, graph: ChannelGraph, scores: list[torch.Tensor], rule: AllocationRule,
                measure: Callable[[list[list[int]]], float], target: float):
        """Bisect the prune ratio under ``rule``: (ratio, fraction, steps, kept) closest to ``target``."""
        lo, hi, best, steps = 0.0, 0.99, None, []
        for _ in range(30):
            mid = (lo + hi) / 2
            kept = allocate(graph.groups, scores, mid, rule)
            got = measure(kept)
            steps.append({"ratio": mid, f"{'macs' if self.target_macs else 'params'}_fraction": got})
            if best is None or abs(got - target) < abs(best[1] - target):
                best = (mid, got, kept)
            if self._reached(got, target):
                break
            lo, hi = (mid, hi) if got > target else (lo, mid)
        return best[0], best[1], steps, best[2]

    def _reached(self, got: float, target: float) -> bool:
        return abs(got / target - 1) <= self.tolerance

    def _shortfall(self, graph: ChannelGraph, kept: list[list[int]]) -> list[str]:
        """A warning when far fewer layer outputs went than the ratio asked (not counting user exclusions)."""
        asked = self.ratio if self.ratio is not None else 0.0
        excluded = set(self.exclude)
        total = sum(b.size for b in graph.bindings
                    if b.role == "out" and not any(fnmatch.fnmatchcase(b.module, p) for p in excluded))
        dropped = sum(len(idx) for g, k in zip(graph.groups, kept, strict=True)
                      for b, classes in zip(g.bindings, g.index, strict=True) if b.role == "out"
                      for c, idx in enumerate(classes) if c not in set(k))
        if asked <= 0 or dropped >= 0.5 * asked * total:
            return []
        return [f"asked to drop {asked:.0%} of the layers' output channels, dropped {dropped} of {total} "
                f"({dropped / max(total, 1):.1%}): {_limits(graph, self.rule)}"]


def _limits(graph: ChannelGraph, rule: AllocationRule) -> str:
    """Why channels stay: the kept sets' reasons (largest first) and the allocation rule's floors."""
    counts: dict[str, int] = defaultdict(int)
    for kept in graph.kept:
        for reason in kept["reasons"]:
            counts[reason] += len(kept["members"])
    reasons = sorted(counts, key=counts.get, reverse=True)
    whole = (f"channels kept whole by the graph: {'; '.join(reasons[:5])}{' ...' if len(reasons) > 5 else ''}"
             if reasons else "the graph keeps no channels whole")
    if not graph.groups:
        return f"no channel can be pruned; {whole}"
    return (f"{len(graph.groups)} prunable groups ({sum(g.size for g in graph.groups)} channels), each kept at "
            f">= min_channels={rule.min_channels}, a multiple of round_to={rule.round_to}, losing <= "
            f"max_ratio={rule.max_ratio} under global ranking; {whole}")


@dataclass
class _Costs:
    macs: int
    params: int


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _target_dict(macs: float | None, params: float | None) -> dict[str, float] | None:
    target = {k: v for k, v in (("macs", macs), ("params", params)) if v is not None}
    return target or None


def _batches(data: Any, device: torch.device) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Labelled batches, shuffled and seeded, from any data :func:`~cnncompress.data.as_image_set` takes
    (an ImageSet, a Dataset of (float image, label), a DataLoader or list of (x, y) batches)."""
    source = as_image_set(data, need_labels=True, source="pruning data").batches(64, shuffle=True, seed=0)
    for x, y in source:
        if not torch.isfinite(x).all():
            raise ValueError("data holds non-finite values")
        yield x.to(device), y.to(device)


def _apply(base: nn.Module, graph: ChannelGraph, kept: list[list[int]], in_place: bool = False):
    """``base`` (or a copy) shrunk to ``kept[g]`` channels of group g; also the widths and module attrs."""
    removed: dict[Binding, list[int]] = defaultdict(list)
    for group, keep in zip(graph.groups, kept, strict=True):
        keep_set = set(keep)
        for binding, classes in zip(group.bindings, group.index, strict=True):
            for c, indices in enumerate(classes):
                if c not in keep_set:
                    removed[binding].extend(indices)
    model = base if in_place else copy.deepcopy(base)
    axes: dict[str, Kept] = defaultdict(dict)
    widths: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for binding in graph.bindings:
        mask = torch.ones(binding.size, dtype=torch.bool)
        mask[removed.get(binding, [])] = False
        index = mask.nonzero().flatten()
        widths[binding.module][binding.role] = [binding.size, len(index)]
        if len(index) < binding.size:
            axes[binding.module][binding.role] = Axis(index, binding.size)
    attrs: ModuleAttrs = {}
    with torch.no_grad():
        for name, kept_axes in axes.items():
            changed = shrink(model.get_submodule(name), kept_axes)
            if changed:
                attrs[name] = changed
    return model, dict(widths), attrs


def prune_channels(model: nn.Module, example_input: ExampleInput, ratio: float | None = None,
                   target_macs: float | None = None, criterion: str | Importance = "l1",
                   global_ranking: bool = False, round_to: int = 1, exclude: Sequence[str] = (),
                   data: Any = None, *, target_params: float | None = None,
                   per_layer: dict[str, float] | None = None, min_channels: int = 1, max_ratio: float = 0.9,
                   leaf_modules: Sequence[str | type[nn.Module]] = (), tolerance: float = 0.02,
                   return_record: bool = False) -> nn.Module | tuple[nn.Module, PruneRecord]:
    """Remove channels for real and return the smaller model (with its :class:`PruneRecord` on request).

    Give one of ``ratio`` (fraction of channels dropped per group, or overall with ``global_ranking``),
    ``target_macs`` or ``target_params`` (fraction of the unpruned cost to reach within ``tolerance``).
    ``criterion`` is "l1", "l2", "fpgm", "bn_scale", "taylor" (needs ``data``: an ImageSet, a Dataset of
    (float image, label) or a DataLoader) or "random", or an :class:`Importance` object. ``exclude`` names
    modules (fnmatch patterns) whose output channels are kept (their inputs still shrink with the layer
    feeding them). ``round_to`` keeps channel counts multiples of it; no group drops below ``min_channels`` or loses
    more than ``max_ratio`` of its channels under global ranking.
    """
    rule = AllocationRule(global_ranking=global_ranking, per_layer=dict(per_layer or {}), max_ratio=max_ratio,
                          min_channels=min_channels, round_to=round_to)
    pruner = StructuredPruner(ratio=ratio, target_macs=target_macs, target_params=target_params,
                              criterion=criterion, rule=rule, exclude=tuple(exclude),
                              leaf_modules=tuple(leaf_modules), tolerance=tolerance)
    pruned, record = pruner.run(model, example_input, data)
    return (pruned, record) if return_record else pruned
