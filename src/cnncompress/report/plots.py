"""Report figures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no global pyplot state)."""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .run_report import LayerRow


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def widths_plot(layers: list[LayerRow]) -> bytes:
    """Output channels and weight bits per layer, before and after."""
    fig = Figure(figsize=(max(6.0, 0.45 * len(layers)), 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = list(range(len(layers)))
    for ax, before, after, label in (
        (top, [l.channels_before for l in layers], [l.channels_after for l in layers], "output channels"),
        (bottom, [l.weight_bits_before for l in layers], [l.weight_bits_after for l in layers], "weight bits"),
    ):
        ax.bar([i - 0.2 for i in x], before, width=0.4, label="before", color="#bbbbbb")
        ax.bar([i + 0.2 for i in x], after, width=0.4, label="after (planned)", color="#1f77b4")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    bottom.set_xticks(x, [l.name for l in layers], rotation=70, fontsize=7, ha="right")
    top.set_title("Per-layer widths and bits")
    return _png(fig)


def sensitivity_plot(table: dict[str, Any]) -> bytes:
    """Accuracy change per unit against prune ratio and against weight bits (measured, one unit at a time)."""
    kinds = [k for k in ("prune", "bits", "sparsity") if table.get(k)]
    if not kinds:
        raise ValueError("the sensitivity table has no entries to plot")
    fig = Figure(figsize=(5.0 * len(kinds), 4.0))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    xlabels = {"prune": "fraction of channels removed", "bits": "weight bits", "sparsity": "weight sparsity"}
    for ax, kind in zip(axes, kinds, strict=True):
        for unit, opts in table[kind].items():
            xs = sorted(opts, key=float)
            ax.plot([float(x) for x in xs], [opts[x][1] for x in xs], marker="o", markersize=3, label=unit)
        ax.set_xlabel(xlabels[kind])
        ax.set_ylabel("top-1 change (pt, measured)")
        ax.axhline(0, color="black", linewidth=0.5)
        if len(table[kind]) <= 12:
            ax.legend(fontsize=6)
    axes[0].set_title("Sensitivity (one layer compressed at a time)")
    return _png(fig)


def candidates_plot(candidates: list[dict[str, Any]], objective_label: str = "predicted accuracy cost") -> bytes:
    """Predicted cost of every candidate weighed against flash and MACs, the chosen one starred."""
    fig = Figure(figsize=(10.0, 4.0))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "flash_bytes", "predicted flash (KB)"), (axes[1], "macs", "predicted MACs (M)")):
        scale = 1e3 if key == "flash_bytes" else 1e6
        for source, marker in (("greedy", "o"), ("exact", "s")):
            points = [c for c in candidates if c["source"].startswith(source)]
            for feasible, alpha in ((True, 0.9), (False, 0.3)):
                sel = [c for c in points if c["feasible"] == feasible]
                if sel:
                    ax.scatter([c[key] / scale for c in sel], [c["predicted_cost"] for c in sel], marker=marker,
                               alpha=alpha, s=18, label=f"{source}{'' if feasible else ' (over budget)'}")
        line = sorted((c[key] / scale, c["predicted_cost"]) for c in candidates if c["source"] == "frontier")
        if line:
            ax.plot(*zip(*line, strict=True), color="gray", linewidth=1, marker=".", label="optimal frontier")
        for c in candidates:
            if c.get("chosen"):
                ax.scatter([c[key] / scale], [c["predicted_cost"]], marker="*", s=220, color="red", label="chosen")
            if c.get("accuracy_drop") is not None:
                ax.scatter([c[key] / scale], [c["accuracy_drop"]], marker="D", s=40, color="green",
                           label="measured accuracy drop")
        ax.set_xlabel(label)
        ax.set_ylabel(objective_label)
        ax.legend(fontsize=7)
    axes[0].set_title("Candidates the planner weighed")
    return _png(fig)
