"""The exported C cross-compiled for Cortex-M4/M7 and run in QEMU: outputs equal the host build's,
flash and RAM come off the object files and the painted stack."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnncompress.export.c import HostModel, export_c
from cnncompress.export.c.firmware import mcu_timeout_s, missing_tools, run_on_mcu
from cnncompress.quant import quantize

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (apt-get install "
                       "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm; .ci/run installs them)"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the system C compiler gcc"),
]


@pytest.fixture(scope="module")
def exported(digits_cnn8, calib, digits_split, tmp_path_factory: pytest.TempPathFactory):
    """digits_cnn8 at W8A8 exported, with 100 digits test images as input codes and the host build's outputs."""
    folder = tmp_path_factory.mktemp("mcu")
    qmodel = quantize(digits_cnn8, calib, weight_bits=8, act_bits=8)
    record = export_c(qmodel, folder / "lib", (1, 8, 8), calibration=calib)
    x, _ = next(digits_split[2].batches(100))
    codes = record.input_grid.quantize(x.numpy())
    host = HostModel(record.output_dir, folder / "host").run(codes, record.output_size)
    return record, codes, host, folder


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_firmware_outputs_equal_the_host_build(exported, target: str) -> None:
    record, codes, host, folder = exported
    run = run_on_mcu(record.output_dir, codes, record.output_size, folder / target, target)
    assert len(run.outputs) == 100
    np.testing.assert_array_equal(run.outputs, host)
    model = run.objects["model.o"]
    assert model.bss == record.arena.size  # the arena is the model's only RAM besides the stack
    assert model.text >= record.const_bytes  # the const weights and parameters sit in flash
    assert 0 < run.stack_bytes < 4096
    assert run.ram_bytes == record.arena.size + run.stack_bytes
    assert run.instructions_per_inference > 10_000  # QEMU -icount: executed instructions, not cycles


def test_a_model_larger_than_the_device_fails_to_link(tmp_path: Path) -> None:
    """A 64-channel 64x64 feature map needs a 256 KiB arena: more than the Cortex-M4's RAM."""
    torch.manual_seed(0)
    calib = torch.randn(4, 3, 64, 64)
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 2))
    qmodel = quantize(wide, calib, calibration="minmax", weight_calibration="minmax")
    record = export_c(qmodel, tmp_path / "lib", (3, 64, 64), calibration=calib)
    codes = record.input_grid.quantize(calib[:1].numpy())
    with pytest.raises(RuntimeError, match=r"^the model does not fit the cortex-m4 memory map \(flash 1,048,576 B, "
                                           r"RAM 262,144 B .*\): ld: region .RAM' overflowed by \d+ bytes$"):
        run_on_mcu(record.output_dir, codes, record.output_size, tmp_path / "build", "cortex-m4")


def test_qemu_time_scales_with_the_work_and_a_timeout_is_one_line(exported, tmp_path) -> None:
    record, codes, _, _ = exported
    assert mcu_timeout_s(100, None) == 300
    assert mcu_timeout_s(100, 20_000_000) == pytest.approx(300 + 100 * 20e6 * 40 / 50e6)  # ResNet-20-sized
    assert mcu_timeout_s(10, record.macs) < mcu_timeout_s(100, record.macs) < 400  # the digits CNN
    with pytest.raises(RuntimeError, match=r"^the cortex-m4 firmware did not finish within 0.01 s on QEMU mps2-an386$"):
        run_on_mcu(record.output_dir, codes, record.output_size, tmp_path, "cortex-m4", timeout_s=0.01)


@pytest.mark.parametrize(("name", "shape"), [("resnet20", (3, 32, 32)), ("oddnet", (3, 16, 16)),
                                             ("lenet5", (1, 28, 28)), ("digits_cnn", (1, 8, 8))])
def test_planned_flash_and_ram_are_the_firmware_s(name: str, shape: tuple[int, int, int], tmp_path: Path) -> None:
    """The planner's C rules against the firmware run in QEMU, on nets with adds, option-A windows, concat copies
    and pooling, pruned to half width at mixed 4/8-bit. Flash (arrays, one parameter struct and call per
    conv/linear and per other kernel call, cnnc_run, the kernels' code) against text + data of the objects;
    RAM (the live tensors of the deployed graph, BN folded and ReLU fused, plus the kernels' stack) against
    data + bss (the arena) plus the painted stack."""
    from cnncompress.export.c.firmware import c_flash_format
    from cnncompress.models import build_model
    from cnncompress.plan import Choice, CostModel
    from cnncompress.prune import prune_channels
    from opnets import OddNet

    torch.manual_seed(0)
    model = (OddNet() if name == "oddnet" else build_model(name)).eval()
    cost = CostModel.from_model(model, shape, flash=c_flash_format("cortex-m4"))
    keep = {group: 0.5 for group in cost.groups}
    pruned = prune_channels(model, shape, ratio=0.0, per_layer={layer: 0.5 for group in cost.groups
                                                                for layer in cost.group_layers(group)}).eval()
    bits = {layer: 4 if i % 2 else 8 for i, layer in enumerate(cost.layer_names)}
    calib = torch.randn(8, *shape)
    qmodel = quantize(pruned, calib, layer_bits=bits, calibration="minmax", weight_calibration="minmax")
    record = export_c(qmodel, tmp_path / "lib", shape, calibration=calib)
    run = run_on_mcu(record.output_dir, record.input_grid.quantize(calib[:1].numpy()), record.output_size,
                     tmp_path / "fw", "cortex-m4")
    predicted = cost.predict(Choice(keep=keep, bits=bits, act_bits=8))
    assert run.objects["model.o"].bss == record.arena.size
    assert abs(predicted.flash_bytes - run.flash_bytes) <= 0.01 * run.flash_bytes, (predicted, run.flash_bytes)
    assert abs(predicted.ram_bytes - run.ram_bytes) <= 0.05 * run.ram_bytes, (predicted, run.ram_bytes)


def test_the_demo_plans_for_and_proves_the_cortex_m4_firmware(digits_cnn8, calib, digits_split, tmp_path) -> None:
    """With the toolchain the demo's budget is the cortex-m4 profile's (C widths, no RAM reserve, the kernels'
    code on top of a tenth of the fp32 weights), so compress checks it on the firmware FirmwareCheck builds."""
    from cnncompress.cli.compress import _demo_budget, _render_mcu
    from cnncompress.export.c.firmware import kernel_code_bytes
    from cnncompress.pipeline import FirmwareCheck

    device, budget = _demo_budget(None, 57_832, "4096B", "1.0")
    assert (device.c_target, device.ram_reserved_bytes, device.weight_bits) == ("cortex-m4", 0, (2, 4, 8))
    assert (budget.flash_bytes, budget.ram_bytes) == (5783 + kernel_code_bytes("cortex-m4"), 4096)
    assert _demo_budget("6KB", 57_832, "4096B", "1.0")[1].flash_bytes == 6000
    qmodel = quantize(digits_cnn8, calib, weight_bits=4, act_bits=8)
    record = FirmwareCheck("cortex-m4", calib, images=20).run(qmodel, (1, 8, 8), tmp_path, digits_split[2])
    assert record["host_equals_reference"] and record["mcu_equals_host"] and record["mcu"]["images"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c.build"]  # the library moved in, no staging left
    limits = [{"figure": "flash_bytes", "limit": budget.flash_bytes},
              {"figure": "ram_bytes", "limit": budget.ram_bytes}]
    assert "the budget above is checked on these figures" in _render_mcu(record, limits, budget_on_firmware=True)
