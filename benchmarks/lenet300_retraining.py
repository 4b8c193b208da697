"""Where LeNet-300-100 loses accuracy under Deep Compression: one change at a time, on the validation split.

Starts from a LeNet-300-100 setting deep_compression.py --select once chose (START) and varies one thing per
row (which layers are pruned and how much, distillation, rounds, ramp, distillation weight and temperature,
weight decay, batch size, retraining length and rate), scoring each
on the same 5,000 held-out training images as ``deep_compression.py --select``; the test set is never read.
Writes results/lenet300_retraining.{json,md}. About 70 s per 20-epoch row with one thread, 35 min in all;
``--variant NAME`` (repeatable) runs some rows only, ``--seed`` another split and baseline.

    python benchmarks/lenet300_retraining.py
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cnncompress.data import load_dataset
from cnncompress.encode import DeepCompressionConfig, deep_compress
from cnncompress.utils import command_line, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deep_compression as dc  # noqa: E402  (the benchmark whose setting this dissects)

# The rows start from the setting --select chose on 2026-11-26 (GRID row 5: 20 + 3 epochs at lr 0.01), pinned here so
# the table keeps its meaning when SETTINGS moves on.
START = {**dc.SETTINGS["lenet300"], **dc.GRID["lenet300"][5]}
DENSE = {"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}
VARIANTS: dict[str, dict[str, Any]] = {  # name -> overrides of START
    "starting setting (START)": {},
    "no layer pruned, 8 bits": {"sparsity": DENSE, "bits": {"fc1": 8, "fc2": 8, "fc3": 8}},
    "no layer pruned, START's bits": {"sparsity": DENSE},
    "only fc1 pruned (95%)": {"sparsity": {**DENSE, "fc1": 0.95}},
    "only fc2 pruned (90%)": {"sparsity": {**DENSE, "fc2": 0.9}},
    "fc3 not pruned": {"sparsity": {**START["sparsity"], "fc3": 0.0}},
    "paper's sparsity, 6 bits": {"sparsity": {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
                                 "bits": {"fc1": 6, "fc2": 6, "fc3": 6}},
    "no distillation": {"distill": False},
    "4 prune-retrain rounds": {"rounds": 4},
    "AGP ramp over 30%": {"ramp_fraction": 0.3},
    "kd_alpha 1.0": {"train": {"kd_alpha": 1.0}},
    "kd temperature 2": {"train": {"kd_temperature": 2.0}},
    "no weight decay": {"train": {"weight_decay": 0.0}},
    "kd temperature 8": {"train": {"kd_temperature": 8.0}},
    "batch size 64": {"train": {"batch_size": 64}},
    "fc1 92%": {"sparsity": {**START["sparsity"], "fc1": 0.92}},
    "fc1 90%": {"sparsity": {**START["sparsity"], "fc1": 0.9}},
    "fc1 88%": {"sparsity": {**START["sparsity"], "fc1": 0.88}},
    "40 epochs, AGP ramp over 30%": {"prune_epochs": 40, "ramp_fraction": 0.3},
    "lr 0.05, 40 epochs": {"train": {"lr": 0.05}, "prune_epochs": 40},
    "lr 0.05, 60 epochs": {"train": {"lr": 0.05}, "prune_epochs": 60},
    "lr 0.05, 60 epochs, fc1 92%": {"train": {"lr": 0.05}, "prune_epochs": 60,
                                    "sparsity": {**START["sparsity"], "fc1": 0.92}},
}


def config(overrides: dict[str, Any], seed: int) -> DeepCompressionConfig:
    """The START pipeline with ``overrides`` applied (``train`` ones to its training recipe)."""
    start, overrides = dc.pipeline_config(START, seed), dict(overrides)
    return replace(start, train=replace(start.train, **overrides.pop("train", {})), **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", action="append", help="a name of VARIANTS to run; repeat for more (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, val = load_dataset("mnist", "train", data_dir=args.data_dir).split(dc.VAL_IMAGES, seed=args.seed)
    baseline_args = argparse.Namespace(seed=args.seed, quick=False, cache=None)
    baseline, spec, baseline_error, _ = dc.train_baseline("lenet300", dc.SETTINGS["lenet300"], train, val,
                                                          baseline_args)
    names = args.variant or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    rows = []
    for name in names:
        model, _ = deep_compress(copy.deepcopy(baseline), config(VARIANTS[name], args.seed), train, val=val)
        rows.append({"variant": name, **dc.validation_score(model, spec, val)})
        print(json.dumps(rows[-1]), flush=True)
    doc = {"seed": args.seed, "threads": args.threads, "val_images": len(val), "val_baseline_error": baseline_error,
           "command": command_line(), "rows": rows}
    lines = ["# LeNet-300-100: what the Deep Compression retraining costs, one change at a time", "",
             f"Validation error on {len(val):,} held-out training images (seed {args.seed}, {args.threads} thread(s));"
             f" dense baseline {baseline_error:.2f}%. Rows change one thing of START: {'/'.join(START['sparsity'])} "
             f"sparsity {'/'.join(f'{v * 100:g}' for v in START['sparsity'].values())}%, "
             f"{'/'.join(str(b) for b in START['bits'].values())} bits, "
             f"{START['prune_epochs']} + {START['share_epochs']} epochs at lr {START['retrain_lr']}. "
             f"Command: `{doc['command']}`", "",
             "| variant | validation error % | ratio |", "|---|---:|---:|"]
    lines += [f"| {r['variant']} | {r['val_error']:.2f} | {r['ratio']:.1f}x |" for r in rows]
    write_result(args.out / "lenet300_retraining", doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
