"""``export-c`` command: a quantized checkpoint (``.pt``) or deployable (``.cnnc``) as a C99 library."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from ..export.c import TARGETS, export_c, export_verified
from ..export.c.firmware import missing_tools
from ..models import ModelSpec
from ..quant import load_quantized
from ..quant.deployable import read_deployable
from .common import (
    CLIError,
    add_data_args,
    check_output_dir,
    dataset_name,
    emit,
    format_table,
    input_shape,
    load_split,
)


def register(sub: argparse._SubParsersAction, add_common) -> None:
    p = sub.add_parser("export-c", help="a quantized model as C99 with integer kernels and a static arena")
    p.add_argument("model", metavar="MODEL", help="quantized checkpoint (.pt from quantize/compress) or .cnnc")
    p.add_argument("--output", required=True, help="directory for model.h, model.c and the kernels")
    p.add_argument("--target", choices=TARGETS, default="cortex-m4")
    p.add_argument("--factory", help="your model's factory ('file.py:build') when MODEL is not a zoo model")
    p.add_argument("--input-shape", help="C,H,W (default: the model's usual input)")
    p.add_argument("--calib-size", type=int, default=256,
                   help="training images that fix the int8 grid of the logits")
    p.add_argument("--verify", action="store_true",
                   help="build with gcc, run the test set, compare with the integer reference and onnxruntime")
    p.add_argument("--mcu", action="store_true", help="with --verify: also run on the emulated --target (QEMU)")
    p.add_argument("--mcu-images", type=int, default=100, help="test images the emulated MCU runs")
    p.add_argument("--build-dir", help="where --verify builds (default: OUTPUT.build beside --output)")
    add_data_args(p)
    add_common(p)
    p.set_defaults(handler=run_export_c)


def _load(path: Path, spec: ModelSpec | None) -> tuple[Any, ModelSpec, str | None]:
    """(qmodel, spec, dataset named in the file) from a checkpoint or a deployable."""
    if not path.is_file():
        raise CLIError(f"MODEL {str(path)!r} is not a file")
    if path.suffix == ".cnnc":
        qmodel, spec, header = read_deployable(path, spec)
        return qmodel, spec, (header.get("meta") or {}).get("dataset")
    qmodel, spec, meta = load_quantized(path, spec)
    return qmodel, spec, meta.get("dataset")


def run_export_c(args: argparse.Namespace) -> int:
    check_output_dir(args.output)
    if args.calib_size < 1:
        raise CLIError("--calib-size must be positive")
    if args.mcu and (not args.verify or args.target == "host"):
        raise CLIError("--mcu needs --verify and a Cortex-M --target")
    if args.mcu and missing_tools():
        raise CLIError(f"--mcu needs {', '.join(missing_tools())} (apt-get install gcc-arm-none-eabi "
                       "libnewlib-arm-none-eabi qemu-system-arm)")
    if args.verify and shutil.which("gcc") is None:
        raise CLIError("--verify needs the C compiler gcc on PATH (apt-get install gcc)")
    qmodel, spec, stored_dataset = _load(Path(args.model), ModelSpec(args.factory) if args.factory else None)
    args.dataset = args.dataset or stored_dataset
    shape = input_shape(args, spec)
    train = load_split(args, dataset_name(args, spec), "train")
    calibration = train.take(min(args.calib_size, len(train)))
    if args.verify:  # the library lands in --output only once its proof ran
        test = load_split(args, dataset_name(args, spec), "test")
        build = Path(args.build_dir or f"{Path(args.output)}.build")
        record, check = export_verified(qmodel, args.output, shape, args.target, test, build,
                                        calibration=calibration, mcu_target=args.target if args.mcu else None,
                                        mcu_images=args.mcu_images)
        result = {"model": spec.factory, **record.to_dict(), "verification": check.to_dict()}
    else:
        record = export_c(qmodel, args.output, shape, args.target, calibration=calibration)
        result = {"model": spec.factory, **record.to_dict()}
    emit(args, result, _render)
    return 0


def _render(out: dict[str, Any]) -> str:
    rows = [[layer["name"], layer["weight_bits"], layer["storage_bits"], layer["weights"]] for layer in out["layers"]]
    return "\n".join([
        f"{out['model']} -> {out['output_dir']} ({out['target']}, {out['ops']} kernel calls)",
        format_table(rows, ["layer", "weight bits", "stored bits", "weights"]),
        f"const data: {out['const_bytes']:,} B; activation arena: {out['arena_bytes']:,} B "
        f"(all activations: {out['activation_sum_bytes']:,} B, lower bound: {out['lower_bound_bytes']:,} B)",
        f"input: int8 codes, scale {out['input']['scale']:.6g}, zero point {out['input']['zero_point']}; "
        f"output: scale {out['output']['scale']:.6g}, zero point {out['output']['zero_point']}",
        *_render_verification(out.get("verification")),
    ])


def _render_verification(v: dict[str, Any] | None) -> list[str]:
    if v is None:
        return []
    sim, ort = v["vs_simulation"], v["vs_onnxruntime"]
    lines = [
        f"host gcc build on {v['images']} test images: top-1 {v['top1_c']:.2f}%, equals the integer reference bit "
        f"for bit: {'yes' if v['host_equals_reference'] else 'NO'}",
        f"vs simulation: top-1 agreement {sim['top1']:.2f}%, identical logits {sim['identical_logits']:.2f}%",
        f"vs onnxruntime (requantizes in float): top-1 agreement {ort['top1']:.2f}%, identical logits "
        f"{ort['identical_logits']:.2f}%"]
    if "mcu" in v:
        m = v["mcu"]
        lines.append(f"{m['target']} on QEMU {m['board']} ({m['images']} images): equals the host build: "
                     f"{'yes' if v['mcu_equals_host'] else 'NO'}; flash {m['flash_bytes']:,} B, RAM "
                     f"{m['ram_bytes']:,} B (stack {m['stack_bytes']:,} B); "
                     f"{m['instructions_per_inference']:,} instructions per inference (emulator count, not cycles)")
    return lines
