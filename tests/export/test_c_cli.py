"""``cnncompress export-c``: checkpoints and deployables in, a C library (and its proof) out, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnncompress.cli import main
from cnncompress.quant import quantize, save_quantized
from cnncompress.quant.deployable import write_deployable
from testsupport import DIGITS8


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
