"""Compact architectures through the toolkit (issue 17): MobileNetV2, MobileNetV3-Small, EfficientNet-B0, ShuffleNetV2.

Per zoo model, trained here briefly on CIFAR-10 (the schedule is in the settings; these are short runs on
a shared CPU, not the architectures' potential):

1. ``baseline``: fp32 training from scratch on a training subset (validation images held out for ``compress``).
2. ``prune``: ``prune_channels(target_macs=0.5)`` (L1), accuracy right after, then a short fine-tune distilled
   from the unpruned model; the record's kept-whole channel sets and warnings are kept.
3. ``ptq-base`` / ``ptq-pruned``: W8A8 PTQ (MSE calibration) of the unpruned and the pruned model, exported as
   integer QDQ ONNX (``export_onnx_report``): simulated and onnxruntime top-1 on the test images, their
   agreement, the share of MACs that run as integer kernels and the float nodes.
4. ``compress``: ``cnncompress.compress`` from the unpruned model to a flash budget (``--flash-fraction`` of the
   fp32 weight bytes) and an accuracy-drop limit; fit checked on the written files.
5. ``latency``: fp32 and int8 ONNX models (unpruned, pruned, compressed, and a timing-only copy pruned to the
   same MACs with widths kept multiples of ``ROUND_TO``) in onnxruntime at batch 64, timed in one interleaved
   run (``compare_latency``); speedups are medians of per-round ratios with a 90% interval.
6. ``tp``: channel-graph build + prune time against Torch-Pruning 1.6 on the same model, both at a uniform
   channel ratio of 0.5 (L1), paired rounds in alternating order (as ``graph_speed.py`` does on ResNet-56).
7. ``ort-ops``: onnxruntime's own profile of the unpruned fp32 and int8 models: time share per operator type.

Every step is cached under ``--run-dir/<model>/`` (JSON per step plus checkpoints and ONNX files), so an
interrupted run continues where it stopped (``--redo STEP,...`` reruns steps; a failed step is recorded with
its error and not retried unless redone). Results of models not run now are kept in ``<out>.json``.

    python benchmarks/architectures.py                      # the CPU run (1.5 h on 2 cores shared with others)
    python benchmarks/architectures.py --models shufflenetv2 --redo latency
    python benchmarks/architectures.py --smoke              # tiny slices, a few minutes: checks the script
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from torch import nn

from cnncompress.analysis import compare_latency, count_macs, profile
from cnncompress.data import ImageSet, load_dataset
from cnncompress.export import (
    OnnxRuntimeModule,
    compare_top1,
    export_onnx_fp32,
    export_onnx_report,
    weight_storage_bytes,
)
from cnncompress.models import ModelSpec, load_model, save_checkpoint
from cnncompress.pipeline import BudgetInfeasible, CompressOptions, compress
from cnncompress.plan import Budget
from cnncompress.prune import prune_channels
from cnncompress.quant import quantize
from cnncompress.train import TrainConfig, evaluate, fit
from cnncompress.utils import atomic_write_text, command_line, cpu_name, seed_everything, write_result

log = logging.getLogger("architectures")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHAPE = (3, 32, 32)
# Reduced widths so that brief CPU training fits the time budget (train images/s with one thread on the
# loaded 2-core machine, measured before choosing: 53, 61, 45 and 91).
SPECS = {
    "mobilenetv2": ModelSpec("mobilenetv2", {"width_mult": 0.5}),
    "mobilenetv3_small": ModelSpec("mobilenetv3_small", {"width_mult": 1.0}),
    "efficientnet_b0": ModelSpec("efficientnet_b0", {"width_mult": 0.5, "depth_mult": 0.5}),
    "shufflenetv2": ModelSpec("shufflenetv2", {"width_mult": 0.5}),
}
# timing-only variant: pruned with widths kept multiples of this (onnxruntime's blocked kernels, see README)
ROUND_TO = 16
STEPS = ("baseline", "prune", "ptq-base", "ptq-pruned", "compress", "latency", "tp", "ort-ops")
# what each step needs from the steps before it
NEEDS = {"prune": ("baseline",), "ptq-base": ("baseline",), "ptq-pruned": ("prune",), "compress": ("baseline",),
         "latency": ("ptq-base",), "tp": ("baseline",), "ort-ops": ("ptq-base",)}
# settings that change what a cached step holds: a run directory refuses other values (use another --run-dir)
SCHEDULE_KEYS = ("epochs", "train_subset", "val_size", "lr", "finetune_epochs", "finetune_batches", "calib_size",
                 "seed", "flash_fraction", "max_drop", "compress_batches", "sensitivity_images", "test_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(SPECS), help=f"comma-separated, from {','.join(SPECS)}")
    p.add_argument("--epochs", type=int, default=2, help="baseline training epochs over the subset")
    p.add_argument("--train-subset", type=int, default=6000, help="training images (stratified, seeded)")
    p.add_argument("--val-size", type=int, default=2000, help="training images held out for compress's planner")
    p.add_argument("--test-size", type=int, default=2000, help="test images every accuracy is measured on")
    p.add_argument("--lr", type=float, default=0.1, help="baseline SGD learning rate (cosine)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="distilled fine-tuning after pruning")
    p.add_argument("--finetune-batches", type=int, default=40, help="batches of 128 per fine-tuning epoch")
    p.add_argument("--calib-size", type=int, default=512, help="PTQ calibration images (from the subset)")
    p.add_argument("--flash-fraction", type=float, default=0.125,
                   help="compress's flash budget as a fraction of the fp32 weight bytes (0.125: half of int8)")
    p.add_argument("--max-drop", type=float, default=3.0, help="compress's accuracy-drop limit, points")
    p.add_argument("--compress-batches", type=int, default=40,
                   help="batches of 128 per compress fine-tuning / QAT epoch (1 epoch each)")
    p.add_argument("--sensitivity-images", type=int, default=128, help="validation images for compress's planner")
    p.add_argument("--rounds", type=int, default=8, help="interleaved latency rounds")
    p.add_argument("--repeats", type=int, default=10, help="timed batch-64 runs per model per round")
    p.add_argument("--tp-rounds", type=int, default=7, help="paired rounds against Torch-Pruning")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and onnxruntime threads (1: two threads beside busy neighbours ran 3x slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=str(SHARED / "data"))
    p.add_argument("--run-dir", type=Path, default=None, help="step cache (default runs/architectures[/smoke])")
    p.add_argument("--out", type=Path, default=None, help="results stem (default results/architectures)")
    p.add_argument("--redo", default="", help=f"comma-separated steps to rerun, from {','.join(STEPS)}")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--render-only", action="store_true", help="rewrite <out>.md from <out>.json, run nothing")
    p.add_argument("--smoke", action="store_true", help="tiny slices of everything: checks the script end to end")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.train_subset, args.val_size, args.test_size, args.calib_size = 1, 256, 128, 128, 64
        args.finetune_batches, args.compress_batches, args.sensitivity_images = 2, 2, 32
        args.rounds, args.repeats, args.tp_rounds = 2, 2, 1
    args.run_dir = args.run_dir or ROOT / "runs" / "architectures" / ("smoke" if args.smoke else "brief")
    args.out = args.out or (args.run_dir / "architectures" if args.smoke else ROOT / "results" / "architectures")
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(SPECS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {','.join(SPECS)}")
    args.redo = {s for s in args.redo.split(",") if s}
    if args.redo - set(STEPS):
        p.error(f"unknown steps {sorted(args.redo - set(STEPS))}; choose from {','.join(STEPS)}")
    return args


class Data:
    """The images every model sees: training subset, held-out validation, calibration and test slices."""

    def __init__(self, args: argparse.Namespace) -> None:
        full = load_dataset("cifar10", "train", data_dir=args.data_dir)
        rest, self.val = full.split(args.val_size, seed=args.seed)
        self.train = rest.take(min(args.train_subset, len(rest)), seed=args.seed)
        self.calib = self.train.take(min(args.calib_size, len(self.train)), seed=args.seed + 1)
        test = load_dataset("cifar10", "test", data_dir=args.data_dir)
        self.test = test.take(min(args.test_size, len(test)), seed=args.seed)


def top1(model: nn.Module, data: ImageSet) -> float:
    return evaluate(model, data).top1


def costs(model: nn.Module) -> dict[str, int]:
    p = profile(model, SHAPE)
    return {"params": p.params, "macs": p.macs, "weight_bytes": p.weight_bytes}


class ModelRun:
    """One model's steps, each cached as ``<dir>/<step>.json`` next to its checkpoints and ONNX files."""

    def __init__(self, name: str, args: argparse.Namespace, data: Data) -> None:
        self.name, self.args, self.data, self.spec = name, args, data, SPECS[name]
        self.dir = args.run_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, dict[str, Any]] = {}
        self._check_settings()

    def _check_settings(self) -> None:
        settings = {"spec": self.spec.to_dict(), **{k: getattr(self.args, k) for k in SCHEDULE_KEYS}}
        path = self.dir / "settings.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old != settings:
                changed = sorted(k for k in settings if old.get(k) != settings[k])
                raise SystemExit(f"{self.dir} holds steps run with other settings ({', '.join(changed)}): "
                                 "give another --run-dir or delete it")
        else:
            atomic_write_text(path, json.dumps(settings, indent=2))

    def step(self, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached result of ``name``, else run it; an exception becomes the step's recorded error."""
        path = self.dir / f"{name}.json"
        if path.is_file() and name not in self.args.redo:
            self.results[name] = json.loads(path.read_text())
            log.info("%s %s: cached%s", self.name, name, " (failed)" if "error" in self.results[name] else "")
            return self.results[name]
        missing = [n for n in NEEDS.get(name, ()) if "error" in self.results.get(n, {"error": "not run"})]
        if missing:
            result = {"skipped": f"needs {', '.join(missing)}, which did not finish"}
            self.results[name] = result
            return result
        log.info("%s %s: running", self.name, name)
        began = time.perf_counter()
        try:
            result = run()
        except Exception as exc:  # a step's failure is a finding of this benchmark: record it, go on
            log.exception("%s %s failed", self.name, name)
            result = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc().splitlines()[-12:]}
        result["seconds"] = time.perf_counter() - began
        result["utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(path, json.dumps(result, indent=2, default=str))
        self.results[name] = result
        log.info("%s %s: %.0f s%s", self.name, name, result["seconds"], " FAILED" if "error" in result else "")
        return result

    # -- models written by the steps -------------------------------------------------------------

    def baseline_model(self) -> nn.Module:
        return load_model(self.dir / "baseline.pt", self.spec)[0]

    def pruned_model(self) -> nn.Module:
        return load_model(self.dir / "pruned.pt", self.spec)[0]

    # -- steps -----------------------------------------------------------------------------------

    def baseline(self) -> dict[str, Any]:
        a = self.args
        seed_everything(a.seed)
        model = self.spec.build()
        config = TrainConfig(epochs=a.epochs, batch_size=128, lr=a.lr, schedule="cosine", weight_decay=5e-4,
                             seed=a.seed, channels_last=True)
        began = time.perf_counter()
        record = fit(model, self.data.train, config, checkpoint=self.dir / "baseline-train.pt", resume=True,
                     progress=a.progress)
        train_seconds = time.perf_counter() - began
        save_checkpoint(self.dir / "baseline.pt", model, self.spec, train=asdict(config))
        trained_epochs = [h for h in record.history if "seconds" in h]
        images = len(self.data.train) // 128 * 128
        return {"spec": self.spec.to_dict(), "config": asdict(config), "history": record.history,
                "train_seconds": train_seconds,
                "train_images_per_s": images * len(trained_epochs) / max(sum(h["seconds"] for h in trained_epochs),
                                                                         1e-9),
                **costs(model), "test_top1": top1(model, self.data.test)}

    def prune(self) -> dict[str, Any]:
        a = self.args
        base = self.baseline_model()
        pruned, record = prune_channels(base, SHAPE, target_macs=0.5, criterion="l1", return_record=True)
        right_after = top1(pruned, self.data.test)
        config = TrainConfig(epochs=a.finetune_epochs, batch_size=128, lr=0.01, schedule="cosine", weight_decay=5e-4,
                             seed=a.seed, channels_last=True, max_batches_per_epoch=a.finetune_batches)
        history = fit(pruned, self.data.train, config, teacher=base, progress=a.progress).history
        save_checkpoint(self.dir / "pruned.pt", pruned, self.spec)
        return {"macs_fraction": record.macs_fraction, "params_fraction": record.params_fraction,
                **costs(pruned), "prune_seconds": record.seconds, "kept_whole": record.kept_whole,
                "warnings": record.warnings, "notes": record.notes, "top1_right_after": right_after,
                "finetune": {"config": asdict(config), "history": history},
                "test_top1": top1(pruned, self.data.test)}

    def ptq(self, variant: str) -> dict[str, Any]:
        model = self.baseline_model() if variant == "base" else self.pruned_model()
        export_onnx_fp32(model, self.dir / f"{variant}-fp32.onnx", SHAPE)
        began = time.perf_counter()
        qmodel = quantize(model, self.data.calib, weight_bits=8, act_bits=8, calibration="mse")
        quantize_seconds = time.perf_counter() - began
        report = export_onnx_report(qmodel, self.dir / f"{variant}-int8.onnx", SHAPE)
        session = OnnxRuntimeModule(report.path, self.args.threads)
        agree = compare_top1(qmodel, session, self.data.test)
        fp32_ort = top1(OnnxRuntimeModule(self.dir / f"{variant}-fp32.onnx", self.args.threads), self.data.test)
        return {**integer_share(report, model), "quantize_seconds": quantize_seconds,
                "simulated_top1": agree.top1_a, "onnxruntime_top1": agree.top1_b, "agreement": agree.agreement,
                "fp32_onnxruntime_top1": fp32_ort, "weight_bytes": weight_storage_bytes(qmodel),
                "onnx_file_bytes": report.path.stat().st_size}

    def compress(self) -> dict[str, Any]:
        a = self.args
        base = self.baseline_model()
        fp32_bytes = costs(base)["weight_bytes"]
        flash = int(round(fp32_bytes * a.flash_fraction / 1000)) * 1000
        budget = Budget.from_mapping({"flash_bytes": flash, "max_accuracy_drop": a.max_drop})
        options = CompressOptions(finetune_epochs=1, qat_epochs=1, lr=0.01, batch_size=128,
                                  max_batches_per_epoch=a.compress_batches, sensitivity_images=a.sensitivity_images,
                                  prune_options=(0.25, 0.5), weight_bits=(4, 6, 8), max_rounds=2, seed=a.seed)
        entry: dict[str, Any] = {"flash_limit_bytes": flash, "fp32_weight_bytes": fp32_bytes,
                                 "budget": budget.to_dict(), "options": asdict(options)}
        try:
            result = compress(base, budget, self.data.train, self.data.val, self.data.test, spec=self.spec,
                              output_dir=self.dir / "compress", options=options, resume=True,
                              progress=a.progress)
        except BudgetInfeasible as exc:
            return {**entry, "feasible": False, "fits": False, "infeasible": exc.result.to_dict()}
        measured = result.verification.measured.to_dict()
        deployable = Path(result.paths["deployable"])
        report = export_onnx_report(result.model, self.dir / "compressed-int8.onnx", SHAPE)
        choice = result.plan.choice if result.plan else None
        return {**entry, "feasible": True, "fits": result.fits, "verdict": result.verification.describe(),
                "measured": measured, "predicted": result.plan.predicted.to_dict() if result.plan else None,
                "prediction_error": result.verification.prediction_error,
                "deployable_file_bytes": deployable.stat().st_size,
                "flash_met_on_file": deployable.stat().st_size <= flash,
                "baseline_top1": result.baseline_top1, "top1_simulated": result.top1,
                "top1_onnxruntime": result.onnx_top1, "misses": [asdict(m) for m in result.verification.misses],
                "plan": {"prune": result.plan.prune_ratios() if result.plan else None,
                         "bits": dict(choice.bits) if choice else None,
                         "act_bits": choice.act_bits if choice else None},
                "stages": result.stages, "rounds": len({s["name"].split("-")[0] for s in result.stages}),
                **integer_share(report, None),
                "paths": {k: str(v) for k, v in result.paths.items()}}

    def rounded_variant(self) -> dict[str, Any]:
        """Timing-only models: the baseline pruned to half the MACs with widths kept multiples of
        ``ROUND_TO`` (not fine-tuned: latency does not depend on the weights), as fp32 and W8A8 ONNX."""
        fp32, int8 = self.dir / f"pruned{ROUND_TO}-fp32.onnx", self.dir / f"pruned{ROUND_TO}-int8.onnx"
        pruned, record = prune_channels(self.baseline_model(), SHAPE, target_macs=0.5, criterion="l1",
                                        round_to=ROUND_TO, return_record=True)
        if not fp32.is_file():
            export_onnx_fp32(pruned, fp32, SHAPE)
        if not int8.is_file():
            export_onnx_report(quantize(pruned, self.data.calib.take(min(64, len(self.data.calib)))), int8, SHAPE)
        return {"round_to": ROUND_TO, "macs_fraction": record.macs_fraction, **costs(pruned),
                "widths": sorted({m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)})}

    def latency(self) -> dict[str, Any]:
        a = self.args
        rounded = self.rounded_variant()
        files = {"fp32": "base-fp32.onnx", "int8": "base-int8.onnx", "pruned-fp32": "pruned-fp32.onnx",
                 "pruned-int8": "pruned-int8.onnx", "compressed": "compress/model.onnx",
                 "rounded-fp32": f"pruned{ROUND_TO}-fp32.onnx", "rounded-int8": f"pruned{ROUND_TO}-int8.onnx"}
        models = {k: self.dir / f for k, f in files.items() if (self.dir / f).is_file()}
        comparison = compare_latency(models, SHAPE, baseline="fp32", batch_sizes=(64,), backend="onnxruntime",
                                     rounds=a.rounds, warmup=2, repeats=a.repeats, threads=a.threads)
        pairs = {"int8 / fp32": ("int8", "fp32"), "pruned-int8 / pruned-fp32": ("pruned-int8", "pruned-fp32"),
                 "pruned-fp32 / fp32": ("pruned-fp32", "fp32"), "pruned-int8 / fp32": ("pruned-int8", "fp32"),
                 "compressed / fp32": ("compressed", "fp32"), "rounded-fp32 / fp32": ("rounded-fp32", "fp32"),
                 "rounded-int8 / fp32": ("rounded-int8", "fp32")}
        speedups = {label: asdict(comparison.speedup(m, 64, against=ref)) for label, (m, ref) in pairs.items()
                    if m in models and ref in models}
        return {"median_ms": {m: comparison.median_ms(m, 64) for m in models}, "speedup_b64": speedups,
                "rounded": rounded, "comparison": comparison.to_dict(), "load_average": os.getloadavg()}

    def tp(self) -> dict[str, Any]:
        import torch_pruning as tp

        from cnncompress.analysis.latency import paired_speedup

        base = self.baseline_model()
        head = [m for m in base.modules() if isinstance(m, nn.Linear)][-1]  # the classifier keeps its outputs

        def theirs(model: nn.Module) -> nn.Module:
            model = copy.deepcopy(model)
            ignored = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
            pruner = tp.pruner.MetaPruner(model, torch.randn(1, *SHAPE), pruning_ratio=0.5, ignored_layers=ignored,
                                          importance=tp.importance.MagnitudeImportance(p=1))
            pruner.step()
            return model

        def ours(model: nn.Module) -> nn.Module:
            return prune_channels(model, SHAPE, ratio=0.5, criterion="l1")

        tools = {"cnncompress": ours, "torch-pruning": theirs}
        base_macs = count_macs(base, SHAPE)
        entry: dict[str, Any] = {"ratio": 0.5, "torch_pruning": tp.__version__, "head_kept": head.out_features}
        reached: dict[str, Any] = {}
        for tool, run in tools.items():  # warm-up, the MACs each reaches, and whether the result runs
            try:
                pruned = run(base)
                with torch.no_grad():
                    pruned.eval()(torch.randn(2, *SHAPE))
                reached[tool] = count_macs(pruned, SHAPE) / base_macs
            except Exception as exc:  # Torch-Pruning failing on an architecture is a result
                reached[tool] = None
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                entry[f"{tool}_error"] = f"{type(exc).__name__}: {exc}"
                entry[f"{tool}_error_at"] = f"{'/'.join(Path(frame.filename).parts[-3:])}:{frame.lineno} ({frame.name})"
        entry["macs_fraction"] = reached
        if any(v is None for v in reached.values()):
            return entry
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        for r in range(self.args.tp_rounds):
            for tool in list(tools) if r % 2 == 0 else list(reversed(tools)):
                began = time.perf_counter()
                tools[tool](base)
                times[tool].append((time.perf_counter() - began) * 1000)
        ratio = paired_speedup(times["cnncompress"], times["torch-pruning"])
        return {**entry, "ms": times, "time_ratio": {"median": ratio.median, "low": ratio.low, "high": ratio.high}}

    def ort_ops(self) -> dict[str, Any]:
        """Where onnxruntime spends the batch-64 time of the unpruned fp32 and int8 models, by operator type
        (its own profiler, one thread): explains int8 speedups far from the MAC share."""
        import numpy as np

        shares = {}
        for variant in ("base-fp32", "base-int8"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.args.threads
            options.enable_profiling = True
            options.profile_file_prefix = str(self.dir / f"ort-profile-{variant}")
            session = ort.InferenceSession(str(self.dir / f"{variant}.onnx"), options,
                                           providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).standard_normal((64, *SHAPE), dtype=np.float32)
            runs = max(self.args.repeats, 2)
            for _ in range(runs + 1):
                session.run(None, {session.get_inputs()[0].name: x})
            trace = Path(session.end_profiling())
            events = json.loads(trace.read_text())
            trace.unlink()
            per_op = Counter()
            for event in events:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    per_op[event["args"]["op_name"]] += event["dur"]
            total = sum(per_op.values())
            shares[variant] = {"ms_per_run": total / (runs + 1) / 1000,
                               "share": {op: t / total for op, t in per_op.most_common()}}
        return shares

    def run_all(self) -> dict[str, Any]:
        began = time.perf_counter()
        self.step("baseline", self.baseline)
        self.step("prune", self.prune)
        self.step("ptq-base", lambda: self.ptq("base"))
        self.step("ptq-pruned", lambda: self.ptq("pruned"))
        self.step("compress", self.compress)
        self.step("latency", self.latency)
        self.step("tp", self.tp)
        self.step("ort-ops", self.ort_ops)
        log.info("%s: %.1f min this invocation", self.name, (time.perf_counter() - began) / 60)
        return {"model": self.name, "spec": self.spec.to_dict(), "steps": self.results,
                "step_seconds": {k: v.get("seconds") for k, v in self.results.items()}}


def integer_share(report, model: nn.Module | None) -> dict[str, Any]:
    """The export report's MAC-weighted integer share, with its MAC total checked against the profiler's."""
    total = sum(n.macs for n in report.nodes)
    out = {"integer_mac_share": report.integer_mac_share, "float_nodes": report.float_nodes,
           "generic_nodes": report.generic_nodes, "nodes": len(report.nodes), "report_macs": total,
           "float_node_macs": sum(n.macs for n in report.nodes if not n.integer)}
    if model is not None:
        out["profile_macs"] = count_macs(model, SHAPE)
    return out


# -- rendering ---------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _failed(step: dict[str, Any] | None) -> str | None:
    if step is None:
        return "not run"
    if "error" in step:
        return f"**failed**: {step['error'][:160]}"
    if "skipped" in step:
        return step["skipped"]
    return None


def _speed(lat: dict[str, Any], key: str) -> str:
    s = lat.get("speedup_b64", {}).get(key) if not _failed(lat) else None
    return "-" if s is None else f"{s['median']:.2f}x ({s['low']:.2f}-{s['high']:.2f})"


def _share(step: dict[str, Any]) -> str:
    if _failed(step):
        return "-"
    floats = len(step["float_nodes"])
    return f"{100 * step['integer_mac_share']:.1f}% ({floats} float node{'s' if floats != 1 else ''})"


def _compress_cell(c: dict[str, Any]) -> str:
    if _failed(c):
        return _failed(c)
    limit = f"{c['flash_limit_bytes'] / 1000:.0f} KB"
    if not c["feasible"]:
        return f"{limit}: infeasible ({c['infeasible'].get('constraint')})"
    met = "met" if c["flash_met_on_file"] else "**missed**"
    return (f"{limit}: {c['deployable_file_bytes']:,} B file ({met}), top-1 {_pct(c['top1_onnxruntime'])}%, "
            f"{'fits' if c['fits'] else '**does not fit**'}")


def _tp_cell(t: dict[str, Any]) -> str:
    if _failed(t):
        return _failed(t)
    if "torch-pruning_error" in t:
        return f"Torch-Pruning fails: {t['torch-pruning_error'][:80]} at {t.get('torch-pruning_error_at', '?')}"
    if "cnncompress_error" in t:
        return f"cnncompress fails: {t['cnncompress_error'][:80]}"
    r, macs = t["time_ratio"], t["macs_fraction"]
    same = "same MACs" if abs(macs["cnncompress"] - macs["torch-pruning"]) < 1e-9 else (
        f"MACs {macs['cnncompress']:.3f} vs {macs['torch-pruning']:.3f}")
    return f"{r['median']:.2f} ({r['low']:.2f}-{r['high']:.2f}), {same}"


def _spec_text(spec: dict[str, Any]) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in spec.get("kwargs", {}).items())
    return f"`{spec['factory']}`" + (f" ({kwargs})" if kwargs else "")


def render(payload: dict[str, Any]) -> str:
    s, entries = payload["settings"], payload["results"]
    lines = ["# Compact architectures through the toolkit (issue 17)", "",
             f"**Briefly trained models**: each trained from scratch here on {s['train_subset']:,} CIFAR-10 training "
             f"images for {s['epochs']} epochs (SGD lr {s['lr']}, cosine, batch 128, {s['threads']} torch thread), "
             "at reduced widths, to keep the whole run near an hour on a shared 2-core CPU. Their accuracies "
             "say what the toolkit does to them, not what the architectures can reach. Every accuracy is on the "
             f"same {s['test_size']:,} stratified CIFAR-10 test images (sampling error about +-1 pt).", "",
             "| model | params / MACs (fp32) | fp32 | W8A8 PTQ (ort) | pruned to 1/2 MACs: right after / fine-tuned "
             "| pruned + W8A8 (ort) | compress (ort) |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, e in entries.items():
        st = e["steps"]
        b, pr, qb, qp, c = (st.get(k, {}) for k in ("baseline", "prune", "ptq-base", "ptq-pruned", "compress"))
        cells = [f"{name} {_spec_text(e['spec'])}",
                 "-" if _failed(b) else f"{b['params'] / 1e6:.2f}M / {b['macs'] / 1e6:.1f}M",
                 _failed(b) or f"{b['test_top1']:.2f}",
                 _failed(qb) or f"{qb['onnxruntime_top1']:.2f} (agree {qb['agreement']:.1f}%)",
                 _failed(pr) or f"{pr['macs_fraction']:.3f} MACs: {pr['top1_right_after']:.2f} / {pr['test_top1']:.2f}",
                 _failed(qp) or f"{qp['onnxruntime_top1']:.2f} (agree {qp['agreement']:.1f}%)",
                 (_failed(c) or ("-" if not c.get("feasible") else _pct(c["top1_onnxruntime"])))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Deployment in onnxruntime: integer QDQ export; batch 64, one thread; the models of a row timed in "
              "one interleaved run; speedup over the unpruned fp32 model = median of per-round ratios (90% bootstrap "
              "interval). 'pruned' is the fine-tuned half-MACs model above (widths as pruned); 'pruned x16' is the "
              f"same target with every width kept a multiple of {ROUND_TO} (`round_to={ROUND_TO}`), timed only "
              "(not fine-tuned).", "",
              "| model | int8 MAC share (float nodes): unpruned / pruned / compressed | fp32 ms | int8 | pruned fp32 "
              "| pruned int8 | pruned x16 fp32 / int8 | compressed |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in entries.items():
        st = e["steps"]
        lat = st.get("latency", {})
        shares = " / ".join(_share(st.get(k, {})) for k in ("ptq-base", "ptq-pruned", "compress"))
        fp32_ms = "-" if _failed(lat) else f"{lat['median_ms']['fp32']:.1f}"
        lines.append(f"| {name} | {shares} | {fp32_ms} | {_speed(lat, 'int8 / fp32')} | "
                     f"{_speed(lat, 'pruned-fp32 / fp32')} | {_speed(lat, 'pruned-int8 / fp32')} | "
                     f"{_speed(lat, 'rounded-fp32 / fp32')} / {_speed(lat, 'rounded-int8 / fp32')} | "
                     f"{_speed(lat, 'compressed / fp32')} |")
    lines += ["", "| model | compress to the flash budget (verified on the written file) | graph+prune time / "
              "Torch-Pruning's (interval), MACs reached |", "|---|---|---|"]
    for name, e in entries.items():
        st = e["steps"]
        lines.append(f"| {name} | {_compress_cell(st.get('compress', {}))} | {_tp_cell(st.get('tp', {}))} |")
    lines += ["", *_notes(payload), ""]
    return "\n".join(lines)


def _notes(payload: dict[str, Any]) -> list[str]:
    s, entries = payload["settings"], payload["results"]
    out = ["Notes:", "",
           f"- Pruning: `prune_channels(target_macs=0.5, criterion='l1')`, then {s['finetune_epochs']} epoch(s) of "
           f"{s['finetune_batches']} batches of distilled fine-tuning (lr 0.01). PTQ: W8A8, per-channel weights, MSE "
           f"calibration on {s['calib_size']} training images; 'agree' is the share of test images where onnxruntime "
           "and the simulation pick the same class.",
           f"- compress: flash limit = {s['flash_fraction']} of the fp32 weight bytes (rounded to 1 KB), accuracy drop "
           f"<= {s['max_drop']} pt; planner choices: channel ratios 0.25/0.5, weight bits 4/6/8, sensitivity on "
           f"{s['sensitivity_images']} of {s['val_size']:,} held-out training images; fine-tune and QAT "
           f"{s['compress_batches']} batches each, at most 2 rounds. Flash is the byte size of the written "
           "`.cnnc`; 'fits' is compress's own verdict on the written files (flash and the onnxruntime accuracy drop).",
           "- Integer MAC share: from `export_onnx_report` (MACs per fx node); float nodes are islands between "
           "DequantizeLinear and QuantizeLinear (activations such as hardswish carry no MACs).",
           "- Torch-Pruning column: both tools prune every channel group at a uniform ratio of 0.5 (L1; the classifier "
           "keeps its outputs); a run copies the model, builds the graph and shrinks it; ratio = cnncompress time / "
           f"Torch-Pruning time, median of {s['tp_rounds']} paired rounds. On ResNet-56 (`benchmarks/graph_speed.py`): "
           f"{payload.get('graph_speed_resnet56') or 'not measured'}."]
    for name, e in entries.items():
        pr, c = e["steps"].get("prune", {}), e["steps"].get("compress", {})
        extra = []
        if not _failed(pr) and (pr.get("warnings") or pr.get("kept_whole")):
            kept = "; ".join(f"{', '.join(k.get('reasons', []))}" for k in pr["kept_whole"])
            extra.append(f"pruning kept whole: {kept or 'nothing'}" + (
                f"; warnings: {'; '.join(pr['warnings'])}" if pr["warnings"] else ""))
        if not _failed(c) and c.get("feasible"):
            extra.append(f"compress: {c['verdict']} after {c.get('rounds', '?')} round(s); {_plan_text(c)}")
        ops = e["steps"].get("ort-ops")
        if ops and not _failed(ops):
            extra.append("onnxruntime time by operator at batch 64 (one profiled run): " + "; ".join(
                f"{v.split('-')[1]} {ops[v]['ms_per_run']:.0f} ms: " + ", ".join(
                    f"{op} {100 * share:.0f}%" for op, share in list(ops[v]["share"].items())[:5])
                for v in ("base-fp32", "base-int8")))
        seconds = {k: v for k, v in e["step_seconds"].items() if v is not None}
        extra.append("step seconds " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
        out.append(f"- {name}: " + "; ".join(extra) + ".")
    out.append(f"- Measured {payload['date']}, torch {s['torch']}, onnxruntime {s['onnxruntime']}, {s['cpu']}. "
               "Commands (later ones rerun cached steps or models): " + "; ".join(
                   f"`{i['command']}` ({i['wall_minutes']:.1f} min, {i['utc'][:16]})"
                   for i in payload.get("invocations") or [{"command": s.get("command"), "utc": payload["date"],
                                                            "wall_minutes": s.get("wall_minutes", 0.0)}]) + ".")
    return out


def _plan_text(c: dict[str, Any]) -> str:
    """The final plan in a line: layers pruned, bits histogram, predicted against measured flash."""
    plan, predicted = c["plan"], c.get("predicted") or {}
    ratios = Counter((plan["prune"] or {}).values())
    bits = Counter((plan["bits"] or {}).values())
    pruned = ", ".join(f"{n} at {r:.2f}" for r, n in sorted(ratios.items())) or "none"
    widths = ", ".join(f"{n} at {b} bits" for b, n in sorted(bits.items()))
    flash = predicted.get("flash_bytes")
    guess = f"predicted flash {flash:,.0f} B, " if flash else ""
    stages = ", ".join(f"{st['name']} {st['seconds']:.0f} s" for st in c["stages"])
    return (f"layers with channels pruned: {pruned}; weights: {widths}; {guess}"
            f"written {c['deployable_file_bytes']:,} B; stages {stages}")


def graph_speed_text() -> str | None:
    path = ROOT / "results" / "graph_speed.json"
    if not path.is_file():
        return None
    g = json.loads(path.read_text())
    t = g["time_ratio"]
    return (f"{t['median']:.2f} ({t['low']:.2f}-{t['high']:.2f}), {g['rounds']} paired rounds, same MACs "
            f"({g['macs_fraction']:.4f}), residual stream kept, {g['utc'][:10]}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = args.out.with_suffix(".json")
    old = json.loads(path.read_text()) if path.is_file() else None
    if args.render_only:
        if old is None:
            raise SystemExit(f"{path} not found: nothing to render")
        atomic_write_text(args.out.with_suffix(".md"), render(old))
        print(render(old))
        return
    old = old or {"results": {}}
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    data = Data(args)
    log.info("data: train %d, val %d, calib %d, test %d", len(data.train), len(data.val), len(data.calib),
             len(data.test))
    settings = {**{k: v for k, v in vars(args).items() if k in SCHEDULE_KEYS},
                "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats, "tp_rounds": args.tp_rounds,
                "smoke": args.smoke, "torch": torch.__version__, "onnxruntime": ort.__version__, "cpu": cpu_name()}
    invocations = old.get("invocations") or ([{k: old["settings"].get(k) for k in ("command", "wall_minutes")}
                                              | {"utc": old["date"]}] if "settings" in old else [])
    this = {"command": command_line(), "models": args.models, "redo": sorted(args.redo)}
    results = dict(old["results"])
    for name in args.models:
        results[name] = ModelRun(name, args, data).run_all()
        this.update(wall_minutes=(time.perf_counter() - began) / 60,
                    utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        order = [n for n in SPECS if n in results]
        payload = {"date": this["utc"], "settings": settings, "invocations": [*invocations, this],
                   "graph_speed_resnet56": graph_speed_text(), "results": {n: results[n] for n in order}}
        write_result(args.out, payload, render(payload))  # after every model: a partial run leaves its rows
    print(render(payload))


if __name__ == "__main__":
    main()
