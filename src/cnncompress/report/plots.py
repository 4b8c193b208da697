"""Report figures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Layout rules, so no plot hides what it shows: constrained layout (labels never run into a
neighbouring panel), panels side by side share their y axis and carry one y-label, and the one
legend per figure stands outside the axes. A legend lists only series with at least one mark that
can be seen: points drawn exactly (or nearly) under a larger mark drawn later are left out, and a
series with nothing left is not drawn at all.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .run_report import LayerRow

DPI = 100
#: what the planner's candidate cost means, by the plan's objective (the y-axis of the candidates plot)
OBJECTIVE_LABELS = {
    "accuracy": "predicted top-1 drop (pt)\nsum of one-layer drops, before fine-tuning",
    "loss": "predicted loss increase (cross-entropy)\nsum of one-layer increases, before fine-tuning",
}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _outside_legend(fig: Figure, axes: Sequence[Axes], columns: int = 1, fontsize: float = 8) -> None:
    """One legend for the figure, right of the panels, with each visible label once."""
    handles: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=fontsize,
                   ncols=columns)


def widths_plot(layers: list[LayerRow]) -> bytes:
    """Output channels and weight bits per layer, before and after, as PNG."""
    return _png(widths_figure(layers))


def widths_figure(layers: list[LayerRow]) -> Figure:
    """Output channels and weight bits per layer, before and after (planned values printed on the bars)."""
    fig = _figure(max(6.5, 0.5 * len(layers) + 2.5), 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(layers))
    for ax, before, after, label in (
        (top, [l.channels_before for l in layers], [l.channels_after for l in layers], "output channels"),
        (bottom, [l.weight_bits_before for l in layers], [l.weight_bits_after for l in layers], "weight bits"),
    ):
        ax.bar(x - 0.2, before, width=0.4, label="before", color="#bbbbbb")
        bars = ax.bar(x + 0.2, after, width=0.4, label="after (planned)", color="#1f77b4")
        if len(layers) <= 40:
            ax.bar_label(bars, fontsize=7, padding=1)
        ax.set_ylabel(label)
        ax.margins(y=0.12)  # room for the bar labels inside the axes
    bottom.set_xticks(x, [l.name for l in layers], rotation=70, fontsize=7, ha="right")
    fig.suptitle("Per-layer widths and bits")
    _outside_legend(fig, [top])
    return fig


def _merge_equal_curves(curves: dict[str, tuple[list[float], list[float]]], tolerance: float
                        ) -> list[tuple[str, list[float], list[float]]]:
    """Curves drawn on the same points within ``tolerance`` become one, labelled with every name:
    otherwise the last one drawn would hide the others while the legend still named them."""
    merged: list[tuple[list[str], list[float], list[float]]] = []
    for name, (xs, ys) in curves.items():
        for names, mx, my in merged:
            if mx == xs and all(abs(a - b) <= tolerance for a, b in zip(my, ys, strict=True)):
                names.append(name)
                break
        else:
            merged.append(([name], xs, ys))
    return [(", ".join(names), xs, ys) for names, xs, ys in merged]


def sensitivity_plot(table: dict[str, Any]) -> bytes:
    """The sensitivity curves as PNG (see :func:`sensitivity_figure`)."""
    return _png(sensitivity_figure(table))


def sensitivity_figure(table: dict[str, Any]) -> Figure:
    """Accuracy change per unit against prune ratio and against weight bits (measured, one unit at a time).

    A unit keeps its colour in every panel; units whose curves coincide share one line and one legend entry.
    """
    kinds = [k for k in ("prune", "bits", "sparsity") if table.get(k)]
    if not kinds:
        raise ValueError("the sensitivity table has no entries to plot")
    curves = {kind: {unit: ([float(x) for x in sorted(opts, key=float)],
                            [float(opts[x][1]) for x in sorted(opts, key=float)])
                     for unit, opts in table[kind].items()} for kind in kinds}
    values = [y for kind in kinds for _, ys in curves[kind].values() for y in ys] + [0.0]
    tolerance = 0.01 * (max(values) - min(values))
    units = list(dict.fromkeys(unit for kind in kinds for unit in table[kind]))
    palette = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray",
                                    "olive", "cyan")]
    styles = ["-", "--", ":", "-."]
    style = {u: (palette[i % len(palette)], styles[(i // len(palette)) % len(styles)]) for i, u in enumerate(units)}

    fig = _figure(4.2 * len(kinds) + 2.0, 4.0)
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    xlabels = {"prune": "fraction of channels removed", "bits": "weight bits", "sparsity": "weight sparsity"}
    for ax, kind in zip(axes, kinds, strict=True):
        for label, xs, ys in _merge_equal_curves(curves[kind], tolerance):
            color, line = style[label.split(", ")[0]]
            ax.plot(xs, ys, marker="o", markersize=3, color=color, linestyle=line, label=label)
        ax.set_xlabel(xlabels[kind])
        ax.axhline(0, color="black", linewidth=0.5)
        if kind == "bits":
            ax.set_xticks(sorted({x for xs, _ in curves[kind].values() for x in xs}))
    axes[0].set_ylabel("top-1 change (pt, measured)")
    fig.suptitle("Sensitivity: one layer compressed at a time (validation images)")
    entries = sum(len(ax.get_legend_handles_labels()[1]) for ax in axes)
    _outside_legend(fig, axes, columns=1 if entries <= 16 else 2, fontsize=7)
    return fig


# --- candidates -----------------------------------------------------------------------------------

def _marker_radius_px(size: float) -> float:
    """Radius in pixels of a scatter marker of area ``size`` (points squared)."""
    return math.sqrt(size) / 2 * DPI / 72


def _hide_covered(fig: Figure, axes: Sequence[Axes]) -> None:
    """Remove from each scatter series the points a larger (or equal) mark drawn above covers; remove a
    series with no point left, so the legend cannot name it. Lines with two or more distinct points stay."""
    fig.canvas.draw()  # lay out, so data -> pixel transforms are final
    for ax in axes:
        layers = sorted((a for a in [*ax.collections, *ax.lines] if not str(a.get_label()).startswith("_")),
                        key=lambda a: a.get_zorder())
        drawn = []  # (zorder, pixel xy array, radius px)
        for artist in reversed(layers):  # from the top down
            if isinstance(artist, PathCollection):
                pts = np.asarray(artist.get_offsets(), dtype=float)
                sizes = np.broadcast_to(np.asarray(artist.get_sizes(), dtype=float), (len(pts),))
            elif isinstance(artist, Line2D):
                pts = np.column_stack([artist.get_xdata(), artist.get_ydata()]).astype(float)
                sizes = np.full(len(pts), artist.get_markersize() ** 2)
            else:
                continue
            pix = ax.transData.transform(pts) if len(pts) else np.empty((0, 2))
            radii = np.array([_marker_radius_px(s) for s in sizes])
            keep = np.ones(len(pts), dtype=bool)
            for _, above, above_r in drawn:
                if len(above) and len(pix):
                    dist = np.linalg.norm(pix[:, None, :] - above[None, :, :], axis=2)
                    keep &= ~(dist <= np.maximum(above_r[None, :] - radii[:, None], 0.0) + 1.0).any(axis=1)
            if isinstance(artist, Line2D):
                distinct = len({(round(px, 1), round(py, 1)) for px, py in pix})
                if distinct < 2 and not keep.any():
                    artist.remove()
                    continue
            elif not keep.any():
                artist.remove()
                continue
            elif not keep.all():
                artist.set_offsets(pts[keep])
                if np.asarray(artist.get_sizes()).size > 1:
                    artist.set_sizes(sizes[keep])
            if isinstance(artist, PathCollection):  # what is left of it covers what lies below
                pix, radii = pix[keep], radii[keep]
            drawn.append((artist.get_zorder(), pix, radii))


def candidates_plot(candidates: list[dict[str, Any]], objective: str = "accuracy",
                    measured_drop: float | None = None) -> bytes:
    """The candidates plot as PNG (see :func:`candidates_figure`)."""
    return _png(candidates_figure(candidates, objective, measured_drop))


def candidates_figure(candidates: list[dict[str, Any]], objective: str = "accuracy",
                      measured_drop: float | None = None) -> Figure:
    """Predicted cost of every candidate against flash and MACs, the chosen plan starred.

    ``objective`` is the plan's (``accuracy``: the cost is in percentage points of top-1); with it,
    ``measured_drop`` marks the accuracy drop measured on the chosen plan's artifacts (after fine-tuning).
    A cost axis spanning more than two decades below its top switches to symlog, so small costs stay apart.
    """
    fig = _figure(11.0, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    chosen = [c for c in candidates if c.get("chosen")]
    costs = [c["predicted_cost"] for c in candidates] + ([measured_drop] if measured_drop is not None else [])
    for ax, key, label, scale in ((axes[0], "flash_bytes", "predicted flash (KB)", 1e3),
                                  (axes[1], "macs", "predicted MACs (M)", 1e6)):
        line = sorted({(c[key] / scale, c["predicted_cost"]) for c in candidates if c["source"] == "frontier"})
        if line:
            ax.plot(*zip(*line, strict=True), color="gray", linewidth=1, marker=".", markersize=6,
                    label="optimal frontier (exact solves)", zorder=1)
        for z, (source, marker) in enumerate((("greedy", "o"), ("exact", "s"))):
            points = [c for c in candidates if c["source"].startswith(source) and not c.get("chosen")]
            for feasible, alpha, color in ((True, 0.9, "tab:blue" if source == "greedy" else "tab:purple"),
                                           (False, 0.35, "tab:orange")):
                sel = [c for c in points if c["feasible"] == feasible]
                if sel:
                    ax.scatter([c[key] / scale for c in sel], [c["predicted_cost"] for c in sel], marker=marker,
                               alpha=alpha, s=18, color=color, zorder=2 + z,
                               label=f"{source} solver{'' if feasible else ' (over budget)'}")
        for c in chosen:
            ax.scatter([c[key] / scale], [c["predicted_cost"]], marker="*", s=220, color="red", zorder=5,
                       label=f"chosen plan ({c['source']} solver), predicted")
        for c in candidates:  # measured drops carried by the candidates themselves
            if c.get("accuracy_drop") is not None and objective == "accuracy":
                ax.scatter([c[key] / scale], [c["accuracy_drop"]], marker="D", s=30, color="green", zorder=6,
                           label="measured drop (pt, after fine-tuning)")
        if measured_drop is not None and objective == "accuracy":
            for c in chosen:
                ax.scatter([c[key] / scale], [measured_drop], marker="D", s=30, color="green", zorder=6,
                           edgecolor="white", linewidth=0.5, label="measured drop (pt, after fine-tuning)")
        ax.set_xlabel(label)
        ax.axhline(0, color="black", linewidth=0.5, zorder=0)
    positive = [v for v in costs if v > 0]
    if positive and max(positive) > 100 * max(min(positive), 0.1):
        axes[0].set_yscale("symlog", linthresh=1.0)
        if min(costs) >= 0:  # no negative decades for costs that cannot be negative
            axes[0].set_ylim(bottom=-0.3)
    axes[0].set_ylabel(OBJECTIVE_LABELS.get(objective, f"predicted cost ({objective})"))
    fig.suptitle("Candidates the planner weighed (predicted figures)")
    _hide_covered(fig, axes)
    _outside_legend(fig, axes)
    return fig
