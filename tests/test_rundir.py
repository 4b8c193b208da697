"""Stage checkpoints and resume in a run directory."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch

from cnncompress.models import ModelSpec
from cnncompress.rundir import RunDirectory, RunDirectoryBusy, Stage

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
    with RunDirectory(tmp_path, SPEC, {"x": 1}) as run:
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
    resumed.close()


def test_a_stage_that_crashes_leaves_earlier_stages_intact(tmp_path):
    calls: list[str] = []

    def boom(_model):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError), RunDirectory(tmp_path, SPEC, {}) as run:
        model, _ = run.run(_scale_stage("a", calls), SPEC.build())
        run.run(Stage("b", boom), model)
    resumed = RunDirectory(tmp_path, SPEC, {}, resume=True)  # the crash released the directory
    assert resumed.done("a") is not None and resumed.done("b") is None
    resumed.close()


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    RunDirectory(tmp_path, SPEC, {"flash": 16000}).close()
    with pytest.raises(FileExistsError, match="--resume"):
        RunDirectory(tmp_path, SPEC, {"flash": 16000})
    # not RunDirectoryBusy: a refusal releases it
    with pytest.raises(ValueError, match=r"other settings \(flash differ\); choose another --output"):
        RunDirectory(tmp_path, SPEC, {"flash": 8000}, resume=True)


def _hold(path, ready, release) -> None:
    with RunDirectory(path, SPEC, {}, resume=True):
        ready.set()
        release.wait(60)


def test_a_second_process_is_refused_while_the_first_holds_the_directory(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunDirectoryBusy, match=rf"in use by another cnncompress process \(pid {holder.pid}\)"):
            RunDirectory(tmp_path, SPEC, {}, resume=True)
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    RunDirectory(tmp_path, SPEC, {}, resume=True).close()  # free again once the holder exits


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["stages"][0].update(artifact="../../outside.pt"), "outside its run directory"),
    (lambda m: m["stages"][0].update(seconds="soon"), "malformed stage record"),
    (lambda m: m["stages"].append("x" * 10_000), "malformed stage record"),
    (lambda m: m.update(stages={"a": 1}), "not a cnncompress run manifest"),
])
def test_a_forged_manifest_is_refused_with_one_line(tmp_path, edit, message):
    with RunDirectory(tmp_path, SPEC, {"x": 1}) as run:
        run.run(_scale_stage("a", []), SPEC.build())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    edit(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=message) as info:
        RunDirectory(tmp_path, SPEC, {"x": 1}, resume=True)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    (tmp_path / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="not a readable run manifest"):
        RunDirectory(tmp_path, SPEC, {"x": 1}, resume=True)
