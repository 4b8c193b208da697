"""Stage checkpoints and resume in a run directory."""

from __future__ import annotations

import json

import pytest
import torch

from cnncompress.models import ModelSpec
from cnncompress.rundir import RunDirectory, Stage

SPEC = ModelSpec("lenet300")


def _scale_stage(name, calls, factor=2.0):
    def run(model):
        calls.append(name)
        with torch.no_grad():
            model.fc3.bias.mul_(factor).add_(1.0)
        return model, {"bias_sum": model.fc3.bias.sum().item()}
    return Stage(name, run)


def test_finished_stages_are_not_redone_on_resume(tmp_path):
    calls: list[str] = []
    run = RunDirectory(tmp_path, SPEC, {"x": 1})
    model, first = run.run(_scale_stage("a", calls), SPEC.build())
    expected = model.fc3.bias.clone()

    resumed = RunDirectory(tmp_path, SPEC, {"x": 1}, resume=True)
    model2, record = resumed.run(_scale_stage("a", calls), SPEC.build())
    assert calls == ["a"] and record.resumed and record.summary == first.summary
    torch.testing.assert_close(model2.fc3.bias, expected)
    model3, _ = resumed.run(_scale_stage("b", calls), model2)
    assert calls == ["a", "b"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["a", "b"]


def test_a_stage_that_crashes_leaves_earlier_stages_intact(tmp_path):
    calls: list[str] = []
    run = RunDirectory(tmp_path, SPEC, {})
    model, _ = run.run(_scale_stage("a", calls), SPEC.build())

    def boom(_model):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        run.run(Stage("b", boom), model)
    resumed = RunDirectory(tmp_path, SPEC, {}, resume=True)
    assert resumed.done("a") is not None and resumed.done("b") is None


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    RunDirectory(tmp_path, SPEC, {"flash": 16000})
    with pytest.raises(FileExistsError, match="--resume"):
        RunDirectory(tmp_path, SPEC, {"flash": 16000})
    with pytest.raises(ValueError, match="different settings"):
        RunDirectory(tmp_path, SPEC, {"flash": 8000}, resume=True)
