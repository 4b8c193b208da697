"""Text and Markdown tables of plans and reports (the plain-text layout is the CLI's)."""

from __future__ import annotations

from typing import Any

from ..cli.common import format_table
from ..plan.budget import LABELS, format_limit

PLAN_HEADER = ["layer", "in", "out", "kept in", "kept out", "w bits", "a bits", "sparsity", "flash B", "MACs",
               "cost"]
#: the unit of a layer's planner cost, by the plan's objective
COST_UNITS = {"accuracy": "cost (pt)", "loss": "cost (loss)"}


def plan_header(plan: dict[str, Any]) -> list[str]:
    """``PLAN_HEADER`` with the cost column's unit (points of top-1, or loss) for this plan's objective."""
    return PLAN_HEADER[:-1] + [COST_UNITS.get(plan.get("objective", ""), PLAN_HEADER[-1])]


def group_header(plan: dict[str, Any]) -> list[str]:
    """Columns of the channel-group table, the cost with this plan's unit."""
    return ["channel group", "channels", "kept", "removed", COST_UNITS.get(plan.get("objective", ""), "cost"),
            "producing layers"]


def group_rows(plan: dict[str, Any]) -> list[list[Any]]:
    """One row per channel group of a ``Plan.to_dict()``: what pruning it keeps and its predicted cost."""
    return [[g["name"], g["channels"], g["kept"], f"{100 * g['prune_ratio']:.0f}%", f"{g['cost']:.3f}",
             ", ".join(g["layers"])] for g in plan.get("groups", [])]


def plan_rows(plan: dict[str, Any]) -> list[list[Any]]:
    """One row per layer of a ``Plan.to_dict()``."""
    return [[l["name"], l["in_channels"], l["out_channels"], l["kept_in"], l["kept_out"], l["weight_bits"],
             l["act_bits"], f"{100 * l['sparsity']:.0f}%", l["flash_bytes"], l["macs"], f"{l['cost']:.3f}"]
            for l in plan["layers"]]


def limit_rows(predicted: dict[str, Any], budget: dict[str, Any], measured: dict[str, Any] | None = None
               ) -> list[list[str]]:
    """Per resource: limit, predicted value and (when given) measured value, in human units."""
    rows = []
    for key, label in LABELS.items():
        pred, limit = predicted.get(key), budget.get(key)
        meas = (measured or {}).get(key)
        if pred is None and meas is None:
            continue
        show = lambda v, k=key: "-" if v is None else format_limit(k, v)  # noqa: E731
        row = [label, show(limit), show(pred)]
        if measured is not None:
            row.append(show(meas))
        rows.append(row)
    return rows


def plan_table(plan: dict[str, Any]) -> str:
    """The plan as the CLI prints it: layers, then predicted figures against the limits."""
    lines = [format_table(plan_rows(plan), plan_header(plan)), ""]
    lines.append(format_table(limit_rows(plan["predicted"], plan["budget"]), ["resource", "limit", "predicted"]))
    lines.append(f"predicted accuracy drop {plan['predicted_accuracy_drop']:.2f} pt (sum of per-layer deltas, "
                 f"before fine-tuning); solver: {plan['solver']}")
    lines += [f"warning: {w}" for w in plan.get("warnings", [])]
    return "\n".join(lines)


def markdown_table(rows: list[list[Any]], header: list[str]) -> str:
    """A GitHub-flavoured Markdown table."""
    cells = [[(f"{c:,}" if isinstance(c, int) and not isinstance(c, bool) else str(c)).replace("|", "\\|")
              for c in row] for row in rows]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(out)
