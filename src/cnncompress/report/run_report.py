"""``RunReport``: every figure of a compression run as plain data, independent of the stages.

The pipeline fills it from what it measured and what the planner predicted; the writers render it.
Each figure row keeps the limit, the original model's measured value, the plan's prediction and the
value measured on the written artifacts apart, so no reader mistakes a prediction for a measurement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from ..plan.budget import LABELS

FIGURE_LABELS = {**LABELS, "accuracy": "top-1 accuracy (%)", "accuracy_drop": "accuracy drop (pt)",
                 "params": "parameters"}


@dataclass
class FigureRow:
    """One resource or quality figure; ``None`` where not applicable or not measured."""

    name: str
    limit: float | None = None
    before: float | None = None
    predicted: float | None = None
    measured: float | None = None

    @property
    def label(self) -> str:
        return FIGURE_LABELS.get(self.name, self.name)

    @property
    def within(self) -> bool | None:
        """Whether the measured value meets the limit (None if either is missing)."""
        if self.limit is None or self.measured is None:
            return None
        return self.measured <= self.limit


@dataclass
class LayerRow:
    """Width and bit widths of one layer before and after compression."""

    name: str
    channels_before: int
    channels_after: int
    weight_bits_before: int = 32
    weight_bits_after: int = 32
    act_bits_before: int = 32
    act_bits_after: int = 32
    sparsity: float = 0.0


@dataclass
class RunReport:
    """All a report shows. ``candidates`` are ``Candidate`` dicts (predicted), optionally with a
    measured ``accuracy_drop``; ``sensitivity`` a ``SensitivityTable.to_dict()``; ``stages`` records of
    what each stage did (name, seconds, summary, ...). ``memory_source`` says what the measured flash and
    RAM were read off (``Measured.memory_source``: the ``.cnnc`` container, or a microcontroller firmware);
    ``firmware`` is the C build's record when the run built one (``CompressionResult.firmware``);
    ``file_bytes`` the size of each file in ``paths`` (filled in by ``write_report`` when left empty)."""

    title: str
    model: str = ""
    dataset: str = ""
    device: dict[str, Any] | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    figures: list[FigureRow] = field(default_factory=list)
    layers: list[LayerRow] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    fits: bool | None = None
    notes: list[str] = field(default_factory=list)
    memory_source: str | None = None
    firmware: dict[str, Any] | None = None
    file_bytes: dict[str, int] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RunReport fields: {unknown}")
        values = dict(data)
        values["figures"] = [FigureRow(**f) for f in data.get("figures", [])]
        values["layers"] = [LayerRow(**l) for l in data.get("layers", [])]
        return cls(**values)

    @property
    def measured_on_firmware(self) -> bool:
        """Whether the measured flash and RAM are a microcontroller firmware's (not the ``.cnnc`` container's)."""
        if self.firmware and self.firmware.get("mcu"):
            return True
        return bool(self.memory_source) and "firmware" in str(self.memory_source)

    @property
    def firmware_target(self) -> str:
        """The core the firmware was built for (``cortex-m4``), or ``microcontroller`` when not recorded."""
        mcu = (self.firmware or {}).get("mcu") or {}
        if mcu.get("target"):
            return str(mcu["target"])
        if self.memory_source and " firmware" in self.memory_source:
            return self.memory_source.split(" firmware")[0]
        return "microcontroller"

    def figure(self, name: str) -> FigureRow | None:
        return next((f for f in self.figures if f.name == name), None)


def layer_rows_from_plan(plan: dict[str, Any], weight_bits_before: int = 32, act_bits_before: int = 32
                         ) -> list[LayerRow]:
    """Layer rows from a ``Plan.to_dict()`` (planned widths; pass measured rows when they differ)."""
    return [LayerRow(l["name"], l["out_channels"], l["kept_out"], weight_bits_before, l["weight_bits"],
                     act_bits_before, l["act_bits"], l["sparsity"]) for l in plan["layers"]]


def figure_rows(budget: dict[str, Any], before: dict[str, Any] | None = None,
                predicted: dict[str, Any] | None = None, measured: dict[str, Any] | None = None
                ) -> list[FigureRow]:
    """Rows for flash, RAM, MACs and latency from plain dicts keyed by figure name."""
    rows = []
    for name in LABELS:
        values = [d.get(name) if d else None for d in (budget, before, predicted, measured)]
        if any(v is not None for v in values):
            rows.append(FigureRow(name, *values))
    return rows
