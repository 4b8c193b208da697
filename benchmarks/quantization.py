"""Quantization of the shared pretrained CIFAR ResNets, deployed as integer ONNX models in onnxruntime.

Per model (fp32 ResNet-20 91.73%, ResNet-56 93.39% on the 10,000 CIFAR-10 test images): W8A8 PTQ with
each calibrator, W4A8 PTQ with and without AdaRound, W4A4 and W2A4 QAT (LSQ, distilled from the fp32
model), each with simulated and onnxruntime top-1, their agreement, packed weight bytes, and
onnxruntime latency at batch 1 and 64 against the fp32 ONNX model timed in the same run. Side by
side: onnxruntime's own ``quantize_static`` (QDQ, per-channel, min-max) on the same calibration images.
Writes ``<out>.json`` and ``<out>.md``.

    python benchmarks/quantization.py                         # everything; QAT is short on CPU
    python benchmarks/quantization.py --device cuda --qat-epochs 15
    python benchmarks/quantization.py --qat-from DIR          # QAT rows from checkpoints trained elsewhere
    python benchmarks/quantization.py --smoke --out /tmp/q    # ResNet-20, 500 images: checks the script

``--qat-from`` takes the folder that ``benchmarks/gpu_jobs.py run`` fills on a lent GPU (which cannot
read ../shared); those models are exported, evaluated and timed here. Rows of models not run in this
invocation are kept from the existing ``<out>.json``, each with the command that measured it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from cnncompress.analysis import measure_latency
from cnncompress.data import ImageSet, load_dataset
from cnncompress.export import export_onnx_fp32
from cnncompress.export.onnx_qdq import OnnxRuntimeModule, compare_top1, export_onnx, weight_storage_bytes
from cnncompress.models import ModelSpec, load_model
from cnncompress.quant import CALIBRATORS, qat, quantize
from cnncompress.quant.checkpoint import load_quantized
from cnncompress.quant.data import calibration_batches
from cnncompress.train import TrainConfig, evaluate
from cnncompress.utils import command_line, cpu_name, write_result

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
PAPER_FP32 = {"resnet20": 91.73, "resnet56": 93.39}
CONFIGS = ("w8a8", "w4a8", "w4a8-adaround", "w4a4-qat", "w4a4i8-qat", "w2a4-qat", "ort")
# QAT rows: weight bits, activation bits, and layers whose input stays at 8 bits. "i8" keeps the image
# into the first conv and the pooled features into the classifier at 8 bits, as low-bit papers keep
# their first and last layers (the weights here stay at 4 bits everywhere).
QAT_CONFIGS: dict[str, tuple[int, int, dict[str, int]]] = {
    "w4a4": (4, 4, {}), "w4a4i8": (4, 4, {"conv1": 8, "linear": 8}), "w2a4": (2, 4, {})}
GOALS = "W8A8 within 0.2 pt of fp32; W4A8 PTQ within 1.5 pt; W4A4 QAT within 1.0 pt; int8 >= 1.8x fp32 at batch 64"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    p.add_argument("--calibrators", default=",".join(CALIBRATORS), help="for the W8A8 rows")
    p.add_argument("--test-size", type=int, default=10_000)
    p.add_argument("--calib-size", type=int, default=1024)
    p.add_argument("--adaround-iters", type=int, default=1000)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-batches", type=int, default=None, help="batches per QAT epoch (default: all)")
    p.add_argument("--qat-lr", type=float, default=1e-4, help="Adam learning rate for QAT")
    p.add_argument("--device", default="cpu", help="device for QAT (cpu or cuda)")
    p.add_argument("--qat-from", type=Path,
                   help="folder of QAT checkpoints from gpu_jobs.py (QAT runs here only for configs it lacks)")
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: torch's)")
    p.add_argument("--data-dir", default=str(SHARED / "data"))
    p.add_argument("--out", default="results/quantization")
    p.add_argument("--smoke", action="store_true", help="ResNet-20, 500 images, MSE only, tiny AdaRound/QAT")
    args = p.parse_args()
    if args.smoke:
        args.models, args.calibrators, args.test_size, args.calib_size = "resnet20", "mse", 500, 256
        args.adaround_iters, args.qat_epochs, args.qat_batches, args.latency_repeats = 20, 1, 5, 5
    return args


def qat_config(epochs: int, lr: float, device: str, batches: int | None = None) -> TrainConfig:
    """QAT recipe: Adam at zero weight decay, batch 128 (fine-tuning from trained weights, short runs)."""
    return TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=lr, weight_decay=0.0, device=device,
                       max_batches_per_epoch=batches)


def train_qat(model: torch.nn.Module, calib: ImageSet, train: ImageSet, qat_name: str, config: TrainConfig,
              val: ImageSet | None = None):
    """MSE-calibrated PTQ of ``QAT_CONFIGS[qat_name]``, then QAT with LSQ distilled from ``model``."""
    weight_bits, act_bits, wide = QAT_CONFIGS[qat_name]
    qmodel = quantize(model, calib, weight_bits=weight_bits, act_bits=act_bits, layer_input_bits=wide)
    return qmodel, qat(qmodel, train, config, val=val, teacher=model, learnable_scales=True, progress=False)


class Bench:
    """Shared state of one model's runs: data, fp32 references and the latency baseline."""

    def __init__(self, args: argparse.Namespace, name: str, train: ImageSet, test: ImageSet, calib: ImageSet):
        self.args, self.name, self.train, self.test, self.calib = args, name, train, test, calib
        self.model, _, _ = load_model(SHARED / "pretrained" / WEIGHTS[name], ModelSpec(name))
        self.threads = args.threads or torch.get_num_threads()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"quant-{name}-"))
        self.fp32_onnx = export_onnx_fp32(self.model, self.tmp / "fp32.onnx", (3, 32, 32))

    def latency(self, path: Path) -> dict[str, float]:
        report = measure_latency(path, (3, 32, 32), batch_sizes=(1, 64), backend="onnxruntime",
                                 repeats=self.args.latency_repeats, threads=self.threads)
        return {str(bs): b.median_ms for bs, b in report.batches.items()}

    def timed(self, path: Path) -> dict[str, Any]:
        """Latency of ``path`` and of the fp32 model timed right before it (a shared CPU drifts)."""
        fp32, lat = self.latency(self.fp32_onnx), self.latency(path)
        return {"latency_ms": lat, "fp32_latency_ms": fp32, "speedup": {bs: fp32[bs] / lat[bs] for bs in lat}}

    def fp32_row(self) -> dict[str, Any]:
        torch_top1 = evaluate(self.model, self.test).top1
        ort_top1 = evaluate(OnnxRuntimeModule(self.fp32_onnx, self.threads), self.test).top1
        return {"config": "fp32", "method": "float", "simulated_top1": torch_top1, "onnxruntime_top1": ort_top1,
                "weight_bytes": 4 * sum(p.numel() for p in self.model.parameters()),
                **self.timed(self.fp32_onnx)}

    def deploy(self, qmodel, config: str, method: str, seconds: float) -> dict[str, Any]:
        """Export, run in onnxruntime and measure a simulated quantized model."""
        path = export_onnx(qmodel.cpu(), self.tmp / f"{config}-{method}.onnx", (3, 32, 32))
        agree = compare_top1(qmodel, OnnxRuntimeModule(path, self.threads), self.test)
        return {"config": config, "method": method, "simulated_top1": agree.top1_a,
                "onnxruntime_top1": agree.top1_b, "agreement": agree.agreement,
                "weight_bytes": weight_storage_bytes(qmodel)["packed"], "onnx_file_bytes": path.stat().st_size,
                **self.timed(path), "quantize_seconds": seconds}

    def ptq(self, config: str, method: str, **kw) -> dict[str, Any]:
        began = time.perf_counter()
        qmodel = quantize(self.model, self.calib, **kw)
        return self.deploy(qmodel, config, method, time.perf_counter() - began)

    def qat(self, config: str) -> dict[str, Any]:
        a = self.args
        began = time.perf_counter()
        trained = a.qat_from and a.qat_from / f"qat-{self.name}-{config}.pt"
        if trained and trained.is_file():
            qmodel, _, _ = load_quantized(trained)
            job = json.loads(trained.with_suffix(".json").read_text())
            trained_on = f"{job['device']} ({job.get('schedule') or str(job['train_images']) + ' images'})"
            epochs, history = job["epochs"], job["history"]
        else:
            train_config = qat_config(a.qat_epochs, a.qat_lr, a.device, a.qat_batches)
            qmodel, record = train_qat(self.model, self.calib, self.train, config, train_config)
            epochs, history, trained_on = a.qat_epochs, record.history, a.device
        self.model.cpu()
        row = self.deploy(qmodel.cpu(), config, f"QAT+LSQ {epochs} ep", time.perf_counter() - began)
        row.update(qat_history=history, qat_device=trained_on)
        return row

    def ort_quantize_static(self) -> dict[str, Any]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        began = time.perf_counter()
        batches = iter(calibration_batches(self.calib))

        class Reader:
            def get_next(self):
                x = next(batches, None)
                return None if x is None else {"input": x.numpy()}

        path = self.tmp / "ort-static.onnx"
        quantize_static(str(self.fp32_onnx), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        seconds = time.perf_counter() - began
        top1 = evaluate(OnnxRuntimeModule(path, self.threads), self.test).top1
        return {"config": "w8a8", "method": "onnxruntime quantize_static (minmax)", "onnxruntime_top1": top1,
                "onnx_file_bytes": path.stat().st_size, **self.timed(path), "quantize_seconds": seconds}


def run_model(args: argparse.Namespace, name: str, train: ImageSet, test: ImageSet) -> list[dict[str, Any]]:
    bench = Bench(args, name, train, test, train.take(args.calib_size, seed=0))
    configs = set(args.configs.split(","))
    rows = [bench.fp32_row()]
    steps = []
    if "w8a8" in configs:
        steps += [lambda c=c: bench.ptq("w8a8", c, calibration=c) for c in args.calibrators.split(",")]
    if "w4a8" in configs:
        steps.append(lambda: bench.ptq("w4a8", "mse", weight_bits=4))
    if "w4a8-adaround" in configs:
        steps.append(lambda: bench.ptq("w4a8", f"mse + AdaRound {args.adaround_iters} it", weight_bits=4,
                                       adaround=True, adaround_iters=args.adaround_iters))
    steps += [lambda c=config: bench.qat(c) for config in QAT_CONFIGS if f"{config}-qat" in configs]
    if "ort" in configs:
        steps.append(bench.ort_quantize_static)
    for step in steps:
        rows.append(step())
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "qat_history"}), flush=True)
    for row in rows:
        row["model"] = name
    return rows


def kept_rows(path: Path, models: list[str], configs: set[str]) -> list[dict[str, Any]]:
    """Rows an earlier run's JSON holds that this run does not measure, so rows can be measured apart."""
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    command = old["settings"].get("command", "")
    return [{"command": command, **row} for row in old["rows"]
            if row["model"] not in models or config_key(row) not in configs | {"fp32"}]


def config_key(row: dict[str, Any]) -> str:
    """The ``--configs`` entry (or "fp32") that produces ``row``."""
    method = row["method"]
    if method == "float":
        return "fp32"
    if method.startswith("onnxruntime"):
        return "ort"
    if method.startswith("QAT"):
        return f"{row['config']}-qat"
    return "w4a8-adaround" if "AdaRound" in method else row["config"]


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def qat_training(payload: dict[str, Any]) -> str:
    """Where the QAT rows were trained, in words."""
    s = payload["settings"]
    if not s.get("qat_from"):
        return f"QAT {s['qat_epochs']} epoch(s), {s['qat_batches'] or 'all'} batches per epoch on {s['device']}"
    trained = [f"{r['model']} {r['config']} on {r['qat_device']}" for r in payload["rows"] if "qat_device" in r]
    return (f"QAT rows trained by `benchmarks/gpu_jobs.py` ({'; '.join(trained)}; epochs in the method column, "
            "sized to a shared time budget; Adam, LSQ, distilled from fp32; 2,000 training images held out)")


def to_markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    lines = ["# Quantization: shared pretrained CIFAR ResNets, deployed in onnxruntime", "",
             f"Measured {payload['date']} on {s['cpu']} ({s['threads']} onnxruntime threads), torch "
             f"{s['torch']}, onnxruntime {s['onnxruntime']}. Test images: {s['test_size']}; calibration: "
             f"{s['calib_size']} training images; AdaRound {s['adaround_iters']} iterations per layer; "
             f"{qat_training(payload)}.",
             f"Goals: {GOALS}.", "",
             "| model | config | method | simulated top-1 % | onnxruntime top-1 % | agreement % | weight bytes "
             "| ort ms b1 | ort ms b64 | speedup b1 | speedup b64 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["rows"]:
        lines.append(f"| {r['model']} | {r['config']} | {r['method']} | {_fmt(r.get('simulated_top1'))} | "
                     f"{_fmt(r.get('onnxruntime_top1'))} | {_fmt(r.get('agreement'))} | "
                     f"{_fmt(r.get('weight_bytes'), ',')} | {_fmt(r['latency_ms']['1'])} | "
                     f"{_fmt(r['latency_ms']['64'])} | {_fmt(r['speedup']['1'])}x | {_fmt(r['speedup']['64'])}x |")
    lines += ["", "Weight bytes: fp32 parameters for the fp32 row; packed quantized weights plus int32 biases and "
              "float32 scales otherwise (the ONNX file stores sub-8-bit codes as int8). Latency: median of "
              f"{s['latency_repeats']} runs; speedup against the fp32 ONNX model timed right before each row "
              "(fp32 ms in the JSON). QAT rows name their epochs; where they were trained is in the JSON "
              "(`qat_device`). w4a4i8: W4A4 except the image into the first conv and the pooled features "
              "into the classifier, kept at 8 bits (weights 4-bit everywhere). Rows and their commands:", ""]
    commands = {}
    for r in payload["rows"]:
        commands.setdefault(r.get("command", s["command"]), []).append(f"{r['model']} {config_key(r)}")
    lines += [f"- {', '.join(dict.fromkeys(rows))}: `{cmd}`" for cmd, rows in commands.items()] + [""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    train = load_dataset("cifar10", "train", data_dir=args.data_dir)
    test = load_dataset("cifar10", "test", data_dir=args.data_dir)
    test = test if args.test_size >= len(test) else test.take(args.test_size, seed=0)
    command = command_line()
    out = Path(args.out)
    rows = kept_rows(out.with_suffix(".json"), args.models.split(","), set(args.configs.split(",")))
    for name in args.models.split(","):
        rows += [{**row, "command": command} for row in run_model(args, name, train, test)]
    order = ["fp32", *CONFIGS]
    rows.sort(key=lambda r: (list(WEIGHTS).index(r["model"]), order.index(config_key(r))))
    settings = {**vars(args), "qat_from": args.qat_from and str(args.qat_from), "test_size": len(test),
                "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
                "onnxruntime": ort.__version__, "cpu": cpu_name(),
                "command": command}
    payload = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "settings": settings,
               "paper_fp32": PAPER_FP32, "rows": rows}
    write_result(out, payload, to_markdown(payload))
    print(to_markdown(payload))


if __name__ == "__main__":
    main()
