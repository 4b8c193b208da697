"""Which block-internal widths of ResNet-56 make onnxruntime faster, not just the MAC count smaller.

onnxruntime's CPU convolutions work on channel blocks (16 floats with AVX-512), so a layer pruned
from 16 to 8 channels costs nearly what it did, and halving every stage (16/32/64 -> 8/16/32 inside
the blocks) halves the MACs but not the batch-64 time. This script times allocations of the
block-internal channels (the residual stream kept whole, as in ``structured_pruning.py``) in one
run, in rounds that take every model in turn (speedups paired by round), and writes ``<out>.json``
and ``<out>.md``. The weights do not change the timing, so the untrained architecture is used: no
data needed.

    python benchmarks/latency_allocation.py            # ~2 min on 2 cores
    python benchmarks/latency_allocation.py --rounds 2 --repeats 3 --out runs/latency_smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from cnncompress.analysis import compare_latency, count_macs
from cnncompress.models import ModelSpec
from cnncompress.prune import prune_channels
from cnncompress.utils import command_line, seed_everything, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import structured_pruning as sp  # noqa: E402  (its stream layers and its chosen allocations)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("layer1", "layer2", "layer3")
# the allocations timed: fraction of block-internal channels dropped per stage (16, 32 and 64 unpruned)
CANDIDATES = {
    "uniform 8/16/32": (0.5, 0.5, 0.5),
    "4/16/32": (0.75, 0.5, 0.5),
    "8/16/16": (0.5, 0.5, 0.75),
    "4/16/16": (0.75, 0.5, 0.75),
    "16/16/16": (0.0, 0.5, 0.75),
    "8/16/48": (0.5, 0.5, 0.25),
}


def per_layer(fractions: tuple[float, ...]) -> dict[str, float]:
    return {f"{stage}.*.conv1": f for stage, f in zip(STAGES, fractions, strict=True)}


def build(fractions: tuple[float, ...]) -> torch.nn.Module:
    seed_everything(0)
    base = ModelSpec("resnet56").build().eval()
    return prune_channels(base, sp.SHAPE, ratio=0.0, per_layer=per_layer(fractions), exclude=sp.RESIDUAL_STREAM,
                          criterion="l1").eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12, help="rounds that time every model in turn")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per model, batch size and round")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: torch's)")
    p.add_argument("--out", default=str(ROOT / "results/latency_allocation"))
    args = p.parse_args(argv)
    chosen = {name: tuple(widths[f"{stage}.*.conv1"] for stage in STAGES) for name, widths in sp.ALLOCATIONS.items()}
    models = {"unpruned": ModelSpec("resnet56").build().eval()}
    models.update({name: build(f) for name, f in CANDIDATES.items()})
    timed = compare_latency(models, sp.SHAPE, "unpruned", (1, 64), "onnxruntime", rounds=args.rounds,
                            repeats=args.repeats, threads=args.threads)
    base_macs = count_macs(models["unpruned"], sp.SHAPE)
    rows = []
    for name, model in models.items():
        speedups = {str(bs): timed.speedup(name, bs) for bs in (1, 64)}
        rows.append({"allocation": name, "dropped_fractions": list(CANDIDATES.get(name, (0.0, 0.0, 0.0))),
                     "chosen": next((label for label, f in chosen.items() if CANDIDATES.get(name) == f), ""),
                     "macs_fraction": count_macs(model, sp.SHAPE) / base_macs,
                     "ort_ms": {str(bs): timed.median_ms(name, bs) for bs in (1, 64)},
                     "ort_ms_rounds": {str(bs): ms for bs, ms in timed.round_ms[name].items()},
                     "speedup": {bs: s.median for bs, s in speedups.items()},
                     "speedup_interval": {bs: [s.low, s.high] for bs, s in speedups.items()}})
    import onnxruntime
    result = {"benchmark": "latency_allocation", "onnxruntime": onnxruntime.__version__, "threads": timed.threads,
              "rounds": args.rounds, "repeats": args.repeats, "command": command_line(),
              "rows": rows}
    write_result(args.out, result, render(result))
    print(render(result))
    return result


def render(result: dict[str, Any]) -> str:
    lines = ["# onnxruntime latency of ResNet-56 block-internal width allocations", "",
             f"onnxruntime {result['onnxruntime']} on CPU, {result['threads']} threads. Each model's median of "
             f"{result['repeats']} runs, timed in {result['rounds']} rounds that take every model in turn (order "
             "rotated): ms is the median over rounds, speedup the median of the per-round speedups with its 90% "
             "bootstrap interval. Widths are the block-internal channels of stages 1/2/3 (unpruned 16/32/64); "
             "the residual stream is kept. 'chosen' names the allocation in `structured_pruning.ALLOCATIONS`. "
             f"Command: `{result['command']}`", "",
             "| allocation | MACs fraction | ort b1 ms | ort b64 ms | speedup b1 | speedup b64 | chosen |",
             "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['allocation']} | {r['macs_fraction']:.3f} | {r['ort_ms']['1']:.2f} | {r['ort_ms']['64']:.1f} | "
              + "".join(f"{sp.speedup_cell(r['speedup'][k], r['speedup_interval'][k])} | " for k in ("1", "64"))
              + f"{r['chosen']} |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
