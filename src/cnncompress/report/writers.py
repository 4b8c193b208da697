"""Write ``report.json`` (every figure), ``report.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNG data and carries no external reference (no scripts, styles
or images fetched from elsewhere), so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from ..plan.budget import LABELS, format_limit
from ..utils import atomic_write_text
from .plots import candidates_plot, sensitivity_plot, widths_plot
from .run_report import FigureRow, RunReport
from .tables import PLAN_HEADER, markdown_table, plan_rows

LEGEND = ("'predicted' figures come from the cost model (or the latency line calibrated on this host); "
          "'measured' figures were measured on the written artifacts; 'before' on the original model.")


def _show(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in LABELS:
        return format_limit(name, value)
    return f"{value:.2f}"


def figure_table_rows(figures: list[FigureRow]) -> list[list[str]]:
    rows = []
    for f in figures:
        verdict = {True: "yes", False: "NO", None: "-"}[f.within]
        rows.append([f.label, _show(f.name, f.limit), _show(f.name, f.before), _show(f.name, f.predicted),
                     _show(f.name, f.measured), verdict])
    return rows


FIGURE_HEADER = ["figure", "limit", "before (measured)", "predicted", "measured", "within limit"]
LAYER_HEADER = ["layer", "channels before", "channels after", "w bits before", "w bits after", "a bits after",
                "sparsity"]


def _layer_rows(report: RunReport) -> list[list[Any]]:
    return [[l.name, l.channels_before, l.channels_after, l.weight_bits_before, l.weight_bits_after,
             l.act_bits_after, f"{100 * l.sparsity:.0f}%"] for l in report.layers]


STAGE_HEADER = ["stage", "seconds", "resumed", "summary"]


def _stage_rows(report: RunReport) -> list[list[Any]]:
    """One row per stage; the summary's scalar figures as ``key=value`` (nested detail stays in the JSON)."""
    def scalar(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return [[s.get("name", "?"), f"{s.get('seconds', 0.0):.1f}", "yes" if s.get("resumed") else "no",
             ", ".join(f"{k}={scalar(v)}" for k, v in (s.get("summary") or {}).items()
                       if isinstance(v, (int, float, str, bool)))] for s in report.stages]


def _verdict(report: RunReport) -> str:
    return {True: "fits the budget (measured)", False: "does NOT fit the budget (measured)",
            None: "not verified"}[report.fits]


def write_json(report: RunReport, path: str | os.PathLike) -> Path:
    """Every figure as JSON; non-finite numbers are refused rather than written."""
    atomic_write_text(path, json.dumps(report.to_dict(), indent=1, allow_nan=False))
    return Path(path)


def render_markdown(report: RunReport) -> str:
    lines = [f"# {report.title}", "", f"Model `{report.model}` on `{report.dataset}`; "
             f"device {(report.device or {}).get('name', '-')}; {_verdict(report)}.", "", LEGEND, ""]
    lines += ["## Figures", "", markdown_table(figure_table_rows(report.figures), FIGURE_HEADER), ""]
    if report.layers:
        lines += ["## Layers", "", markdown_table(_layer_rows(report), LAYER_HEADER), ""]
    if report.plan:
        lines += [f"## Plan (solver: {report.plan['solver']}, predictions)", "",
                  markdown_table(plan_rows(report.plan), PLAN_HEADER), ""]
        lines += [f"- warning: {w}" for w in report.plan.get("warnings", [])]
    if report.stages:
        lines += ["## Stages", "", markdown_table(_stage_rows(report), STAGE_HEADER), ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    if report.paths:
        lines += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in report.paths.items()] + [""]
    return "\n".join(lines)


def _html_table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
          "th{background:#f3f3f3}img{max-width:100%}.no{color:#b00;font-weight:bold}")


def render_html(report: RunReport) -> str:
    """One HTML page with inline CSS and inline PNG plots."""
    parts = [f"<h1>{html.escape(report.title)}</h1>",
             f"<p>Model <code>{html.escape(report.model)}</code> on <code>{html.escape(report.dataset)}</code>; "
             f"device {html.escape(str((report.device or {}).get('name', '-')))}; "
             f"<b>{html.escape(_verdict(report))}</b>.</p>",
             f"<p><i>{html.escape(LEGEND)}</i></p>", "<h2>Figures</h2>",
             _html_table(figure_table_rows(report.figures), FIGURE_HEADER)]
    if report.layers:
        parts += ["<h2>Layers</h2>", _img(widths_plot(report.layers), "per-layer widths and bits"),
                  _html_table(_layer_rows(report), LAYER_HEADER)]
    if report.sensitivity and any(report.sensitivity.get(k) for k in ("prune", "bits", "sparsity")):
        parts += ["<h2>Sensitivity</h2>", _img(sensitivity_plot(report.sensitivity), "sensitivity curves")]
    if report.candidates:
        parts += ["<h2>Candidates</h2>", _img(candidates_plot(report.candidates), "candidates weighed")]
    if report.plan:
        parts += [f"<h2>Plan (solver: {html.escape(report.plan['solver'])}, predictions)</h2>",
                  _html_table(plan_rows(report.plan), PLAN_HEADER)]
        parts += [f"<p class=no>warning: {html.escape(w)}</p>" for w in report.plan.get("warnings", [])]
    if report.stages:
        parts += ["<h2>Stages</h2>", _html_table(_stage_rows(report), STAGE_HEADER)]
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>"]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(report.title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(report: RunReport, run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``run_dir``; return their paths."""
    run_dir = Path(run_dir)
    paths = {"json": run_dir / "report.json", "markdown": run_dir / "report.md", "html": run_dir / "report.html"}
    write_json(report, paths["json"])
    atomic_write_text(paths["markdown"], render_markdown(report))
    atomic_write_text(paths["html"], render_html(report))
    return paths
