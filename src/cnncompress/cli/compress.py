"""``compress`` (budget-driven) and ``demo`` (the README's main job) commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..analysis import profile
from ..data import ImageSet
from ..export.c.firmware import kernel_code_bytes, missing_tools
from ..models import ModelSpec, load_model, save_checkpoint
from ..pipeline import (
    BudgetInfeasible,
    CompressionResult,
    CompressOptions,
    compress,
    compress_with_recipe,
)
from ..plan import Budget, DeviceProfile, load_device
from ..plan.cli_args import add_budget_args, budget_from_args
from ..plan.devices import C_WEIGHT_BITS
from ..plan.units import format_bytes, format_count
from ..recipe import load_recipe
from ..train import TrainConfig, fit
from ..utils import seed_everything
from .common import (
    EXIT_INFEASIBLE,
    TORCH_DEVICE_OPTION,
    CLIError,
    add_data_args,
    add_model_args,
    check_output_dir,
    dataset_name,
    emit,
    format_table,
    load_split,
    resolve_model,
    show_progress,
)

#: held-out validation images taken from the training split, per dataset
VALIDATION_IMAGES = {"digits": 300, "mnist": 5000, "fashion-mnist": 5000, "cifar10": 5000}


def register(sub: argparse._SubParsersAction, add_common) -> None:
    p = sub.add_parser("compress", help="plan, prune, quantize, export and verify a model against a device budget")
    add_model_args(p, weights_required=False)
    add_data_args(p)
    add_budget_args(p)
    add_stage_args(p)
    p.add_argument("--output", required=True, help="run directory (checkpoints, plan, artifacts, report)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    p.add_argument("--config", help="recipe YAML: a hand-written stage list instead of the planner "
                                    "(budget flags then only verify)")
    add_common(p)
    p.set_defaults(handler=run_compress, on_interrupt=compress_interrupted)

    p = sub.add_parser("demo", help="train a small CNN and compress it to a tight budget (digits by default)")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist", "fashion-mnist"))
    p.add_argument("--data-dir", help="folder with the dataset files (else $CNNCOMPRESS_DATA, ../shared/data)")
    p.add_argument("--output", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--flash", default=None, help="flash limit (default: a tenth of the trained model's fp32 weights, "
                                                 "plus the C kernels' code when the Cortex-M4 toolchain is present)")
    p.add_argument("--ram", default=None, help="RAM limit (default: a quarter of its fp32 activation peak)")
    p.add_argument("--max-accuracy-drop", default="1.0")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, shuffles and subsets "
                                                       "(default 0): a command repeats its result on one machine")
    add_common(p)
    p.set_defaults(handler=run_demo, on_interrupt=demo_interrupted)


def add_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs after pruning")
    p.add_argument("--qat-epochs", type=int, default=2, help="QAT epochs when PTQ loses more than allowed")
    p.add_argument("--max-batches", type=int, help="cap batches per epoch (quick runs)")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning and QAT images per step")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (SGD)")
    p.add_argument("--sensitivity-images", type=int, default=1000,
                   help="validation images each sensitivity measurement uses")
    p.add_argument("--criterion", default="l1", help="channel importance: l1, l2, fpgm, bn_scale, random")
    p.add_argument("--max-rounds", type=int, default=3, help="plan-run-verify rounds when a limit is missed")
    p.add_argument(TORCH_DEVICE_OPTION, default="cpu", metavar="DEVICE",
                   help="torch device for fine-tuning, QAT and evaluation: cpu, cuda or cuda:N (--device names "
                        "the device profile)")
    p.add_argument("--train-device", dest="torch_device", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> CompressOptions:
    return CompressOptions(finetune_epochs=args.finetune_epochs, qat_epochs=args.qat_epochs, lr=args.lr,
                           batch_size=args.batch_size, max_batches_per_epoch=args.max_batches,
                           sensitivity_images=args.sensitivity_images, criterion=args.criterion,
                           max_rounds=args.max_rounds, device=args.torch_device)


def kept_in_run_directory(folder: Path) -> str:
    """What an interrupted run left in its run directory, in words (finished stages, cached sensitivity)."""
    kept = []
    try:
        stages = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("stages", [])
        names = [s["name"] for s in stages if isinstance(s, dict) and "name" in s]
    except (OSError, ValueError, AttributeError):
        names = []
    if names:
        kept.append(f"finished stage{'s' * (len(names) > 1)} {', '.join(names)}")
    if (folder / "sensitivity.json").is_file():
        kept.append("the sensitivity measurements")
    return " and ".join(kept) + f" are kept in {folder}" if kept else f"no stage had finished in {folder}"


def compress_interrupted(args: argparse.Namespace, resume_command: str) -> str:
    folder = Path(args.output)
    if not (folder / "manifest.json").is_file():  # stopped before the run directory was started
        return "nothing was saved; run the same command again to start over"
    return f"{kept_in_run_directory(folder)}; to continue: {resume_command}"


def demo_interrupted(args: argparse.Namespace, resume_command: str) -> str:
    """The demo resumes by itself: the same command reuses the trained baseline and the finished stages."""
    out = Path(args.output)
    if not (out / f"baseline-seed{args.seed}.pt").is_file():
        return "the baseline had not finished training, so nothing was saved; run the same command again"
    kept = kept_in_run_directory(out / "compress") if (out / "compress" / "manifest.json").is_file() else ""
    return (f"the trained baseline is kept in {out}" + (f", {kept}" if kept else "")
            + "; to continue, run the same command again")


def split_train_val(train: ImageSet) -> tuple[ImageSet, ImageSet]:
    """Hold out a seeded validation subset of the training split (the test split stays unseen)."""
    return train.split(VALIDATION_IMAGES.get(train.info.name, len(train) // 10), seed=0)


def run_compress(args: argparse.Namespace) -> int:
    check_output_dir(args.output)
    model, spec = resolve_model(args)
    given = any(getattr(args, f) for f in ("device", "flash", "ram", "macs", "latency"))
    device, budget = budget_from_args(args) if given or not args.config else (None, None)
    recipe = load_recipe(args.config) if args.config else None  # refuse a bad recipe before loading data
    name = dataset_name(args, spec)
    train, val = split_train_val(load_split(args, name, "train"))
    test = load_split(args, name, "test")
    if recipe is not None:
        result = compress_with_recipe(model, {"stages": [{n: o} for n, o in recipe]}, train, val, test, budget,
                                      output_dir=args.output, spec=spec, device=args.torch_device,
                                      resume=args.resume, progress=show_progress(args))
    else:
        result = _compress(model, spec, budget, device, train, val, test, args, options_from_args(args))
    emit(args, _summary(result), _render)
    return 0 if result.fits else EXIT_INFEASIBLE


def _compress(model, spec, budget, device, train, val, test, args, options) -> CompressionResult:
    try:
        return compress(model, budget, train, val, test, device, output_dir=args.output, spec=spec,
                        options=options, resume=args.resume, progress=show_progress(args))
    except BudgetInfeasible as exc:
        raise CLIError(str(exc), EXIT_INFEASIBLE) from exc
    except FileExistsError as exc:
        raise CLIError(str(exc)) from exc


def _summary(result: CompressionResult) -> dict[str, Any]:
    out = result.to_dict()
    out["before_after"] = _figures(result)
    return out


def _figures(result: CompressionResult) -> list[dict[str, Any]]:
    measured = result.verification.measured
    limits = result.verification.budget.limits()
    rows = [("flash_bytes", measured.flash_bytes), ("ram_bytes", measured.ram_bytes), ("macs", measured.macs),
            ("latency_ms", measured.latency_ms)]
    return [{"figure": key, "limit": limits.get(key), "measured": value,
             "fits": None if key not in limits or value is None else value <= limits[key]} for key, value in rows]


def _show(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.endswith("_bytes"):
        return format_bytes(value)
    if key == "macs":
        return format_count(value)
    return f"{value:.3f} ms"


def _render(out: dict[str, Any]) -> str:
    rows = [[f["figure"], _show(f["figure"], f["limit"]), _show(f["figure"], f["measured"]),
             {True: "yes", False: "NO", None: "-"}[f["fits"]]] for f in out["before_after"]]
    table = format_table(rows, ["figure", "limit", "measured", "fits"])
    misses = "; ".join(m["message"] for m in out["verification"]["misses"])
    lines = [table, "",
             f"top-1: original {out['baseline_top1']:.2f}%  ->  compressed {out['top1']:.2f}% (simulated), "
             f"{out['onnx_top1']:.2f}% (onnxruntime int8)",
             *([_render_mcu(out["firmware"], out["before_after"], budget_on_firmware=True)] if out.get("firmware")
               else []),
             "FITS the budget" if out["fits"] else f"DOES NOT FIT: {misses}",
             f"report: {out['paths'].get('report_html', '-')}"]
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    """Train the digits CNN (or LeNet-5 on MNIST) and compress it to a tenth of its size: on the Cortex-M4
    firmware, proved in QEMU, where the Arm toolchain is present (see ``_demo_budget``), else on the .cnnc.

    A rerun in the same --output reuses the trained baseline and the finished stages (the run directory
    resumes), so `make demo` can be run again; other settings need another --output."""
    spec = ModelSpec("digits_cnn") if args.dataset == "digits" else ModelSpec("lenet5")
    out = check_output_dir(args.output)
    train_all = load_split(args, args.dataset, "train")
    train, val = split_train_val(train_all)
    test = load_split(args, args.dataset, "test")
    model = _trained_baseline(spec, train, out / f"baseline-seed{args.seed}.pt", args)
    before = profile(model, train.info.input_shape)
    ram = args.ram or f"{before.peak_activation_bytes // 4}B"
    device, budget = _demo_budget(args.flash, before.weight_bytes, ram, args.max_accuracy_drop)
    epochs = 10 if args.dataset == "digits" else 2
    options = CompressOptions(finetune_epochs=epochs, qat_epochs=epochs, batch_size=64, lr=0.02,
                              sensitivity_images=len(val), seed=args.seed)
    result = _compress(model, spec, budget, device, train, val, test, argparse.Namespace(
        output=str(out / "compress"), resume=True, quiet=args.quiet, json=args.json), options)
    summary = _summary(result)
    summary["seed"] = args.seed
    summary["before"] = {"flash_bytes": before.weight_bytes, "ram_bytes": before.peak_activation_bytes,
                         "macs": before.macs, "params": before.params}
    summary["mcu"] = result.firmware or {"skipped": _missing_toolchain()}
    emit(args, summary, _render_demo)
    return 0 if result.fits else EXIT_INFEASIBLE


#: the demo's core: with the Arm toolchain and QEMU, the budget is planned for and proved on its firmware
DEMO_DEVICE = "cortex-m4"


def _demo_budget(flash: str | None, fp32_weight_bytes: int, ram: str, max_accuracy_drop: str
                 ) -> tuple[DeviceProfile | None, Budget]:
    """The demo's device and budget; ``flash`` None: a tenth of the fp32 weights (plus the kernels' code on a core).

    With the toolchain: the cortex-m4 profile with the demo's limits, the widths the C kernels run (2, 4, 8)
    and no RAM reserve (the limit is the model's own RAM: the firmware's data, arena and stack). The planner
    then costs flash as the C library lays it out, and compress ends by building the firmware, running it in
    QEMU and checking the budget on its measured flash and RAM. The default flash limit adds the kernels'
    code (measured by compiling them) to the tenth: code every model on the core needs, whatever its size.
    Without the toolchain: the limits alone, checked on the .cnnc container (the demo says what it skipped)."""
    if missing_tools():
        return budget_from_args(argparse.Namespace(device=None, flash=flash or f"{fp32_weight_bytes // 10}B",
                                                   ram=ram, macs=None, latency=None,
                                                   max_accuracy_drop=max_accuracy_drop))
    flash = flash or f"{fp32_weight_bytes // 10 + kernel_code_bytes(DEMO_DEVICE)}B"
    device = load_device(DEMO_DEVICE, {"flash": flash, "ram": ram, "ram_reserved": 0,
                                       "weight_bits": list(C_WEIGHT_BITS)})
    return device, device.budget(max_accuracy_drop)


def _missing_toolchain() -> str:
    return (f"{', '.join(missing_tools())} not found (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
            "qemu-system-arm)")


def _trained_baseline(spec: ModelSpec, train: ImageSet, path: Path, args: argparse.Namespace):
    """Train the demo's starting model once; a rerun reuses the checkpoint."""
    if path.is_file():
        return load_model(path, spec)[0]
    seed_everything(args.seed)  # the initial weights too, so the same command repeats its baseline
    model = spec.build()
    epochs = 30 if train.info.name == "digits" else 3
    fit(model, train, TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=args.seed), progress=show_progress(args))
    save_checkpoint(path, model, spec, dataset=train.info.name, seed=args.seed)
    return model.eval()


def _render_demo(out: dict[str, Any]) -> str:
    before = out["before"]
    rows = [[f["figure"], _show(f["figure"], before.get(f["figure"])), _show(f["figure"], f["limit"]),
             _show(f["figure"], f["measured"]), {True: "yes", False: "NO", None: "-"}[f["fits"]]]
            for f in out["before_after"] if f["figure"] != "latency_ms"]
    rows.append(["top-1 %", f"{out['baseline_top1']:.2f}", "-", f"{out['onnx_top1']:.2f}", "-"])
    on_firmware = "skipped" not in out["mcu"]
    header = ["figure", "before (fp32)", "limit", "after (measured on the firmware)" if on_firmware else
              "after (measured on .cnnc)", "fits"]
    verdict = "FITS the budget" if out["fits"] else "does NOT fit the budget"
    verdict += " on the Cortex-M4 firmware" if on_firmware else " on the .cnnc container"
    misses = "; ".join(m["message"] for m in out["verification"]["misses"])
    verdict += f" (seed {out['seed']})" + (f": {misses}" if misses and not out["fits"] else "")
    return (format_table(rows, header)
            + f"\n\n{verdict}; report: {out['paths'].get('report_html', '-')}\n"
            + _render_mcu(out["mcu"], out["before_after"], budget_on_firmware=on_firmware))


def _render_mcu(mcu: dict[str, Any], figures: list[dict[str, Any]], budget_on_firmware: bool = False) -> str:
    """One line on the C build; ``budget_on_firmware``: the budget table already holds these figures."""
    if "skipped" in mcu:
        return (f"C build on an emulated Cortex-M4: skipped, {mcu['skipped']}; the budget above is checked on "
                "the .cnnc container, not on executable C")
    limits = {f["figure"]: f["limit"] for f in figures}
    run = mcu["mcu"]
    misses = [f"{key.split('_')[0]} {format_bytes(run[key])} > {format_bytes(limits[key])}"
              for key in ("flash_bytes", "ram_bytes") if limits.get(key) is not None and run[key] > limits[key]]
    verdict = ("the budget above is checked on these figures" if budget_on_firmware else
               "the firmware fits the limits too" if not misses else
               "the firmware does NOT fit (" + ", ".join(misses) + "): the budget above is checked on the .cnnc "
               "container, not on executable C")
    return (f"C build ({mcu['library']}) on QEMU {run['board']} ({run['target']}), measured on the firmware: flash "
            f"{format_bytes(run['flash_bytes'])} (limit {_show('flash_bytes', limits.get('flash_bytes'))}), RAM "
            f"{format_bytes(run['ram_bytes'])} incl. stack {format_bytes(run['stack_bytes'])} "
            f"(limit {_show('ram_bytes', limits.get('ram_bytes'))}); top-1 {mcu['top1_c']:.2f}% on the host build "
            f"of the same C; emulator output equals the host build on {run['images']} images: "
            f"{'yes' if mcu['mcu_equals_host'] else 'NO'}; {verdict}")

