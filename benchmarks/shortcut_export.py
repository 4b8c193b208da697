"""What exporting option-A shortcuts as strided 1x1 convs does to onnxruntime latency of ResNet-56.

``export_onnx_fp32`` swaps each ``PadShortcut`` (Slice + Pad) for an exact 1x1 conv so that
onnxruntime keeps the residual stream in its blocked NCHWc layout. This script times both export
forms of the unpruned model, and of pruned checkpoints if given, in one run of paired rounds
(``compare_latency``): the speedup of each form against the unpruned model in the literal form, and
so the pruned/unpruned speedup under each form. Writes ``<out>.json`` and ``<out>.md``.

    python benchmarks/shortcut_export.py --pruned runs/cpu-r4/prune-fpgm-fast.pt   # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime as ort

from cnncompress.analysis import compare_latency
from cnncompress.export import export_onnx_fp32
from cnncompress.models import ModelSpec, load_model
from cnncompress.utils import command_line, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import structured_pruning as sp  # noqa: E402  (its input shape, weights and speedup cells)

ROOT = Path(__file__).resolve().parents[1]
FORMS = {"Slice+Pad": False, "1x1 conv": True}  # export form -> export_onnx_fp32(equivalents=...)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruned", type=Path, nargs="*", default=[], help="pruned ResNet-56 checkpoints")
    p.add_argument("--weights", type=Path, default=sp.WEIGHTS, help="the unpruned ResNet-56")
    p.add_argument("--rounds", type=int, default=12, help="rounds that time every model in turn")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per model, batch size and round")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "results/shortcut_export")
    args = p.parse_args(argv)
    models = {"unpruned": load_model(args.weights, ModelSpec("resnet56"))[0]}
    models.update({path.stem: load_model(path)[0] for path in args.pruned})
    with tempfile.TemporaryDirectory() as tmp:
        files = {f"{name} | {form}": export_onnx_fp32(model, Path(tmp) / f"{name}-{swap}.onnx", sp.SHAPE, swap)
                 for name, model in models.items() for form, swap in FORMS.items()}
        timed = compare_latency(files, sp.SHAPE, "unpruned | Slice+Pad", (64,), "onnxruntime", rounds=args.rounds,
                                repeats=args.repeats, threads=args.threads)
    rows = []
    for name in models:
        for form in FORMS:
            key = f"{name} | {form}"
            rows.append({"model": name, "export": form, "ms_b64": timed.median_ms(key, 64),
                         "vs_unpruned_slice_pad": vars(timed.speedup(key, 64)),
                         "vs_unpruned_same_form": vars(timed.speedup(key, 64, against=f"unpruned | {form}"))})
    result = {"benchmark": "shortcut_export", "onnxruntime": ort.__version__, "threads": timed.threads,
              "rounds": args.rounds, "repeats": args.repeats, "command": command_line(), "rows": rows,
              "timings": timed.to_dict()}
    write_result(args.out, result, render(result))
    print(render(result))
    return result


def cell(s: dict[str, float]) -> str:
    return sp.speedup_cell(s["median"], [s["low"], s["high"]])


def render(result: dict[str, Any]) -> str:
    lines = ["# onnxruntime batch-64 latency of ResNet-56 by shortcut export form", "",
             f"onnxruntime {result['onnxruntime']} on CPU, {result['threads']} threads. Each model's median of "
             f"{result['repeats']} runs, in {result['rounds']} rounds that take every file in turn (order "
             "rotated); speedups are medians of per-round ratios with 90% bootstrap intervals. "
             f"Command: `{result['command']}`", "",
             "| model | shortcut export | ms b64 | vs unpruned, Slice+Pad | vs unpruned, same export |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['export']} | {r['ms_b64']:.1f} | {cell(r['vs_unpruned_slice_pad'])} | "
              f"{cell(r['vs_unpruned_same_form'])} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
