"""DDP training and sharded sensitivity on digits, run by tests/distributed/test_ddp.py under torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed/worker.py OUT

Rank 0 writes OUT/weights.pt (a fit, a distilled fine-tune that keeps pruned zeros at zero, and QAT) and
OUT/sensitivity.json; the test computes the same in one process and compares.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cnncompress import distributed
from cnncompress.data import load_dataset
from cnncompress.models import build_model
from cnncompress.pipeline import CompressOptions, measure_plan_sensitivity, preflight
from cnncompress.plan.sensitivity import SensitivityTable
from cnncompress.prune import enforce_masks, lock_zeros, make_permanent, prune_weights
from cnncompress.quant import qat, quantize
from cnncompress.train import TrainConfig, fit
from cnncompress.utils import torch_save_atomic

# A global batch of 64 (32 per rank with two); 6 steps an epoch keep the run short.
STEPS = {"batch_size": 64, "max_batches_per_epoch": 6, "seed": 3}


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node N args`` (each rank one torch thread, torchrun's default)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def train_all() -> dict[str, dict[str, torch.Tensor]]:
    """Weights after a plain fit, a distilled fine-tune of a 60%-sparse copy, and QAT of that copy."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    fit(model, train, TrainConfig(epochs=2, lr=0.05, **STEPS), progress=False)
    student = make_permanent(prune_weights(copy.deepcopy(model), 0.6))
    lock_zeros(student)
    fit(student, train, TrainConfig(epochs=1, lr=0.02, **STEPS), teacher=model, after_step=[enforce_masks],
        progress=False)
    make_permanent(student)
    qmodel = quantize(student, train.take(128), weight_bits=4, act_bits=8, calibration="minmax")
    # SGD, not QAT's usual Adam: Adam's step is about lr whatever a gradient's size, so float rounding in
    # near-zero gradients would move weights by up to 2 lr and hide what this compares.
    qat(qmodel, train, TrainConfig(epochs=1, lr=1e-3, **STEPS), teacher=model, progress=False)
    return {"fit": model.state_dict(), "distilled": student.state_dict(), "qat": qmodel.state_dict()}


def sensitivity(cache: Path) -> SensitivityTable:
    """The compress planner's sensitivity table of a briefly trained digits CNN (prune and bits entries)."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    with distributed.alone():  # each rank trains the same model by itself: the table alone is compared
        fit(model, train, TrainConfig(epochs=1, lr=0.05, **STEPS), progress=False)
    cost = preflight(model.eval(), train.info.input_shape)
    options = CompressOptions(sensitivity_images=300, prune_options=(0.25, 0.5, 0.75))
    return measure_plan_sensitivity(model, cost, train, options, (2, 4, 8), cache, progress=False)


def main(out: Path) -> None:
    dist.init_process_group("gloo")  # initialised by the caller, as a user's own script would: the API follows
    torch_save_atomic(train_all(), out / "weights.pt")
    sensitivity(out / "sensitivity.json")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
