"""Channel importance criteria: pluggable objects scoring every channel of a :class:`ChannelGroup`.

A criterion scores each parameter axis a group touches (its *members*) and averages the members'
scores. Each member's scores are divided by their mean first, so a wide layer or a large fan-in does
not drown the other members, and groups come out on one scale for global ranking. Higher = keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import Binding, ChannelGraph, ChannelGroup

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Importance:
    """Base criterion: ``member_scores`` for the roles in ``roles``; override to define a criterion."""

    name = "base"
    roles: tuple[str, ...] = ("out", "in")
    requires_data = False

    def prepare(self, model: nn.Module, graph: ChannelGraph, data: Batches | None) -> None:
        """Collect whatever the criterion needs from the whole model (e.g. gradients) once."""

    def member_scores(self, module: nn.Module, binding: Binding,
                      classes: list[list[int]]) -> torch.Tensor | None:
        """Scores of ``classes`` (per channel: the axis indices it owns) on one member, or None to skip it."""
        raise NotImplementedError

    def score(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        """One score per channel of ``group``, averaged over its members."""
        rows = []
        for binding, classes in zip(group.bindings, group.index, strict=True):
            if binding.role in self.roles:
                scores = self.member_scores(model.get_submodule(binding.module), binding, classes)
                if scores is not None:
                    rows.append(_normalise(scores.double()))
        if not rows:
            return self.fallback(model, group)
        return torch.stack(rows).mean(0)

    def fallback(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        """Scores for a group without the members this criterion reads: L1 magnitude."""
        return Magnitude(p=1).score(model, group)


def _normalise(scores: torch.Tensor) -> torch.Tensor:
    mean = scores.mean()
    return scores / mean if mean > 0 else scores


def per_class(values: torch.Tensor, classes: list[list[int]]) -> torch.Tensor:
    """Sum of ``values`` (one per axis index) over each channel's indices, in one indexed add."""
    flat = torch.tensor([i for idx in classes for i in idx], dtype=torch.long)
    owner = torch.tensor([c for c, idx in enumerate(classes) for _ in idx], dtype=torch.long)
    return torch.zeros(len(classes), dtype=values.dtype).index_add_(0, owner, values[flat])


def _axis_sums(tensor: torch.Tensor, role: str) -> torch.Tensor:
    """``tensor`` summed over everything but the axis ``role`` indexes: rows, or columns for ``in``."""
    if tensor.dim() == 1:
        return tensor
    return tensor.transpose(0, 1).flatten(1).sum(1) if role == "in" else tensor.flatten(1).sum(1)


class Magnitude(Importance):
    """L1 (``p=1``) or L2 (``p=2``) norm of each channel's filter, depthwise kernel and consumer weights."""

    def __init__(self, p: int = 1) -> None:
        self.p = p
        self.name = f"l{p}"

    def fallback(self, model, group):
        """A group without weights to measure (e.g. padded shortcut positions only) scores zero."""
        return torch.zeros(group.size, dtype=torch.float64)

    def member_scores(self, module, binding, classes):
        weight = getattr(module, "weight", None)
        if weight is None:
            return None
        powers = _axis_sums(weight.detach().double().abs().pow(self.p), binding.role)
        return per_class(powers, classes).pow(1 / self.p)


class FPGM(Importance):
    """Filter pruning via geometric median (He et al. 2019): a filter close to all others is redundant.

    A filter's score is its summed Euclidean distance to the other filters of the same layer.
    """

    name = "fpgm"
    roles = ("out",)

    def member_scores(self, module, binding, classes):
        weight = module.weight.detach().flatten(1).double()
        return per_class(torch.cdist(weight, weight).sum(1), classes)

    def fallback(self, model, group):
        return Magnitude(p=2).score(model, group)


class BNScale(Importance):
    """Network slimming (Liu et al. 2017): |gamma| of the BatchNorm layers on the channel."""

    name = "bn_scale"
    roles = ("bn",)

    def member_scores(self, module, binding, classes):
        if module.weight is None:
            return None
        return per_class(module.weight.detach().double().abs(), classes)


class Taylor(Importance):
    """First-order Taylor estimate (Molchanov et al. 2019): |sum of w * dL/dw| over a channel's weights.

    ``prepare`` averages the loss gradient over ``batches`` batches of labelled data.
    """

    name = "taylor"
    roles = ("out", "bn", "affine", "in")
    requires_data = True

    def __init__(self, batches: int = 8) -> None:
        if batches < 1:
            raise ValueError("Taylor importance needs at least one batch")
        self.batches = batches
        self.grads: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}

    def prepare(self, model, graph, data):
        if data is None:
            raise ValueError("the taylor criterion needs data: pass labelled batches (data=...)")
        params = dict(model.named_parameters())
        sums = {name: torch.zeros_like(p) for name, p in params.items()}
        was_training = model.training
        model.eval()
        seen = 0
        for x, y in data:
            if seen == self.batches:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += p.grad
            seen += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if seen == 0:
            raise ValueError("the taylor criterion got no batches of data")
        self.grads = {name: s / seen for name, s in sums.items()}
        self._names = {id(p): name for name, p in params.items()}

    def member_scores(self, module, binding, classes):
        parts = [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if p is not None]
        total = None
        for p in parts:
            if p.dim() == 1 and binding.role == "in":
                continue
            contrib = _axis_sums(p.detach().double() * self.grads[self._names[id(p)]], binding.role)
            scores = per_class(contrib, classes).abs()
            total = scores if total is None else total + scores
        return total


class Random(Importance):
    """Seeded random scores: the baseline every criterion must beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, model, group):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + group.id)
        return torch.rand(group.size, generator=gen, dtype=torch.float64)


CRITERIA = {"l1": lambda: Magnitude(1), "l2": lambda: Magnitude(2), "fpgm": FPGM, "bn_scale": BNScale,
            "taylor": Taylor, "random": Random}


def get_importance(criterion: str | Importance) -> Importance:
    """A criterion object from its name (see :data:`CRITERIA`) or the object itself."""
    if isinstance(criterion, Importance):
        return criterion
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[criterion]()


def bn_l1_penalty(strength: float, modules: Sequence[str] | None = None):
    """A ``train.fit`` loss term adding ``strength * sum |gamma|`` over BatchNorm layers (network slimming).

    Training with it pushes unimportant channels' BN scales to zero before :class:`BNScale` ranks them.
    """
    if not strength >= 0:
        raise ValueError(f"sparsity strength must be a non-negative number, got {strength}")

    def term(model: nn.Module) -> torch.Tensor:
        gammas = [m.weight.abs().sum() for name, m in model.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
                  and (modules is None or name in modules)]
        if not gammas:
            raise ValueError("bn_l1_penalty: the model has no affine BatchNorm layers")
        return strength * torch.stack(gammas).sum()

    return term
