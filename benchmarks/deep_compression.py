"""Deep Compression (Han et al., ICLR 2016) on MNIST: LeNet-300-100 and LeNet-5, trained from scratch.

Pipeline per model: train the dense baseline (seeded), prune per layer along an AGP ramp while
retraining, share weights by k-means, fine-tune the centroids, write a ``.cnnc`` file, decode it
from the file alone and evaluate the decoded model. Writes results/deep_compression.{json,md} and
results/<model>.cnnc.

The per-model settings (sparsity, bits, retraining lr and epochs) are chosen by ``--select`` on a validation split
held out of the training images, never on the test set: it retrains the baseline on the rest, runs every
candidate of GRID, scores it on the held-out images and records the grid and its choice under
"selection" in results/deep_compression.json, which the full run carries over into its report.

    python benchmarks/deep_compression.py --select   # choose SETTINGS on the validation split
    python benchmarks/deep_compression.py            # full run (< 30 min, one thread)
    python benchmarks/deep_compression.py --quick    # a few minutes, for development
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cnncompress.data import ImageSet, load_dataset
from cnncompress.encode import DeepCompressionConfig, bit_equal_states, deep_compress, read_cnnc, write_cnnc
from cnncompress.models import ModelSpec, load_model, save_checkpoint
from cnncompress.train import TrainConfig, evaluate, fit
from cnncompress.utils import seed_everything, write_result

PAPER = {  # Han et al. 2016, Table 1/2/3
    "lenet300": {"ratio": 40, "baseline_error": 1.64, "error": 1.58, "kept": {"fc1": 8, "fc2": 9, "fc3": 26},
                 "bits": {"fc1": 6, "fc2": 6, "fc3": 6}},
    "lenet5": {"ratio": 39, "baseline_error": 0.80, "error": 0.74,
               "kept": {"conv1": 66, "conv2": 12, "fc1": 8, "fc2": 19},
               "bits": {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}},
}

# Chosen from GRID by `python benchmarks/deep_compression.py --select` (seed 0, 5,000 validation images; the runs
# of 2026-11-27, both models): see "selection" in results/deep_compression.json. The
# baseline recipes are not part of the grid.
SETTINGS: dict[str, dict[str, Any]] = {
    "lenet300": {
        "baseline": TrainConfig(epochs=20, lr=0.05, weight_decay=1e-4, augment=False),
        "sparsity": {"fc1": 0.92, "fc2": 0.9, "fc3": 0.7},
        "bits": {"fc1": 4, "fc2": 5, "fc3": 5},
        "prune_epochs": 60, "share_epochs": 3, "distill": True, "retrain_lr": 0.05,
    },
    "lenet5": {
        "baseline": TrainConfig(epochs=12, lr=0.02, weight_decay=5e-4, augment=False),
        "sparsity": {"conv1": 0.35, "conv2": 0.85, "fc1": 0.95, "fc2": 0.8},
        "bits": {"conv1": 6, "conv2": 5, "fc1": 4, "fc2": 5},
        "prune_epochs": 20, "share_epochs": 3, "distill": True, "retrain_lr": 0.01,
    },
}
CANDIDATE_KEYS = ("sparsity", "bits", "retrain_lr", "prune_epochs", "share_epochs")  # what --select varies


def _candidates(layers: tuple[str, ...], rows: list[tuple]) -> list[dict[str, Any]]:
    """Grid rows (sparsity per layer, bits per layer, retrain lr, prune epochs, share epochs) as settings."""
    return [{"sparsity": dict(zip(layers, sparsity, strict=True)), "bits": dict(zip(layers, bits, strict=True)),
             "retrain_lr": lr, "prune_epochs": prune, "share_epochs": share}
            for sparsity, bits, lr, prune, share in rows]


# Candidates of --select: first the earlier hand-tuned setting, then gentler ones (less sparsity, more bits);
# for LeNet-300-100, where none of those came within tolerance on validation, also other retraining lengths and rates,
# and last longer retraining at a higher rate (40 or 60 epochs at lr 0.05), the one change that narrowed the gap on
# the validation splits of seeds 0-2 in `benchmarks/lenet300_retraining.py --seed K` (so seed 0's split, which
# --select scores on, helped propose them; the test set did not).
# LeNet-5 retrains 20 + 3 epochs, as long as LeNet-300-100 (it had 10 + 2, and its test error was still settling
# after the AGP ramp ended; the run stays under 30 minutes).
GRID: dict[str, list[dict[str, Any]]] = {
    "lenet300": _candidates(("fc1", "fc2", "fc3"), [
        ((0.95, 0.9, 0.7), (4, 5, 5), 0.025, 20, 3),
        ((0.95, 0.9, 0.7), (5, 5, 5), 0.025, 20, 3),
        ((0.94, 0.9, 0.7), (4, 5, 5), 0.025, 20, 3),
        ((0.93, 0.88, 0.7), (5, 5, 5), 0.025, 20, 3),
        ((0.92, 0.85, 0.7), (5, 5, 5), 0.025, 20, 3),
        ((0.95, 0.9, 0.7), (4, 5, 5), 0.01, 20, 3),
        ((0.95, 0.9, 0.7), (4, 5, 5), 0.05, 20, 3),
        ((0.95, 0.9, 0.7), (4, 5, 5), 0.025, 30, 3),
        ((0.95, 0.9, 0.7), (4, 5, 5), 0.025, 20, 6),
        ((0.95, 0.9, 0.7), (4, 5, 5), 0.05, 40, 3),
        ((0.95, 0.9, 0.7), (4, 5, 5), 0.05, 60, 3),
        ((0.92, 0.9, 0.7), (4, 5, 5), 0.05, 60, 3),
    ]),
    "lenet5": _candidates(("conv1", "conv2", "fc1", "fc2"), [
        ((0.35, 0.85, 0.95, 0.8), (6, 5, 4, 5), 0.01, 20, 3),
        ((0.35, 0.85, 0.94, 0.8), (6, 5, 5, 5), 0.01, 20, 3),
        ((0.35, 0.8, 0.93, 0.8), (6, 5, 5, 5), 0.01, 20, 3),
    ]),
}
VAL_IMAGES = 5000  # stratified, seeded hold-out of the training images that --select scores on
VAL_TOLERANCE = 0.05  # points of validation error a candidate may lose against the validation baseline
FALLBACK_RATIO = 50.0
SELECTION_RULE = (f"among candidates whose validation error is at most the validation baseline's + {VAL_TOLERANCE} pt "
                  f"and whose ratio reaches the paper's, take the highest ratio; if none qualifies, the lowest "
                  f"validation error among those reaching {FALLBACK_RATIO:.0f}x (among all if none does)")
QUICK_BATCHES = 60  # batches per epoch in --quick mode


def train_baseline(name: str, setting: dict[str, Any], train: ImageSet, test: ImageSet, args: argparse.Namespace,
                   tag: str = ""):
    """Train (or reload from ``args.cache``) the seeded dense baseline: model, spec, error on ``test``, reloaded?

    ``tag`` names what it was trained on in the cache, so a validation-split baseline never stands in for
    the full one.
    """
    spec = ModelSpec(name)
    config = replace(setting["baseline"], seed=args.seed, max_batches_per_epoch=QUICK_BATCHES if args.quick else None)
    path = args.cache / f"{name}-seed{args.seed}{tag}{'-quick' if args.quick else ''}.pt" if args.cache else None
    cached = path is not None and path.is_file()
    if cached:
        model, _, _ = load_model(path)
    else:
        seed_everything(args.seed)
        model = spec.build()
        fit(model, train, config, progress=False)
        if path is not None:
            save_checkpoint(path, model, spec, seed=args.seed)
    return model, spec, 100.0 - evaluate(model, test).top1, cached


def pipeline_config(setting: dict[str, Any], seed: int, quick: bool = False) -> DeepCompressionConfig:
    """The Deep Compression pipeline a setting describes, retraining with its baseline recipe at ``retrain_lr``."""
    train = replace(setting["baseline"], seed=seed, lr=setting["retrain_lr"],
                    max_batches_per_epoch=QUICK_BATCHES if quick else None)
    return DeepCompressionConfig(sparsity=setting["sparsity"], bits=setting["bits"], scope="layer",
                                 prune_epochs=setting["prune_epochs"], share_epochs=setting["share_epochs"],
                                 distill=setting["distill"], train=train)


def compress(setting: dict[str, Any], model, train: ImageSet, val: ImageSet, args: argparse.Namespace):
    """Run the pipeline of ``setting`` on ``model`` in place (``val`` only monitors): model, record, config."""
    config = pipeline_config(setting, args.seed, args.quick)
    model, record = deep_compress(model, config, train, val=val)
    return model, record, config


def run_model(name: str, args: argparse.Namespace, train, test) -> dict[str, Any]:
    began = time.perf_counter()
    setting = SETTINGS[name]
    model, spec, baseline_error, cached = train_baseline(name, setting, train, test, args)
    model, record, config = compress(setting, model, train, test, args)
    compressed_error = 100.0 - evaluate(model, test).top1
    path = args.out / f"{name}{'_quick' if args.quick else ''}.cnnc"
    report = write_cnnc(path, model, spec, meta={"dataset": "mnist", "top1": 100.0 - compressed_error})
    decoded, _, _ = read_cnnc(path)
    bit_exact = bit_equal_states(model.state_dict(), decoded.state_dict())
    decoded_error = 100.0 - evaluate(decoded, test).top1
    return {"model": name, "baseline_error": baseline_error, "baseline_from_cache": cached,
            "compressed_error": compressed_error, "decoded_error": decoded_error, "bit_exact": bit_exact,
            "file": str(path), "file_bytes": report.file_bytes, "dense_bytes": report.dense_bytes,
            "params": report.params, "ratio": report.ratio, "record": record.to_dict(),
            "header_bytes": report.header_bytes, "layers": _layers(report, record),
            "paper": PAPER[name], "config": {"sparsity": setting["sparsity"], "bits": setting["bits"],
                                             "prune_epochs": config.prune_epochs,
                                             "share_epochs": config.share_epochs, "distill": config.distill,
                                             "retrain_lr": setting["retrain_lr"],
                                             "baseline_epochs": setting["baseline"].epochs},
            "seed": args.seed, "seconds": time.perf_counter() - began,
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def score(name: str, candidate: dict[str, Any], baseline, spec, train: ImageSet, val: ImageSet,
          args: argparse.Namespace) -> dict[str, Any]:
    """Validation error and file ratio of one candidate, compressed from a copy of the split's baseline."""
    began = time.perf_counter()
    setting = {**SETTINGS[name], **candidate}
    model, _, _ = compress(setting, copy.deepcopy(baseline), train, val, args)
    row = {**{k: setting[k] for k in CANDIDATE_KEYS}, **validation_score(model, spec, val),
           "seconds": time.perf_counter() - began}
    logging.info("%s candidate %s: validation error %.2f%%, %.1fx", name, candidate, row["val_error"], row["ratio"])
    return row


def validation_score(model, spec: ModelSpec, val: ImageSet) -> dict[str, float]:
    """Validation error of a compressed model and the ratio and bytes of its ``.cnnc`` file (written to a temp dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = write_cnnc(Path(tmp) / "model.cnnc", model, spec)
    return {"val_error": 100.0 - evaluate(model, val).top1, "ratio": report.ratio, "file_bytes": report.file_bytes}


def qualifies(candidate: dict[str, Any], baseline_error: float, target_ratio: float) -> bool:
    """Within VAL_TOLERANCE of the validation baseline (to 1e-6, to absorb float noise) at the paper's ratio."""
    return candidate["val_error"] <= baseline_error + VAL_TOLERANCE + 1e-6 and candidate["ratio"] >= target_ratio


def choose(grid: list[dict[str, Any]], baseline_error: float, target_ratio: float) -> int:
    """Index of the candidate SELECTION_RULE picks."""
    qualified = [i for i, c in enumerate(grid) if qualifies(c, baseline_error, target_ratio)]
    if qualified:
        return max(qualified, key=lambda i: (grid[i]["ratio"], -grid[i]["val_error"]))
    pool = [i for i, c in enumerate(grid) if c["ratio"] >= FALLBACK_RATIO] or range(len(grid))
    return min(pool, key=lambda i: (grid[i]["val_error"], -grid[i]["ratio"]))


def select_model(name: str, args: argparse.Namespace, train_full: ImageSet) -> dict[str, Any]:
    """Score GRID[name] on a held-out part of the training images and pick one by SELECTION_RULE."""
    began = time.perf_counter()
    train, val = train_full.split(VAL_IMAGES, seed=args.seed)
    baseline, spec, baseline_error, _ = train_baseline(name, SETTINGS[name], train, val, args,
                                                       tag=f"-train{len(train)}")
    logging.info("%s: validation baseline error %.2f%%", name, baseline_error)
    grid = [score(name, candidate, baseline, spec, train, val, args) for candidate in GRID[name]]
    return {"seed": args.seed, "train_images": len(train), "val_images": len(val),
            "val_baseline_error": baseline_error, "rule": SELECTION_RULE, "grid": grid,
            "chosen": choose(grid, baseline_error, PAPER[name]["ratio"]), "seconds": time.perf_counter() - began}


def _layers(report, record) -> list[dict[str, Any]]:
    """Per layer: kept %, bits and the bytes of its weight and bias sections in the file."""
    sections = {t.name: t for t in report.tensors}
    rows = []
    for layer in record.sparsity["layers"]:
        weight = sections[f"{layer['name']}.weight"]
        bias = sections.get(f"{layer['name']}.bias")
        rows.append({"layer": layer["name"], "params": layer["params"], "kept_pct": 100.0 * layer["nonzero"] /
                     layer["params"], "bits": weight.bits, "codebook": weight.codebook,
                     "gap_width": weight.gap_width, "weight_bytes": weight.bytes,
                     "bias_bytes": bias.bytes if bias else 0})
    return rows


def _stages(r: dict[str, Any]) -> str:
    """Test error after each stage (monitoring only: no choice was made on the test set)."""
    record, config = r["record"], r["config"]
    pruned = record["prune_history"][-1]["val_top1"] if record["prune_history"] else None
    parts = [f"baseline {r['baseline_error']:.2f}% ({config['baseline_epochs']} epochs"
             f"{', reloaded from cache' if r['baseline_from_cache'] else ''})"]
    if pruned is not None:
        parts.append(f"pruned + retrained {100 - pruned:.2f}% ({config['prune_epochs']} epochs, AGP"
                     f"{', distilled from the baseline' if config['distill'] else ''})")
    if record["shared_top1"] is not None:
        parts.append(f"clustered {100 - record['shared_top1']:.2f}%")
    parts.append(f"centroids fine-tuned, fp16 codebooks and biases, decoded {r['decoded_error']:.2f}% "
                 f"({config['share_epochs']} epochs); {r['seconds'] / 60:.1f} min{_when(r)}")
    return "Test error by stage: " + " -> ".join(parts) + "."


def _when(r: dict[str, Any]) -> str:
    """Thread count, seed and time of a run (older results lack some)."""
    if "utc" not in r:
        return ""
    threads, seed = r["torch_threads"], f", seed {r['seed']}" if "seed" in r else ""
    return f" with {threads} torch thread{'s' * (threads != 1)}{seed}, measured {r['utc']}"


def _fmt(layers: dict[str, Any]) -> str:
    """A per-layer setting as one table cell."""
    return ", ".join(f"{k} {v}" for k, v in layers.items())


def _selection(name: str, sel: dict[str, Any], config: dict[str, Any] | None) -> list[str]:
    """The --select grid of one model and whether the full run used its choice."""
    chosen = sel["grid"][sel["chosen"]]
    used = ""
    if config is not None:
        same = all(config[k] == chosen[k] for k in CANDIDATE_KEYS)
        used = f" The full run {'used' if same else 'did NOT use'} the chosen candidate."
    n = sum(qualifies(c, sel["val_baseline_error"], PAPER[name]["ratio"]) for c in sel["grid"])
    lines = ["", f"Settings chosen by `--select` (seed {sel['seed']}): baseline trained on {sel['train_images']:,} "
             f"training images, candidates scored on the other {sel['val_images']:,} (stratified hold-out); "
             f"validation baseline error {sel['val_baseline_error']:.2f}%. Rule: {sel['rule']}. "
             f"{n} of {len(sel['grid'])} candidates qualified{'' if n else ', so the fallback chose'}.{used}", "",
             "| # | sparsity | bits | retrain lr | prune + share epochs | validation error % | ratio | chosen |",
             "|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(sel["grid"]):
        lines.append(f"| {i} | {_fmt(c['sparsity'])} | {_fmt(c['bits'])} | {c['retrain_lr']} | "
                     f"{c['prune_epochs']} + {c['share_epochs']} | "
                     f"{c['val_error']:.2f} | {c['ratio']:.1f}x | {'yes' if i == sel['chosen'] else ''} |")
    return lines


def render(doc: dict[str, Any]) -> str:
    results, selection = doc.get("results", []), doc.get("selection", {})
    lines = ["# Deep Compression on MNIST", ""]
    if doc["quick"]:
        lines += ["**--quick run: few batches per epoch; not the benchmark's figures.**", ""]
    lines += ["| model | baseline error % | final error % (decoded) | dense bytes | .cnnc bytes | ratio | "
              "paper: error % | paper: ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["paper"]
        lines.append(f"| {r['model']} | {r['baseline_error']:.2f} | {r['decoded_error']:.2f} | "
                     f"{r['dense_bytes']:,} | {r['file_bytes']:,} | {r['ratio']:.1f}x | "
                     f"{p['baseline_error']:.2f} -> {p['error']:.2f} | {p['ratio']}x |")
    configs = {r["model"]: r["config"] for r in results}
    for name in dict.fromkeys([*configs, *selection]):
        lines += ["", f"## {name}"]
        if name in selection:
            lines += _selection(name, selection[name], configs.get(name))
        lines += _result(next((r for r in results if r["model"] == name), None))
    lines += ["", "Ratio = dense fp32 parameter bytes / bytes of the written .cnnc file. "
              "Errors are on the 10,000 MNIST test images; the final error is measured on the model decoded "
              "from the file. No setting was chosen on the test set: per-layer sparsity, bits and the retraining "
              "learning rate and epochs were picked among the grid's candidates on the validation split above. "
              "The candidates themselves and the baseline recipes were drafted earlier by hand from runs that "
              "looked at the test error, so the test set is not wholly unseen. Select: "
              "`python benchmarks/deep_compression.py --select`; reproduce: "
              "`python benchmarks/deep_compression.py`; check a file: "
              "`cnncompress decode results/lenet5.cnnc --evaluate --dataset mnist`.", ""]
    return "\n".join(lines)


def _result(r: dict[str, Any] | None) -> list[str]:
    """Stages and per-layer table of one model's full run, if there was one."""
    if r is None:
        return []
    lines = ["", _stages(r), "", f"Per layer (decoded bit-exact: {r['bit_exact']}; header+trailer "
             f"{r['header_bytes']} bytes):", "",
             "| layer | params | kept % | bits | weight bytes | bias bytes | paper kept % | paper bits |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["layers"]:
        name = row["layer"]
        lines.append(f"| {name} | {row['params']:,} | {row['kept_pct']:.2f} | {row['bits']} | "
                     f"{row['weight_bytes']:,} | {row['bias_bytes']:,} | {r['paper']['kept'][name]} | "
                     f"{r['paper']['bits'][name]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few batches per epoch (development only)")
    parser.add_argument("--select", action="store_true", help="choose settings on a validation split (no test)")
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (seeded runs repeat bit for bit only at the same count; default 1, "
                             "the published figures')")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--cache", type=Path, help="reuse baseline checkpoints from this folder")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    stem = args.out / ("deep_compression_quick" if args.quick else "deep_compression")
    path = stem.with_suffix(".json")
    # each mode keeps the other's section of the file (the selection outlives the full runs and vice versa),
    # and the entries of models it does not run
    doc = {"results": [], "selection": {}, **(json.loads(path.read_text()) if path.is_file() else {}),
           "quick": args.quick}
    train = load_dataset("mnist", "train", data_dir=args.data_dir)
    test = None if args.select else load_dataset("mnist", "test", data_dir=args.data_dir)
    for name in args.models.split(","):  # written after each model, so a late failure keeps the earlier ones
        if args.select:
            doc["selection"][name] = select_model(name, args, train)
        else:
            result = _run_logged(name, args, train, test)
            kept = [r for r in doc["results"] if r["model"] != name]
            doc["results"] = sorted([*kept, result], key=lambda r: list(SETTINGS).index(r["model"]))
        write_result(stem, doc, render(doc))
    print(render(doc))


def _run_logged(name: str, args: argparse.Namespace, train: ImageSet, test: ImageSet) -> dict[str, Any]:
    result = run_model(name, args, train, test)
    logging.info("%s: error %.2f%% -> %.2f%%, %d bytes, %.1fx", name, result["baseline_error"],
                 result["decoded_error"], result["file_bytes"], result["ratio"])
    return result


if __name__ == "__main__":
    main()
