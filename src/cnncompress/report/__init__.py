"""Run reports: JSON with every figure, Markdown, and a self-contained HTML page with plots."""

from .run_report import FigureRow, LayerRow, RunReport, figure_rows, layer_rows_from_plan
from .tables import plan_header, plan_table
from .writers import render_html, render_markdown, write_json, write_report

__all__ = ["FigureRow", "LayerRow", "RunReport", "figure_rows", "layer_rows_from_plan", "plan_header", "plan_table",
           "render_html", "render_markdown", "write_json", "write_report"]
