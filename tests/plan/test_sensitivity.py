"""Sensitivity tables measured on a small trained CNN, cached and reloaded."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cnncompress.models import build_model
from cnncompress.plan import Delta, SensitivityTable, measure_sensitivity
from cnncompress.train import TrainConfig, evaluate, fit
from cnncompress.utils import seed_everything


@pytest.fixture(scope="module")
def trained(digits_train):
    seed_everything(0)
    model = build_model("digits_cnn")
    fit(model, digits_train, TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=0.01, seed=0),
        progress=False)
    return model.eval()


def _zero_weakest_channels(model: nn.Module, layer: str, ratio: float) -> nn.Module:
    """Test stand-in for channel pruning: zero the filters with the smallest L1 norm."""
    conv = dict(model.named_modules())[layer]
    norms = conv.weight.detach().abs().flatten(1).sum(1)
    drop = norms.argsort()[: round(ratio * len(norms))]
    with torch.no_grad():
        conv.weight[drop] = 0
        bn = dict(model.named_modules())[layer.replace("conv", "bn")]
        bn.weight[drop] = 0
        bn.bias[drop] = 0
    return model


def _quantize_layer(model: nn.Module, layer: str, bits: int) -> nn.Module:
    """Test stand-in for weight quantization: symmetric per-output-channel rounding."""
    weight = dict(model.named_modules())[layer].weight
    with torch.no_grad():
        scale = weight.abs().flatten(1).amax(1).clamp_min(1e-12) / (2 ** (bits - 1) - 1)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        weight.copy_(torch.round(weight / scale.view(shape)) * scale.view(shape))
    return model


def test_measured_table_is_consistent_cached_and_resumable(trained, digits_test, tmp_path):
    calls = []

    def evaluate_fn(model):
        calls.append(1)
        result = evaluate(model, digits_test)
        return result.loss, result.top1

    cache = tmp_path / "sensitivity.json"
    table = measure_sensitivity(trained, ["conv2", "conv3"], evaluate_fn, _zero_weakest_channels, [0.25, 0.9],
                                kind="prune", cache=cache)
    table = measure_sensitivity(trained, ["conv1", "conv2", "conv3", "fc"], evaluate_fn, _quantize_layer, [2, 8],
                                kind="bits", table=table, cache=cache)
    assert len(calls) == 1 + 4 + 8
    assert table.baseline_accuracy > 80  # the CNN learned digits
    for layer in ("conv2", "conv3"):
        assert table.prune[layer][0.9].loss > table.prune[layer][0.25].loss  # pruning more costs more
    assert abs(table.bits["conv2"][8].accuracy) < 1.0  # 8 bits is nearly free
    direct = evaluate(_zero_weakest_channels(copy.deepcopy(trained), "conv2", 0.9), digits_test)
    assert table.prune["conv2"][0.9].accuracy == pytest.approx(direct.top1 - table.baseline_accuracy)
    assert trained.conv2.weight.abs().flatten(1).sum(1).min() > 0  # the original was left untouched

    calls.clear()
    again = measure_sensitivity(trained, ["conv2", "conv3"], evaluate_fn, _zero_weakest_channels, [0.25, 0.9],
                                kind="prune", cache=cache)
    assert calls == [] and again.to_dict() == table.to_dict()


def test_bad_options_and_files_are_refused(tmp_path):
    table = SensitivityTable(0.1, 90.0)
    with pytest.raises(ValueError, match="bits option"):
        table.add("bits", "conv1", 3.5, Delta(0, 0))
    with pytest.raises(ValueError, match="prune option"):
        table.add("prune", "conv1", 1.0, Delta(0, 0))
    with pytest.raises(ValueError, match="finite"):
        Delta(float("nan"), 0.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"baseline_loss": 0.1, "baseline_accuracy": 90, "bits": {"fc": {"40": [0, 0]}}}))
    with pytest.raises(ValueError, match="not a valid sensitivity table"):
        SensitivityTable.load(bad)


_finite = st.floats(min_value=-100, max_value=100, allow_nan=False)


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]),
                       st.dictionaries(st.sampled_from([0.1, 0.25, 0.5, 0.75]), st.tuples(_finite, _finite),
                                       min_size=1), max_size=3),
       st.dictionaries(st.sampled_from(["a", "b"]),
                       st.dictionaries(st.integers(1, 32), st.tuples(_finite, _finite), min_size=1), max_size=2))
def test_dict_round_trip(prune, bits):
    table = SensitivityTable(0.5, 88.0)
    for unit, opts in prune.items():
        for opt, (loss, acc) in opts.items():
            table.add("prune", unit, opt, Delta(loss, acc))
    for unit, opts in bits.items():
        for opt, (loss, acc) in opts.items():
            table.add("bits", unit, opt, Delta(loss, acc))
    back = SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back == table
