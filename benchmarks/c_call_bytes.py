"""Flash that ``model.c`` adds per kernel call, measured: the source of ``export.c.firmware.C_STRUCT_BYTES``,
``C_CALL_BYTES`` and ``C_RUN_BYTES``, which the planner's C flash model (``c_flash_format``) uses.

Random nets mixing every C kernel (conv, add, window, max pool, average pool, concat = requantizing
copies), plus the digits CNN, LeNet-5 and ResNet-20, are quantized W8A8 (random weights, min-max ranges),
exported, and ``model.c`` is compiled with the firmware's flags. ``arm-none-eabi-nm -S model.o`` gives
every symbol's size: the const arrays, one parameter struct per call (whose size is its C ``sizeof``)
and ``cnnc_run``, whose size is fitted by least squares as ``fixed + sum over kinds of bytes x calls``.
The table lands in ``<out>/c_call_bytes.{json,md}``.

    python benchmarks/c_call_bytes.py                     # 40 random nets, cortex-m4
    python benchmarks/c_call_bytes.py --target cortex-m7

Needs ``arm-none-eabi-gcc`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.export.c import export_c
from cnncompress.export.c.firmware import ARM_FLAGS, C_CALL_BYTES, C_RUN_BYTES, C_STRUCT_BYTES
from cnncompress.models import build_model
from cnncompress.quant import quantize

#: the IR handler of each op -> the kind the planner counts (``plan.cost.kernel_calls``)
KINDS = {"Conv": "conv", "Add": "add", "Window": "window", "MaxPool": "maxpool", "AvgPool": "avgpool",
         "Concat": "requant", "Requant": "requant"}
STEPS = ("conv", "add", "window", "maxpool", "avgpool", "cat")


class RandomNet(nn.Module):
    """1..30 random steps on a ``width``-channel map: conv, residual add, pad + crop, max pool, average pool, concat."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.steps = [rng.choice(STEPS) for _ in range(rng.randint(1, 30))]
        width = rng.choice([4, 8, 16])
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in self.steps)
        self.mix = nn.ModuleList(nn.Conv2d(2 * width, width, 1) for _ in self.steps)
        self.avg = nn.AvgPool2d(3, 1, 1)
        self.fc = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for i, step in enumerate(self.steps):
            if step == "conv":
                x = F.relu(self.convs[i](x))
            elif step == "add":
                x = F.relu(self.convs[i](x) + x)
            elif step == "window":
                x = F.relu(self.convs[i](F.pad(x, (1, 1, 1, 1))))[:, :, 1:-1, 1:-1]
            elif step == "maxpool":
                x = F.max_pool2d(x, 3, 1, 1)
            elif step == "avgpool":
                x = F.relu(self.convs[i](self.avg(x)))
            else:
                x = F.relu(self.mix[i](torch.cat([x, F.relu(self.convs[i](x))], 1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def symbol_sizes(obj: Path) -> dict[str, int]:
    done = subprocess.run(["arm-none-eabi-nm", "-S", str(obj)], capture_output=True, text=True, check=True)
    return {parts[3]: int(parts[1], 16) for parts in map(str.split, done.stdout.splitlines()) if len(parts) == 4}


def measure(model: nn.Module, shape: tuple[int, int, int], folder: Path, target: str) -> dict:
    """Calls per kind, struct sizes per kind and cnnc_run's size of ``model`` exported and compiled for ``target``."""
    torch.manual_seed(0)
    calib = torch.randn(4, *shape)
    qmodel = quantize(model.eval(), calib, weight_bits=8, act_bits=8, calibration="minmax",
                      weight_calibration="minmax")
    record = export_c(qmodel, folder / "lib", shape, calibration=calib)
    obj = folder / "model.o"
    subprocess.run(["arm-none-eabi-gcc", *ARM_FLAGS, f"-mcpu={target}", "-c", str(folder / "lib" / "model.c"), "-o",
                    str(obj)], check=True)
    sizes = symbol_sizes(obj)
    calls: dict[str, int] = {}
    structs: dict[str, list[int]] = {}
    for op in record.program.ops:
        kind = KINDS[type(op.handler).__name__]
        n = len(op.attrs["parts"]) if "parts" in op.attrs else 1
        calls[kind] = calls.get(kind, 0) + n
        prefix = op.name.replace(".", "_") + "_params"
        structs.setdefault(kind, []).extend(v for k, v in sizes.items() if k.startswith(prefix))
    return {"calls": calls, "structs": {k: sorted(set(v)) for k, v in structs.items()}, "run": sizes["cnnc_run"]}


def fit(rows: list[dict]) -> tuple[dict[str, float], list[float]]:
    kinds = sorted({k for r in rows for k in r["calls"]})
    a = np.array([[1.0] + [r["calls"].get(k, 0) for k in kinds] for r in rows])
    y = np.array([r["run"] for r in rows], float)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return dict(zip(["fixed", *kinds], coef.tolist(), strict=True)), (a @ coef - y).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", type=int, default=40, help="random nets (default 40)")
    parser.add_argument("--target", default="cortex-m4", choices=("cortex-m4", "cortex-m7"))
    parser.add_argument("--out", default="results", help="folder for c_call_bytes.{json,md}")
    args = parser.parse_args()
    nets = [(f"random-{s}", RandomNet(s), (3, *(random.Random(s).choice([6, 8, 12, 20]),) * 2))
            for s in range(args.nets)]
    nets += [("digits_cnn", build_model("digits_cnn"), (1, 8, 8)), ("lenet5", build_model("lenet5"), (1, 28, 28)),
             ("resnet20", build_model("resnet20"), (3, 32, 32))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, shape in nets:
            rows.append({"net": name, **measure(model, shape, Path(tmp) / name, args.target)})
    coef, residuals = fit(rows)
    structs = {k: sorted({s for r in rows for s in r["structs"].get(k, [])}) for k in C_STRUCT_BYTES}
    result = {"target": args.target, "flags": list(ARM_FLAGS), "fit": coef,
              "max_abs_residual": max(map(abs, residuals)), "struct_bytes": structs,
              "used": {"struct": C_STRUCT_BYTES, "call": C_CALL_BYTES, "run": C_RUN_BYTES},
              "nets": [{**r, "residual": e} for r, e in zip(rows, residuals, strict=True)]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "c_call_bytes.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Flash per C kernel call ({args.target}, {len(rows)} nets)", "",
             "`python benchmarks/c_call_bytes.py` -- `cnnc_run`'s size in `model.o` fitted as fixed + bytes x calls "
             "per kind; struct sizes read off the symbols.", "",
             "| kind | struct bytes (measured) | call code bytes (fit) | used by the planner (struct + call) |",
             "|---|---|---|---|"]
    for kind in C_STRUCT_BYTES:
        lines.append(f"| {kind} | {', '.join(map(str, structs[kind])) or '-'} | {coef.get(kind, float('nan')):.1f} "
                     f"| {C_STRUCT_BYTES[kind]} + {C_CALL_BYTES[kind]} |")
    lines += [f"| once (cnnc_run) | - | {coef['fixed']:.1f} | {C_RUN_BYTES} |", "",
              f"Largest residual of the fit: {result['max_abs_residual']:.1f} B."]
    (out / "c_call_bytes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
