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
from cnncompress.export.c.firmware import missing_tools, run_on_mcu
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
    with pytest.raises(RuntimeError, match=r"cortex-m4 firmware: ld: .*will not fit in region .RAM"):
        run_on_mcu(record.output_dir, codes, record.output_size, tmp_path / "build", "cortex-m4")


def test_demo_ends_on_the_emulated_cortex_m4(exported, digits_cnn8, calib, digits_split, tmp_path) -> None:
    """The demo's last step: the compressed model as C on QEMU, flash and RAM off the firmware, next to the limits."""
    from types import SimpleNamespace

    from cnncompress.cli.compress import _demo_on_mcu, _render_mcu

    qmodel = quantize(digits_cnn8, calib, weight_bits=4, act_bits=8)
    mcu = _demo_on_mcu(SimpleNamespace(model=qmodel), digits_split[0], digits_split[2], tmp_path / "c")
    assert mcu["host_equals_reference"] and mcu["mcu_equals_host"] and mcu["images"] == len(digits_split[2])
    assert mcu["mcu"]["flash_bytes"] > mcu["const_bytes"] and mcu["mcu"]["ram_bytes"] > mcu["arena_bytes"]
    limits = [{"figure": "flash_bytes", "limit": 1000}, {"figure": "ram_bytes", "limit": 10**6}]
    line = _render_mcu(mcu, limits)
    assert "does NOT fit (flash" in line and "ram" not in line.split("does NOT fit")[1].split(")")[0]

