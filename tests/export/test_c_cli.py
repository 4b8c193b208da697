"""``cnncompress export-c``: checkpoints and deployables in, a C library (and its proof) out, one-line errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cnncompress.cli import main
from cnncompress.export.c.firmware import missing_tools
from cnncompress.plan import load_device
from cnncompress.quant import quantize, save_quantized
from cnncompress.quant.deployable import write_deployable
from testsupport import DIGITS8

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the system C compiler gcc")


@pytest.fixture(scope="module")
def saved(digits_cnn8, calib, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("saved")
    qmodel = quantize(digits_cnn8, calib, weight_bits=8, act_bits=8, calibration="minmax",
                      weight_calibration="minmax")
    return {"pt": save_quantized(folder / "q.pt", qmodel, DIGITS8, dataset="digits"),
            "cnnc": write_deployable(folder / "q.cnnc", qmodel, DIGITS8, (1, 8, 8))}


def test_checkpoint_exports_and_verifies_on_the_host(saved, tmp_path: Path, capsys) -> None:
    out = tmp_path / "c"
    assert main(["export-c", str(saved["pt"]), "--output", str(out), "--verify", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (out / "model.h").read_text().count("int cnnc_run(const int8_t *input, int8_t *output);") == 1
    assert result["lower_bound_bytes"] <= result["arena_bytes"] <= result["activation_sum_bytes"]
    check = result["verification"]
    assert check["images"] == 450 and check["host_equals_reference"]
    assert check["vs_simulation"]["top1"] >= 99.0 and check["vs_onnxruntime"]["top1"] >= 99.0


def test_deployable_exports(saved, tmp_path: Path, capsys) -> None:
    assert main(["export-c", str(saved["cnnc"]), "--output", str(tmp_path / "c"), "--target", "host"]) == 0
    assert "activation arena" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["missing.pt"], "is not a file"),
    (["{pt}", "--mcu"], "--mcu needs --verify"),
])
def test_bad_input_is_one_line(saved, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    argv = ["export-c", *[a.format(pt=saved["pt"]) for a in args], "--output", str(tmp_path / "c")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()


GATED = '''
import torch
from torch import nn


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.sigmoid(self.conv(x)), 1))


def build():
    return Gated()
'''


def _one_line_error(capsys, argv: list[str], *messages: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    for message in messages:
        assert message in err, err
    return err


def test_an_unsupported_op_is_one_line_naming_the_node(calib, tmp_path: Path, capsys) -> None:
    from cnncompress.models import ModelSpec

    factory = tmp_path / "gated.py"
    factory.write_text(GATED)
    spec = ModelSpec(f"{factory}:build")
    qmodel = quantize(spec.build().eval(), calib, calibration="minmax", weight_calibration="minmax")
    pt = save_quantized(tmp_path / "gated.pt", qmodel, spec, dataset="digits")
    out = tmp_path / "c"
    _one_line_error(capsys, ["export-c", str(pt), "--factory", f"{factory}:build", "--output", str(out), "--verify"],
                    "cannot export node sigmoid (call_function sigmoid, op 'sigmoid') to C")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gated.pt", "gated.py"]


def test_a_missing_toolchain_is_refused_before_anything_is_written(saved, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    """PATH without the Arm toolchain, QEMU or even gcc: --mcu and --verify say what is missing, up front."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    out = tmp_path / "c"
    _one_line_error(capsys, ["export-c", str(saved["pt"]), "--output", str(out), "--verify", "--mcu"],
                    "--mcu needs arm-none-eabi-gcc, arm-none-eabi-size, qemu-system-arm (apt-get install")
    _one_line_error(capsys, ["export-c", str(saved["pt"]), "--output", str(out), "--verify"],
                    "--verify needs the C compiler gcc on PATH")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


@needs_gcc
def test_a_compiler_error_leaves_no_library_that_looks_verified(saved, tmp_path: Path, capsys, monkeypatch) -> None:
    """A poisoned kernel source fails the host build: one line naming the compiler, the file and the line; an
    earlier export in --output stays as it was, and no staging directory is left."""
    import cnncompress.export.c.codegen as codegen

    out = tmp_path / "c"
    assert main(["export-c", str(saved["pt"]), "--output", str(out), "--target", "host"]) == 0
    before = {p.name: p.read_text() for p in out.iterdir()}
    capsys.readouterr()
    clean = codegen.kernel_sources()
    poisoned = {**clean, "cnnc_kernels.c": "#error poisoned kernel source\n" + clean["cnnc_kernels.c"]}
    monkeypatch.setattr(codegen, "kernel_sources", lambda: poisoned)
    _one_line_error(capsys, ["export-c", str(saved["pt"]), "--output", str(out), "--verify"],
                    "gcc failed building the host library", "cnnc_kernels.c:1:2: error: #error poisoned kernel source")
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c.build"]
    fresh = tmp_path / "fresh"
    _one_line_error(capsys, ["export-c", str(saved["pt"]), "--output", str(fresh), "--verify"], "#error poisoned")
    assert not fresh.exists()


needs_arm = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (apt-get install "
                               "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm; .ci/run installs them)")


@needs_arm
@needs_gcc
def test_bad_cflags_and_a_board_too_small_fail_the_mcu_proof(saved, tmp_path: Path, capsys, monkeypatch) -> None:
    """The firmware build fails with one line: a flag the cross compiler refuses; a board whose memory map (here
    a cortex-m4 profile with 16 KiB of flash) cannot hold the firmware. Nothing is left at --output."""
    import cnncompress.export.c.firmware as firmware

    out = tmp_path / "c"
    argv = ["export-c", str(saved["pt"]), "--output", str(out), "--verify", "--mcu", "--mcu-images", "5"]
    monkeypatch.setattr(firmware, "ARM_FLAGS", (*firmware.ARM_FLAGS, "-mno-such-option"))
    _one_line_error(capsys, argv, "arm-none-eabi-gcc failed building cnnc_kernels.c for cortex-m4",
                    "unrecognized command-line option '-mno-such-option'")
    assert not out.exists()
    monkeypatch.undo()
    small = replace(load_device("cortex-m4"), flash_bytes=16 * 1024)
    monkeypatch.setattr(firmware, "load_device", lambda target: small)
    _one_line_error(capsys, argv, "the model does not fit the cortex-m4 memory map (flash 16,384 B",
                    "region `FLASH' overflowed by")
    assert not out.exists()
