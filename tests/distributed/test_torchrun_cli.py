"""`torchrun -m cnncompress compress` with 2 gloo processes on digits: one set of artifacts, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from worker import torchrun_command

from cnncompress import load_artifact
from cnncompress.data import load_dataset
from cnncompress.models import ModelSpec, save_checkpoint
from cnncompress.train import evaluate

COMPRESS = ["-m", "cnncompress", "compress", "--model", "digits_cnn", "--flash", "7KB", "--ram", "4KiB",
            "--max-accuracy-drop", "6", "--qat-epochs", "1", "--batch-size", "64", "--sensitivity-images", "300",
            "--max-rounds", "1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, digits_model) -> Path:
    path = tmp_path_factory.mktemp("weights") / "digits.pt"
    save_checkpoint(path, digits_model, ModelSpec("digits_cnn"))
    return path


def _rank_process(launcher: int, rank: int) -> int | None:
    """The pid of torchrun ``launcher``'s worker of ``rank``, once it runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _wait_for(path: Path, process: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {limit} s"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finding torchrun's workers needs Linux /proc")
def test_two_process_compress_survives_a_killed_rank_and_resumes_on_one_process(weights, tmp_path):
    out = tmp_path / "run"
    args = [*COMPRESS, "--weights", str(weights), "--finetune-epochs", "3", "--output", str(out), "--quiet"]
    launcher = subprocess.Popen(torchrun_command(2, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        _wait_for(out / "r1-finetune.partial.pt", launcher)  # the first fine-tuning epoch is saved
        victim = _rank_process(launcher.pid, 1)
        assert victim is not None, "rank 1's process not found"
        os.kill(victim, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert "rank" in stderr and "1" in stderr, stderr[-2000:]
    assert not (out / "model.cnnc").exists()

    resumed = subprocess.run(torchrun_command(1, *args, "--resume", "--json"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout)
    assert result["fits"], result
    stages = {s["name"]: s for s in result["stages"]}
    assert stages["r1-prune"]["resumed"]
    assert stages["r1-finetune"]["summary"].get("resumed_from_epoch", 0) >= 1, stages["r1-finetune"]
    assert not list(out.glob("*.partial.pt"))  # spent epoch checkpoints are gone
    deployable = load_artifact(out / "model.cnnc")
    top1 = evaluate(deployable.model, load_dataset("digits", "test")).top1
    assert abs(top1 - result["top1"]) < 1e-6


def test_a_failure_on_rank_0_stops_every_rank_with_a_line_naming_it(weights, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"version": 1, "stages": [], "config": {}}))
    done = subprocess.run(torchrun_command(2, *COMPRESS, "--weights", str(weights), "--finetune-epochs", "1",
                                           "--output", str(out), "--quiet"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "compress: error on rank 0/2:" in done.stderr and "already holds a run" in done.stderr, done.stderr[-2000:]
    assert "compress: error on rank 1/2: stopped because rank 0 failed" in done.stderr, done.stderr[-2000:]
