"""How much faster the training loop runs on this CPU with ``TrainConfig(channels_last=True)``.

Times ``cnncompress.train.fit`` for a few batches of 128 CIFAR-shaped images in both memory layouts,
interleaved over several rounds (the fastest round counts), for ResNet-20, ResNet-56 and the
latency-aware pruned ResNet-56 (``fpgm-fast`` widths) distilled from the unpruned one, as in the
CPU fine-tuning of ``gpu_jobs.py job ... --device cpu``. Weights and pixel values do not change the
timing, so untrained models and random images are used: no data needed. Writes ``<out>.json`` and
``<out>.md``.

    python benchmarks/train_speed.py                  # ~2 min on 2 cores
    python benchmarks/train_speed.py --rounds 1 --batches 2 --out runs/train_speed_smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cnncompress.data import ImageSet
from cnncompress.data.catalog import DATASETS
from cnncompress.models import ModelSpec
from cnncompress.train import TrainConfig, fit
from cnncompress.utils import command_line, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_allocation  # noqa: E402  (builds the pruned widths)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128


def cases() -> dict[str, tuple[torch.nn.Module, torch.nn.Module | None]]:
    """Name -> (model trained, teacher or None)."""
    teacher = ModelSpec("resnet56").build()
    return {"resnet20": (ModelSpec("resnet20").build(), None),
            "resnet56": (ModelSpec("resnet56").build(), None),
            "resnet56 fpgm-fast, distilled": (latency_allocation.build(latency_allocation.ALLOCATIONS["8/16/16"]),
                                              teacher)}


def seconds_per_batch(model, teacher, data: ImageSet, batches: int, channels_last: bool) -> float:
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.01, max_batches_per_epoch=batches,
                         channels_last=channels_last)
    began = time.perf_counter()
    fit(model, data, config, teacher=teacher, progress=False)
    return (time.perf_counter() - began) / batches


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the fastest counts)")
    p.add_argument("--batches", type=int, default=8, help="timed batches per model, layout and round")
    p.add_argument("--out", default=str(ROOT / "results/train_speed"))
    args = p.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    n = BATCH * (args.batches + 1)
    data = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (n,), generator=generator), DATASETS["cifar10"])
    models = cases()
    best: dict[str, dict[str, float]] = {name: {} for name in models}
    for _ in range(args.rounds):
        for name, (model, teacher) in models.items():
            for layout in ("contiguous", "channels_last"):
                seconds_per_batch(model, teacher, data.take(BATCH), 1, layout == "channels_last")  # warm-up
                s = seconds_per_batch(model, teacher, data, args.batches, layout == "channels_last")
                best[name][layout] = min(best[name].get(layout, float("inf")), s)
    rows = [{"model": name, "images_per_s": {k: BATCH / v for k, v in t.items()},
             "speedup": t["contiguous"] / t["channels_last"]} for name, t in best.items()]
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": BATCH,
              "batches": args.batches, "rounds": args.rounds, "command": command_line(), "rows": rows}
    write_result(args.out, result, render(result))
    print(render(result))
    return result


def render(result: dict[str, Any]) -> str:
    lines = ["# Training speed on CPU: contiguous (NCHW) against channels_last (NHWC)", "",
             f"torch {result['torch']}, {result['threads']} threads, batches of {result['batch_size']} "
             f"(SGD step, augmentation included), fastest of {result['rounds']} interleaved rounds of "
             f"{result['batches']} batches. Command: `{result['command']}`", "",
             "| model | NCHW img/s | NHWC img/s | speedup |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['images_per_s']['contiguous']:.0f} | {r['images_per_s']['channels_last']:.0f} "
              f"| {r['speedup']:.2f}x |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
