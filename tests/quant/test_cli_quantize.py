"""``cnncompress quantize`` end to end on a digits checkpoint."""

from __future__ import annotations

import json

import pytest

from cnncompress.cli import main
from cnncompress.models import ModelSpec, save_checkpoint
from cnncompress.quant import load_quantized


@pytest.fixture(scope="module")
def checkpoint(digits_model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "digits.pt", digits_model, ModelSpec("digits_cnn"))


def test_quantize_command_writes_checkpoint_and_onnx(checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["quantize", "--model", "digits_cnn", "--weights", str(checkpoint), "--weight-bits", "4",
                 "--act-bits", "8", "--calibration", "percentile", "--calib-size", "128",
                 "--layer-bits", "conv1=8", "--latency-repeats", "2", "--output", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_images"] == 450
    assert result["agreement"] >= 99.5
    assert result["simulated_top1"] > 85 and result["onnxruntime_top1"] > 85
    assert result["weight_bytes_packed"] < result["weight_bytes_onnx"] < result["fp32_weight_bytes"]
    assert set(result["speedup_fp32_over_int8"]) == {"1", "64"}
    assert (out / "model.onnx").is_file()
    qmodel, spec, _ = load_quantized(out / "quantized.pt")
    assert qmodel.quant_config.layer_bits == {"conv1": 8} and spec.factory == "digits_cnn"


def test_quantize_command_rejects_bad_layer_bits(checkpoint, tmp_path, capsys):
    code = main(["quantize", "--model", "digits_cnn", "--weights", str(checkpoint), "--layer-bits", "conv1:4",
                 "--output", str(tmp_path / "x")])
    assert code == 1
    assert "layer=bits" in capsys.readouterr().err


def test_sensitivity_command_prints_the_table_and_json(checkpoint, capsys):
    assert main(["quant-sensitivity", "--model", "digits_cnn", "--weights", str(checkpoint), "--bits", "4,2",
                 "--limit", "100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 100 and set(data["layers"]["fc"]) == {"4", "2"}
    assert main(["quant-sensitivity", "--model", "digits_cnn", "--weights", str(checkpoint), "--bits", "2",
                 "--limit", "50"]) == 0
    assert "W2: d top-1 / d loss" in capsys.readouterr().out
