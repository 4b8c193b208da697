"""Structured pruning that physically removes channels: the model really gets smaller and faster.

``StructuredPruner.run`` traces the model into a :class:`~cnncompress.graph.ChannelGraph`, scores
every group with an importance criterion, allocates kept channels (uniform, per-layer or global
ranking), and slices the weights of every coupled layer. A MACs/params target is met by bisecting
the prune ratio on real shrunk copies, so the reported fraction is measured, not predicted.

The result is the same model class with narrower Conv/Linear/BatchNorm layers. Only one thing is
not a tensor shape: the pad widths of option-A shortcuts; they are returned in
``PruneRecord.module_attrs`` and stored in checkpoint meta under :data:`MODULE_ATTRS_KEY`, so a
checkpoint rebuilds from the original spec with :func:`cnncompress.models.load_model`.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..analysis import count_macs
from ..analysis.inputs import ExampleInput, model_device, one_image
from ..graph import Binding, ChannelGraph, build_channel_graph
from ..models import ModuleAttrs
from ..models.resnet_cifar import PadShortcut
from ..utils import check_finite
from .importance import Batches, Importance, get_importance
from .structured_alloc import AllocationRule, allocate


class TargetNotReached(ValueError):
    """No prune ratio brings the model within tolerance of the requested MACs/params fraction."""


@dataclass
class PruneRecord:
    """What a structured pruning run did; every figure is measured on the shrunk model."""

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
        before = _Costs(count_macs(base, example), _params(base))
        if self.ratio is not None:
            ratio, search = self.ratio, []
        else:
            ratio, search = self._search(base, graph, scores, example, before)
        kept = allocate(graph.groups, scores, ratio, self.rule)
        pruned, widths, attrs = _apply(base, graph, kept, in_place=True)
        after = _Costs(count_macs(pruned, example), _params(pruned))
        record = PruneRecord(
            criterion=self.importance.name, allocation=self.rule.kind, ratio=ratio,
            target=_target_dict(self.target_macs, self.target_params), macs_before=before.macs,
            macs_after=after.macs, params_before=before.params, params_after=after.params, layers=widths,
            groups=[{"id": g.id, "channels": g.size, "kept": len(k), "modules": g.modules}
                    for g, k in zip(graph.groups, kept, strict=True)],
            kept_because=graph.fixed, module_attrs=attrs, search=search, seconds=time.perf_counter() - began)
        pruned.train(model.training)
        return pruned, record

    def _search(self, base: nn.Module, graph: ChannelGraph, scores: list[torch.Tensor], example: torch.Tensor,
                before: _Costs) -> tuple[float, list[dict[str, float]]]:
        """Bisect the prune ratio until the fraction measured on a shrunk copy is within ``tolerance``."""
        target = self.target_macs if self.target_macs is not None else self.target_params
        key = "macs" if self.target_macs is not None else "params"
        lo, hi, best, steps = 0.0, 0.99, None, []
        for _ in range(30):
            mid = (lo + hi) / 2
            shrunk = _apply(base, graph, allocate(graph.groups, scores, mid, self.rule))[0]
            got = count_macs(shrunk, example) / before.macs if key == "macs" else _params(shrunk) / before.params
            steps.append({"ratio": mid, f"{key}_fraction": got})
            if best is None or abs(got - target) < abs(best[1] - target):
                best = (mid, got)
            if abs(got / target - 1) <= self.tolerance:
                break
            lo, hi = (mid, hi) if got > target else (lo, mid)
        if abs(best[1] / target - 1) > self.tolerance:
            raise TargetNotReached(
                f"cannot reach {key} {target:.3f} of the unpruned model within {self.tolerance:.0%}: the "
                f"closest is {best[1]:.3f} (prune ratio {best[0]:.3f}); relax round_to, min_channels, "
                f"max_ratio or exclude{'' if self.rule.global_ranking else ', or use global ranking'}")
        return best[0], steps


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
    """Labelled batches from an ImageSet (shuffled, seeded) or any iterable of (x, y)."""
    source = data.batches(64, shuffle=True, seed=0) if hasattr(data, "batches") else data
    for x, y in source:
        if not torch.isfinite(x).all():
            raise ValueError("data holds non-finite values")
        yield x.to(device), y.to(device)


def _apply(base: nn.Module, graph: ChannelGraph, kept: list[list[int]], in_place: bool = False):
    """``base`` (or a copy) shrunk to ``kept[g]`` channels of group g; also the widths and module attrs."""
    removed: dict[Binding, set[int]] = defaultdict(set)
    for group, keep in zip(graph.groups, kept, strict=True):
        keep_set = set(keep)
        for binding, classes in zip(group.bindings, group.index, strict=True):
            for c, indices in enumerate(classes):
                if c not in keep_set:
                    removed[binding].update(indices)
    model = base if in_place else copy.deepcopy(base)
    roles: dict[str, dict[str, tuple[torch.Tensor, int]]] = defaultdict(dict)
    widths: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for binding in graph.bindings:
        index = [i for i in range(binding.size) if i not in removed[binding]]
        widths[binding.module][binding.role] = [binding.size, len(index)]
        if len(index) < binding.size:
            roles[binding.module][binding.role] = (torch.tensor(index, dtype=torch.long), binding.size)
    attrs: ModuleAttrs = {}
    with torch.no_grad():
        for name, module_roles in roles.items():
            changed = _shrink_module(model.get_submodule(name), module_roles)
            if changed:
                attrs[name] = changed
    return model, dict(widths), attrs


def _shrink_module(module: nn.Module, roles: dict[str, tuple[torch.Tensor, int]]) -> dict[str, int] | None:
    """Slice one module's parameters to the kept indices per role; return non-tensor attributes changed."""
    if isinstance(module, PadShortcut):
        keep, width = roles["pad"]
        end = width - module.pad_after  # output positions [pad_before, end) carry the input channels
        module.pad_before, module.pad_after = int((keep < module.pad_before).sum()), int((keep >= end).sum())
        return {"pad_before": module.pad_before, "pad_after": module.pad_after}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        _slice_params(module, ("weight", "bias", "running_mean", "running_var"), roles["bn"][0], 0)
        module.num_features = len(roles["bn"][0])
        return None
    if "gin" in roles:  # grouped conv: kept input channels as positions within a group
        per_group = module.weight.shape[1]
        roles["in"] = (torch.tensor(sorted({int(i) % per_group for i in roles["gin"][0]})), per_group)
    for role, dim in (("out", 0), ("dw", 0), ("in", 1)):
        if role in roles:
            _slice_params(module, ("weight",) if role == "in" else ("weight", "bias"), roles[role][0], dim)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:  # a Conv: the graph binds no other module type
        if "dw" in roles:
            module.groups = module.weight.shape[0]
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    return None


def _slice_params(module: nn.Module, names: Sequence[str], index: torch.Tensor, dim: int) -> None:
    for name in names:
        tensor = getattr(module, name, None)
        if tensor is None:
            continue
        sliced = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            setattr(module, name, sliced)


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
    ``criterion`` is "l1", "l2", "fpgm", "bn_scale", "taylor" (needs ``data``: an ImageSet or labelled
    batches) or "random", or an :class:`Importance` object. ``exclude`` names modules (fnmatch
    patterns) whose output channels are kept (their inputs still shrink with the layer feeding them).
    ``round_to`` keeps channel counts multiples of it; no group drops below ``min_channels`` or loses
    more than ``max_ratio`` of its channels under global ranking.
    """
    rule = AllocationRule(global_ranking=global_ranking, per_layer=dict(per_layer or {}), max_ratio=max_ratio,
                          min_channels=min_channels, round_to=round_to)
    pruner = StructuredPruner(ratio=ratio, target_macs=target_macs, target_params=target_params,
                              criterion=criterion, rule=rule, exclude=tuple(exclude),
                              leaf_modules=tuple(leaf_modules), tolerance=tolerance)
    pruned, record = pruner.run(model, example_input, data)
    return (pruned, record) if return_record else pruned
