"""Unstructured magnitude pruning with masks that hold through any training loop.

A pruned layer carries a bool buffer ``weight_mask``. Three guards keep pruned weights exactly
zero (+0.0): a forward pre-hook zeroes them before every forward pass, a gradient hook zeroes their
gradient, and :func:`enforce_masks` (an ``after_step`` hook for :func:`cnncompress.train.fit`)
zeroes them after each optimizer step so momentum or Adam state cannot move them. A later stage
(e.g. QAT fake-quant) keeps the masks as long as it reuses the layer's module or calls
``enforce_masks`` after its steps; one that rebuilds layers can call :func:`lock_zeros` to
re-derive masks from the zeros. :func:`make_permanent` drops masks and hooks, leaving the zeros.
"""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..utils import per_layer
from .schedules import AGPSchedule

MASK = "weight_mask"
Sparsity = float | Mapping[str, float]
_HOOKED = "_cnncompress_mask_hooked"


# ------------------------------------------------------------------------------------- selection
def prunable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Conv and Linear layers by name, minus those matching an ``exclude`` name or glob pattern."""
    patterns = tuple(exclude)
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
            and not any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def _targets(layers: Mapping[str, nn.Module], sparsity: Sparsity) -> dict[str, float]:
    return per_layer(layers, sparsity, "prunable", float, lambda s: 0.0 <= s < 1.0, "in [0, 1)")


# ----------------------------------------------------------------------------------------- masks
def _apply_mask(module: nn.Module, _args: Any = None) -> None:
    """Forward pre-hook (and helper): zero the masked weights and make sure their gradient is masked."""
    mask = getattr(module, MASK, None)
    if mask is None:
        return
    weight = module.weight
    with torch.no_grad():
        weight.masked_fill_(~mask, 0.0)
    if weight.requires_grad and not getattr(weight, _HOOKED, False):
        ref = weakref.ref(module)
        weight.register_hook(lambda grad: _mask_grad(ref, grad))
        setattr(weight, _HOOKED, True)


def _mask_grad(ref: Callable[[], nn.Module | None], grad: torch.Tensor) -> torch.Tensor:
    module = ref()
    mask = getattr(module, MASK, None) if module is not None else None
    return grad if mask is None else grad.masked_fill(~mask, 0.0)


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Attach (or replace) ``module``'s weight mask and zero the pruned weights now."""
    if mask.shape != module.weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
    mask = mask.to(device=module.weight.device, dtype=torch.bool)
    if hasattr(module, MASK):
        getattr(module, MASK).copy_(mask)
    else:
        module.register_buffer(MASK, mask)
        module.register_forward_pre_hook(_apply_mask)
    _apply_mask(module)


def enforce_masks(model: nn.Module) -> None:
    """Zero every masked weight of ``model``; pass as ``after_step=(enforce_masks,)`` to ``fit``."""
    for module in model.modules():
        _apply_mask(module)


def lock_zeros(model: nn.Module, exclude: Iterable[str] = ()) -> nn.Module:
    """Mask the weights that are exactly zero now, so training keeps them zero (e.g. after rebuilding layers)."""
    for module in prunable_layers(model, exclude).values():
        current = getattr(module, MASK, None)
        mask = module.weight.detach() != 0
        set_mask(module, mask if current is None else mask & current)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake the masks into the weights and remove masks, hooks and any pruning schedule."""
    for module in model.modules():
        if hasattr(module, MASK):
            _apply_mask(module)
            del module._buffers[MASK]
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _apply_mask or isinstance(hook, _GradualPruner):
                del module._forward_pre_hooks[key]
    return model


# --------------------------------------------------------------------------------------- pruning
def _magnitude_masks(layers: Mapping[str, nn.Module], targets: Mapping[str, float],
                     scope: str) -> dict[str, torch.Tensor]:
    """Keep the largest-magnitude weights; already pruned weights stay pruned."""
    scores = {name: _scores(layers[name]) for name in targets}
    if scope == "layer":
        return {name: _keep_top(scores[name], targets[name]) for name in targets}
    if len(set(targets.values())) > 1:
        raise ValueError("scope='global' takes one sparsity for all layers; use scope='layer' for per-layer values")
    flat = torch.cat([s.reshape(-1) for s in scores.values()]) if scores else torch.zeros(0)
    keep = _keep_top(flat, next(iter(targets.values()), 0.0))
    masks, offset = {}, 0
    for name, score in scores.items():
        masks[name] = keep[offset:offset + score.numel()].view_as(score)
        offset += score.numel()
    return masks


def _scores(module: nn.Module) -> torch.Tensor:
    score = module.weight.detach().abs().float()
    mask = getattr(module, MASK, None)
    return score if mask is None else score.masked_fill(~mask, -1.0)


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping the ``(1 - sparsity)`` share with the highest scores (ties broken by position)."""
    n = scores.numel()
    n_prune = min(n, round(sparsity * n))
    keep = torch.ones(n, dtype=torch.bool)
    if n_prune:
        order = torch.argsort(scores.reshape(-1), stable=True)
        keep[order[:n_prune]] = False
    return keep.view_as(scores) & (scores >= 0)  # negative score: pruned before, stays pruned


def prune_weights(model: nn.Module, sparsity: Sparsity, scope: str = "global",
                  schedule: AGPSchedule | None = None, exclude: Iterable[str] = ()) -> nn.Module:
    """Magnitude-prune ``model``'s Conv/Linear weights in place and return it.

    ``sparsity`` is one fraction (``scope="global"`` ranks all layers together, ``"layer"`` each
    layer alone) or ``{layer: fraction}`` (per layer). With an :class:`AGPSchedule` the masks start at
    its initial sparsity and tighten during training: the schedule counts the model's training-mode
    forward passes, so it works with any loop. Masks only grow; call :func:`make_permanent` at the end.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = prunable_layers(model, exclude)
    targets = _targets(layers, sparsity)
    if isinstance(sparsity, Mapping):
        scope = "layer"
    if schedule is None:
        _prune_to(layers, targets, scope)
        return model
    pruner = _GradualPruner(targets, scope, schedule, tuple(exclude))
    _prune_to(layers, pruner.at(schedule.start), scope)
    model.register_forward_pre_hook(pruner)
    return model


def _prune_to(layers: Mapping[str, nn.Module], targets: Mapping[str, float], scope: str) -> None:
    for name, mask in _magnitude_masks(layers, targets, scope).items():
        set_mask(layers[name], mask)


def sensitivity_sparsities(model: nn.Module, score: Callable[[nn.Module], float],
                           candidates: Iterable[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99),
                           max_drop: float = 0.5, exclude: Iterable[str] = ()) -> dict[str, float]:
    """Per-layer sparsity from a one-shot sensitivity scan (Han et al. 2015, sec. 3.4).

    Each layer alone is magnitude-pruned to each candidate; it gets the largest sparsity whose
    ``score`` (e.g. validation top-1) stays within ``max_drop`` of the unpruned score. The model is
    left unchanged; pass the result to :func:`prune_weights`.
    """
    reference = score(model)
    chosen = {}
    for name, module in prunable_layers(model, exclude).items():
        original = module.weight.detach().clone()
        chosen[name] = 0.0
        for sparsity in sorted(candidates):
            keep = _keep_top(_scores(module), sparsity)
            with torch.no_grad():
                module.weight.mul_(keep)
            ok = reference - score(model) <= max_drop
            with torch.no_grad():
                module.weight.copy_(original)
            if not ok:
                break
            chosen[name] = float(sparsity)
    return chosen


class _GradualPruner:
    """Forward pre-hook on the root model: counts training steps and tightens masks per the schedule."""

    def __init__(self, targets: dict[str, float], scope: str, schedule: AGPSchedule, exclude: tuple[str, ...]):
        self.targets, self.scope, self.schedule, self.exclude = targets, scope, schedule, exclude
        self.step = 0

    def at(self, step: int) -> dict[str, float]:
        return {name: self.schedule.sparsity(step, s) for name, s in self.targets.items()}

    def __call__(self, model: nn.Module, _args: Any) -> None:
        if not model.training:
            return
        self.step += 1
        if self.schedule.due(self.step):
            _prune_to(prunable_layers(model, self.exclude), self.at(self.step), self.scope)


# ---------------------------------------------------------------------------------------- record
@dataclass
class LayerSparsity:
    name: str
    params: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / max(self.params, 1)


@dataclass
class SparsityRecord:
    """Per-layer weight counts after pruning (what a pipeline stage reports)."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def nonzero(self) -> int:
        return sum(layer.nonzero for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(layer), "sparsity": layer.sparsity} for layer in self.layers]
        return {"layers": rows, "params": self.params, "nonzero": self.nonzero,
                "sparsity": 1.0 - self.nonzero / max(self.params, 1)}


def sparsity_record(model: nn.Module, exclude: Iterable[str] = ()) -> SparsityRecord:
    """Count the non-zero weights of every Conv/Linear layer."""
    return SparsityRecord([LayerSparsity(name, m.weight.numel(), int(torch.count_nonzero(m.weight)))
                           for name, m in prunable_layers(model, exclude).items()])
