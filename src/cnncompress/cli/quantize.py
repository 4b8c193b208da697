"""``quantize`` command: PTQ (optionally QAT), simulated checkpoint + integer ONNX, measured in onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..analysis import measure_latency
from ..export.onnx_qdq import OnnxRuntimeModule, compare_top1, export_onnx, weight_storage_bytes
from ..quant import CALIBRATORS, qat, quantize, save_quantized, sensitivity
from ..train import evaluate
from .basic import add_train_args, train_config
from .common import (
    CLIError,
    add_data_args,
    add_model_args,
    check_output_dir,
    dataset_name,
    emit,
    format_table,
    input_shape,
    load_split,
    resolve_model,
    show_progress,
)


def register(sub: argparse._SubParsersAction, add_common) -> None:
    p = sub.add_parser("quantize", help="calibrated PTQ (+ optional QAT) to an integer ONNX model, verified in "
                                        "onnxruntime")
    add_model_args(p, weights_required=True)
    add_data_args(p)
    p.add_argument("--weight-bits", type=int, default=8, help="2..8")
    p.add_argument("--act-bits", type=int, default=8, help="2..8")
    p.add_argument("--calibration", choices=CALIBRATORS, default="mse", help="activation range estimation")
    p.add_argument("--calib-size", type=int, default=1024, help="training images used for calibration")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer, not per channel")
    p.add_argument("--layer-bits", default="", help="mixed precision: 'layer=bits,layer=bits' weight overrides")
    p.add_argument("--cle", action="store_true", help="cross-layer equalization before quantizing")
    p.add_argument("--bias-correction", action="store_true", help="empirical bias correction")
    p.add_argument("--adaround", action="store_true", help="learn the rounding of layers below 8 bits")
    p.add_argument("--adaround-iters", type=int, default=1000, help="optimisation steps per layer for --adaround")
    p.add_argument("--lsq", action="store_true", help="QAT learns the quantizer scales (LSQ)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed runs per batch size")
    p.add_argument("--output", required=True, help="directory for quantized.pt and model.onnx")
    add_train_args(p)  # --epochs > 0 runs QAT after PTQ, with the float model as distillation teacher
    add_common(p)
    p.set_defaults(handler=run_quantize, epochs=0, optimizer="adam", lr=1e-4, weight_decay=0.0)

    p = sub.add_parser("quant-sensitivity", help="accuracy/loss change per layer when only it is quantized")
    add_model_args(p, weights_required=True)
    add_data_args(p)
    p.add_argument("--bits", default="8,6,4,3,2", help="comma-separated weight bit widths")
    p.add_argument("--limit", type=int, default=1000, help="evaluate on N stratified test images")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer, not per channel")
    add_common(p)
    p.set_defaults(handler=run_sensitivity)


def parse_layer_bits(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, bits = item.partition("=")
        if not sep or not bits.strip().isdigit():
            raise CLIError(f"--layer-bits entries must be layer=bits, got {item!r}")
        out[name.strip()] = int(bits)
    return out


def run_sensitivity(args: argparse.Namespace) -> int:
    model, spec = resolve_model(args)
    name = dataset_name(args, spec)
    test = load_split(args, name, "test")
    try:
        bits = [int(b) for b in args.bits.split(",")]
    except ValueError as exc:
        raise CLIError(f"--bits must be comma-separated integers, got {args.bits!r}") from exc
    if args.limit is None or args.limit < 1:
        raise CLIError("--limit must be positive")
    table = sensitivity(model, test.take(min(args.limit, len(test))), bits, per_channel=not args.per_tensor)
    emit(args, {"model": spec.factory, "dataset": name, **table.to_dict()}, lambda _: table.table())
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    check_output_dir(args.output)
    model, spec = resolve_model(args)
    name = dataset_name(args, spec)
    train, test = load_split(args, name, "train"), load_split(args, name, "test")
    if args.calib_size < 1:
        raise CLIError("--calib-size must be positive")
    if args.limit is not None:
        if args.limit < 1:
            raise CLIError("--limit must be positive")
        test = test.subset(range(min(args.limit, len(test))))
    qmodel = quantize(model, train.take(min(args.calib_size, len(train)), seed=args.seed), args.weight_bits,
                      args.act_bits, not args.per_tensor, args.calibration, parse_layer_bits(args.layer_bits),
                      cle=args.cle, bias_correction=args.bias_correction, adaround=args.adaround,
                      adaround_iters=args.adaround_iters)
    history = []
    if args.epochs > 0:
        record = qat(qmodel, train, train_config(args), teacher=model, learnable_scales=args.lsq,
                     progress=show_progress(args))
        history = record.history
        qmodel.cpu()
    out_dir = Path(args.output)
    checkpoint = save_quantized(out_dir / "quantized.pt", qmodel, spec, dataset=name)
    shape = input_shape(args, spec)
    onnx_path = export_onnx(qmodel, out_dir / "model.onnx", shape)
    result = _measure(args, model, qmodel, onnx_path, test, shape)
    result.update(model=spec.factory, dataset=name, config=qmodel.quant_config.to_dict(), qat_history=history,
                  outputs={"checkpoint": str(checkpoint), "onnx": str(onnx_path)})
    emit(args, result, _render)
    return 0


def _measure(args, model, qmodel, onnx_path: Path, test, shape) -> dict[str, Any]:
    fp32 = evaluate(model, test)
    agreement = compare_top1(qmodel, OnnxRuntimeModule(onnx_path), test)
    threads = torch.get_num_threads()
    latency = {kind: measure_latency(m, shape, batch_sizes=(1, 64), backend="onnxruntime",
                                     repeats=args.latency_repeats, threads=threads)
               for kind, m in (("fp32", model), ("int8", onnx_path))}
    ratio = {str(bs): latency["fp32"].batches[bs].median_ms / latency["int8"].batches[bs].median_ms for bs in (1, 64)}
    storage = weight_storage_bytes(qmodel)
    return {"test_images": fp32.n, "fp32_top1": fp32.top1, "simulated_top1": agreement.top1_a,
            "onnxruntime_top1": agreement.top1_b, "agreement": agreement.agreement,
            "fp32_weight_bytes": 4 * sum(p.numel() for p in model.parameters()),
            "weight_bytes_packed": storage["packed"], "weight_bytes_onnx": storage["onnx_int8"],
            "onnx_file_bytes": onnx_path.stat().st_size, "threads": threads,
            "latency": {k: v.to_dict() for k, v in latency.items()}, "speedup_fp32_over_int8": ratio}


def _render(out: dict[str, Any]) -> str:
    cfg = out["config"]
    rows = [["fp32 (PyTorch)", out["fp32_top1"]], ["simulated", out["simulated_top1"]],
            ["onnxruntime int", out["onnxruntime_top1"]]]
    lat = out["latency"]
    return "\n".join([
        f"{out['model']} on {out['dataset']} ({out['test_images']} test images), W{cfg['weight_bits']}"
        f"A{cfg['act_bits']}, {cfg['calibration']} calibration",
        format_table(rows, ["model", "top-1 %"]),
        f"simulated vs onnxruntime top-1 agreement: {out['agreement']:.2f}%",
        f"weights: {out['fp32_weight_bytes']:,} B fp32 -> {out['weight_bytes_packed']:,} B packed "
        f"({out['weight_bytes_onnx']:,} B as int8 in ONNX)",
        "onnxruntime latency (median ms, fp32 / int): " + ", ".join(
            f"batch {bs}: {lat['fp32']['batches'][bs]['median_ms']:.2f} / {lat['int8']['batches'][bs]['median_ms']:.2f}"
            f" ({out['speedup_fp32_over_int8'][bs]:.2f}x)" for bs in ("1", "64")),
        f"-> {out['outputs']['checkpoint']}, {out['outputs']['onnx']}",
    ])
