"""Long training for the benchmarks on a lent GPU: pruned ResNet-56 fine-tuning and QAT, run at once.

A lent GPU machine cannot read ../shared and one call carries at most 64 MiB, so the CIFAR-10
training set travels as two xz parts, carried in two calls (the first a smoke run), and the
pretrained weights beside them. The GPU only trains: the test set stays here, and
``structured_pruning.py --finetuned`` and ``quantization.py --qat-from`` evaluate and time the
returned checkpoints on the full test set. Every job holds out the same 2,000 training images as
its validation set (the pretrained models saw them, so validation accuracy reads high: use it to
compare jobs, not as an estimate of test accuracy) and sizes its epochs to a shared time budget from
a timed probe, started once all jobs are set up. Jobs share the one GPU: fewer jobs, more epochs each.
``--resume DIR`` starts each job from its checkpoint in DIR (a former run's ``--stage``), so the
first call, which has only part 1, trains too: its record lists both stages.

    python benchmarks/gpu_jobs.py pack                         # here: writes .gpu/ (git-ignored)
    python benchmarks/gpu_jobs.py run --budget 420 --out $OUT  # there: all jobs, one bundle per kind
    python benchmarks/gpu_jobs.py run --smoke --out /tmp/g     # anywhere: a few steps of every job
    python benchmarks/gpu_jobs.py run --stage runs/s1 ...      # there, part 1 only; then, with part 2:
    python benchmarks/gpu_jobs.py run --resume runs/s1 ...     # goes on from the first run's checkpoints
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import logging
import lzma
import math
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnncompress.data import ImageSet, load_dataset
from cnncompress.data.catalog import DATASETS
from cnncompress.models import ModelSpec, load_model, save_checkpoint
from cnncompress.quant import act_quantizers, qat, quantize
from cnncompress.quant.checkpoint import load_quantized, save_quantized
from cnncompress.train import TrainConfig, fit
from cnncompress.utils import atomic_write_bytes, atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantization  # noqa: E402  (sibling benchmark scripts share their recipes)
import structured_pruning as sp  # noqa: E402

log = logging.getLogger("gpu_jobs")
ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / ".gpu"
PARTS = 2
VAL_IMAGES = 2000
QAT_LR = 1e-4
PRUNE_JOBS = [f"prune-{v.name}" for v in sp.variants(sp.CRITERIA, ("fpgm",), ("fpgm",), ("fpgm",))]
QAT_JOBS = [f"qat-{model}-{config}" for model in ("resnet20", "resnet56") for config in quantization.QAT_CONFIGS]
# a job (by the last part of its name) that may start from another's checkpoint in --resume
WARM_FROM = {"w4a4i8": "w4a4", "faster": "fast"}
JOBS = PRUNE_JOBS + QAT_JOBS


# ----------------------------------------------------------------------------------------- packing
def pack(shared: Path) -> None:
    """Write the training set as ``PARTS`` xz parts and copy the pretrained weights into ``.gpu/``."""
    train = load_dataset("cifar10", "train", data_dir=shared / "data")
    bounds = np.linspace(0, len(train), PARTS + 1).astype(int)
    manifest = {}
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True), 1):
        images, labels = train.images[lo:hi].numpy(), train.labels[lo:hi].numpy()
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=labels)
        name = f"cifar10-train-{i}-of-{PARTS}.npz.xz"
        atomic_write_bytes(PACK / name, lzma.compress(buffer.getvalue(), preset=6))
        manifest[name] = {"first": int(lo), "count": int(hi - lo), "sha256": _digest(images, labels)}
        log.info("wrote %s (%.1f MB)", name, (PACK / name).stat().st_size / 1e6)
    atomic_write_text(PACK / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    for file in quantization.WEIGHTS.values():
        atomic_write_bytes(PACK / file, (shared / "pretrained" / file).read_bytes())


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()


def unpack(folder: Path) -> tuple[ImageSet, list[str]]:
    """The training images of the parts present (checked against the manifest) and their names."""
    manifest = json.loads((folder / "manifest.json").read_text())
    images, labels, present = [], [], []
    for name, entry in manifest.items():
        if not (folder / name).is_file():
            log.warning("%s is missing: training on the other parts only", name)
            continue
        with np.load(io.BytesIO(lzma.decompress((folder / name).read_bytes())), allow_pickle=False) as arrays:
            part_images, part_labels = arrays["images"], arrays["labels"]
        if _digest(part_images, part_labels) != entry["sha256"]:
            raise ValueError(f"{name} does not match its manifest checksum")
        images.append(part_images)
        labels.append(part_labels)
        present.append(name)
    if not present:
        raise FileNotFoundError(f"no training part in {folder}: run `python benchmarks/gpu_jobs.py pack` first")
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)).long(),
                    DATASETS["cifar10"]), present


# ------------------------------------------------------------------------------------------ one job
def plan_epochs(train_steps: Callable[[int], None], steps_per_epoch: int, seconds: float,
                warm: int = 5, timed: int = 30) -> tuple[int, float]:
    """Epochs that fit in ``seconds`` (with a margin for validation), timed over ``timed`` steps after ``warm``."""
    train_steps(warm)
    began = time.perf_counter()
    train_steps(timed)
    per_step = (time.perf_counter() - began) / timed
    return max(1, math.floor(0.85 * seconds / (per_step * steps_per_epoch * 1.03))), per_step


def probe(model: nn.Module, train: ImageSet, config: TrainConfig, run: Callable) -> Callable[[int], None]:
    """``steps -> None``: train a throwaway copy of ``model`` for that many steps with ``run``."""

    def steps(n: int) -> None:
        run(copy.deepcopy(model), replace(config, epochs=1, max_batches_per_epoch=n))
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
    return steps


@dataclass(frozen=True)
class Job:
    """One job's name and surroundings: where it reads and writes, its deadline and its peers."""

    name: str
    folder: Path
    stage: Path
    deadline: float
    device: str
    peers: int
    smoke: bool
    resume: Path | None = None
    lr: float | None = None  # None: the recipe's (a lower one suits a short continuation)

    @cached_property
    def earlier(self) -> dict[str, Any] | None:
        """The record of the run this job goes on from (read once), or None when it starts afresh."""
        path = self.resume and self.resume / f"{self.name}.json"
        return json.loads(path.read_text()) if path and path.is_file() else None

    def wait_for_peers(self, limit: float = 120) -> None:
        """Start the timing probe once every job is set up, so each probe sees the full contention."""
        (self.stage / f"{self.name}.ready").touch()
        began = time.time()
        while len(list(self.stage.glob("*.ready"))) < self.peers and time.time() - began < limit:
            time.sleep(1)


def run_job(job: Job) -> dict[str, Any]:
    everything, parts = unpack(job.folder)
    train, val = everything.split(min(VAL_IMAGES, len(everything) // 10), seed=0)
    if job.smoke:
        train, val = train.take(512), val.take(256)
    # pruning sees all images, as in structured_pruning.py (Taylor's batches must match)
    result = _prune_job(job, everything, train, val) if job.name.startswith("prune-") else _qat_job(job, train, val)
    result.update(job=job.name, device=torch.cuda.get_device_name() if job.device.startswith("cuda") else job.device,
                  torch=torch.__version__, train_images=len(train), val_images=len(val), parts=parts)
    earlier = job.earlier
    result.update(_stages(earlier, result))
    if earlier and "warm_start" in earlier:
        result["warm_start"] = earlier["warm_start"]
    if "warm_start" in result:
        result["schedule"] = f"from {result['warm_start']['from']} ({result['warm_start']['schedule']}), then " \
                             + result["schedule"]
    atomic_write_text(job.stage / f"{job.name}.json", json.dumps(result, indent=2) + "\n")
    return result


def _stages(earlier: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """Totals over this run and the one it went on from: epochs, history and the schedule in words."""
    stage = {k: now[k] for k in ("epochs", "train_images", "train_seconds", "parts", "device")}
    stage["lr"] = now["config"]["lr"]
    before = [] if earlier is None else [{"lr": earlier["config"]["lr"], "device": earlier["device"]} | s
                                         for s in earlier["stages"]]
    stages = before + [stage]
    return {"stages": stages, "epochs": sum(s["epochs"] for s in stages),
            "history": ([] if earlier is None else earlier["history"]) + now["history"],
            "schedule": ", then ".join(f"{s['epochs']} epochs on {s['train_images']:,} images from lr {s['lr']:g} "
                                       f"({s['device']})" for s in stages)
                        + (" (a cosine schedule each)" if len(stages) > 1 else "")}


def _train(job: Job, model, train, val, config, run) -> dict[str, Any]:
    """Train ``model`` in place for the epochs that fit before the deadline; what it did, as JSON."""
    steps_per_epoch = train.num_batches(config.batch_size, drop_last=True)
    job.wait_for_peers()
    seconds = job.deadline - time.time() - 20  # final validation and saving
    epochs, per_step = plan_epochs(probe(model, train, config, run), steps_per_epoch, seconds,
                                   *((1, 2) if job.smoke else (5, 30)))
    epochs = 1 if job.smoke else epochs
    config = replace(config, epochs=epochs,
                     max_batches_per_epoch=2 if job.smoke else config.max_batches_per_epoch)
    log.info("%d epochs of %d steps (%.1f ms/step probed)", epochs, steps_per_epoch, per_step * 1e3)
    began = time.perf_counter()
    record = run(model, config, val)
    return {"epochs": epochs, "probe_ms_per_step": per_step * 1e3, "config": record.config,
            "train_seconds": time.perf_counter() - began, "history": record.history,
            "val_top1": record.history[-1]["val_top1"]}


def _prune_job(job: Job, everything: ImageSet, train: ImageSet, val: ImageSet) -> dict[str, Any]:
    base, _, _ = load_model(job.folder / quantization.WEIGHTS["resnet56"], ModelSpec("resnet56"))
    variant = next(v for v in sp.variants(*[sp.CRITERIA] * 4) if f"prune-{v.name}" == job.name)
    pruned, record, _ = sp.prune_variant(base, variant, everything, 0.5)
    started = {}
    if job.earlier:
        pruned, _ = sp.finetuned_elsewhere(job.resume, variant, pruned)
    elif (warm := warm_source(job)) and warm.is_file():
        pruned = sp.narrowed(load_model(warm)[0], pruned, variant, everything)
        started = warm_record(warm)
    config = sp.finetune_config(sp.MODES["full"], job.device, seed=0)
    config = replace(config, lr=job.lr or config.lr)

    def run(model, cfg, val_set=None):
        return fit(model, train, cfg, val=val_set, teacher=base, progress=False)

    result = _train(job, pruned, train, val, config, run)
    save_checkpoint(job.stage / f"{job.name}.pt", pruned.cpu(), ModelSpec("resnet56"), variant=variant.name,
                    macs_fraction=record.macs_fraction)
    return {**result, "macs_fraction": record.macs_fraction, "params": sum(p.numel() for p in pruned.parameters()),
            **started}


def _qat_job(job: Job, train: ImageSet, val: ImageSet) -> dict[str, Any]:
    _, model_name, bits = job.name.split("-")
    weight_bits, act_bits, wide = quantization.QAT_CONFIGS[bits]
    model, _, _ = load_model(job.folder / quantization.WEIGHTS[model_name], ModelSpec(model_name))
    warm = warm_source(job)
    started = {}
    if job.earlier:
        qmodel, _, _ = load_quantized(job.resume / f"{job.name}.pt")
    else:
        qmodel = quantize(model, train.take(min(1024, len(train)), seed=0), weight_bits=weight_bits,
                          act_bits=act_bits, layer_input_bits=wide)
        if warm and warm.is_file():
            warm_start(qmodel, warm)
            started = warm_record(warm)
    config = quantization.qat_config(1, job.lr or QAT_LR, job.device)

    def run(q, cfg, val_set=None):
        return qat(q, train, cfg, val=val_set, teacher=model, learnable_scales=True, progress=False)

    result = _train(job, qmodel, train, val, config, run)
    save_quantized(job.stage / f"{job.name}.pt", qmodel.cpu(), ModelSpec(model_name), job=job.name)
    return result | started


def warm_source(job: Job) -> Path | None:
    """The checkpoint in ``--resume`` a job starts from when it has none of its own (``WARM_FROM``)."""
    head, _, tail = job.name.rpartition("-")
    return job.resume and job.resume / f"{head}-{WARM_FROM.get(tail, tail)}.pt"


def warm_record(path: Path) -> dict[str, Any]:
    """What a warm-started job's record says of where it started (its source's schedule)."""
    schedule = json.loads(path.with_suffix(".json").read_text())["schedule"]
    return {"warm_start": {"from": path.name, "schedule": schedule}}


def warm_start(qmodel: nn.Module, path: Path) -> None:
    """Take every tensor of the QAT checkpoint ``path`` whose quantizer has the same grid in ``qmodel``.

    The quantizers ``qmodel`` widened keep their fresh calibration; the rest goes on from training.
    """
    trained, _, _ = load_quantized(path)
    bits = {name: q.spec.bits for name, q in act_quantizers(qmodel)}
    changed = {name for name, q in act_quantizers(trained) if bits.get(name) != q.spec.bits}
    state = {k: v for k, v in trained.state_dict().items() if k.rpartition(".")[0] not in changed}
    missing, unexpected = qmodel.load_state_dict(state, strict=False)
    if unexpected or {k.rpartition(".")[0] for k in missing} - changed:
        raise ValueError(f"{path} is not a checkpoint of this model: missing {missing}, unexpected {unexpected}")
    log.info("warm start from %s (kept the fresh calibration of %s)", path, sorted(changed))


# ----------------------------------------------------------------------------------------- driver
def drive(args: argparse.Namespace) -> int:
    """Start every job as its own process, wait until the budget ends, bundle what finished."""
    stage = Path(args.stage)
    stage.mkdir(parents=True, exist_ok=True)
    for stale in stage.glob("*.ready"):
        stale.unlink()
    deadline = time.time() + args.budget
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = {}
    jobs = args.jobs.split(",")
    for name in jobs:
        cmd = [sys.executable, __file__, "job", name, "--folder", str(args.folder), "--stage", str(stage),
               "--deadline", str(deadline), "--device", args.device, "--peers", str(len(jobs))]
        cmd += ["--smoke"] if args.smoke else []
        cmd += ["--resume", str(args.resume)] if args.resume else []
        cmd += ["--lr", str(args.lr)] if args.lr else []
        with open(stage / f"{name}.log", "w") as logfile:  # the child keeps its own handle
            procs[name] = subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    while any(p.poll() is None for p in procs.values()) and time.time() < deadline + args.grace:
        time.sleep(2)
    for name, p in procs.items():
        if p.poll() is None:
            log.warning("%s overran the budget: killed", name)
            p.kill()
    bundle(stage, Path(args.out))
    summary = summarize(stage, procs)
    print(json.dumps(summary, indent=1))
    return 0 if all(p.returncode == 0 for p in procs.values()) else 1


def bundle(stage: Path, out: Path) -> None:
    """One tar per job kind (the device tool returns at most 8 files of 16 MiB each)."""
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("prune", "qat"):
        with tarfile.open(out / f"{kind}.tar", "w") as tar:
            for path in sorted(stage.glob(f"{kind}-*")):
                tar.add(path, arcname=path.name)
    with tarfile.open(out / "logs.tar", "w") as tar:
        for path in sorted(stage.glob("*.log")):
            tar.add(path, arcname=path.name)


def summarize(stage: Path, procs: dict[str, subprocess.Popen]) -> dict[str, Any]:
    rows = {}
    for name, p in procs.items():
        path = stage / f"{name}.json"
        if path.is_file():
            job = json.loads(path.read_text())
            rows[name] = {k: job[k] for k in ("epochs", "probe_ms_per_step", "train_seconds", "val_top1")}
        else:
            rows[name] = {"returncode": p.returncode,
                          "log_tail": (stage / f"{name}.log").read_text()[-1500:]}
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="write .gpu/ from ../shared")
    pk.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    for name in ("run", "job"):
        q = sub.add_parser(name)
        q.add_argument("--folder", type=Path, default=PACK)
        q.add_argument("--stage", default="/tmp/gpu_jobs")
        q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        q.add_argument("--smoke", action="store_true", help="two steps per job: checks the script end to end")
        q.add_argument("--resume", type=Path, help="start each job from its checkpoint in this former --stage")
        q.add_argument("--lr", type=float, help="peak learning rate (default: each recipe's)")
    run = sub.choices["run"]
    run.add_argument("--budget", type=float, default=420, help="seconds every job must finish in")
    run.add_argument("--grace", type=float, default=45, help="seconds past the budget before jobs are killed")
    run.add_argument("--jobs", default=",".join(JOBS))
    run.add_argument("--out", required=True)
    job = sub.choices["job"]
    job.add_argument("name", choices=JOBS)
    job.add_argument("--deadline", type=float, required=True)
    job.add_argument("--peers", type=int, default=1, help="jobs started together (they probe their speed together)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "pack":
        pack(args.shared)
        return 0
    if args.command == "job":
        Path(args.stage).mkdir(parents=True, exist_ok=True)
        if args.device.startswith("cuda"):
            torch.set_num_threads(1)  # jobs share the machine's cores; a CPU continuation takes them all
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        run_job(Job(args.name, args.folder, Path(args.stage), args.deadline, args.device, args.peers, args.smoke,
                    args.resume, args.lr))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
