"""Write ``report.json`` (every figure), ``report.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNG data and carries no external reference (no scripts, styles
or images fetched from elsewhere), so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..plan.budget import LABELS, format_limit
from ..utils import atomic_write_text
from .describe import (
    budget_sentence,
    figure_label,
    file_label,
    firmware_rows,
    plan_remarks,
    stage_seconds,
    stage_sentence,
)
from .plots import candidates_plot, sensitivity_plot, widths_plot
from .run_report import FigureRow, RunReport
from .tables import group_header, group_rows, markdown_table, plan_header, plan_rows

LEGEND = ("'predicted' figures come from the cost model (or the latency line calibrated on this host; the "
          "accuracy drop is the sum of one-layer drops before fine-tuning); 'measured' figures were measured on "
          "the written artifacts; 'before' on the original model. Accuracy is in %, its drop in percentage "
          "points (pt).")


def _show(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in LABELS:
        return format_limit(name, value)
    return f"{value:.2f}"


def figure_table_rows(figures: list[FigureRow], report: RunReport | None = None) -> list[list[str]]:
    rows = []
    for f in figures:
        verdict = {True: "yes", False: "NO", None: "-"}[f.within]
        label = figure_label(f, report) if report is not None else f.label
        rows.append([label, _show(f.name, f.limit), _show(f.name, f.before), _show(f.name, f.predicted),
                     _show(f.name, f.measured), verdict])
    return rows


FIGURE_HEADER = ["figure", "limit", "before (measured)", "predicted", "measured", "within limit"]
LAYER_HEADER = ["layer", "channels before", "channels after", "w bits before", "w bits after", "a bits after",
                "sparsity"]


def _layer_rows(report: RunReport) -> list[list[Any]]:
    return [[l.name, l.channels_before, l.channels_after, l.weight_bits_before, l.weight_bits_after,
             l.act_bits_after, f"{100 * l.sparsity:.0f}%"] for l in report.layers]


STAGE_HEADER = ["stage", "time", "resumed", "what it did"]
FIRMWARE_HEADER = ["figure (measured)", "value"]


def _stage_rows(report: RunReport) -> list[list[Any]]:
    """One row per stage, its summary as sentences with units (nested detail stays in the JSON)."""
    tolerance = report.budget.get("max_accuracy_drop")
    return [[s.get("name", "?"), stage_seconds(s), "yes" if s.get("resumed") else "no",
             stage_sentence(s, tolerance)] for s in report.stages]


def _verdict(report: RunReport) -> str:
    return {True: "fits the budget (measured)", False: "does NOT fit the budget (measured)",
            None: "not verified"}[report.fits]


def _header(report: RunReport) -> tuple[str, str]:
    """(model, data and verdict; the budget) for the page's first two lines."""
    return (f"Model `{report.model}` on `{report.dataset}`: {_verdict(report)}.",
            f"Budget: {budget_sentence(report)}.")


def _memory_sentence(report: RunReport) -> str | None:
    if not report.memory_source:
        return None
    return f"Flash and RAM measured on: {report.memory_source}."


def _plan_sentence(plan: dict[str, Any]) -> str:
    """How the plan's tables add up to its predicted accuracy drop."""
    text = (f"Predicted accuracy drop {plan['predicted_accuracy_drop']:.2f} pt (percentage points of top-1, "
            "before fine-tuning): the sum of each layer's cost for its weight bits and sparsity (first table) and "
            "each channel group's cost for the channels removed (second table), every cost measured with one "
            "layer or group compressed at a time.")
    if plan.get("objective") == "loss":
        text += " The planner minimised the predicted loss increase, so the cost columns are in loss, not points."
    return text


def _measured_drop(report: RunReport) -> float | None:
    row = report.figure("accuracy_drop")
    return row.measured if row else None


def write_json(report: RunReport, path: str | os.PathLike) -> Path:
    """Every figure as JSON; non-finite numbers are refused rather than written."""
    atomic_write_text(path, json.dumps(report.to_dict(), indent=1, allow_nan=False))
    return Path(path)


def render_markdown(report: RunReport) -> str:
    what, budget = _header(report)
    lines = [f"# {report.title}", "", what, "", budget, "", LEGEND, ""]
    lines += ["## Figures", "", markdown_table(figure_table_rows(report.figures, report), FIGURE_HEADER), ""]
    if _memory_sentence(report):
        lines += [_memory_sentence(report), ""]
    remarks = plan_remarks(report)
    lines += [f"- {'**warning**' if kind == 'warning' else 'note'}: {text}" for kind, text in remarks]
    lines += [""] if remarks else []
    if firmware_rows(report):
        lines += ["## C build on the microcontroller", "",
                  markdown_table(firmware_rows(report), FIRMWARE_HEADER), ""]
    if report.layers:
        lines += ["## Layers", "", markdown_table(_layer_rows(report), LAYER_HEADER), ""]
    if report.plan:
        lines += [f"## Plan (solver: {report.plan['solver']}, predictions)", "", _plan_sentence(report.plan), "",
                  markdown_table(plan_rows(report.plan), plan_header(report.plan)), ""]
        if report.plan.get("groups"):
            lines += [markdown_table(group_rows(report.plan), group_header(report.plan)), ""]
    if report.stages:
        lines += ["## Stages", "", markdown_table(_stage_rows(report), STAGE_HEADER), ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    if report.paths:
        lines += ["## Files", ""] + [f"- {k}: {file_label(k, v, report)}" for k, v in report.paths.items()] + [""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _html_table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
          "th{background:#f3f3f3}img{max-width:100%}.no{color:#b00;font-weight:bold}"
          ".note{color:#333;background:#f4f8fb;border-left:3px solid #7aa7c7;padding:4px 8px}")


def _code(text: str) -> str:
    """Markdown-style `code` spans of escaped ``text`` as <code> elements."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(report: RunReport) -> str:
    """One HTML page with inline CSS and inline PNG plots."""
    what, budget = _header(report)
    parts = [f"<h1>{html.escape(report.title)}</h1>", f"<p><b>{_code(what)}</b><br>{html.escape(budget)}</p>",
             f"<p><i>{html.escape(LEGEND)}</i></p>", "<h2>Figures</h2>",
             _html_table(figure_table_rows(report.figures, report), FIGURE_HEADER)]
    if _memory_sentence(report):
        parts.append(f"<p>{html.escape(_memory_sentence(report))}</p>")
    parts += [f"<p class=no>warning: {html.escape(text)}</p>" if kind == "warning" else
              f"<p class=note>{html.escape(text)}</p>" for kind, text in plan_remarks(report)]
    if firmware_rows(report):
        parts += ["<h2>C build on the microcontroller</h2>", _html_table(firmware_rows(report), FIRMWARE_HEADER)]
    if report.layers:
        parts += ["<h2>Layers</h2>", _img(widths_plot(report.layers), "per-layer widths and bits"),
                  _html_table(_layer_rows(report), LAYER_HEADER)]
    if report.sensitivity and any(report.sensitivity.get(k) for k in ("prune", "bits", "sparsity")):
        parts += ["<h2>Sensitivity</h2>", _img(sensitivity_plot(report.sensitivity), "sensitivity curves")]
    if report.candidates:
        objective = (report.plan or {}).get("objective", "accuracy")
        parts += ["<h2>Candidates</h2>",
                  _img(candidates_plot(report.candidates, objective, _measured_drop(report)), "candidates weighed")]
    if report.plan:
        parts += [f"<h2>Plan (solver: {html.escape(report.plan['solver'])}, predictions)</h2>",
                  f"<p>{html.escape(_plan_sentence(report.plan))}</p>",
                  _html_table(plan_rows(report.plan), plan_header(report.plan))]
        if report.plan.get("groups"):
            parts.append(_html_table(group_rows(report.plan), group_header(report.plan)))
    if report.stages:
        parts += ["<h2>Stages</h2>", _html_table(_stage_rows(report), STAGE_HEADER)]
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>"]
    if report.paths:
        parts += ["<h2>Files</h2>", "<ul>" + "".join(f"<li>{html.escape(k)}: {_code(file_label(k, v, report))}</li>"
                                                     for k, v in report.paths.items()) + "</ul>"]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(report.title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _file_sizes(paths: dict[str, str]) -> dict[str, int]:
    """The size of each named path that is a file now (directories and missing files are left out)."""
    sizes = {}
    for key, path in paths.items():
        try:
            if Path(path).is_file():
                sizes[key] = Path(path).stat().st_size
        except OSError:
            continue
    return sizes


def write_report(report: RunReport, run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``run_dir``; return their paths.

    ``file_bytes``, when empty, is filled with the sizes of the files ``paths`` names (read now)."""
    run_dir = Path(run_dir)
    if report.paths and not report.file_bytes:
        report = replace(report, file_bytes=_file_sizes(report.paths))
    paths = {"json": run_dir / "report.json", "markdown": run_dir / "report.md", "html": run_dir / "report.html"}
    write_json(report, paths["json"])
    atomic_write_text(paths["markdown"], render_markdown(report))
    atomic_write_text(paths["html"], render_html(report))
    return paths
