"""Budget-driven compression (issue 6): LeNet-5 on MNIST to 16 KB, ResNet-20 on CIFAR-10 to 64 KB / 64 KB / 20M.

Each model goes through ``cnncompress.compress``: plan per-layer channel ratios, sparsities and bit
widths from the budget, prune, fine-tune (distilled), quantize, QAT when needed, export, and verify
the *written* files (flash = bytes of the deployable ``.cnnc``; RAM and MACs of the final graph;
accuracy of the integer ONNX model in onnxruntime on the full test set). The accuracy tolerance
handed to the planner is ``baseline - goal``, so "fits" means the goal accuracy was reached.

Results merge into ``<out>/budget.json`` per model (a run of one model keeps the others' entries)
and ``<out>/budget.md`` is rendered from all of them.

    python benchmarks/budget.py --models lenet5                    # the real LeNet-5 run (CPU)
    python benchmarks/budget.py --models resnet20 --quick          # capped batches: a CPU smoke run
    python benchmarks/budget.py --models resnet20 --device cuda    # full epochs on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from cnncompress.analysis import profile
from cnncompress.data import ImageSet, load_dataset
from cnncompress.models import ModelSpec, load_model, save_checkpoint
from cnncompress.pipeline import BudgetInfeasible, CompressionResult, CompressOptions, compress
from cnncompress.plan import Budget
from cnncompress.plan.budget import format_limit
from cnncompress.train import TrainConfig, evaluate, fit
from cnncompress.utils import atomic_write_text, command_line, seed_everything

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VALIDATION_IMAGES = 5000  # held out of the training split for the planner; the test split stays unseen


@dataclass(frozen=True)
class Case:
    """One benchmark model: what it starts from, the budget, the goal and the stage settings per mode."""

    spec: ModelSpec
    dataset: str
    limits: dict[str, str]
    goal_top1: float
    options: CompressOptions
    quick_options: CompressOptions
    weights: Path | None = None  # pretrained weights; ``None`` trains the baseline here
    baseline: TrainConfig | None = None
    floor_top1: float | None = None
    note: str = ""


CASES = {
    "lenet5": Case(
        spec=ModelSpec("lenet5"), dataset="mnist", limits={"flash_bytes": "16KB"}, goal_top1=99.0,
        baseline=TrainConfig(epochs=8, batch_size=128, lr=0.05, schedule="cosine", weight_decay=5e-4),
        options=CompressOptions(finetune_epochs=6, qat_epochs=3, lr=0.01, batch_size=128, sensitivity_images=2000,
                                prune_options=(0.25, 0.5, 0.75, 0.9), sparsity_options=(0.5, 0.75, 0.9),
                                weight_bits=(2, 3, 4, 5, 6, 8), max_rounds=3),
        quick_options=CompressOptions(finetune_epochs=1, qat_epochs=1, lr=0.01, batch_size=128,
                                      max_batches_per_epoch=60, sensitivity_images=500,
                                      prune_options=(0.25, 0.5, 0.75, 0.9), sparsity_options=(0.5, 0.75, 0.9),
                                      weight_bits=(2, 3, 4, 5, 6, 8), max_rounds=2),
    ),
    "resnet20": Case(
        spec=ModelSpec("resnet20"), dataset="cifar10",
        limits={"flash_bytes": "64KB", "ram_bytes": "64KB", "macs": "20M"}, goal_top1=89.0, floor_top1=85.0,
        weights=SHARED / "pretrained" / "resnet20-12fca82f.th",
        options=CompressOptions(finetune_epochs=30, qat_epochs=10, lr=0.01, batch_size=128,
                                sensitivity_images=2000, prune_options=(0.25, 0.5, 0.75),
                                weight_bits=(2, 3, 4, 5, 6, 8), max_rounds=3),
        quick_options=CompressOptions(finetune_epochs=6, qat_epochs=2, lr=0.01, batch_size=128,
                                      max_batches_per_epoch=220, sensitivity_images=500,
                                      prune_options=(0.25, 0.5, 0.75), weight_bits=(2, 3, 4, 5, 6, 8),
                                      max_rounds=2),
        note="The shared weights were trained on all 50,000 CIFAR-10 training images, so the 5,000 validation "
             "images the planner measures sensitivity and stage accuracy on were seen in training: those "
             "figures are optimistic. The test figures are on the 10,000 unseen test images.",
    ),
}
FIGURES = ("flash_bytes", "ram_bytes", "macs", "latency_ms")


def baseline_model(case: Case, args: argparse.Namespace, train: ImageSet, run_dir: Path
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The starting model: ``--weights``, the case's pretrained file, or trained here once and cached."""
    weights = args.weights or case.weights
    if weights is not None:
        model, _, _ = load_model(weights, case.spec)
        return model.eval(), {"source": str(weights)}
    cache = run_dir / "baseline.pt"
    if cache.is_file():
        model, _, meta = load_model(cache)
        return model.eval(), {"source": str(cache), "cached": True, "train": meta.get("train")}
    config = replace(case.baseline, seed=args.seed, device=args.device,
                     max_batches_per_epoch=case.quick_options.max_batches_per_epoch if args.quick else None)
    seed_everything(args.seed)
    model = case.spec.build()
    began = time.perf_counter()
    fit(model, train, config, progress=args.progress)
    settings = {**asdict(config), "seconds": time.perf_counter() - began}
    save_checkpoint(cache, model, case.spec, train=settings, dataset=case.dataset)
    return model.eval(), {"source": "trained here", "cached": False, "train": settings}


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Compress one model to its budget; an infeasible budget is recorded, not raised."""
    case = CASES[name]
    began = time.perf_counter()
    mode = "quick" if args.quick else "full"
    run_dir = args.run_dir / f"{name}-{mode}"
    train, val = load_dataset(case.dataset, "train", data_dir=args.data_dir).split(VALIDATION_IMAGES, seed=0)
    test = load_dataset(case.dataset, "test", data_dir=args.data_dir)
    model, baseline_info = baseline_model(case, args, train, run_dir)
    baseline_top1 = evaluate(model, test, device=args.device).top1
    budget = Budget.from_mapping({**case.limits, "max_accuracy_drop": max(baseline_top1 - case.goal_top1, 0.01)})
    options = replace(case.quick_options if args.quick else case.options, device=args.device, seed=args.seed)
    shape = train.info.input_shape
    before = profile(model, shape)
    entry: dict[str, Any] = {
        "model": name, "dataset": case.dataset, "mode": mode, "command": command_line(),
        "goal_top1": case.goal_top1, "floor_top1": case.floor_top1, "budget": budget.to_dict(),
        "limits_as_given": case.limits, "baseline": {**baseline_info, "test_top1": baseline_top1},
        "before": {"flash_bytes": before.weight_bytes, "ram_bytes": before.peak_activation_bytes,
                   "macs": before.macs, "params": before.params},
        "options": asdict(options), "split": {"train": len(train), "val": len(val), "test": len(test)},
    }
    compress_dir = run_dir / "compress"
    if args.fresh and compress_dir.exists():
        shutil.rmtree(compress_dir)
    entry["sensitivity_cached"] = (compress_dir / "sensitivity.json").is_file()  # measured by an earlier run
    compress_began = time.perf_counter()
    try:
        result = compress(model, budget, train, val, test, None, output_dir=compress_dir, spec=case.spec,
                          options=options, resume=args.resume, progress=args.progress)
        entry.update(_outcome(result, case))
    except BudgetInfeasible as exc:
        entry.update({"feasible": False, "fits": False, "infeasible": exc.result.to_dict()})
    entry["seconds"] = {"compress": time.perf_counter() - compress_began, "total": time.perf_counter() - began}
    return entry


def _outcome(result: CompressionResult, case: Case) -> dict[str, Any]:
    measured = result.verification.measured.to_dict()
    return {
        "feasible": True, "fits": result.fits, "verdict": result.verification.describe(),
        "predicted": result.plan.predicted.to_dict(), "measured": measured,
        "predicted_accuracy_drop": result.plan.predicted_accuracy_drop,
        "top1_simulated": result.top1, "top1_onnxruntime": result.onnx_top1,
        "goal_met": result.onnx_top1 is not None and result.onnx_top1 >= case.goal_top1,
        "plan": result.plan.to_dict(), "stages": result.stages,
        "misses": [asdict(m) for m in result.verification.misses],
        "prediction_error": result.verification.prediction_error,
        "paths": {k: str(v) for k, v in result.paths.items()},
    }


def _show(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ms" if key == "latency_ms" else format_limit(key, value)


def _fits(value: float | None, limit: float | None) -> str:
    if value is None or limit is None:
        return "-"
    return "yes" if value <= limit else "**NO**"


def render_entry(e: dict[str, Any]) -> list[str]:
    """One model's section: the figure table, accuracy rows and the goal line."""
    head = f"## {e['model']} on {e['dataset']} ({e['mode']} mode)"
    lines = [head, "", f"Budget: {Budget(**e['budget']).describe()}.", ""]
    if not e["feasible"]:
        info = e["infeasible"]
        return lines + [f"**Infeasible**: binding constraint `{info['constraint']}` "
                        f"(limit {_show(info['constraint'], info['limit'])}, smallest reachable "
                        f"{_show(info['constraint'], info['smallest'])}). {info['message']}", ""]
    budget, measured, predicted = e["budget"], e["measured"], e["predicted"]
    lines += ["| figure | limit | before (fp32) | predicted | measured | fits |", "|---|---|---|---|---|---|"]
    for key in FIGURES:
        limit = budget.get(key)
        lines.append(f"| {key} | {_show(key, limit)} | {_show(key, e['before'].get(key))} | "
                     f"{_show(key, predicted.get(key))} | {_show(key, measured.get(key))} | "
                     f"{_fits(measured.get(key), limit)} |")
    drop = measured["accuracy_drop"]
    lines += [f"| accuracy drop (pt) | {budget['max_accuracy_drop']:.2f} | - | {e['predicted_accuracy_drop']:.2f} | "
              f"{drop:.2f} | {_fits(drop, budget['max_accuracy_drop'])} |",
              f"| top-1 % (onnxruntime int8, test) | >= {e['goal_top1']:.2f} | {e['baseline']['test_top1']:.2f} | - | "
              f"{e['top1_onnxruntime']:.2f} | {'yes' if e['goal_met'] else '**NO**'} |",
              f"| top-1 % (simulated, test) | - | - | - | {e['top1_simulated']:.2f} | - |", ""]
    goal = f"Goal: >= {e['goal_top1']:.1f}% within the limits"
    if e["floor_top1"] is not None:
        goal += f" (floor {e['floor_top1']:.1f}%: {'met' if e['top1_onnxruntime'] >= e['floor_top1'] else 'missed'})"
    lines += [f"{goal}: **{'MET' if e['fits'] and e['goal_met'] else 'NOT MET'}** ({e['verdict']}).", "",
              _settings_line(e), "", _stages_line(e), ""]
    note = CASES[e["model"]].note if e["model"] in CASES else ""
    return lines + ([note, ""] if note else [])


def _stages_line(e: dict[str, Any]) -> str:
    """Per stage: seconds and validation top-1 (val is held out of the training split)."""
    parts = []
    for stage in e["stages"]:
        val = stage["summary"].get("val_top1")
        parts.append(f"{stage['name']} {stage['seconds']:.0f} s" + (f" (val {val:.2f}%)" if val is not None else ""))
    return "Stages: " + ", ".join(parts) + "."


def _baseline_text(baseline: dict[str, Any]) -> str:
    train = baseline.get("train")
    if not train:
        return baseline["source"]
    cached = ", reloaded from cache" if baseline.get("cached") else ""
    return (f"trained here ({train['epochs']} epochs {train['optimizer']} lr {train['lr']} {train['schedule']}, "
            f"seed {train['seed']}, {train['seconds'] / 60:.1f} min{cached})")


def _settings_line(e: dict[str, Any]) -> str:
    o = e["options"]
    batches = o["max_batches_per_epoch"] or "all"
    return (f"Settings: fine-tune {o['finetune_epochs']} epochs, QAT {o['qat_epochs']} epochs (if needed), "
            f"{batches} batches/epoch of {o['batch_size']}, sensitivity on {o['sensitivity_images']} val images, "
            f"prune ratios {o['prune_options']}, sparsities {o['sparsity_options'] or 'none'}, "
            f"bits {o['weight_bits']}; baseline: {_baseline_text(e['baseline'])}; "
            f"{e['seconds']['total'] / 60:.1f} min on device `{o['device']}`"
            f"{' (sensitivity table reused from an earlier run)' if e.get('sensitivity_cached') else ''}. "
            f"Command: `{e['command']}`.")


def render(entries: dict[str, dict[str, Any]]) -> str:
    lines = ["# Budget-driven compression", "",
             "Measured = on the written files: flash is the byte size of the deployable `.cnnc`; RAM is the "
             "activation peak of the final graph at 8-bit activations; MACs of the final graph; latency the "
             "onnxruntime median at batch 1 on this host; accuracy of the integer ONNX model in onnxruntime on "
             "the full test set. `before` is the fp32 model. Quick mode caps batches per epoch and is not the "
             "benchmark's figure.", ""]
    for name in sorted(entries):
        lines += render_entry(entries[name])
    return "\n".join(lines)


def _load_existing(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("results", {})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20", help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--quick", action="store_true", help="cap batches per epoch (CPU smoke runs)")
    parser.add_argument("--device", default="cpu", help="torch device for training: cpu or cuda")
    parser.add_argument("--data-dir", help="dataset folder (else $CNNCOMPRESS_DATA, ../shared/data)")
    parser.add_argument("--weights", type=Path, help="start from this checkpoint instead of training/pretrained")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for budget.json/budget.md")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/budget"), help="run folders, baseline cache")
    parser.add_argument("--resume", action="store_true", help="continue interrupted compress runs")
    parser.add_argument("--fresh", action="store_true", help="discard earlier compress runs (keeps baselines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--render-only", action="store_true", help="rewrite budget.md from budget.json, run nothing")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(CASES)}")
    if args.weights is not None and len(names) != 1:
        parser.error("--weights applies to one model: pass a single name to --models")
    if args.resume and args.fresh:
        parser.error("--resume and --fresh exclude each other")
    args.models = names
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = args.out / "budget.json"
    if args.render_only:
        if not path.is_file():
            raise SystemExit(f"{path} not found: nothing to render")
        atomic_write_text(args.out / "budget.md", render(_load_existing(path)))
    for name in [] if args.render_only else args.models:
        entry = run_case(name, args)
        logging.info("%s: fits=%s", name, entry["fits"])
        entries = {**_load_existing(path), name: entry}  # re-read: another model's run may have written
        atomic_write_text(path, json.dumps({"results": entries}, indent=2, default=str))
        atomic_write_text(args.out / "budget.md", render(entries))
    print(render(_load_existing(path)))


if __name__ == "__main__":
    main()
