"""The shared pretrained ResNet-20 deployed as an integer model: onnxruntime agrees with the simulation."""

from __future__ import annotations

import pytest

from cnncompress.data import load_dataset
from cnncompress.export.onnx_qdq import OnnxRuntimeModule, compare_top1, export_onnx
from cnncompress.models import ModelSpec, load_model
from cnncompress.quant import quantize


@pytest.mark.shared
def test_resnet20_w8a8_agrees_with_onnxruntime_on_cifar10(requires_shared, cifar10_test_small, tmp_path):
    model, _, _ = load_model(requires_shared.parent / "pretrained" / "resnet20-12fca82f.th", ModelSpec("resnet20"))
    calib = load_dataset("cifar10", "train", data_dir=requires_shared).take(256, seed=1)
    qmodel = quantize(model, calib, calibration="mse")
    path = export_onnx(qmodel, tmp_path / "r20.onnx", (3, 32, 32))
    test = cifar10_test_small.take(500)
    result = compare_top1(qmodel, OnnxRuntimeModule(path), test)
    assert result.agreement >= 99.5
    assert result.top1_b > 88  # fp32 is 91.7% on the full test set
