"""Compressed CNNs as C firmware on an emulated Cortex-M4 (issue 18): the budget proved on the binary.

Per model (the digits CNN, LeNet-5 on MNIST, the shared ResNet-20 on CIFAR-10) ``cnncompress.compress``
runs with the ``cortex-m4`` device profile and a flash / RAM (/ MACs) budget. The run ends by exporting
the integer C library, building it with gcc on this host (every test image, bit for bit against the
integer reference), cross-compiling it for the Cortex-M4 and running 100 test images in QEMU
(``mps2-an386``). Recorded from the result:

- planned vs measured flash and RAM with the planner's relative errors; measured flash = text + data of
  the model and kernel objects, measured RAM = their data + bss + the painted stack + the profile's
  16 KiB reserve (the reserve is added to the prediction too, so the model-only RAM, firmware RAM vs
  the planner's activation peak, is listed beside it);
- the activation arena vs the sum of all activations (no reuse) vs the lower bound (largest live set);
- top-1 of the C build on the full test set vs the onnxruntime int8 model;
- host build == integer reference, emulator == host build, instructions per inference (QEMU -icount).

Results merge into ``<out>/mcu.json`` per model (a model already recorded with the same settings is
skipped unless ``--rerun``; an interrupted compress run resumes from its stage checkpoints under
``--run-dir``) and ``<out>/mcu.md`` is rendered from all entries.

    python benchmarks/mcu.py                                     # digits and LeNet-5, real runs (CPU)
    python benchmarks/mcu.py --smoke                             # capped training: checks the script
    python benchmarks/mcu.py --models resnet20 --max-batches 20  # ResNet-20 with capped fine-tuning
    python benchmarks/mcu.py --models resnet20 --device cuda     # full epochs (needs the Arm toolchain too)

Needs ``arm-none-eabi-gcc``, ``arm-none-eabi-size`` and ``qemu-system-arm`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnncompress.data import ImageSet, load_dataset
from cnncompress.export.c import verify
from cnncompress.export.c.firmware import kernel_code_bytes, missing_tools, run_on_mcu
from cnncompress.models import ModelSpec, load_model, save_checkpoint
from cnncompress.pipeline import BudgetInfeasible, CompressionResult, CompressOptions, compress
from cnncompress.plan import load_device
from cnncompress.train import TrainConfig, fit
from cnncompress.utils import atomic_write_text, command_line, seed_everything

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEVICE = "cortex-m4"
RESNET_GOAL_TOP1 = 89.0
PREDICTION_TOLERANCE = 0.05  # planner's flash and RAM within 5% of the firmware's
ARENA_TOLERANCE = 0.10  # arena within 10% of the lower bound


@dataclass(frozen=True)
class Case:
    """One model: where its baseline comes from, its budget, and the stage settings (full and smoke)."""

    spec: ModelSpec
    dataset: str
    limits: dict[str, str]
    max_accuracy_drop: float
    val_images: int  # held out of the training split for the planner; the test split stays unseen
    options: CompressOptions
    smoke_options: CompressOptions
    weights: Path | None = None  # pretrained; None trains the baseline here
    baseline: TrainConfig | None = None
    smoke_baseline: TrainConfig | None = None
    note: str = ""


BITS = (2, 4, 8)  # the widths the C kernels unpack
CASES = {
    "digits": Case(
        spec=ModelSpec("digits_cnn"), dataset="digits", limits={"flash": "8KB", "ram": "20KB"},
        max_accuracy_drop=3.0, val_images=300,
        baseline=TrainConfig(epochs=30, batch_size=64, lr=0.05),
        smoke_baseline=TrainConfig(epochs=3, batch_size=64, lr=0.05),
        options=CompressOptions(finetune_epochs=10, qat_epochs=10, batch_size=64, lr=0.02, sensitivity_images=300,
                                prune_options=(0.25, 0.5, 0.75), weight_bits=BITS),
        smoke_options=CompressOptions(finetune_epochs=1, qat_epochs=1, batch_size=64, lr=0.02,
                                      sensitivity_images=100, prune_options=(0.5, 0.75), weight_bits=BITS,
                                      max_rounds=1),
    ),
    "lenet5": Case(
        spec=ModelSpec("lenet5"), dataset="mnist", limits={"flash": "16KB", "ram": "24KB"},
        max_accuracy_drop=1.0, val_images=5000,
        baseline=TrainConfig(epochs=2, batch_size=128, lr=0.05, schedule="cosine", weight_decay=5e-4),
        smoke_baseline=TrainConfig(epochs=1, batch_size=128, lr=0.05, max_batches_per_epoch=60),
        options=CompressOptions(finetune_epochs=3, qat_epochs=2, batch_size=128, lr=0.01, sensitivity_images=2000,
                                prune_options=(0.25, 0.5, 0.75, 0.9), weight_bits=BITS),
        smoke_options=CompressOptions(finetune_epochs=1, qat_epochs=1, batch_size=128, lr=0.01,
                                      max_batches_per_epoch=30, sensitivity_images=300,
                                      prune_options=(0.5, 0.75, 0.9), weight_bits=BITS, max_rounds=1),
    ),
    "resnet20": Case(
        spec=ModelSpec("resnet20"), dataset="cifar10", limits={"flash": "64KB", "ram": "64KB", "macs": "20M"},
        max_accuracy_drop=15.0, val_images=5000, weights=SHARED / "pretrained" / "resnet20-12fca82f.th",
        options=CompressOptions(finetune_epochs=30, qat_epochs=10, batch_size=128, lr=0.01, sensitivity_images=2000,
                                prune_options=(0.25, 0.5, 0.75), weight_bits=BITS),
        smoke_options=CompressOptions(finetune_epochs=1, qat_epochs=1, batch_size=128, lr=0.01,
                                      max_batches_per_epoch=20, sensitivity_images=300,
                                      prune_options=(0.25, 0.5, 0.75), weight_bits=BITS, max_rounds=2),
        note="The shared weights were trained on all 50,000 CIFAR-10 training images, so the planner's 5,000 "
             "validation images were seen in training; test figures are on the 10,000 unseen test images. "
             "The accuracy-drop limit is deliberately generous: the 89% goal is judged on the C build's top-1.",
    ),
}


def baseline_model(case: Case, args: argparse.Namespace, train: ImageSet, run_dir: Path
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The starting model: the case's pretrained file, or trained here once and cached in ``run_dir``."""
    if case.weights is not None:
        model, _, _ = load_model(case.weights, case.spec)
        return model.eval(), {"source": str(case.weights)}
    cache = run_dir / "baseline.pt"
    if cache.is_file():
        model, _, meta = load_model(cache)
        return model.eval(), {"source": str(cache), "cached": True, "train": meta.get("train")}
    config = replace(case.smoke_baseline if args.smoke else case.baseline, seed=args.seed, device=args.device)
    seed_everything(args.seed)
    model = case.spec.build()
    began = time.perf_counter()
    fit(model, train, config, progress=args.progress)
    settings = {**asdict(config), "seconds": time.perf_counter() - began}
    save_checkpoint(cache, model, case.spec, train=settings, dataset=case.dataset)
    return model.eval(), {"source": "trained here", "cached": False, "train": settings}


def case_options(case: Case, args: argparse.Namespace) -> CompressOptions:
    """The case's options for the mode, with the command line's epoch and batch overrides applied."""
    options = replace(case.smoke_options if args.smoke else case.options, device=args.device, seed=args.seed)
    overrides = {"finetune_epochs": args.finetune_epochs, "qat_epochs": args.qat_epochs,
                 "max_batches_per_epoch": args.max_batches, "sensitivity_images": args.sensitivity_images,
                 "max_rounds": args.max_rounds}
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})


def mode_name(case: Case, options: CompressOptions, args: argparse.Namespace) -> str:
    if args.smoke:
        return "smoke"
    return "full" if options == replace(case.options, device=args.device, seed=args.seed) else "capped"


def longer_qemu_timeout(seconds: float) -> None:
    """Let ``verify_export``'s QEMU run take ``seconds``: compress passes no timeout through to ``run_on_mcu``."""
    verify.run_on_mcu = functools.partial(run_on_mcu, timeout_s=seconds)


class RoundLog(logging.Handler):
    """Collects compress's one-line verdict per plan-measure round (``round N: fits ...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if re.match(r"round \d+: ", message):
            self.rounds.append(message)


def entry_key(name: str, args: argparse.Namespace) -> str:
    """The results key: the model, or the model and the reserve it was run with when ``--ram-reserved``."""
    return name if args.ram_reserved is None else f"{name}-reserve{args.ram_reserved}"


def _label(e: dict[str, Any]) -> str:
    reserve = "" if e.get("ram_reserved_override") is None else f", reserve {e['ram_reserved_override']:,} B"
    return f"{e['model']} ({e['mode']}{reserve})"


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Compress one model for the Cortex-M4 and collect what the firmware check measured."""
    case = CASES[name]
    began = time.perf_counter()
    options = case_options(case, args)
    mode = mode_name(case, options, args)
    run_dir = args.run_dir / f"{entry_key(name, args)}-{mode}"
    train, val = load_dataset(case.dataset, "train", data_dir=args.data_dir).split(case.val_images, seed=0)
    test = load_dataset(case.dataset, "test", data_dir=args.data_dir)
    model, baseline_info = baseline_model(case, args, train, run_dir)
    device = load_device(DEVICE, None if args.ram_reserved is None else {"ram_reserved": args.ram_reserved})
    budget = device.budget(case.max_accuracy_drop, case.limits)
    entry: dict[str, Any] = {
        "model": name, "factory": case.spec.factory, "dataset": case.dataset, "mode": mode,
        "command": command_line(), "device_profile": device.to_dict(), "budget": budget.to_dict(),
        "limits_as_given": case.limits, "baseline": baseline_info, "options": asdict(options),
        "split": {"train": len(train), "val": len(val), "test": len(test)}, "threads": torch.get_num_threads(),
        "qemu_timeout_s": args.qemu_timeout, "ram_reserved_override": args.ram_reserved,
    }
    compress_dir = run_dir / "compress"
    if args.fresh and compress_dir.exists():
        shutil.rmtree(compress_dir)
    compress_began = time.perf_counter()
    rounds = RoundLog()
    pipeline_log = logging.getLogger("cnncompress.pipeline")
    pipeline_log.addHandler(rounds)
    try:
        result = compress(model, budget, train, val, test, device, output_dir=compress_dir, spec=case.spec,
                          options=options, resume=True, progress=args.progress)
        entry.update(outcome(result, device.ram_reserved_bytes, len(test)))
    except BudgetInfeasible as exc:
        entry.update({"feasible": False, "fits": False, "infeasible": exc.result.to_dict()})
    finally:
        pipeline_log.removeHandler(rounds)
    entry["rounds"] = rounds.rounds
    entry["seconds"] = {"compress": time.perf_counter() - compress_began, "total": time.perf_counter() - began}
    return entry


def _relative(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def outcome(result: CompressionResult, reserve: int, test_images: int) -> dict[str, Any]:
    """The figures of one finished run, from ``result`` and its firmware record."""
    firmware = result.firmware
    if firmware is None:
        raise RuntimeError("compress ran without the firmware check (is the Arm toolchain or QEMU missing?)")
    if firmware["images"] != test_images:
        raise RuntimeError(f"the host C build ran {firmware['images']} images, not the {test_images} of the test set")
    mcu, predicted = firmware["mcu"], result.plan.predicted
    measured = result.verification.measured
    activation_peak = predicted.ram_bytes - reserve  # the planner's activation peak, without the reserve
    lower = firmware["lower_bound_bytes"]
    return {
        "feasible": True, "fits": result.fits, "verdict": result.verification.describe(),
        "baseline_top1": result.baseline_top1, "top1_simulated": result.top1, "top1_onnxruntime": result.onnx_top1,
        "top1_c": firmware["top1_c"], "c_images": firmware["images"],
        "host_equals_reference": firmware["host_equals_reference"], "mcu_equals_host": firmware["mcu_equals_host"],
        "mcu_images": mcu["images"], "vs_onnxruntime": firmware["vs_onnxruntime"],
        "vs_simulation": firmware["vs_simulation"],
        "predicted": predicted.to_dict(), "measured": measured.to_dict(),
        "prediction_error": result.verification.prediction_error,
        "model_ram": {"predicted_activation_peak": activation_peak, "firmware_ram": mcu["ram_bytes"],
                      "error": _relative(activation_peak, mcu["ram_bytes"]),
                      "arena_vs_activation_peak": _relative(activation_peak, firmware["arena_bytes"])},
        "arena": {"arena_bytes": firmware["arena_bytes"], "activation_sum_bytes": firmware["activation_sum_bytes"],
                  "lower_bound_bytes": lower, "over_lower_bound": firmware["arena_bytes"] / lower - 1},
        "flash_bytes": mcu["flash_bytes"], "ram_bytes": mcu["ram_bytes"], "stack_bytes": mcu["stack_bytes"],
        "const_bytes": firmware["const_bytes"], "objects": mcu["objects"],
        "instructions_per_inference": mcu["instructions_per_inference"],
        "plan": result.plan.to_dict(), "stages": result.stages,
        "misses": [asdict(m) for m in result.verification.misses],
        "paths": {k: str(v) for k, v in result.paths.items()},
    }


def goals(e: dict[str, Any]) -> dict[str, bool]:
    """Each of the issue's goals for one entry: met or not (absent where the run did not finish)."""
    if not e.get("feasible"):
        return {}
    errors = e["prediction_error"]
    out = {"fits_on_firmware": e["fits"],
           "memory_and_macs_fit": not [m for m in e["misses"] if m["field"] != "accuracy_drop"],
           "predictions_within_5pct": all(abs(errors.get(k, 1.0)) <= PREDICTION_TOLERANCE
                                          for k in ("flash_bytes", "ram_bytes")),
           "arena_within_10pct_of_lower_bound": e["arena"]["over_lower_bound"] <= ARENA_TOLERANCE,
           "c_equals_reference_and_mcu": bool(e["host_equals_reference"] and e["mcu_equals_host"])}
    if e["model"] == "resnet20":
        out["top1_c_at_least_89"] = e["top1_c"] >= RESNET_GOAL_TOP1
    return out


def _fits_text(e: dict[str, Any]) -> str:
    if e["fits"]:
        return "yes"
    return "**NO**: " + ", ".join(m["field"].removesuffix("_bytes").replace("_", " ") for m in e["misses"])


def _b(n: float) -> str:
    return f"{n:,.0f} B"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _yes(flag: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "-"}[flag]


def _met(flag: bool) -> str:
    return "met" if flag else "**NOT MET**"


def render(entries: dict[str, dict[str, Any]], toolchain: dict[str, str]) -> str:
    order = list(CASES)
    done = sorted(entries.values(), key=lambda e: (order.index(e["model"]) if e["model"] in order else 99,
                                                   e.get("ram_reserved_override") is not None))
    finished = [e for e in done if e.get("feasible")]
    lines = [
        "# Compressed CNNs as C firmware on an emulated Cortex-M4", "",
        f"`cnncompress.compress` with the `{DEVICE}` profile ends by exporting the model as integer C, building it "
        "with gcc on this host (all test images, bit for bit against the integer reference) and for the "
        "Cortex-M4 (`arm-none-eabi-gcc -O2`, 100 test images in QEMU `mps2-an386`). Flash = text + data of the "
        "model and kernel objects (weights, kernels and model code); RAM = their data + bss (the arena) + the "
        "painted stack; the budget's RAM adds the profile's 16 KiB reserve, and so does the planner's "
        "prediction, so the model-only columns compare the firmware's RAM with the planner's activation peak. "
        "Errors are (predicted - measured) / measured. Instructions are QEMU's executed-instruction count "
        "(`-icount`), not cycles. Rows marked `reserve 0 B` ran the same profile with `ram_reserved: 0`: the "
        "budget's RAM is then the firmware's own (data + bss + painted stack), nothing added. Every figure comes "
        "from `benchmarks/mcu.py`.", "",
        "## Memory: planned vs measured on the firmware", "",
        "| model (mode) | budget | flash predicted / measured (error) | RAM predicted / measured (error) | "
        "model-only RAM: planner's activation peak / arena / firmware RAM (arena + data + stack) (error) | "
        "arena / activation sum / lower bound | fits |",
        "|---|---|---|---|---|---|---|"]
    for e in done:
        if not e.get("feasible"):
            info = e["infeasible"]
            lines.append(f"| {_label(e)} | {_budget_text(e)} | infeasible: `{info['constraint']}` | "
                         "- | - | - | - |")
            continue
        p, m, err, r, a = e["predicted"], e["measured"], e["prediction_error"], e["model_ram"], e["arena"]
        lines.append(
            f"| {_label(e)} | {_budget_text(e)} | {_b(p['flash_bytes'])} / {_b(m['flash_bytes'])} "
            f"({_pct(err['flash_bytes'])}) | {_b(p['ram_bytes'])} / {_b(m['ram_bytes'])} ({_pct(err['ram_bytes'])}) | "
            f"{_b(r['predicted_activation_peak'])} / {_b(a['arena_bytes'])} / {_b(r['firmware_ram'])} "
            f"({_pct(r['error'])}; stack {_b(e['stack_bytes'])}) | {_b(a['arena_bytes'])} / "
            f"{_b(a['activation_sum_bytes'])} / {_b(a['lower_bound_bytes'])} ({_pct(a['over_lower_bound'])} over "
            f"the bound) | {_fits_text(e)} |")
    lines += ["", "## Accuracy and agreement", "",
              "| model (mode) | baseline fp32 top-1 | C build top-1 (images) | onnxruntime int8 top-1 | "
              "C vs onnxruntime: same top-1 / identical logits | host = integer reference | QEMU = host (images) | "
              "instructions per inference | MACs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in finished:
        v = e["vs_onnxruntime"]
        lines.append(
            f"| {_label(e)} | {e['baseline_top1']:.2f}% | **{e['top1_c']:.2f}%** ({e['c_images']:,}) | "
            f"{e['top1_onnxruntime']:.2f}% | {v['top1']:.2f} / {v['identical_logits']:.2f}% | "
            f"{_yes(e['host_equals_reference'])} | {_yes(e['mcu_equals_host'])} ({e['mcu_images']}) | "
            f"{e['instructions_per_inference'] / 1e6:.2f}M | {e['measured']['macs'] / 1e6:.2f}M |")
    lines += ["", "## Goals", ""]
    for e in done:
        if not e.get("feasible"):
            lines.append(f"- **{_label(e)}**: no plan fits, so nothing was built: {e['infeasible']['message']}.")
            continue
        g = goals(e)
        a, err = e["arena"], e["prediction_error"]
        limits = [f"{k.removesuffix('_bytes')} {e['measured'][k]:,} <= {e['budget'][k]:,}"
                  for k in ("flash_bytes", "ram_bytes", "macs") if e["budget"].get(k)]
        parts = [f"budget met on the firmware: {_met(g['fits_on_firmware'])} ({e['verdict']})",
                 f"flash, RAM and MACs within their limits, measured on the binary: "
                 f"{_met(g['memory_and_macs_fit'])} ({', '.join(limits)})",
                 f"flash and RAM predicted within 5%: {_met(g['predictions_within_5pct'])} "
                 f"({_pct(err['flash_bytes'])}, {_pct(err['ram_bytes'])}; model-only RAM "
                 f"{_pct(e['model_ram']['error'])})",
                 f"arena within 10% of the lower bound: {_met(g['arena_within_10pct_of_lower_bound'])} "
                 f"({_pct(a['over_lower_bound'])})",
                 f"C build = integer reference and QEMU = host: {_met(g['c_equals_reference_and_mcu'])}"]
        if "top1_c_at_least_89" in g:
            parts.append(f"top-1 of the C build >= {RESNET_GOAL_TOP1:.0f}% on the {e['c_images']:,} test images: "
                         f"{_met(g['top1_c_at_least_89'])} ({e['top1_c']:.2f}%)")
            if e["mode"] != "full":
                parts.append(f"{e['mode']} training (see Settings), so this top-1 is not the goal measured at full "
                             "fine-tuning")
        lines.append(f"- **{_label(e)}**: " + "; ".join(parts) + ".")
    if "resnet20" not in {e["model"] for e in done}:
        lines.append("- **resnet20**: not run (`--models resnet20`).")
    lines += ["", "## Settings", ""]
    for e in done:
        lines.append(f"- **{_label(e)}**: {_settings_text(e)}")
        note = CASES[e["model"]].note if e["model"] in CASES else ""
        if note:
            lines.append(f"  {note}")
    lines += ["", "Toolchain: " + ", ".join(f"{k} {v}" for k, v in toolchain.items()) + ".", ""]
    return "\n".join(lines)


def _budget_text(e: dict[str, Any]) -> str:
    b = e["budget"]
    parts = [f"flash {b['flash_bytes']:,.0f}", f"RAM {b['ram_bytes']:,.0f}"]
    if b.get("macs"):
        parts.append(f"MACs {b['macs'] / 1e6:g}M")
    return ", ".join(parts) + f", drop <= {b['max_accuracy_drop']:g} pt"


def _settings_text(e: dict[str, Any]) -> str:
    o, base = e["options"], e["baseline"]
    batches = o["max_batches_per_epoch"] or "all"
    train = base.get("train")
    source = base["source"] if not train else (
        f"trained here ({train['epochs']} epochs, lr {train['lr']}, {train['max_batches_per_epoch'] or 'all'} "
        f"batches/epoch, seed {train['seed']}, {train['seconds'] / 60:.1f} min"
        f"{', reloaded from cache' if base.get('cached') else ''})")
    stages = ", ".join(f"{s['name']} {s['seconds']:.0f} s" + (" (resumed)" if s.get("resumed") else "")
                       + (f" val {s['summary']['val_top1']:.2f}%" if "val_top1" in s.get("summary", {}) else "")
                       for s in e.get("stages", []))
    plan = e.get("plan") or {}
    choice = plan.get("choice", {})
    bits = sorted(set(choice.get("bits", {}).values()))
    return (f"baseline {source}; fine-tune {o['finetune_epochs']} epochs, QAT {o['qat_epochs']} epochs (run only "
            f"when the drop exceeds the limit), {batches} batches/epoch of {o['batch_size']}, sensitivity on "
            f"{o['sensitivity_images']} val images, prune ratios {o['prune_options']}, weight bits "
            f"{o['weight_bits']} (plan used {bits}); split {e['split']['train']:,} / {e['split']['val']:,} / "
            f"{e['split']['test']:,}; stages: {stages or '-'}; rounds: "
            f"{'; '.join(e.get('rounds', [])) or '-'}; {e['seconds']['total'] / 60:.1f} min in all "
            f"({e['threads']} torch threads, device `{o['device']}`). Command: `{e['command']}`.")


def toolchain_versions() -> dict[str, str]:
    versions = {}
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        done = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
        found = re.search(r"(?:version|\))\s+(\d+\.\d+(?:\.\d+)?)", done.stdout)
        versions[tool] = found.group(1) if found else "?"
    return versions


def _load_existing(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("results", {})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,lenet5", help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--smoke", action="store_true", help="tiny baselines and capped stages: checks the script")
    parser.add_argument("--finetune-epochs", type=int, help="override the case's fine-tuning epochs")
    parser.add_argument("--qat-epochs", type=int, help="override the case's QAT epochs")
    parser.add_argument("--max-batches", type=int, help="cap batches per training epoch (a time cap)")
    parser.add_argument("--sensitivity-images", type=int, help="override the planner's sensitivity images")
    parser.add_argument("--max-rounds", type=int, help="override the case's plan-measure rounds (each re-verifies "
                        "the C build on the whole test set)")
    parser.add_argument("--qemu-timeout", type=float, help="seconds the QEMU run of 100 images may take (default: "
                        "run_on_mcu's, which grows with the model's MACs: about 1,900 s for ResNet-20 at 20M MACs)")
    parser.add_argument("--ram-reserved", type=int, help="bytes the cortex-m4 profile reserves beside the firmware's "
                        "RAM (default its 16 KiB; 0: the budget's RAM is the firmware's own, stack included); the "
                        "run is recorded under MODEL-reserveN")
    parser.add_argument("--device", default="cpu", help="torch device for training: cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--data-dir", help="dataset folder (else $CNNCOMPRESS_DATA, ../shared/data)")
    parser.add_argument("--out", type=Path, help="folder for mcu.json / mcu.md (default results/, with --smoke "
                        "runs/mcu/smoke/ so that a smoke run never replaces a measured entry)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/mcu"), help="run folders, baseline cache")
    parser.add_argument("--rerun", action="store_true", help="run models already recorded with these settings")
    parser.add_argument("--fresh", action="store_true", help="discard earlier compress runs (keeps baselines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--render-only", action="store_true", help="rewrite mcu.md from mcu.json, run nothing")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(CASES)}")
    args.models = names
    if args.out is None:
        args.out = args.run_dir / "smoke" if args.smoke else Path("results")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.qemu_timeout is not None:
        longer_qemu_timeout(args.qemu_timeout)
    path = args.out / "mcu.json"
    if not args.render_only and missing_tools():
        raise SystemExit(f"{', '.join(missing_tools())} not found: apt-get install gcc-arm-none-eabi "
                         "libnewlib-arm-none-eabi qemu-system-arm")
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    toolchain = stored.get("toolchain") or {}
    if not args.render_only:
        toolchain = {**toolchain_versions(), "kernel_code_bytes": str(kernel_code_bytes(DEVICE)),
                     "python": platform.python_version(), "torch": torch.__version__}
    for name in [] if args.render_only else args.models:
        key = entry_key(name, args)
        earlier = _load_existing(path).get(key)
        options = case_options(CASES[name], args)
        if (earlier and not args.rerun and earlier.get("mode") == mode_name(CASES[name], options, args)
                and earlier.get("options") == json.loads(json.dumps(asdict(options)))):
            logging.info("%s: already recorded with these settings (--rerun to measure again)", key)
            continue
        entry = run_case(name, args)
        logging.info("%s: fits=%s in %.1f min", key, entry["fits"], entry["seconds"]["total"] / 60)
        entries = {**_load_existing(path), key: entry}  # re-read: another model's run may have written
        atomic_write_text(path, json.dumps({"toolchain": toolchain, "results": entries}, indent=2, default=str))
        atomic_write_text(args.out / "mcu.md", render(_load_existing(path), toolchain))
    entries = _load_existing(path)
    if args.render_only:
        atomic_write_text(args.out / "mcu.md", render(entries, toolchain))
    print(render(entries, toolchain))


if __name__ == "__main__":
    main()
