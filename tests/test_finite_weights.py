"""A model with NaN/inf weights is refused where it comes in, naming the tensor, before any work."""

from __future__ import annotations

import pytest
import torch

from cnncompress.export import export_onnx, export_onnx_fp32
from cnncompress.pipeline import compress, compress_with_recipe
from cnncompress.plan import Budget
from cnncompress.prune import prune_channels
from cnncompress.quant import quantize
from cnncompress.train import evaluate
from cnncompress.utils import check_finite
from testsupport import DIGITS8

SHAPE = (1, 8, 8)


def poisoned(model: torch.nn.Module, name: str, count: int = 3) -> torch.nn.Module:
    """``model`` with the first ``count`` values of tensor ``name`` set to NaN, inf, NaN, ..."""
    tensor = dict([*model.named_parameters(), *model.named_buffers()])[name]
    with torch.no_grad():
        flat = tensor.view(-1)
        for i in range(count):
            flat[i] = float("nan") if i % 2 == 0 else float("inf")
    return model


def test_a_finite_model_passes_and_integer_buffers_are_ignored():
    model = DIGITS8.build()
    assert any(not b.is_floating_point() for b in model.buffers())  # BatchNorm's num_batches_tracked
    check_finite(model, "evaluate")


def test_the_message_names_the_tensor_and_counts_its_bad_values():
    with pytest.raises(ValueError, match=r"model weight 'conv2.weight' holds 3 non-finite values \(NaN/inf\); "
                                         r"refusing to evaluate it"):
        check_finite(poisoned(DIGITS8.build(), "conv2.weight"), "evaluate")


def test_a_buffer_is_named_as_one():
    with pytest.raises(ValueError, match="model buffer 'bn1.running_var' holds 1 non-finite"):
        check_finite(poisoned(DIGITS8.build(), "bn1.running_var", count=1), "prune")


def test_evaluate_refuses(digits_test):
    with pytest.raises(ValueError, match="'fc.weight' .* refusing to evaluate"):
        evaluate(poisoned(DIGITS8.build(), "fc.weight"), digits_test)


def test_prune_channels_refuses():
    with pytest.raises(ValueError, match="'conv1.weight' .* refusing to prune"):
        prune_channels(poisoned(DIGITS8.build(), "conv1.weight"), torch.zeros(1, *SHAPE), ratio=0.5)


def test_quantize_refuses(calib):
    with pytest.raises(ValueError, match="'bn2.bias' .* refusing to quantize"):
        quantize(poisoned(DIGITS8.build().eval(), "bn2.bias"), calib)


def test_export_onnx_refuses_a_quantized_model_gone_bad(tmp_path, calib):
    qmodel = quantize(DIGITS8.build().eval(), calib.take(64))
    name = next(n for n, _ in qmodel.named_parameters())
    with pytest.raises(ValueError, match=f"'{name}' .* refusing to export"):
        export_onnx(poisoned(qmodel, name), tmp_path / "model.onnx", torch.zeros(1, *SHAPE))
    assert not (tmp_path / "model.onnx").exists()


def test_export_onnx_fp32_refuses(tmp_path):
    with pytest.raises(ValueError, match="'conv3.weight' .* refusing to export"):
        export_onnx_fp32(poisoned(DIGITS8.build(), "conv3.weight"), tmp_path / "model.onnx", torch.zeros(1, *SHAPE))


@pytest.mark.parametrize("entry", [compress, compress_with_recipe])
def test_compress_refuses_before_creating_its_run_directory(tmp_path, digits_split, entry):
    train, val, test = digits_split
    model = poisoned(DIGITS8.build().eval(), "conv1.weight")
    second = Budget.from_mapping({"flash_bytes": "4KB"}) if entry is compress else {"stages": [{"quantize": {}}]}
    with pytest.raises(ValueError, match="'conv1.weight' .* refusing to compress"):
        entry(model, second, train, val, test, output_dir=tmp_path / "run", spec=DIGITS8, progress=False)
    assert not (tmp_path / "run").exists()
