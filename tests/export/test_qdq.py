"""Integer ONNX export: odd layers run in onnxruntime, match the simulation, and fuse to integer kernels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cnncompress.export.onnx_qdq import OnnxRuntimeModule, export_onnx, weight_storage_bytes
from cnncompress.models import build_model
from cnncompress.quant import act_quantizers, quant_layers, quantize, set_mode
from opnets import OddNet


def _calib(n=64, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def odd_export(tmp_path_factory):
    torch.manual_seed(0)
    model = OddNet().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2)
    qmodel = quantize(model, _calib(), calibration="minmax")
    path = export_onnx(qmodel, tmp_path_factory.mktemp("odd") / "odd.onnx", (3, 16, 16))
    return qmodel, path


def _lsb_of_output(qmodel) -> float:
    return max(q.scale.item() for _, q in act_quantizers(qmodel))


def test_odd_layers_run_in_onnxruntime_and_match_the_simulation(odd_export):
    qmodel, path = odd_export
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    x = _calib(32, seed=5)
    runtime = OnnxRuntimeModule(path)
    with torch.no_grad():
        sim = qmodel(x)
    for batch in (1, 32):
        out = runtime(x[:batch])
        assert out.shape == (batch, 5)
        assert torch.allclose(out, sim[:batch], atol=4 * _lsb_of_output(qmodel))


def test_runtime_fuses_the_qdq_graph_into_integer_kernels(odd_export, tmp_path):
    _, path = odd_export
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)
    assert ops["QLinearConv"] == 5, ops  # stem, depthwise, pointwise, side, head all run on integers
    assert ops["QLinearAdd"] == 2 and ops["QLinearConcat"] == 1
    assert ops["Conv"] == 0 and ops["Add"] == 0


def test_weights_below_8_bits_are_int8_codes_in_the_b_bit_range(tmp_path):
    model = build_model("mobilenetv2", width_mult=0.25).eval()
    qmodel = quantize(model, torch.randn(16, 3, 32, 32), weight_bits=4, act_bits=4, calibration="percentile")
    path = export_onnx(qmodel, tmp_path / "mnv2.onnx", (3, 32, 32))
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.name.endswith("_w")]
    assert len(weights) == len(list(quant_layers(qmodel)))
    assert all(w.dtype == np.int8 and w.min() >= -7 and w.max() <= 7 for w in weights)
    storage = weight_storage_bytes(qmodel)
    assert storage["packed"] < 0.6 * storage["onnx_int8"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(OnnxRuntimeModule(path)(x), qmodel(x), atol=4 * _lsb_of_output(qmodel))


def test_export_refuses_uncalibrated_models(tmp_path):
    qmodel = quantize(OddNet().eval(), _calib(8))
    set_mode(qmodel, "quant", "float")
    target = tmp_path / "odd.onnx"
    with pytest.raises(ValueError, match="calibrated"):
        export_onnx(qmodel, target, (3, 16, 16))
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(torch.fx.symbolic_trace(OddNet()), target, (3, 16, 16))


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_zoo_mnist_models_export_and_match(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name).eval()
    calib = torch.randn(32, 1, 28, 28)
    qmodel = quantize(model, calib, calibration="percentile")
    runtime = OnnxRuntimeModule(export_onnx(qmodel, tmp_path / f"{name}.onnx", (1, 28, 28)))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(runtime(x), qmodel(x), atol=4 * _lsb_of_output(qmodel))
