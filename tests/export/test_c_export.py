"""C export: the integer reference against the simulation, the host-compiled C against the reference
bit for bit, onnxruntime agreement, the arena, refusals and atomic output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.export.c import HostModel, UnsupportedOp, export_c, lower, run_program
from cnncompress.export.c.agreement import compare_logits
from cnncompress.export.onnx_qdq import OnnxRuntimeModule, export_onnx
from cnncompress.models import build_model
from cnncompress.prune import prune_channels
from cnncompress.quant import quantize
from opnets import OddNet

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the system C compiler gcc")
DIGITS_SHAPE = (1, 8, 8)


def simulate(qmodel: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return qmodel.eval()(x).numpy()


@pytest.fixture(scope="module")
def test_images(digits_split) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole digits test split (450 images) as one batch."""
    test = digits_split[2]
    return next(test.batches(len(test)))


@pytest.fixture(scope="module")
def digits_int8(digits_cnn8, calib):
    return quantize(digits_cnn8, calib, weight_bits=8, act_bits=8)


@pytest.fixture(scope="module")
def digits_mixed(digits_cnn8, calib):
    """digits_cnn8 with half of each layer's channels pruned away and weights at 8/2/4/3 bits."""
    small = prune_channels(digits_cnn8, DIGITS_SHAPE, ratio=0.5, criterion="l1")
    return quantize(small, calib, weight_bits=8, act_bits=8, layer_bits={"conv2": 2, "conv3": 4, "fc": 3})


def test_integer_reference_agrees_with_the_simulation(digits_int8, calib, test_images) -> None:
    x, _ = test_images
    program = lower(digits_int8, DIGITS_SHAPE, calib)
    codes = run_program(program, program.input_tensor.grid.quantize(x.numpy()))
    agreement = compare_logits(codes, simulate(digits_int8, x), program.output_tensor.grid)
    assert agreement.top1 >= 99.0
    assert agreement.identical_logits >= 99.0  # single-rounding requantization misses only float ties


@needs_gcc
@pytest.mark.parametrize("model", ["digits_int8", "digits_mixed"])
def test_host_c_equals_the_reference_bit_for_bit(request, model, calib, test_images, tmp_path: Path) -> None:
    qmodel = request.getfixturevalue(model)
    record = export_c(qmodel, tmp_path / "lib", DIGITS_SHAPE, calibration=calib)
    codes = record.input_grid.quantize(test_images[0].numpy())
    out = HostModel(record.output_dir, tmp_path / "build").run(codes, record.output_size)
    np.testing.assert_array_equal(out, run_program(record.program, codes))
    assert compare_logits(out, simulate(qmodel, test_images[0]), record.output_grid).top1 >= 97.0
    assert record.arena.lower_bound <= record.arena.size <= record.arena.tensor_sum


def test_mixed_widths_are_packed_at_their_storage_width(digits_mixed, calib, tmp_path: Path) -> None:
    record = export_c(digits_mixed, tmp_path / "lib", DIGITS_SHAPE, calibration=calib)
    assert {layer["name"]: (layer["weight_bits"], layer["storage_bits"]) for layer in record.layers} == {
        "conv1": (8, 8), "conv2": (2, 2), "conv3": (4, 4), "fc": (3, 4)}
    source = (tmp_path / "lib" / "model.c").read_text()
    conv2 = next(layer for layer in record.layers if layer["name"] == "conv2")
    assert f"conv2_weights[{-(-conv2['weights'] // 4)}]" in source  # four 2-bit codes per byte


def test_onnxruntime_agreement_is_measured(digits_int8, calib, test_images, tmp_path: Path) -> None:
    """onnxruntime requantizes in float, so a few logits may sit one step away; top-1 stays put."""
    program = lower(digits_int8, DIGITS_SHAPE, calib)
    x = test_images[0]
    codes = run_program(program, program.input_tensor.grid.quantize(x.numpy()))
    ort = OnnxRuntimeModule(export_onnx(digits_int8, tmp_path / "m.onnx", DIGITS_SHAPE))
    agreement = compare_logits(codes, ort(x).numpy(), program.output_tensor.grid)
    assert agreement.top1 >= 99.0
    assert agreement.identical_logits >= 95.0


class GroupedOddNet(OddNet):
    """OddNet with a padded strided max pool, then a dilated grouped conv and an average pool before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Conv2d(12, 16, 3, padding=2, dilation=2, groups=4)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avg(F.relu(self.head(z))), 1))


class PaddedNet(nn.Module):
    """Windows that lie partly or wholly in the padding: a padded 1x1 conv, a strided dilated conv."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 4, 1, padding=1)
        self.dilated = nn.Conv2d(4, 6, 3, stride=2, padding=3, dilation=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.dilated(self.wide(x)))), 1))


def _random_int8_model(model: nn.Module, shape: tuple[int, int, int]):
    """``model`` (random weights) quantized W8A8 on 16 random images, with min-max ranges (fast)."""
    torch.manual_seed(0)
    calib = torch.randn(16, *shape)
    return quantize(model.eval(), calib, weight_bits=8, act_bits=8, calibration="minmax",
                    weight_calibration="minmax"), calib


@pytest.fixture(scope="module")
def resnet20_int8():
    return _random_int8_model(build_model("resnet20"), (3, 32, 32))


@needs_gcc
@pytest.mark.parametrize(("name", "kinds"), [
    ("oddnet", {"Conv", "Add", "Window", "MaxPool", "AvgPool", "Concat"}),
    ("resnet20", {"Conv", "Add", "Window", "AvgPool"}),
    ("lenet5", {"Conv", "MaxPool"}),
    ("padded", {"Conv", "AvgPool"}),
])
def test_every_kernel_in_c_equals_the_reference(request, name: str, kinds: set[str], tmp_path: Path) -> None:
    """Random weights and images; ResNet-20 exercises adds and option-A shortcuts at full size."""
    if name == "resnet20":
        qmodel, calib = request.getfixturevalue("resnet20_int8")
    else:
        model, shape = {"oddnet": (GroupedOddNet(), (3, 16, 16)), "lenet5": (build_model("lenet5"), (1, 28, 28)),
                        "padded": (PaddedNet(), (3, 7, 9))}[name]
        qmodel, calib = _random_int8_model(model, shape)
    shape = tuple(calib.shape[1:])
    record = export_c(qmodel, tmp_path / "lib", shape, calibration=calib)
    assert {type(op.handler).__name__ for op in record.program.ops} == kinds
    x = torch.randn(4 if name == "resnet20" else 16, *shape)
    codes = record.input_grid.quantize(x.numpy())
    out = HostModel(record.output_dir, tmp_path / "build").run(codes, record.output_size)
    np.testing.assert_array_equal(out, run_program(record.program, codes))
    assert record.arena.size <= 1.1 * record.arena.lower_bound


def test_resnet20_shortcut_is_one_window_op(resnet20_int8) -> None:
    qmodel, calib = resnet20_int8
    program = lower(qmodel, (3, 32, 32), calib)
    windows = [op for op in program.ops if type(op.handler).__name__ == "Window"]
    assert [op.attrs["step"] for op in windows] == [(1, 2, 2)] * 2
    assert [op.attrs["pad_before"] for op in windows] == [(8, 0, 0), (16, 0, 0)]


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.sigmoid(self.conv(x)), 1))


def test_unsupported_op_is_refused_before_any_file_is_written(calib, tmp_path: Path) -> None:
    qmodel = quantize(Gated(), calib, weight_bits=8, act_bits=8, calibration="minmax", weight_calibration="minmax")
    with pytest.raises(UnsupportedOp, match=r"cannot export node sigmoid \(call_function sigmoid"):
        export_c(qmodel, tmp_path / "lib", DIGITS_SHAPE, calibration=calib)
    assert list(tmp_path.iterdir()) == []


def test_output_directory_is_replaced_whole_or_refused(digits_int8, calib, tmp_path: Path) -> None:
    out = tmp_path / "lib"
    export_c(digits_int8, out, DIGITS_SHAPE, calibration=calib)
    (out / "stale.c").write_text("left over")
    export_c(digits_int8, out, DIGITS_SHAPE, calibration=calib)
    assert sorted(p.name for p in out.iterdir()) == ["cnnc_kernels.c", "cnnc_kernels.h", "model.c", "model.h"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]  # no temporary directory left behind
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an earlier C export"):
        export_c(digits_int8, other, DIGITS_SHAPE, calibration=calib)


def test_logits_grid_needs_calibration(digits_int8) -> None:
    with pytest.raises(ValueError, match="calibration images"):
        lower(digits_int8, DIGITS_SHAPE)
