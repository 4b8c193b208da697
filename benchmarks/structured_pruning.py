"""Structured pruning of the shared pretrained ResNet-56 (93.39%) to 50% MACs, with every criterion.

Per criterion: accuracy right after pruning and after fine-tuning (distilled from the unpruned
model), parameters, MACs, and latency speedup (torch and onnxruntime, batch 1 and 64) against the
unpruned model measured in the same run. Side by side, in the same run: Torch-Pruning (the
``bench`` extra) with the same criterion and MACs target, timing graph building + pruning, the MACs
reached (counted by the same profiler) and accuracy right after pruning. Literature rows are quoted
from the papers, not measured. Writes ``<out>.json`` and ``<out>.md``.

Every criterion prunes inside the residual blocks and keeps the residual stream whole (the shortcut
channels, ``RESIDUAL_STREAM``); ``--all-layers`` adds rows that prune the stream too, and ``--fast``
and ``--faster`` rows with the latency-aware widths ``ALLOCATIONS`` (timed by ``latency_allocation.py``).
Speedups pair the models by timing round (``cnncompress.analysis.compare_latency``).

    python benchmarks/structured_pruning.py                  # CPU quick mode (under an hour on 2 cores)
    python benchmarks/structured_pruning.py --device cuda    # full mode (long fine-tuning, GPU)
    python benchmarks/structured_pruning.py --finetuned DIR  # full mode from checkpoints fine-tuned elsewhere
    python benchmarks/structured_pruning.py --smoke          # seconds: checks the script end to end

``--finetuned`` takes the folder that ``benchmarks/gpu_jobs.py run`` fills on a lent GPU (which cannot
read ../shared): the fine-tuned models are evaluated on the full test set and timed here.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.analysis import LatencyComparison, compare_latency, count_macs
from cnncompress.data import ImageSet, load_dataset
from cnncompress.models import ModelSpec, load_model
from cnncompress.prune import Taylor, prune_channels
from cnncompress.train import TrainConfig, evaluate, fit
from cnncompress.utils import command_line, seed_everything, write_result

log = logging.getLogger("structured_pruning")
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "pretrained" / "resnet56-4bfd9763.th"
SHAPE = (3, 32, 32)
CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "taylor", "random")
TAYLOR_BATCHES = 8
# Residual-stream layers of the option-A ResNet: kept whole in the side-by-side setting, because
# Torch-Pruning cannot rewrite the shortcut's constant channel padding (see ``torch_pruning_default``).
RESIDUAL_STREAM = ("conv1", "layer*.conv2", "linear")
# Fraction of each stage's block-internal channels dropped, leaving 8/16/16 of 16/32/64: every width
# the runtime computes at 32x32 and below stays a multiple of its 16-channel block past stage 1 (see
# benchmarks/latency_allocation.py, results/latency_allocation.md: the uniform 8/16/32 split halves
# MACs but not onnxruntime's batch-64 time).
FAST_ALLOCATION = {"layer1.*.conv1": 0.5, "layer2.*.conv1": 0.5, "layer3.*.conv1": 0.75}
# 4/16/16: stage 1 narrower still. Below its 16-channel block onnxruntime pads stage 1's first conv of
# each block, but the second reads the narrower input directly: about 1.1x faster than 8/16/16 at
# batch 64 (results/latency_allocation.md), for 0.5 pt of accuracy (results/structured_pruning_fast.md).
FASTER_ALLOCATION = FAST_ALLOCATION | {"layer1.*.conv1": 0.75}
ALLOCATIONS = {"fast": FAST_ALLOCATION, "faster": FASTER_ALLOCATION}  # fixed widths instead of a MACs target

LITERATURE = [  # ResNet-56 on CIFAR-10 as reported by the papers (not measured here)
    {"method": "HRank (Lin et al., CVPR 2020)", "baseline_top1": 93.26, "pruned_top1": 93.17,
     "macs_reduction": "50.0% fewer FLOPs"},
    {"method": "FPGM (He et al., CVPR 2019)", "baseline_top1": None, "pruned_top1": None,
     "macs_reduction": "1.70x (-0.33 pt accuracy)"},
    {"method": "DepGraph (Fang et al., CVPR 2023)", "baseline_top1": 93.53, "pruned_top1": 93.77,
     "macs_reduction": "2.13x"},
]


@dataclass(frozen=True)
class Mode:
    epochs: int
    max_batches: int | None  # fine-tuning batches per epoch (None: the whole training set)
    batch_size: int
    lr: float
    test_images: int | None  # stratified test subset (None: all 10,000)
    repeats: int  # timed runs per model, batch size and round
    latency_rounds: int  # rounds that time every model in turn; speedups pair models by round
    criteria: tuple[str, ...] = CRITERIA


MODES = {
    "quick": Mode(epochs=1, max_batches=60, batch_size=128, lr=0.01, test_images=2000, repeats=10, latency_rounds=6),
    "full": Mode(epochs=60, max_batches=None, batch_size=128, lr=0.02, test_images=None, repeats=20, latency_rounds=15),
    "smoke": Mode(epochs=1, max_batches=2, batch_size=32, lr=0.01, test_images=200, repeats=3, latency_rounds=2,
                  criteria=("l1",)),
}


@dataclass(frozen=True)
class Variant:
    """A criterion and its allocation: residual stream kept (default), pruned too (``all``), or fixed
    latency-aware widths (``fast``, ``faster``: see ``ALLOCATIONS``)."""

    criterion: str
    allocation: str = ""  # "", "all", "fast" or "faster"

    @property
    def name(self) -> str:
        return f"{self.criterion}-{self.allocation}" if self.allocation else self.criterion

    @property
    def all_layers(self) -> bool:
        return self.allocation == "all"

    @property
    def exclude(self) -> tuple[str, ...]:
        return () if self.all_layers else RESIDUAL_STREAM


def variants(criteria: tuple[str, ...], all_layers: tuple[str, ...], fast: tuple[str, ...] = (),
             faster: tuple[str, ...] = ()) -> list[Variant]:
    return ([Variant(c) for c in criteria] + [Variant(c, "all") for c in all_layers]
            + [Variant(c, "fast") for c in fast] + [Variant(c, "faster") for c in faster])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), help="default: full with --device cuda, else quick")
    p.add_argument("--smoke", action="store_true", help="same as --mode smoke")
    p.add_argument("--device", default="cpu", help="training/evaluation device (cpu or cuda)")
    p.add_argument("--criteria", help=f"comma-separated subset of {','.join(CRITERIA)}")
    p.add_argument("--all-layers", default="fpgm",
                   help="criteria also run with the residual stream pruned (comma-separated; '' for none)")
    p.add_argument("--fast", default="",
                   help="criteria also run with the latency-aware allocation FAST_ALLOCATION (comma-separated)")
    p.add_argument("--faster", default="", help="criteria also run with FASTER_ALLOCATION (comma-separated)")
    p.add_argument("--finetuned", type=Path, help="folder of fine-tuned checkpoints from gpu_jobs.py (full mode)")
    p.add_argument("--target-macs", type=float, default=0.5)
    p.add_argument("--epochs", type=int, help="override the mode's fine-tuning epochs")
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--data-dir", help="folder with CIFAR-10 (default: the library's search path)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output prefix (default results/structured_pruning; runs/... for --smoke)")
    args = p.parse_args(argv)
    full = args.device.startswith("cuda") or args.finetuned is not None
    args.mode = "smoke" if args.smoke else args.mode or ("full" if full else "quick")
    mode = MODES[args.mode]
    args.all_layers = tuple(c for c in args.all_layers.split(",") if c) if args.mode != "smoke" else ()
    args.fast = tuple(c for c in args.fast.split(",") if c)
    args.faster = tuple(c for c in args.faster.split(",") if c)
    if args.criteria is not None:  # '' runs none (e.g. only --fast rows)
        mode = replace(mode, criteria=tuple(c for c in args.criteria.split(",") if c))
    unknown = set(mode.criteria + args.all_layers + args.fast + args.faster) - set(CRITERIA)
    if unknown:
        p.error(f"unknown criteria {sorted(unknown)}")
    if args.epochs is not None:
        mode = replace(mode, epochs=args.epochs)
    args.settings = mode
    default_out = ROOT / ("runs/structured_pruning_smoke" if args.mode == "smoke" else "results/structured_pruning")
    args.out = Path(args.out) if args.out else default_out
    return args


# ------------------------------------------------------------------------------------------ measuring
def compare(models: dict[str, nn.Module], mode: Mode, device: str) -> dict[str, LatencyComparison]:
    """Paired timings against the unpruned model: torch on ``device``, onnxruntime on the CPU."""
    out = {}
    for backend in ("torch", "onnxruntime"):
        on = {name: copy.deepcopy(m).to(device if backend == "torch" else "cpu").eval() for name, m in models.items()}
        out[backend] = compare_latency(on, SHAPE, "unpruned", (1, 64), backend, rounds=mode.latency_rounds,
                                       repeats=mode.repeats)
    return out


def timings(comparisons: dict[str, LatencyComparison], name: str) -> dict[str, Any]:
    """A model's median ms per backend and batch size, and (but the baseline's) its paired speedups."""
    out: dict[str, Any] = {"latency_ms": {b: {str(bs): c.median_ms(name, bs) for bs in (1, 64)}
                                          for b, c in comparisons.items()}}
    if name != "unpruned":
        speedups = {b: {str(bs): c.speedup(name, bs) for bs in (1, 64)} for b, c in comparisons.items()}
        out["speedup"] = {b: {bs: s.median for bs, s in per.items()} for b, per in speedups.items()}
        out["speedup_interval"] = {b: {bs: [s.low, s.high] for bs, s in per.items()} for b, per in speedups.items()}
    return out


def top1(model: nn.Module, test: ImageSet, device: str) -> float:
    result = evaluate(model, test, device=device)
    model.cpu()
    return result.top1


def costs(model: nn.Module) -> dict[str, int]:
    return {"macs": count_macs(model, SHAPE), "params": sum(p.numel() for p in model.parameters())}


def taylor_batches(train: ImageSet, n: int = TAYLOR_BATCHES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same labelled batches for both tools' Taylor criterion."""
    batches = []
    for x, y in train.batches(64, shuffle=True, seed=0):
        batches.append((x, y))
        if len(batches) == n:
            break
    return batches


# ------------------------------------------------------------------------------------ cnncompress
def criterion_args(variant: Variant, train: ImageSet) -> dict[str, Any]:
    """``prune_channels``'s criterion and data for ``variant`` (Taylor needs labelled batches)."""
    if variant.criterion == "taylor":
        return {"criterion": Taylor(TAYLOR_BATCHES), "data": taylor_batches(train)}
    return {"criterion": variant.criterion}


def prune_variant(base: nn.Module, variant: Variant, train: ImageSet, target_macs: float):
    """``(pruned, record, seconds)``: ``variant`` applied to a copy of ``base``, bisected to ``target_macs``
    (the ``ALLOCATIONS`` fix their widths instead)."""
    target = ({"ratio": 0.0, "per_layer": ALLOCATIONS[variant.allocation]} if variant.allocation in ALLOCATIONS
              else {"target_macs": target_macs})
    seed_everything(0)  # the random criterion draws the same channels here and on a GPU machine
    began = time.perf_counter()
    pruned, record = prune_channels(base, SHAPE, **target, **criterion_args(variant, train),
                                    exclude=variant.exclude, return_record=True)
    return pruned, record, time.perf_counter() - began


def narrowed(trained: nn.Module, like: nn.Module, variant: Variant, train: ImageSet) -> nn.Module:
    """``trained`` pruned by ``variant``'s criterion to the conv widths of ``like``, a narrower variant.

    Starting a narrower variant from a wider one's fine-tuned weights keeps what that training learnt.
    """
    want = {name: m.out_channels for name, m in like.named_modules() if isinstance(m, nn.Conv2d)}
    per_layer = {name: 1 - want[name] / m.out_channels for name, m in trained.named_modules()
                 if isinstance(m, nn.Conv2d) and want[name] != m.out_channels}
    seed_everything(0)
    model = prune_channels(trained, SHAPE, ratio=0.0, per_layer=per_layer, **criterion_args(variant, train),
                           exclude=variant.exclude)
    if shapes(model) != shapes(like):
        raise ValueError(f"pruning the trained model did not reach the widths of {variant.name}")
    return model


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def finetune_config(mode: Mode, device: str, seed: int, epochs: int | None = None) -> TrainConfig:
    """The fine-tuning recipe of ``mode`` (distillation from the unpruned model is added by the caller)."""
    return TrainConfig(epochs=mode.epochs if epochs is None else epochs, batch_size=mode.batch_size, lr=mode.lr,
                       seed=seed, device=device, channels_last=device == "cpu", max_batches_per_epoch=mode.max_batches)


def finetuned_elsewhere(folder: Path, variant: Variant, pruned: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned checkpoint of ``variant`` from ``folder`` (gpu_jobs.py), checked against ``pruned``."""
    path = folder / f"prune-{variant.name}.pt"
    model, _, _ = load_model(path)
    if shapes(model) != shapes(pruned):
        raise ValueError(f"{path} has other layer widths than {variant.name} pruned here: not the same pruning")
    return model, json.loads((folder / f"prune-{variant.name}.json").read_text())


def run_variant(variant: Variant, base: nn.Module, train: ImageSet, test: ImageSet, args
                ) -> tuple[dict[str, Any], nn.Module]:
    """Prune, fine-tune (or load the fine-tuned checkpoint) and evaluate one variant; its row and model."""
    mode: Mode = args.settings
    pruned, record, prune_seconds = prune_variant(base, variant, train, args.target_macs)
    row: dict[str, Any] = {"criterion": variant.name, "allocation": variant.allocation or "uniform",
                           "residual_stream": "pruned" if variant.all_layers else "kept",
                           "prune_seconds": prune_seconds, "ratio": record.ratio, "search_steps": len(record.search),
                           **costs(pruned), "macs_fraction": record.macs_fraction,
                           "params_fraction": record.params_fraction,
                           "top1_pruned": top1(pruned, test, args.device)}
    if args.finetuned:
        pruned, job = finetuned_elsewhere(args.finetuned, variant, pruned)
        row.update(finetune_seconds=job["train_seconds"], epochs=job["epochs"], finetuned_on=job["device"],
                   train_images=job["train_images"], history=job["history"], schedule=job.get("schedule"))
    else:
        began = time.perf_counter()
        fit(pruned, train, finetune_config(mode, args.device, args.seed), teacher=copy.deepcopy(base),
            progress=sys.stderr.isatty())
        row.update(finetune_seconds=time.perf_counter() - began, epochs=mode.epochs, finetuned_on=args.device)
    row["top1_finetuned"] = top1(pruned, test, args.device)
    log.info("%s: %s", variant.name, {k: v for k, v in row.items() if not isinstance(v, dict | list)})
    return row, pruned


# --------------------------------------------------------------------------------- Torch-Pruning
def tp_importance(tp, criterion: str):
    imp = tp.importance
    return {"l1": lambda: imp.MagnitudeImportance(p=1), "l2": lambda: imp.MagnitudeImportance(p=2),
            "fpgm": imp.FPGMImportance, "bn_scale": imp.BNScaleImportance, "taylor": imp.TaylorImportance,
            "random": imp.RandomImportance}[criterion]()


def tp_prune(tp, base: nn.Module, criterion: str, ratio: float, batches, ignore_residual: bool) -> nn.Module:
    """One Torch-Pruning run at ``ratio`` on a copy of ``base``: build its graph, score, prune."""
    model = copy.deepcopy(base).eval()
    ignored = [model.get_submodule(n) for n, _ in model.named_modules()
               if ignore_residual and _is_residual(n)] or [model.linear]
    if criterion == "taylor":
        model.zero_grad()
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, *SHAPE), importance=tp_importance(tp, criterion),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def ours_prune(base: nn.Module, criterion: str, ratio: float, batches) -> nn.Module:
    """cnncompress at ``ratio`` in the side-by-side setting (residual stream kept)."""
    importance = Taylor(TAYLOR_BATCHES) if criterion == "taylor" else criterion
    return prune_channels(base, SHAPE, ratio=ratio, criterion=importance, data=batches, exclude=RESIDUAL_STREAM)


def _is_residual(name: str) -> bool:
    return any(fnmatchcase(name, p) for p in RESIDUAL_STREAM)


def bisect_ratio(prune_at, base_macs: int, target: float, steps: int = 25) -> tuple[float, nn.Module, int]:
    """Bisect a prune ratio until MACs are within 2% of ``target``: the same search for both tools."""
    lo, hi, best, tries = 0.0, 0.95, None, 0
    while tries < steps:
        tries += 1
        mid = (lo + hi) / 2
        model = prune_at(mid)
        got = count_macs(model, SHAPE) / base_macs
        if best is None or abs(got - target) < abs(best[2] - target):
            best = (mid, model, got)
        if abs(got / target - 1) <= 0.02:
            break
        lo, hi = (mid, hi) if got > target else (lo, mid)
    return best[0], best[1], tries


def side_by_side(base: nn.Module, train: ImageSet, test: ImageSet, args) -> dict[str, Any]:
    """Both tools, residual stream kept, same criterion and MACs target; timed graph+prune at the found ratio."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {"error": "torch-pruning is not installed: pip install -c constraints.txt -e '.[bench]'"}
    base_macs = count_macs(base, SHAPE)
    rows = []
    for criterion in args.settings.criteria:
        batches = taylor_batches(train) if criterion == "taylor" else None
        tools = {
            "torch-pruning": lambda r, c=criterion, b=batches: tp_prune(tp, base, c, r, b, ignore_residual=True),
            "cnncompress": lambda r, c=criterion, b=batches: ours_prune(base, c, r, b),
        }
        for tool, prune_at in tools.items():
            began = time.perf_counter()
            ratio, _, tries = bisect_ratio(prune_at, base_macs, args.target_macs)
            search = time.perf_counter() - began
            began = time.perf_counter()
            model = prune_at(ratio)
            seconds = time.perf_counter() - began
            rows.append({"tool": tool, "criterion": criterion, "ratio": ratio, "graph_and_prune_seconds": seconds,
                         "search_seconds": search, "search_steps": tries,
                         "macs_fraction": count_macs(model, SHAPE) / base_macs,
                         "top1_pruned": top1(model, test, args.device)})
            log.info("side by side: %s", rows[-1])
    return {"version": tp.__version__, "setting": f"residual stream kept whole ({', '.join(RESIDUAL_STREAM)}); "
            "uniform ratio bisected to the MACs target by the same search for both tools",
            "rows": rows, "torch_pruning_default": torch_pruning_default(tp, base)}


def torch_pruning_default(tp, base: nn.Module) -> str:
    """What Torch-Pruning does to the option-A ResNet when the residual stream is not protected."""
    try:
        model = tp_prune(tp, base, "l1", 0.3, None, ignore_residual=False)
        model(torch.randn(2, *SHAPE))
    except Exception as exc:  # report, don't hide, the third-party failure
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return "runs"


# --------------------------------------------------------------------------------------- reporting
def environment(args) -> dict[str, Any]:
    return {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "device": args.device,
            "cuda_device": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}


def finetuning(result: dict[str, Any]) -> str:
    """Where and how long the rows were fine-tuned, in words."""
    s, rows = result["settings"], result["criteria"]
    if not s.get("finetuned_from"):
        return f"{s['epochs']} epoch(s) x {s['max_batches'] or 'all'} batches here"
    job = rows[0]
    epochs = "; ".join(f"{r['criterion']}: {r.get('schedule') or str(r['epochs']) + ' epochs'}" for r in rows)
    return (f"elsewhere by `python benchmarks/gpu_jobs.py`, last on {job['finetuned_on']} "
            f"({epochs}; epochs sized to each call's time budget; {job['train_images']} training images, "
            "2,000 held out for validation)")


def speedup_cell(median: float, interval: list[float]) -> str:
    """A speedup with its bootstrap interval, for a table cell."""
    return f"{median:.2f}x ({interval[0]:.2f}-{interval[1]:.2f})"


def render(result: dict[str, Any]) -> str:
    s, base = result["settings"], result["baseline"]
    schedule = "" if s.get("finetuned_from") else f", cosine from lr {s['lr']}"  # else each job's own schedule
    lines = [f"# Structured pruning: ResNet-56, MACs target {s['target_macs']:.0%} ({result['mode']} mode)", "",
             f"Measured {result['environment']['utc']} on {result['environment']['device']} "
             f"(torch {result['environment']['torch']}, {result['environment']['torch_threads']} threads). "
             f"Fine-tuning: {finetuning(result)}, batches of {s['batch_size']}{schedule}, distilled from the "
             f"unpruned model; accuracy on {s['test_images']} CIFAR-10 test "
             "images (stratified subset unless 10000). Latency: each model's median of "
             f"{s['repeats']} runs, timed in {s['latency_rounds']} rounds that take every model in turn (order "
             "rotated); the unpruned row gives the median over rounds, the others the median of the per-round "
             "speedups (unpruned / pruned) with its 90% bootstrap interval; onnxruntime on CPU. "
             f"Criteria run: {', '.join(s['criteria'])}. "
             "'prune s' includes the bisection to the MACs target; '-all' rows prune the residual stream too; "
             f"'-fast' and '-faster' rows take the latency-aware widths {s.get('allocations', ALLOCATIONS)} "
             "(fraction of block-internal channels dropped per stage) instead of the MACs target. "
             f"Command: `{s['command']}`", "",
             "| criterion | prune s | MACs (M) | MACs x | params (M) | top-1 pruned | top-1 fine-tuned | "
             "torch b1 | torch b64 | ort b1 | ort b64 |", "|---|" + "---:|" * 10,
             f"| unpruned | - | {base['macs'] / 1e6:.1f} | 1.00 | {base['params'] / 1e6:.3f} | {base['top1']:.2f} | - "
             + "".join(f"| {base['latency_ms'][b][k]:.2f} ms " for b in ("torch", "onnxruntime") for k in ("1", "64"))
             + "|"]
    for r in result["criteria"]:
        lines.append(f"| {r['criterion']} | {r['prune_seconds']:.2f} | {r['macs'] / 1e6:.1f} | "
                     f"{base['macs'] / r['macs']:.2f} | {r['params'] / 1e6:.3f} | {r['top1_pruned']:.2f} | "
                     f"{r['top1_finetuned']:.2f} "
                     + "".join(f"| {speedup_cell(r['speedup'][b][k], r['speedup_interval'][b][k])} "
                       for b in ("torch", "onnxruntime") for k in ("1", "64"))
                     + "|")
    sbs = result["side_by_side"]
    lines += ["", "## Side by side with Torch-Pruning (same run, same criterion, same MACs target)", ""]
    if "error" in sbs:
        lines.append(sbs["error"])
    else:
        lines += [f"Torch-Pruning {sbs['version']}. Setting: {sbs['setting']}. Torch-Pruning on the option-A "
                  f"ResNet with default settings: {sbs['torch_pruning_default']}.", "",
                  "| tool | criterion | graph + prune s | search s (steps) | MACs fraction | top-1 pruned |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['tool']} | {r['criterion']} | {r['graph_and_prune_seconds']:.3f} | "
                  f"{r['search_seconds']:.2f} ({r['search_steps']}) | {r['macs_fraction']:.3f} | "
                  f"{r['top1_pruned']:.2f} |"
                  for r in sbs["rows"]]
    lines += ["", "## Literature (reported by the papers, not measured here)", "",
              "| method | baseline top-1 | pruned top-1 | reduction |", "|---|---:|---:|---|"]
    lines += [f"| {r['method']} | {r['baseline_top1'] or '-'} | {r['pruned_top1'] or '-'} | {r['macs_reduction']} |"
              for r in LITERATURE]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    mode: Mode = args.settings
    seed_everything(args.seed)
    base, _, _ = load_model(args.weights, ModelSpec("resnet56"))
    train = load_dataset("cifar10", "train", data_dir=args.data_dir)
    test = load_dataset("cifar10", "test", data_dir=args.data_dir)
    if mode.test_images:
        test = test.take(mode.test_images, seed=args.seed)
    baseline = {**costs(base), "top1": top1(base, test, args.device)}
    log.info("baseline: %s", baseline)
    runs = [run_variant(v, base, train, test, args) for v in variants(mode.criteria, args.all_layers, args.fast,
                                                                        args.faster)]
    comparisons = compare({"unpruned": base, **{row["criterion"]: model for row, model in runs}}, mode, args.device)
    baseline |= timings(comparisons, "unpruned")
    rows = [row | timings(comparisons, row["criterion"]) for row, _ in runs]
    result = {"benchmark": "structured_pruning", "mode": args.mode, "environment": environment(args),
              "settings": {**mode.__dict__, "target_macs": args.target_macs, "seed": args.seed,
                           "all_layers": args.all_layers, "fast": args.fast, "faster": args.faster,
                           "allocations": ALLOCATIONS, "command": command_line(),
                           "finetuned_from": args.finetuned and str(args.finetuned),
                           "test_images": len(test), "weights": Path(args.weights).name,
                           "taylor_batches": TAYLOR_BATCHES},
              "baseline": baseline, "criteria": rows, "side_by_side": side_by_side(base, train, test, args),
              "literature": LITERATURE, "latency": {b: c.to_dict() for b, c in comparisons.items()}}
    write_result(args.out, result, render(result))
    log.info("wrote %s.{json,md}", args.out)
    return result


if __name__ == "__main__":
    main()
