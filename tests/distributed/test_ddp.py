"""torch.distributed with gloo, 2 processes on digits: the run equals the single-process run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import worker

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(worker.torchrun_command(2, str(HERE / "worker.py"), str(out)), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_process_weights() -> dict[str, dict[str, torch.Tensor]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs: the same kernels, the same rounding
    try:
        return worker.train_all()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("stage", ["fit", "distilled", "qat"])
def test_ddp_over_two_processes_gives_the_single_process_weights(two_process_run, single_process_weights, stage):
    """Global batch 64 as 2 x 32 with synchronised BatchNorm = one process with batch 64 (to float rounding);
    the distilled fine-tune keeps its pruned zeros and QAT trains through the fake quantizers."""
    ddp = torch.load(two_process_run / "weights.pt", weights_only=True)[stage]
    single = single_process_weights[stage]
    assert ddp.keys() == single.keys()
    for name, tensor in single.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-5, msg=f"{stage}: {name}")
        else:
            assert torch.equal(ddp[name], tensor), f"{stage}: {name}"
    if stage == "distilled":
        weights = [t for n, t in ddp.items() if n.endswith("weight") and t.dim() > 1]
        zeros = sum(int((t == 0).sum()) for t in weights) / sum(t.numel() for t in weights)
        assert zeros >= 0.6


def test_sharded_sensitivity_table_equals_the_single_process_table(two_process_run, tmp_path, one_torch_thread):
    single = worker.sensitivity(tmp_path / "single.json")
    sharded = json.loads((two_process_run / "sensitivity.json").read_text())
    assert sharded == json.loads(json.dumps(single.to_dict()))
    assert sharded["prune"] and sharded["bits"]
