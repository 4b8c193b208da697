"""Unstructured magnitude pruning: exact sparsity, masks that hold through training (also QAT-style
rebuilt layers), AGP and iterative schedules, and permanent masks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.models import ModelSpec
from cnncompress.prune.schedules import AGPSchedule, iterative_rounds
from cnncompress.prune.unstructured import (
    MASK,
    enforce_masks,
    lock_zeros,
    make_permanent,
    prunable_layers,
    prune_weights,
    sensitivity_sparsities,
    sparsity_record,
)
from cnncompress.train import TrainConfig, evaluate, fit

SPEC = ModelSpec("lenet300", {"in_features": 64})


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), SPEC.build())


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "lr": 0.05, "augment": False, "max_batches_per_epoch": 8, **kw})


def _zero_bits(weight: torch.Tensor, mask: torch.Tensor) -> bool:
    """Pruned entries are +0.0 exactly (bit pattern 0)."""
    return bool((weight.detach()[~mask].view(torch.int32) == 0).all())


def test_global_scope_keeps_the_largest_magnitudes_overall():
    model = prune_weights(_mlp(), 0.8, scope="global")
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    assert sparsity_record(model).nonzero == total - round(0.8 * total)
    assert all(_zero_bits(m.weight, m.weight_mask) for m in layers.values())
    per_layer = {layer.name: layer.sparsity for layer in sparsity_record(model).layers}
    assert len(set(round(s, 3) for s in per_layer.values())) > 1  # global ranking differs per layer


def test_global_threshold_separates_kept_and_pruned():
    model = _mlp()
    before = {n: m.weight.detach().abs().clone() for n, m in prunable_layers(model).items()}
    prune_weights(model, 0.7, scope="global")
    masks = {n: m.weight_mask for n, m in prunable_layers(model).items()}
    kept_min = min(before[n][masks[n]].min() for n in masks)
    pruned_max = max(before[n][~masks[n]].max() for n in masks)
    assert kept_min >= pruned_max


def test_layer_scope_dict_and_exclude():
    model = prune_weights(_mlp(), 0.5, scope="layer", exclude=("1.fc3",))
    record = {layer.name: layer for layer in sparsity_record(model).layers}
    assert record["1.fc1"].nonzero == record["1.fc1"].params // 2 and record["1.fc3"].sparsity == 0
    assert not hasattr(model[1].fc3, MASK)
    model = prune_weights(_mlp(), {"1.fc2": 0.9})
    assert sparsity_record(model).layers[1].nonzero == 3000 and not hasattr(model[1].fc1, MASK)
    with pytest.raises(ValueError, match="no prunable layer"):
        prune_weights(_mlp(), {"fc9": 0.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune_weights(_mlp(), 1.0)
    with pytest.raises(ValueError, match="scope"):
        prune_weights(_mlp(), 0.5, scope="channel")


def test_masks_only_grow():
    model = prune_weights(_mlp(), 0.9, scope="layer")
    first = model[1].fc1.weight_mask.clone()
    prune_weights(model, 0.5, scope="layer")
    assert torch.equal(model[1].fc1.weight_mask, first)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masks_hold_through_fine_tuning(digits_train, optimizer):
    model = prune_weights(_mlp(), 0.9, scope="layer")
    masks = {n: m.weight_mask.clone() for n, m in prunable_layers(model).items()}
    before = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    fit(model, digits_train, _config(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05),
        after_step=(enforce_masks,), progress=False)
    for name, module in prunable_layers(model).items():
        assert torch.equal(module.weight_mask, masks[name])
        assert _zero_bits(module.weight, masks[name])
        assert not torch.equal(module.weight[masks[name]], before[name][masks[name]])  # it did train


class _FakeQuantLinear(nn.Linear):
    """A QAT-style layer rebuilt from a float one (weights copied, masks not) that quantizes on the fly."""

    @classmethod
    def from_float(cls, layer: nn.Linear) -> _FakeQuantLinear:
        q = cls(layer.in_features, layer.out_features)
        q.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
        return q

    def forward(self, x):
        scale = self.weight.detach().abs().max() / 7
        q = self.weight + (torch.round(self.weight / scale) * scale - self.weight).detach()  # 4-bit, STE
        return F.linear(x, q, self.bias)


def test_zeros_hold_under_qat_style_rebuilt_layers(digits_train):
    model = make_permanent(prune_weights(_mlp(), 0.85, scope="layer"))
    mlp = model[1]
    for name in ("fc1", "fc2", "fc3"):
        setattr(mlp, name, _FakeQuantLinear.from_float(getattr(mlp, name)))
    lock_zeros(model)
    zeros = {n: m.weight.detach() == 0 for n, m in prunable_layers(model).items()}
    fit(model, digits_train, _config(optimizer="adam", lr=0.01), after_step=(enforce_masks,), progress=False)
    for name, module in prunable_layers(model).items():
        assert _zero_bits(module.weight, ~zeros[name])
        assert int((module.weight != 0).sum()) == int((~zeros[name]).sum())


def test_gradient_of_pruned_weights_is_zero():
    model = prune_weights(_mlp(), 0.6, scope="layer")
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    layer = model[1].fc2
    assert (layer.weight.grad[~layer.weight_mask] == 0).all() and layer.weight.grad[layer.weight_mask].abs().sum() > 0


def test_deepcopy_keeps_guards(digits_train):
    model = copy.deepcopy(prune_weights(_mlp(), 0.9, scope="layer"))
    mask = model[1].fc1.weight_mask.clone()
    fit(model, digits_train, _config(optimizer="adam", lr=0.01), progress=False)  # no after_step hook
    model(torch.zeros(1, 1, 8, 8))  # the forward pre-hook re-zeroes
    assert _zero_bits(model[1].fc1.weight, mask)


def test_agp_schedule_formula_and_gradual_pruning(digits_train):
    schedule = AGPSchedule(steps=8, every=2)
    assert schedule.sparsity(0, 0.9) == 0.0 and schedule.sparsity(8, 0.9) == pytest.approx(0.9)
    assert schedule.sparsity(4, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))
    assert [schedule.due(s) for s in range(10)] == [True, False, True, False, True, False, True, False, True, False]
    model = prune_weights(_mlp(), 0.9, scope="layer", schedule=schedule)
    seen = []
    fit(model, digits_train, _config(max_batches_per_epoch=10),
        after_step=(enforce_masks, lambda m: seen.append(sparsity_record(m).nonzero)), progress=False)
    assert seen == sorted(seen, reverse=True) and seen[0] > seen[-1]
    for layer in sparsity_record(model).layers:
        assert layer.nonzero == layer.params - round(0.9 * layer.params)
    make_permanent(model)
    assert not model._forward_pre_hooks


def test_iterative_rounds_remove_the_same_share_each_round():
    rounds = iterative_rounds(0.96, 4)
    kept = [1 - s for s in rounds]
    assert rounds[-1] == pytest.approx(0.96) and rounds == sorted(rounds)
    assert kept[1] / kept[0] == pytest.approx(kept[3] / kept[2])
    with pytest.raises(ValueError):
        iterative_rounds(0.9, 0)


def test_make_permanent_leaves_a_plain_loadable_model():
    model = make_permanent(prune_weights(_mlp(), 0.75, scope="global"))
    assert all(not hasattr(m, MASK) and not m._forward_pre_hooks for m in model.modules())
    fresh = _mlp(seed=1)
    fresh.load_state_dict(model.state_dict())
    assert sparsity_record(fresh).nonzero == sparsity_record(model).nonzero


def test_sensitivity_scan_gives_sensitive_layers_lower_sparsity(digits_train, digits_test):
    model = _mlp()
    fit(model, digits_train, _config(epochs=3, max_batches_per_epoch=None), progress=False)
    state = copy.deepcopy(model.state_dict())
    calls = []

    def score(m):
        calls.append(1)
        return evaluate(m, digits_test).top1

    chosen = sensitivity_sparsities(model, score, candidates=(0.5, 0.9, 0.99), max_drop=2.0)
    assert set(chosen) == {"1.fc1", "1.fc2", "1.fc3"} and all(s in (0.0, 0.5, 0.9, 0.99) for s in chosen.values())
    assert chosen["1.fc3"] < 0.99  # 99 % of the 10-way classifier cannot go unnoticed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # model left as it was
    pruned = prune_weights(model, chosen)
    assert evaluate(pruned, digits_test).top1 > 50 and len(calls) >= 4
