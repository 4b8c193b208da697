"""The train / evaluate / profile / benchmark commands, driven as a user would."""

from __future__ import annotations

import json

import pytest

from cnncompress.cli import main
from testsupport import SHARED


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "profile", "benchmark"):
        assert command in out


def test_profile_json_has_the_documented_keys(capsys):
    out = run_json(capsys, "profile", "--model", "resnet56")
    assert out["params"] == 853_018 and out["macs"] == 125_485_696
    assert out["peak_activation_bytes"] > 0 and len(out["layers"]) > 50


def test_profile_of_a_user_model_needs_an_input_shape(tmp_path, capsys):
    source = tmp_path / "net.py"
    source.write_text("from torch import nn\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())\n")
    assert main(["profile", "--model", f"{source}:net"]) == 1
    assert "--input-shape" in capsys.readouterr().err
    out = run_json(capsys, "profile", "--model", f"{source}:net", "--input-shape", "3,5,5")
    assert out["macs"] == 4 * 3 * 9 * 3 * 3


def test_train_then_evaluate_round_trip(tmp_path, capsys):
    ckpt = tmp_path / "digits.pt"
    trained = run_json(capsys, "train", "--model", "digits_cnn", "--dataset", "digits", "--epochs", "3",
                       "--batch-size", "64", "--no-augment", "--output", str(ckpt))
    assert ckpt.is_file() and not (tmp_path / "digits.pt.partial").exists()
    assert trained["top1"] > 85.0
    evaluated = run_json(capsys, "evaluate", "--model", "digits_cnn", "--weights", str(ckpt), "--dataset", "digits")
    assert evaluated["top1"] == pytest.approx(trained["top1"])


def test_benchmark_reports_both_backends(capsys):
    out = run_json(capsys, "benchmark", "--model", "digits_cnn", "--batch-sizes", "1,8", "--repeats", "3")
    assert set(out["latency"]) == {"torch", "onnxruntime"}
    for report in out["latency"].values():
        assert set(report["batches"]) == {"1", "8"} and report["batches"]["8"]["median_ms"] > 0


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--model", "lenet5", "--weights", "/nonexistent.pt"], "does not exist"),
    (["profile", "--model", "resnet57"], "unknown model"),
    (["evaluate", "--model", "digits_cnn", "--dataset", "digits", "--limit", "0"], "--limit"),
    (["profile", "--model", "lenet5", "--input-shape", "1,x,28"], "--input-shape"),
])
def test_errors_exit_1_with_a_one_line_reason(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_usage_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate"])
    assert exit_info.value.code == 2


@pytest.mark.shared
def test_pretrained_resnet20_accuracy_on_a_fixed_cifar_subset(capsys):
    out = run_json(capsys, "evaluate", "--model", "resnet20", "--weights",
                   str(SHARED / "pretrained/resnet20-12fca82f.th"), "--dataset", "cifar10", "--limit", "1000")
    assert out["n"] == 1000
    # 915 of the first 1000 test images, measured with this command; one image either way allowed for BLAS.
    assert out["top1"] == pytest.approx(91.5, abs=0.1)
