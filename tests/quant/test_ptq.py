"""PTQ on a real trained model: accuracy, simulated == onnxruntime, refinements, mixed precision, save/load."""

from __future__ import annotations

import copy

import pytest
import torch

from cnncompress.export.onnx_qdq import OnnxRuntimeModule, compare_top1, export_onnx
from cnncompress.models import ModelSpec
from cnncompress.quant import (
    act_quantizers,
    adaround_weights,
    calibrate_weights,
    correct_bias,
    load_quantized,
    prepare,
    quant_layers,
    quantize,
    save_quantized,
    sensitivity,
    set_mode,
)
from cnncompress.quant.data import calibration_batches, run_batches
from cnncompress.quant.ptq import QuantConfig
from cnncompress.train import evaluate


@pytest.fixture(scope="module")
def fp32_top1(digits_model, digits_test):
    return evaluate(digits_model, digits_test).top1


@pytest.mark.parametrize("calibration", ["minmax", "moving_average", "percentile", "mse", "kl"])
def test_w8a8_ptq_keeps_accuracy_with_every_calibrator(digits_model, calib, digits_test, fp32_top1, calibration):
    qmodel = quantize(digits_model, calib, calibration=calibration)
    assert evaluate(qmodel, digits_test).top1 >= fp32_top1 - 1.5


@pytest.mark.parametrize("bits", [(8, 8), (4, 4)])
def test_onnxruntime_agrees_with_simulation_on_real_images(digits_model, calib, digits_test, tmp_path, bits):
    qmodel = quantize(digits_model, calib, weight_bits=bits[0], act_bits=bits[1])
    path = export_onnx(qmodel, tmp_path / "m.onnx", digits_test.tensors()[0][:1])
    result = compare_top1(qmodel, OnnxRuntimeModule(path), digits_test)
    assert result.n == len(digits_test)
    assert result.agreement >= 99.5
    assert abs(result.top1_a - result.top1_b) <= 0.5


def _layer_output_error(qmodel, batches, name, float_bias=None) -> tuple[float, float]:
    """MSE and mean |per-channel mean shift| of one layer's quantized output vs its float output."""
    layer = dict(quant_layers(qmodel))[name]
    seen = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    set_mode(qmodel, "quant", "float")
    run_batches(qmodel, batches)
    handle.remove()
    x = torch.cat(seen)
    with torch.no_grad():
        bias = layer.bias if float_bias is None else float_bias
        diff = layer.linear_op(x, layer.weight_quant(layer.weight), layer.bias) - layer.linear_op(x, layer.weight, bias)
    return diff.pow(2).mean().item(), diff.mean((0, 2, 3)).abs().mean().item()


def test_adaround_and_bias_correction_reduce_output_error(digits_model, calib):
    batches = calibration_batches(calib)
    config = QuantConfig(weight_bits=3, act_bits=8)
    base = prepare(digits_model, config)
    calibrate_weights(base, "mse")
    mse_nearest, shift_nearest = _layer_output_error(base, batches, "conv2")

    rounded = prepare(digits_model, config)
    calibrate_weights(rounded, "mse")
    assert adaround_weights(rounded, batches, iters=300) == ["conv1", "conv2", "conv3", "fc"]
    mse_ada, _ = _layer_output_error(rounded, batches, "conv2")
    assert mse_ada < 0.9 * mse_nearest
    codes = dict(quant_layers(rounded))["conv2"].weight_quant
    w = dict(quant_layers(rounded))["conv2"].weight
    assert torch.allclose(codes(w), w)  # learned weights sit exactly on the grid

    corrected = prepare(digits_model, config)
    calibrate_weights(corrected, "mse")
    correct_bias(corrected, batches)
    float_bias = dict(quant_layers(base))["conv1"].bias
    _, shift_corrected = _layer_output_error(corrected, batches, "conv1", float_bias)
    _, shift_conv1 = _layer_output_error(base, batches, "conv1")
    assert shift_corrected < 0.5 * shift_conv1 + 1e-6


def test_w4a8_refinements_run_end_to_end(digits_model, calib, digits_test, fp32_top1):
    qmodel = quantize(digits_model, calib, weight_bits=4, act_bits=8, cle=True, bias_correction=True,
                      adaround=True, adaround_iters=100)
    assert evaluate(qmodel, digits_test).top1 >= fp32_top1 - 5


def test_mixed_precision_layer_bits(digits_model, calib):
    qmodel = quantize(digits_model, calib, layer_bits={"conv2": 2, "fc": 6})
    layers = dict(quant_layers(qmodel))
    bits = {name: layer.weight_quant.spec.bits for name, layer in layers.items()}
    assert bits == {"conv1": 8, "conv2": 2, "conv3": 8, "fc": 6}
    codes = layers["conv2"].weight_quant.codes(layers["conv2"].weight)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    with pytest.raises(ValueError, match="conv9"):
        quantize(digits_model, calib, layer_bits={"conv9": 4})
    with pytest.raises(ValueError, match="2..8"):
        quantize(digits_model, calib, layer_bits={"conv1": 1})


def test_layer_input_bits_widen_what_a_layer_reads(digits_model, calib, digits_test, tmp_path):
    """The image into the first conv and the features into the classifier at 8 bits, the rest at 4."""
    qmodel = quantize(digits_model, calib, weight_bits=4, act_bits=4, layer_input_bits={"conv1": 8, "fc": 8})
    plain = quantize(digits_model, calib, weight_bits=4, act_bits=4)
    wide = {name for name, q in act_quantizers(qmodel) if q.spec.bits == 8}
    assert len(wide) == 2 and all(q.spec.bits == 4 for name, q in act_quantizers(qmodel) if name not in wide)
    assert {n for n, q in act_quantizers(plain)} == {n for n, q in act_quantizers(qmodel)}
    assert evaluate(qmodel, digits_test).top1 >= evaluate(plain, digits_test).top1 - 1.0
    path = export_onnx(qmodel, tmp_path / "wide.onnx", digits_test.tensors()[0][:1])
    assert compare_top1(qmodel, OnnxRuntimeModule(path), digits_test).agreement >= 99.5
    loaded, _, _ = load_quantized(save_quantized(tmp_path / "wide.pt", qmodel, ModelSpec("digits_cnn")))
    x = digits_test.tensors()[0][:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    with pytest.raises(ValueError, match="layer_input_bits names no conv/linear layer"):
        quantize(digits_model, calib, layer_input_bits={"conv9": 8})
    with pytest.raises(ValueError, match="2..8"):
        quantize(digits_model, calib, layer_input_bits={"conv1": 16})


def test_sensitivity_table_is_data_for_the_planner(digits_model, digits_test):
    table = sensitivity(digits_model, digits_test.take(200), bits=(8, 2))
    assert list(table.layers) == ["conv1", "conv2", "conv3", "fc"]
    data = table.to_dict()
    assert set(data["layers"]["conv2"]) == {"8", "2"}
    for per in table.layers.values():
        assert abs(per[8].delta_top1) <= 2.0
    assert sum(per[2].delta_loss for per in table.layers.values()) > sum(
        per[8].delta_loss for per in table.layers.values())
    assert "conv2" in table.table() and "W2" in table.table()


def test_quantized_checkpoint_round_trip(digits_model, calib, digits_test, tmp_path):
    qmodel = quantize(digits_model, calib, weight_bits=4, act_bits=6, calibration="percentile")
    path = save_quantized(tmp_path / "q.pt", qmodel, ModelSpec("digits_cnn"), note="test")
    loaded, spec, meta = load_quantized(path)
    x = digits_test.tensors()[0][:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    assert spec.factory == "digits_cnn" and meta == {"note": "test"}
    assert loaded.quant_config == qmodel.quant_config


def test_calibration_data_is_validated(digits_model):
    with pytest.raises(ValueError, match="empty"):
        quantize(digits_model, [])
    with pytest.raises(ValueError, match="NaN"):
        quantize(digits_model, torch.full((4, 1, 8, 8), float("nan")))


def test_dead_channel_bias_survives_int32_quantization(digits_model, calib, digits_test, tmp_path):
    """A BN-folded channel with zero weights but a bias must keep that bias through int32 quantization."""
    model = copy.deepcopy(digits_model)
    with torch.no_grad():
        model.conv2.weight[3].zero_()
        model.bn2.bias[3] = 2.0
    qmodel = quantize(model, calib)
    layer = dict(quant_layers(qmodel))["conv2"]
    x = digits_test.tensors()[0][:8]
    seen = []
    layer.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        qmodel(x)
    assert torch.allclose(seen[0][:, 3], torch.full_like(seen[0][:, 3], layer.bias[3].item()), atol=1e-4)
    runtime = OnnxRuntimeModule(export_onnx(qmodel, tmp_path / "dead.onnx", x[:1]))
    assert compare_top1(qmodel, runtime, digits_test).agreement >= 99.5
    clone = copy.deepcopy(qmodel)  # the config survives fx's deepcopy
    assert clone.quant_config == qmodel.quant_config
