"""Where onnxruntime spends a ResNet-56's time: kernel time per conv shape, unpruned against a pruned checkpoint.

Explains why a 2x MACs cut is not a 2x speedup: onnxruntime's CPU kernels work on channel blocks
(its NCHWc layout: 8 channels with AVX2, 16 with AVX-512), so a layer pruned below a block, or to
a width that is not a multiple of one, costs as much as the padded width. Uses onnxruntime's own
profiler; writes ``<out>.json`` and ``<out>.md``.

    python benchmarks/ort_conv_profile.py --pruned runs/gpu/prune-fpgm.pt
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from cnncompress.export import export_onnx_fp32
from cnncompress.models import ModelSpec, load_model
from cnncompress.utils import command_line, write_result

SHAPE = (3, 32, 32)
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "resnet56-4bfd9763.th"


def conv_times(model: torch.nn.Module, batch: int, runs: int, threads: int) -> dict[str, Any]:
    """Mean ms per run by (kernel, weight shape as the runtime holds it, input height) and by op type."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx_fp32(model, Path(tmp) / "model.onnx", SHAPE)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((batch, *SHAPE), dtype=np.float32)
        session.run(None, {session.get_inputs()[0].name: x})  # warm-up, profiled too: subtracted below
        for _ in range(runs):
            session.run(None, {session.get_inputs()[0].name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_shape, by_op = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        by_op[op] += e["dur"]
        if "Conv" in op:
            shapes = [next(iter(d.values())) for d in e["args"]["input_type_shape"]]
            by_shape[f"{op} weight {'x'.join(map(str, shapes[1]))} at {shapes[0][-2]}x{shapes[0][-1]}"] += e["dur"]
    scale = 1 / ((runs + 1) * 1000)  # microseconds over all profiled runs -> ms per run
    return {"by_shape": {k: v * scale for k, v in sorted(by_shape.items())},
            "by_op": {k: v * scale for k, v in by_op.most_common()}}


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["# onnxruntime kernel time per conv shape: unpruned vs pruned ResNet-56", "",
             f"onnxruntime {s['onnxruntime']}, {s['threads']} threads, batch {s['batch']}, mean of {s['runs']} "
             f"runs (plus one warm-up). Pruned model: `{s['pruned']}`. Weight shapes are as the runtime holds "
             "them after its layout transform (channels padded to its block). Command: "
             f"`{s['command']}`", ""]
    for name in ("unpruned", "pruned"):
        r = result[name]
        lines += [f"## {name}: {sum(r['by_op'].values()):.1f} ms per run", "",
                  "| conv kernel and shape | ms per run |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in r["by_shape"].items()]
        lines += ["", "By op: " + ", ".join(f"{k} {v:.1f} ms" for k, v in r["by_op"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruned", type=Path, required=True, help="a pruned ResNet-56 checkpoint")
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=Path("results/ort_conv_profile"))
    args = p.parse_args(argv)
    unpruned, _, _ = load_model(args.weights, ModelSpec("resnet56"))
    pruned, _, _ = load_model(args.pruned)
    result = {"settings": {"batch": args.batch, "runs": args.runs, "threads": args.threads,
                           "onnxruntime": ort.__version__, "pruned": str(args.pruned),
                           "command": command_line()},
              "unpruned": conv_times(unpruned, args.batch, args.runs, args.threads),
              "pruned": conv_times(pruned, args.batch, args.runs, args.threads)}
    write_result(args.out, result, render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
