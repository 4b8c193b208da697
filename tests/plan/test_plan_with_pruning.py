"""A plan applied by the structured-pruning stage yields exactly the predicted MACs, RAM and weights."""

from __future__ import annotations

import pytest
from plan_helpers import layer_weights
from torch import nn

from cnncompress.analysis import profile
from cnncompress.models import build_model
from cnncompress.plan import Budget, Choice, CostModel, Delta, Plan, PlanOptions, SensitivityTable, plan
from cnncompress.prune import prune_channels


@pytest.mark.parametrize(("name", "shape"), [("digits_cnn", (1, 8, 8)), ("resnet20", (3, 32, 32))])
def test_pruned_model_measures_as_predicted(name, shape):
    model = build_model(name).eval()
    cost = CostModel.from_model(model, shape)
    table = SensitivityTable(0.3, 90.0)
    for i, group in enumerate(cost.groups):  # later groups cheaper to prune: an uneven plan
        for ratio in (0.3, 0.5, 0.7):
            table.add("prune", group, ratio, Delta(ratio / (i + 1), -ratio / (i + 1)))
    for layer in cost.layer_names:
        table.add("bits", layer, 8, Delta(0.0, 0.0))
    full = cost.predict(Choice(act_bits=8))
    result = plan(cost, table, Budget(macs=int(0.6 * full.macs)), PlanOptions(weight_bits=(8,)))
    assert isinstance(result, Plan)
    ratios = result.prune_ratios()
    assert ratios and all(0 < r < 1 for r in ratios.values())
    pruned = prune_channels(model, shape, ratio=0.0, per_layer=ratios)
    measured = profile(pruned, shape, act_bits=8, fused=True)
    assert result.predicted.macs == measured.macs <= 0.6 * full.macs
    assert result.predicted.ram_bytes == measured.peak_activation_bytes
    assert result.predicted.weights == layer_weights(pruned)
    widths = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(widths[layer.name] == layer.kept_out for layer in result.layers if layer.name in widths)
