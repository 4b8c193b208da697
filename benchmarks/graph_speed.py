"""Channel-graph build + prune time against Torch-Pruning 1.6 on ResNet-56, to the same MACs.

Both tools prune the block-internal channels of the option-A ResNet-56 (the residual stream
``RESIDUAL_STREAM`` kept whole, the setting of ``structured_pruning.py``'s side-by-side) at the same
uniform ratio, which gives both the same MACs (checked). A timed run is what a user calls: copy the
model, trace and build the dependency graph, score (L1) and shrink. cnncompress: ``prune_channels``
(which also counts the MACs and params it records); Torch-Pruning: ``MetaPruner`` + ``step()``.
Rounds time both back to back in alternating order; the figure is the median of the per-round time
ratios (cnncompress / Torch-Pruning) with a bootstrap interval (``cnncompress.analysis.paired_speedup``).
One torch thread, so that both see the same CPU. Writes ``results/graph_speed.{json,md}``.

    python benchmarks/graph_speed.py            # 9 paired rounds (about half a minute on a quiet machine)
    python benchmarks/graph_speed.py --rounds 3 --out /tmp/gs   # a quick check
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnncompress.analysis import count_macs
from cnncompress.analysis.latency import paired_speedup
from cnncompress.models import build_model
from cnncompress.prune import prune_channels
from cnncompress.utils import command_line, write_result

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
RESIDUAL_STREAM = ("conv1", "layer*.conv2", "linear")
RATIO = 0.5


def ours(base: nn.Module) -> nn.Module:
    return prune_channels(base, SHAPE, ratio=RATIO, exclude=RESIDUAL_STREAM)


def torch_pruning(tp, base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    ignored = [m for n, m in model.named_modules() if any(fnmatchcase(n, p) for p in RESIDUAL_STREAM)]
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, *SHAPE), importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=RATIO, ignored_layers=ignored)
    pruner.step()
    return model


def timed(run, base: nn.Module) -> tuple[float, nn.Module]:
    began = time.perf_counter()
    model = run(base)
    return (time.perf_counter() - began) * 1000, model


def measure(rounds: int) -> dict[str, Any]:
    import torch_pruning as tp

    torch.set_num_threads(1)
    base = build_model("resnet56").eval()
    tools = {"cnncompress": ours, "torch-pruning": lambda m: torch_pruning(tp, m)}
    models = {name: run(base) for name, run in tools.items()}  # warm-up, and the MACs each reaches
    base_macs = count_macs(base, SHAPE)
    macs = {name: count_macs(m, SHAPE) / base_macs for name, m in models.items()}
    if macs["cnncompress"] != macs["torch-pruning"]:
        raise RuntimeError(f"the tools reached different MACs: {macs}")
    times: dict[str, list[float]] = {name: [] for name in tools}
    for r in range(rounds):
        order = list(tools) if r % 2 == 0 else list(reversed(tools))
        for name in order:
            times[name].append(timed(tools[name], base)[0])
    ratio = paired_speedup(times["cnncompress"], times["torch-pruning"])
    return {"torch_pruning": tp.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_average": os.getloadavg(),
            "command": command_line(), "rounds": rounds, "ratio": RATIO, "macs_fraction": macs["cnncompress"],
            "ms": times, "time_ratio": {"median": ratio.median, "low": ratio.low, "high": ratio.high}}


def markdown(result: dict[str, Any]) -> str:
    t = result["time_ratio"]
    med = {name: sorted(ms)[len(ms) // 2] for name, ms in result["ms"].items()}
    return "\n".join([
        "# Channel graph + prune time: cnncompress vs Torch-Pruning (ResNet-56)", "",
        f"Both prune ResNet-56's block-internal channels at ratio {result['ratio']} (residual stream kept) to "
        f"{result['macs_fraction']:.4f} of the MACs; a run copies the model, builds the dependency graph, "
        "scores (L1) and shrinks. One torch thread.", "",
        "| tool | median ms |", "|---|---|",
        *[f"| {name} | {ms:.1f} |" for name, ms in med.items()], "",
        f"Time ratio cnncompress / Torch-Pruning: **{t['median']:.2f}** (90% bootstrap interval "
        f"{t['low']:.2f}-{t['high']:.2f}), median of {result['rounds']} paired rounds.", "",
        f"Torch-Pruning {result['torch_pruning']}, torch {result['torch']}, Python {result['python']}; "
        f"load average at the end {', '.join(f'{x:.2f}' for x in result['load_average'])}; {result['utc']}.",
        f"Command: `{result['command']}`", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "graph_speed")
    args = parser.parse_args()
    result = measure(args.rounds)
    write_result(args.out, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
