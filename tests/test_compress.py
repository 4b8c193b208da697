"""End to end on the bundled digits: a tight budget met on the written files, infeasible budgets, resume."""

from __future__ import annotations

import json

import pytest

import cnncompress.pipeline as pipeline
from cnncompress.cli import main
from cnncompress.export.c.firmware import missing_tools
from cnncompress.models import save_checkpoint
from cnncompress.pipeline import BudgetInfeasible, CompressOptions, compress
from cnncompress.plan import Budget, load_device
from cnncompress.quant.deployable import read_deployable
from cnncompress.train import evaluate
from testsupport import DIGITS8

SPEC = DIGITS8
OPTIONS = CompressOptions(finetune_epochs=3, qat_epochs=3, batch_size=64, lr=0.02, sensitivity_images=150,
                          prune_options=(0.5,), calib_images=256, weight_bits=(4, 8))


def test_tight_budget_is_met_on_the_written_files(tmp_path, digits_split, digits_cnn8):
    train, val, test = digits_split
    budget = Budget.from_mapping({"flash_bytes": "4KB", "ram_bytes": "2KB", "max_accuracy_drop": 3.0})
    result = compress(digits_cnn8, budget, train, val, test, output_dir=tmp_path, spec=SPEC, options=OPTIONS,
                      progress=False)
    assert result.fits, result.verification.describe()
    deployable = result.paths["deployable"]
    assert deployable.stat().st_size <= 4000  # flash measured on the file itself
    assert result.verification.measured.flash_bytes == deployable.stat().st_size
    assert result.verification.measured.ram_bytes <= 2000
    # the file alone rebuilds the model that was verified, and onnxruntime agrees with it
    decoded, _, _ = read_deployable(deployable)
    assert evaluate(decoded, test).top1 == pytest.approx(result.top1)
    assert abs(result.onnx_top1 - result.top1) <= 1.0
    assert result.baseline_top1 - result.onnx_top1 <= 3.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fits"] is True and (tmp_path / "report.html").stat().st_size > 10_000


def test_infeasible_budget_names_the_binding_constraint(tmp_path, digits_split, digits_cnn8):
    train, val, test = digits_split
    budget = Budget.from_mapping({"flash_bytes": "200B"})
    with pytest.raises(BudgetInfeasible, match="flash") as info:
        compress(digits_cnn8, budget, train, val, test, output_dir=tmp_path, spec=SPEC, options=OPTIONS, progress=False)
    assert info.value.result.constraint == "flash_bytes" and info.value.result.smallest > 200


def test_cli_exit_code_3_for_an_infeasible_budget(tmp_path, capsys, digits_cnn8):
    weights = save_checkpoint(tmp_path / "w.pt", digits_cnn8, SPEC)
    code = main(["compress", "--model", "digits_cnn", "--weights", str(weights), "--dataset", "digits",
                 "--flash", "200B", "--sensitivity-images", "100", "--output", str(tmp_path / "run")])
    assert code == 3
    err = capsys.readouterr().err
    assert "flash" in err and len(err.strip().splitlines()) == 1


def test_resume_continues_after_an_interrupted_stage(tmp_path, digits_split, digits_cnn8, monkeypatch):
    train, val, test = digits_split
    budget = Budget.from_mapping({"flash_bytes": "4KB"})
    real_quantize = pipeline.quantize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "quantize", interrupted)  # a stage every plan runs (QAT depends on the drop)
    with pytest.raises(KeyboardInterrupt):
        compress(digits_cnn8, budget, train, val, test, output_dir=tmp_path, spec=SPEC, options=OPTIONS, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["r1-prune", "r1-finetune"]

    monkeypatch.setattr(pipeline, "quantize", real_quantize)
    calls = []
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: calls.append("fit"))  # fine-tuning must not rerun
    result = compress(digits_cnn8, budget, train, val, test, output_dir=tmp_path, spec=SPEC, options=OPTIONS,
                      resume=True, progress=False)
    resumed = {s["name"]: s["resumed"] for s in result.stages}
    assert resumed["r1-prune"] and resumed["r1-finetune"]
    assert not resumed["r1-quantize"] and calls == []


def test_a_finished_run_directory_is_not_overwritten(tmp_path, digits_split, digits_cnn8):
    train, val, test = digits_split
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {}, "stages": []}))
    with pytest.raises(FileExistsError, match="--resume"):
        compress(digits_cnn8, Budget.from_mapping({"flash_bytes": "4KB"}), train, val, test, output_dir=tmp_path,
                 spec=SPEC, options=OPTIONS, progress=False)


needs_arm = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (apt-get install "
                               "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm; .ci/run installs them)")


@needs_arm
def test_a_cortex_m_budget_is_met_on_the_firmware(tmp_path, digits_split, digits_cnn8):
    """With the cortex-m4 profile, flash and RAM are the firmware's, and the planner predicted them within 5%."""
    train, val, test = digits_split
    device = load_device("cortex-m4")
    budget = device.budget(3.0, {"flash": "8KB", "ram": "20KB"})
    result = compress(digits_cnn8, budget, train, val, test, device, output_dir=tmp_path, spec=SPEC, options=OPTIONS,
                      progress=False)
    assert result.fits, result.verification.describe()
    measured, firmware = result.verification.measured, result.firmware
    assert "cortex-m4 firmware" in measured.memory_source
    assert measured.flash_bytes == firmware["mcu"]["flash_bytes"] <= 8000
    assert measured.ram_bytes == firmware["mcu"]["ram_bytes"] + device.ram_reserved_bytes <= 20000
    assert firmware["host_equals_reference"] and firmware["mcu_equals_host"] and firmware["mcu"]["images"] == 100
    assert firmware["arena_bytes"] == firmware["lower_bound_bytes"]
    errors = result.verification.prediction_error
    assert abs(errors["flash_bytes"]) <= 0.05 and abs(errors["ram_bytes"]) <= 0.05, errors
    assert (tmp_path / "c" / "model.c").is_file()


def test_widths_the_c_kernels_cannot_run_are_refused_before_any_stage(tmp_path, digits_split, digits_cnn8):
    train, val, test = digits_split
    device = load_device("cortex-m4")
    options = CompressOptions(weight_bits=(3, 8))
    with pytest.raises(ValueError, match=r"run \[2, 4, 8\]-bit weights only"):
        compress(digits_cnn8, device.budget(3.0), train, val, test, device, output_dir=tmp_path / "run", spec=SPEC,
                 options=options, progress=False)
    assert not (tmp_path / "run").exists()
