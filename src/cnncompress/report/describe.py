"""Sentences for people: the budget a run had, what each stage did, what the plan's warnings came to,
and what each written file and memory figure is. Shared by the Markdown and HTML writers."""

from __future__ import annotations

import re
from typing import Any

from ..plan.budget import LABELS, format_limit
from ..plan.units import format_bytes, format_count
from .run_report import FigureRow, RunReport

#: the planner's warning about its own predicted accuracy drop starts so (``plan.planner``)
PREDICTED_DROP_WARNING = "predicted accuracy drop"


def limits_text(budget: dict[str, Any]) -> str:
    """``flash ≤ 8.0 KB, RAM ≤ 4.1 KB, accuracy drop ≤ 3 pt``; empty when nothing is limited."""
    parts = [f"{label} ≤ {format_limit(key, budget[key])}" for key, label in LABELS.items()
             if budget.get(key) is not None]
    if budget.get("max_accuracy_drop") is not None:
        parts.append(f"accuracy drop ≤ {budget['max_accuracy_drop']:g} pt")
    return ", ".join(parts)


def budget_sentence(report: RunReport) -> str:
    """What the run had to fit: every limit, then where they came from (a device profile, and which limits
    the run set instead of the profile's; or a custom budget without a profile)."""
    limits = limits_text(report.budget) or "no limits"
    device = report.device
    if not device:
        return f"{limits} (custom budget, no device profile)" if report.budget else "none given"
    details = [f"device profile {device.get('name') or 'unnamed'}"
               + (f": {device['description']}" if device.get("description") else "")]
    overrides = [f"{LABELS[k]} {format_limit(k, report.budget[k])} (profile: "
                 f"{'none' if device.get(k) is None else format_limit(k, device[k])})"
                 for k in LABELS if report.budget.get(k) is not None and report.budget.get(k) != device.get(k)]
    if overrides:
        details.append("set for this run instead of the profile's: " + ", ".join(overrides))
    if device.get("ram_reserved_bytes"):
        details.append(f"RAM counts the profile's {format_bytes(device['ram_reserved_bytes'])} reserved scratch")
    return f"{limits} ({'; '.join(details)})"


# --- stages -----------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return f"{value:.2f}%"


def _per_layer(values: Any, show) -> str:
    if isinstance(values, dict):
        return ", ".join(f"{k} {show(v)}" for k, v in values.items())
    return show(values)


def _change(before: float, after: float, show) -> str:
    rel = f" ({100 * (after - before) / before:+.1f}%)" if before else ""
    return f"{show(before)} → {show(after)}{rel}"


#: what a stage's validation accuracy was measured after, by stage kind
AFTER = {"prune": " after pruning", "sparsify": " after sparsifying", "finetune": " after fine-tuning",
         "quantize": " after quantization", "qat": " after QAT"}


def stage_sentence(stage: dict[str, Any], tolerance: float | None = None) -> str:
    """A stage's summary as sentences with units (``summary`` keys the pipeline and recipes write);
    keys it does not know are listed as ``key: value`` at the end rather than dropped."""
    s = dict(stage.get("summary") or {})
    kind = re.sub(r"\d+$", "", str(stage.get("name", "")).split("-")[-1])  # r1-qat -> qat, finetune2 -> finetune
    parts: list[str] = []
    pruned = s.pop("pruned", None)
    macs = (s.pop("macs_before", None), s.pop("macs_after", None))
    params = (s.pop("params_before", None), s.pop("params_after", None))
    if pruned is False:
        parts.append("no channels removed (the plan keeps every layer's width)")
    elif pruned or macs[1] is not None or params[1] is not None:
        text = "channels removed"
        if macs[0] is not None and macs[1] is not None:
            text += f": MACs {_change(macs[0], macs[1], format_count)}"
        elif macs[1] is not None:
            text += f": MACs now {format_count(macs[1])}"
        if params[0] is not None and params[1] is not None:
            text += f", parameters {_change(params[0], params[1], lambda v: f'{v:,}')}"
        elif params[1] is not None:
            text += f", parameters now {params[1]:,}"
        parts.append(text)
    sparsity = s.pop("sparsity", None)
    if sparsity:
        parts.append("smallest weights zeroed: " + _per_layer(sparsity, lambda v: f"{100 * v:.0f}%"))
    if "epochs" in s:
        epochs = s.pop("epochs")
        parts.append(f"{epochs} fine-tuning epoch{'s' if epochs != 1 else ''}" if epochs else
                     "no fine-tuning needed (nothing was removed)")
    resumed = s.pop("resumed_from_epoch", None)
    if resumed:
        parts.append(f"resumed from its checkpoint after {resumed} completed epoch{'s' if resumed != 1 else ''}")
    bits = s.pop("layer_bits", None)
    if bits:
        parts.append("weight bits: " + _per_layer(bits, lambda v: f"{v}"))
    if "act_bits" in s:
        parts.append(f"activations {s.pop('act_bits')}-bit")
    ran = s.pop("ran", None)
    drop = s.pop("drop_before", None)
    before = s.pop("val_top1_before", None)
    if ran is False:
        within = f", within the {tolerance:g} pt tolerance" if tolerance is not None else ""
        parts.append("QAT not needed" + (f": validation drop {drop:.2f} pt{within}" if drop is not None else ""))
    elif ran:
        text = "QAT ran"
        if drop is not None:
            over = f", over the {tolerance:g} pt tolerance" if tolerance is not None else ""
            text += f" as the validation drop was {drop:.2f} pt{over}"
        parts.append(text)
    if "val_top1" in s:
        after = AFTER.get(kind, "")
        if before is not None:
            parts.append(f"validation top-1 {_pct(before)} → {_pct(s.pop('val_top1'))}{after}")
        else:
            parts.append(f"validation top-1 {_pct(s.pop('val_top1'))}{after}")
    elif before is not None:
        parts.append(f"validation top-1 before {_pct(before)}")
    for key, value in s.items():
        if value in ({}, [], None):
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.replace('_', ' ')}: {shown}")
    text = "; ".join(parts) or "no figures recorded"
    return text[0].upper() + text[1:] + "."


def stage_seconds(stage: dict[str, Any]) -> str:
    seconds = float(stage.get("seconds", 0.0))
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --- plan warnings ----------------------------------------------------------------------------------

def plan_remarks(report: RunReport) -> list[tuple[str, str]]:
    """The plan's warnings weighed against the measurement: ``("warning", text)`` or ``("note", text)``.

    A predicted accuracy drop over the tolerance stays a warning only while nothing was measured or the
    measured drop exceeds the tolerance too; a measurement within it turns it into a note that the
    prediction was pessimistic. A measured drop over the tolerance that the plan did not foresee is a warning.
    """
    plan = report.plan or {}
    row = report.figure("accuracy_drop") or FigureRow("accuracy_drop")
    measured = row.measured
    tolerance = row.limit if row.limit is not None else (plan.get("budget") or report.budget).get("max_accuracy_drop")
    predicted = plan.get("predicted_accuracy_drop", row.predicted)
    out: list[tuple[str, str]] = []
    flagged = False
    for warning in plan.get("warnings", []):
        if not warning.startswith(PREDICTED_DROP_WARNING) or measured is None or tolerance is None:
            out.append(("warning", warning))
            flagged = flagged or warning.startswith(PREDICTED_DROP_WARNING)
            continue
        flagged = True
        if measured <= tolerance:
            out.append(("note", f"The plan predicted an accuracy drop of {predicted:.2f} pt (sum of one-layer "
                                f"drops, before fine-tuning), above the {tolerance:g} pt tolerance; the measured "
                                f"drop is {measured:.2f} pt, within it: the prediction was pessimistic."))
        else:
            out.append(("warning", f"predicted accuracy drop {predicted:.2f} pt exceeds the {tolerance:g} pt "
                                   f"tolerance, and the measured drop, {measured:.2f} pt, exceeds it too."))
    if not flagged and measured is not None and tolerance is not None and measured > tolerance:
        expected = f"; the plan predicted {predicted:.2f} pt" if predicted is not None else ""
        out.append(("warning", f"measured accuracy drop {measured:.2f} pt exceeds the {tolerance:g} pt "
                               f"tolerance{expected}."))
    return out


# --- memory figures and files -------------------------------------------------------------------------

def figure_label(row: FigureRow, report: RunReport) -> str:
    """The figure's label, saying for flash and RAM what they were measured on."""
    if row.name not in ("flash_bytes", "ram_bytes") or not report.memory_source:
        return row.label
    if report.measured_on_firmware:
        return f"{row.label} (measured on {report.firmware_target} firmware)"
    return {"flash_bytes": "flash (measured as the .cnnc container's size)",
            "ram_bytes": "RAM (measured on the graph's activations + reserve)"}[row.name]


FILE_KINDS = {
    "onnx": "integer (QDQ) ONNX model: onnxruntime measured the accuracy and latency on it",
    "checkpoint": "PyTorch checkpoint of the compressed (simulated-quantized) model",
    "c_library": "C99 library (model.c/model.h and the integer kernels)",
}


def file_label(key: str, path: str, report: RunReport) -> str:
    """One line on a written file: what it is, its size, and whether the flash figure is its size."""
    size = report.file_bytes.get(key)
    shown = f"`{path}`" + (f" ({format_bytes(size)})" if size is not None else "")
    if key == "deployable" or str(path).endswith(".cnnc"):
        what = "compact archive and transport format (the `.cnnc` container, entropy-coded weights)"
        if report.measured_on_firmware:
            what += (f"; not the microcontroller flash figure: flash and RAM above were measured on the "
                     f"{report.firmware_target} firmware")
        elif report.memory_source:
            what += "; the flash figure above is this container's size (no firmware was built for this run)"
        return f"{shown}: {what}"
    if key == "c_library" and report.measured_on_firmware:
        return f"{shown}: {FILE_KINDS[key]}, built into the {report.firmware_target} firmware measured above"
    kind = FILE_KINDS.get(key)
    return f"{shown}: {kind}" if kind else shown


def firmware_rows(report: RunReport) -> list[list[str]]:
    """The C build's measured figures, one ``[figure, value]`` row each (empty without a firmware run)."""
    fw = report.firmware or {}
    mcu = fw.get("mcu")
    if not mcu:
        return []
    rows = [["core and board", f"{mcu.get('target', '?')} on QEMU {mcu.get('board', '?')}"],
            ["flash (text + data of the model and kernel objects)", format_bytes(mcu["flash_bytes"])],
            ["RAM (their data + bss + painted stack, without the reserve)",
             f"{format_bytes(mcu['ram_bytes'])} (stack {format_bytes(mcu.get('stack_bytes', 0))})"]]
    if fw.get("arena_bytes") is not None:
        rows.append(["activation arena (sum of activations; lower bound)",
                     f"{format_bytes(fw['arena_bytes'])} ({format_bytes(fw.get('activation_sum_bytes', 0))}; "
                     f"{format_bytes(fw.get('lower_bound_bytes', 0))})"])
    if fw.get("const_bytes") is not None:
        rows.append(["constant arrays (weights, bias, requantization)", format_bytes(fw["const_bytes"])])
    if mcu.get("instructions_per_inference"):
        rows.append(["instructions per inference (QEMU count, not cycles)",
                     f"{mcu['instructions_per_inference']:,}"])
    if fw.get("top1_c") is not None:
        rows.append([f"top-1 of the C build on the host ({fw.get('images', '?')} test images)",
                     _pct(fw["top1_c"])])
    if fw.get("host_equals_reference") is not None:
        rows.append(["host build equals the integer reference", "yes" if fw["host_equals_reference"] else "NO"])
    if fw.get("mcu_equals_host") is not None:
        rows.append([f"emulator output equals the host build ({mcu.get('images', '?')} images)",
                     "yes" if fw["mcu_equals_host"] else "NO"])
    return rows
