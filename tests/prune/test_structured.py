"""Structured pruning API: ratios, targets, allocation rules, measured costs, checkpoints and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompress.analysis import profile
from cnncompress.cli import main
from cnncompress.models import MODULE_ATTRS_KEY, ModelSpec, build_model, load_model, save_checkpoint
from cnncompress.prune import (
    StructuredPruner,
    TargetNotReached,
    prune_channels,
)
from cnncompress.train import TrainConfig, evaluate, fit


@pytest.fixture(scope="module")
def trained_digits(digits_train):
    model = build_model("digits_cnn")
    fit(model, digits_train, TrainConfig(epochs=3, batch_size=64, lr=0.05, augment=False), progress=False)
    return model


def test_ratio_zero_gives_an_identical_model():
    model = build_model("resnet20").eval()
    x = torch.randn(4, 3, 32, 32)
    pruned, record = prune_channels(model, x, ratio=0.0, return_record=True)
    assert pruned is not model and record.macs_after == record.macs_before
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    assert torch.equal(pruned(x), model(x))


@settings(max_examples=12, deadline=None)
@given(ratio=st.floats(0.0, 0.85), round_to=st.sampled_from([1, 4]), global_ranking=st.booleans(),
       criterion=st.sampled_from(["l1", "l2", "fpgm", "bn_scale", "random"]))
def test_pruned_models_run_and_costs_match_the_profiler(ratio, round_to, global_ranking, criterion):
    model = build_model("digits_cnn", width=8)
    x = torch.randn(3, 1, 8, 8)
    pruned, record = prune_channels(model, x, ratio=ratio, criterion=criterion, round_to=round_to,
                                    global_ranking=global_ranking, return_record=True)
    out = pruned.train()(x)
    assert out.shape == (3, 10)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in pruned.parameters())
    report = profile(pruned, (1, 8, 8))
    assert (report.macs, report.params) == (record.macs_after, record.params_after)
    for group in record.groups:
        assert group["kept"] >= 1
        assert group["kept"] % round_to == 0 or group["kept"] == group["channels"]
    assert record.layers["conv1"]["out"] == [8, pruned.conv1.out_channels]


@pytest.mark.parametrize(("target", "key"), [({"target_macs": 0.5}, "macs"), ({"target_params": 0.4}, "params")])
def test_targets_are_reached_within_two_percent(target, key):
    model = build_model("resnet20")
    pruned, record = prune_channels(model, (3, 32, 32), global_ranking=key == "params", return_record=True,
                                    **target)
    fraction = record.macs_fraction if key == "macs" else record.params_fraction
    wanted = next(iter(target.values()))
    assert abs(fraction / wanted - 1) <= 0.02
    assert record.search and record.target == {key: wanted}
    # the shortcut pads changed with the residual width and were recorded for rebuilding
    assert set(record.module_attrs) == {"layer2.0.shortcut", "layer3.0.shortcut"}
    shortcut = pruned.layer2[0].shortcut
    assert record.module_attrs["layer2.0.shortcut"] == {"pad_before": shortcut.pad_before,
                                                        "pad_after": shortcut.pad_after}


def test_unreachable_target_is_reported():
    with pytest.raises(TargetNotReached, match=r"closest reachable is 0\.1\d\d .*min_channels=8"):
        prune_channels(build_model("digits_cnn"), (1, 8, 8), target_macs=0.05, min_channels=8)
    with pytest.raises(ValueError, match="exactly one"):
        StructuredPruner(ratio=0.5, target_macs=0.5)


def test_global_ranking_respects_the_cap_and_exclusions():
    model = build_model("vgg16_bn")
    _, record = prune_channels(model, (3, 32, 32), ratio=0.6, global_ranking=True, max_ratio=0.7,
                               exclude=["features.0"], return_record=True)
    for group in record.groups:
        assert group["kept"] >= group["channels"] - int(0.7 * group["channels"])
    assert record.layers["features.0"]["out"] == [64, 64]
    assert record.allocation == "global"
    dropped = sum(g["channels"] - g["kept"] for g in record.groups)
    assert dropped == round(0.6 * sum(g["channels"] for g in record.groups))
    assert len({round(g["kept"] / g["channels"], 2) for g in record.groups}) > 2  # not a uniform cut


def test_per_layer_ratios():
    _, record = prune_channels(build_model("digits_cnn"), (1, 8, 8), ratio=0.0, per_layer={"conv2": 0.5},
                               return_record=True)
    assert record.layers["conv2"]["out"] == [32, 16]
    assert record.layers["conv1"]["out"] == [16, 16]


def test_checkpoint_round_trip_rebuilds_pruned_resnet(tmp_path):
    model = build_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, record = prune_channels(model, x, ratio=0.4, criterion="fpgm", return_record=True)
    path = save_checkpoint(tmp_path / "r20.pt", pruned, ModelSpec("resnet20"))
    loaded, spec, meta = load_model(path)
    assert spec.factory == "resnet20"
    for name, attrs in record.module_attrs.items():  # the changed pads are among the saved structure
        assert meta[MODULE_ATTRS_KEY][name] == attrs
    torch.testing.assert_close(loaded(x), pruned.eval()(x), rtol=0, atol=0)
    assert loaded.layer3[0].shortcut.pad_before == pruned.layer3[0].shortcut.pad_before


def test_pruned_digits_checkpoint_reloads_with_load_model(tmp_path, trained_digits, digits_test):
    pruned = prune_channels(trained_digits, (1, 8, 8), ratio=0.3, criterion="l2")
    path = save_checkpoint(tmp_path / "d.pt", pruned, ModelSpec("digits_cnn"))
    loaded, _, _ = load_model(path)
    assert evaluate(loaded, digits_test).top1 == evaluate(pruned, digits_test).top1


def test_cli_prune_saves_a_checkpoint_that_evaluate_reloads(tmp_path, capsys, trained_digits):
    weights = save_checkpoint(tmp_path / "base.pt", trained_digits, ModelSpec("digits_cnn"))
    out_path = tmp_path / "pruned.pt"
    rc = main(["prune", "--model", "digits_cnn", "--weights", str(weights), "--dataset", "digits",
               "--target-macs", "0.5", "--criterion", "taylor", "--taylor-batches", "2", "--round-to", "2",
               "--finetune-epochs", "1", "--max-batches", "5", "--output", str(out_path), "--show-groups", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [g["channels"] for g in result["graph"]["groups"]] == [16, 32, 32]
    assert result["graph"]["groups"][0]["members"][0] == {"module": "conv1", "role": "out", "axis_size": 16,
                                                          "indices": "0-15"}
    assert abs(result["pruned"]["macs"] / result["before"]["macs"] - 0.5) <= 0.01
    assert result["before"]["top1"] > 80
    rc = main(["evaluate", "--model", "digits_cnn", "--weights", str(out_path), "--dataset", "digits", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(result["finetuned"]["top1"])


def test_cli_unreachable_target_exits_infeasible(capsys):
    rc = main(["prune", "--model", "digits_cnn", "--dataset", "digits", "--target-macs", "0.01",
               "--min-channels", "8", "--eval-limit", "50"])
    assert rc == 3
    assert "cannot reach macs" in capsys.readouterr().err
