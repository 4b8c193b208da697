"""torch.distributed on this machine: 1 process x 2 threads against 2 processes x 1 thread.

Two jobs, each launched through ``torchrun`` in turn, in interleaved rounds (one round times both set-ups
back to back, so both see the same machine load; the ratio's median and interval come from
``analysis.paired_speedup``):
- the compress planner's sensitivity analysis of the shared ResNet-20 (prune and bit-width entries on
  ``--sensitivity-images`` CIFAR-10 training images), whose tables must be identical;
- one distilled fine-tuning epoch of the shared ResNet-56 with half its MACs pruned (L1), on
  ``--epoch-images`` CIFAR-10 training images, then its CIFAR-10 test top-1.

    python benchmarks/distributed.py                     # writes results/distributed.{json,md}
    python benchmarks/distributed.py --smoke --out /tmp  # a quick check of the script
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cnncompress import distributed
from cnncompress.analysis.latency import paired_speedup
from cnncompress.data import load_dataset
from cnncompress.models import ModelSpec, load_model
from cnncompress.pipeline import CompressOptions, measure_plan_sensitivity, preflight
from cnncompress.prune import prune_channels
from cnncompress.train import TrainConfig, evaluate, fit
from cnncompress.utils import atomic_write_text, command_line, cpu_name, write_result

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT.parent / "shared" / "pretrained"
CPU_SETUPS = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}


def sensitivity_job(args: argparse.Namespace) -> dict[str, Any]:
    """Time the planner's sensitivity table of ResNet-20 (what compress measures before planning)."""
    model = load_model(PRETRAINED / "resnet20-12fca82f.th", ModelSpec("resnet20"))[0].eval()
    data = load_dataset("cifar10", "train", data_dir=args.data_dir).take(args.sensitivity_images, seed=0)
    cost = preflight(model, data.info.input_shape)
    options = CompressOptions(sensitivity_images=len(data), device=args.device)
    with tempfile.TemporaryDirectory() as scratch:  # no cache: every run measures every entry
        began = time.perf_counter()
        table = measure_plan_sensitivity(model, cost, data, options, (2, 4, 8), Path(scratch) / "s.json", False)
        seconds = time.perf_counter() - began
    return {"seconds": seconds, "table": table.to_dict(),
            "evaluations": sum(len(v) for kind in ("prune", "bits") for v in table.entries(kind).values())}


def finetune_job(args: argparse.Namespace) -> dict[str, Any]:
    """Time one distilled fine-tuning epoch of ResNet-56 at half its MACs; its test top-1 after it."""
    teacher = load_model(PRETRAINED / "resnet56-4bfd9763.th", ModelSpec("resnet56"))[0].eval()
    student = prune_channels(copy.deepcopy(teacher), (3, 32, 32), target_macs=0.5, criterion="l1")
    train = load_dataset("cifar10", "train", data_dir=args.data_dir).take(args.epoch_images, seed=0)
    config = TrainConfig(epochs=1, batch_size=128, lr=0.01, seed=0, device=args.device)
    began = time.perf_counter()
    fit(student, train, config, teacher=teacher, progress=False)
    seconds = time.perf_counter() - began
    test = load_dataset("cifar10", "test", data_dir=args.data_dir)
    return {"seconds": seconds, "images": len(train) // config.batch_size * config.batch_size,
            "test_top1": evaluate(student, test, device=args.device).top1}


JOBS = {"sensitivity": sensitivity_job, "finetune": finetune_job}


def worker(args: argparse.Namespace) -> None:
    """One rank of one job (run by torchrun): rank 0 writes the job's figures to ``--result``."""
    distributed.init_from_env(args.device)
    torch.set_num_threads(args.threads)
    outcome = JOBS[args.worker](args)
    if distributed.is_main():
        atomic_write_text(args.result, json.dumps(outcome))
    distributed.shutdown()


def launch(job: str, processes: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``job`` through torchrun on ``processes`` ranks of ``threads`` threads; its figures."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   __file__, "--worker", job, "--threads", str(threads), "--result", str(result),
                   "--sensitivity-images", str(args.sensitivity_images), "--epoch-images", str(args.epoch_images),
                   "--device", args.device]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise RuntimeError(f"{job} on {processes} process(es) failed:\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def measure(args: argparse.Namespace, setups: dict[str, tuple[int, int]]) -> dict[str, Any]:
    jobs: dict[str, Any] = {}
    for job in JOBS:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
        for round_no in range(args.rounds):
            order = list(setups) if round_no % 2 == 0 else list(reversed(setups))  # interleaved, alternating
            for name in order:
                runs[name].append(launch(job, *setups[name], args))
                print(f"{job} round {round_no + 1}: {name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
        one, two = (runs[name] for name in setups)
        speedup = paired_speedup([r["seconds"] for r in one], [r["seconds"] for r in two])
        entry: dict[str, Any] = {"seconds": {name: [r["seconds"] for r in runs[name]] for name in setups},
                                 "speedup": speedup.__dict__}
        if job == "sensitivity":
            entry["identical_tables"] = all(r["table"] == one[0]["table"] for r in one + two)
            entry["evaluations"] = one[0]["evaluations"]
        else:
            entry["test_top1"] = {name: [r["test_top1"] for r in runs[name]] for name in setups}
            entry["images"] = one[0]["images"]
        jobs[job] = entry
    return jobs


def render(result: dict[str, Any]) -> str:
    s, f = result["jobs"]["sensitivity"], result["jobs"]["finetune"]
    one, two = result["settings"]["setups"]

    def speed(entry: dict[str, Any]) -> str:
        sp = entry["speedup"]
        return f"**{sp['median']:.2f}x** ({sp['low']:.2f}-{sp['high']:.2f}, {sp['rounds']} rounds)"

    def secs(entry: dict[str, Any], name: str) -> str:
        return ", ".join(f"{t:.1f}" for t in entry["seconds"][name])

    lines = [
        f"# torch.distributed: {one} vs {two}",
        "",
        f"Each job runs through `torchrun --standalone` ({result['backend']}), the two set-ups back to back in "
        f"every round, alternating which goes first. Speed-up = time of {one} / time of {two} (median over "
        "rounds, 90% bootstrap interval). Times exclude process start-up and data loading.",
        "",
        f"| job | work | {one} (s) | {two} (s) | speed-up of {two} | result |",
        "|---|---|---|---|---|---|",
        f"| sensitivity analysis, ResNet-20 | {s['evaluations']} evaluations on "
        f"{result['settings']['sensitivity_images']} images | {secs(s, one)} | {secs(s, two)} | {speed(s)} | "
        f"tables identical: {'yes' if s['identical_tables'] else '**NO**'} |",
        f"| fine-tuning epoch, ResNet-56 at 50% MACs, distilled | {f['images']:,} images | {secs(f, one)} | "
        f"{secs(f, two)} | {speed(f)} | test top-1: {', '.join(f'{a:.2f}%' for a in f['test_top1'][one])} vs "
        f"{', '.join(f'{a:.2f}%' for a in f['test_top1'][two])} |",
    ]
    if result["backend"] == "gloo":
        lines += _cpu_notes(s)
    lines += ["", f"Machine: {result['machine']}; torch {result['torch']}. Command: `{result['command']}`.", ""]
    return "\n".join(lines)


def _cpu_notes(s: dict[str, Any]) -> list[str]:
    return [
        "",
        "## What the 2-core figures do and do not predict",
        "",
        "- Both set-ups share the same two cores, so neither adds compute: the ratios compare torch's intra-op "
        "threads (one process using both cores) with data parallelism (one single-thread process per core), "
        "not a scaling with hardware.",
        "- Sensitivity: each rank evaluates whole candidates and only the finished table entries travel, so "
        "the work divides with almost no communication. On a GPU node each rank has a device of its own and "
        f"the {s['evaluations']} candidates divide among the GPUs.",
        "- Fine-tuning: every step all-reduces the gradients and every BatchNorm layer all-reduces its "
        "statistics (global-batch BatchNorm). On a GPU node each rank adds a device, so compute grows with "
        "the ranks and NCCL's all-reduces are the cost; this 2-core figure does not predict that scaling.",
        "- Accuracy: the two set-ups train on the same global batches (same permutation and augmentation) and "
        "differ only by float rounding (gradients summed in another order); the result column shows how far "
        "that moves the test top-1 after this short epoch. Each set-up repeats its own figure exactly.",
        "- GPU: `python benchmarks/distributed.py --gpus N` on a machine with N GPUs compares 1 GPU with N "
        "(NCCL) and writes results/distributed_gpu.{json,md}; no GPU machine was lent for these figures.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per job")
    parser.add_argument("--sensitivity-images", type=int, default=1000, help="images per sensitivity evaluation "
                        "(compress's default)")
    parser.add_argument("--epoch-images", type=int, default=50000, help="CIFAR-10 training images in the epoch")
    parser.add_argument("--data-dir", help="dataset folder (else $CNNCOMPRESS_DATA, ../shared/data)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: checks the script, not the machine")
    parser.add_argument("--gpus", type=int, default=0, help="on a GPU machine: 1 GPU against this many (writes "
                        "distributed_gpu.json/.md); 0 compares the CPU set-ups")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="folder for the results")
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json, run nothing")
    parser.add_argument("--worker", choices=sorted(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.render_only:
        stem = args.out / ("distributed_gpu" if args.gpus else "distributed")
        result = json.loads(stem.with_suffix(".json").read_text())
        write_result(stem, result, render(result))
        return
    if args.smoke:
        args.rounds, args.sensitivity_images, args.epoch_images = 1, 100, 512
    setups = CPU_SETUPS
    if args.gpus:
        args.device = "cuda"
        setups = {"1 GPU": (1, 4), f"{args.gpus} GPUs": (args.gpus, 4)}
    began = time.perf_counter()
    jobs = measure(args, setups)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}"
    if args.gpus:
        machine += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
              "machine": machine, "torch": torch.__version__, "backend": "NCCL" if args.gpus else "gloo",
              "settings": {"rounds": args.rounds, "sensitivity_images": args.sensitivity_images,
                           "epoch_images": args.epoch_images, "setups": setups},
              "jobs": jobs, "wall_seconds": time.perf_counter() - began}
    write_result(args.out / ("distributed_gpu" if args.gpus else "distributed"), result, render(result))
    print(render(result))


if __name__ == "__main__":
    main()
