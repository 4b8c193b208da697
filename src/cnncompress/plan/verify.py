"""Check measured figures of written artifacts against the budget and name every missed limit.

``measure_artifacts`` measures what was written: flash is the byte size of the deployable files,
RAM the profiler's activation peak of the final model at the deployed activation width plus the
device's reserved scratch, MACs counted on the final model, latency the onnxruntime median at batch 1
on this host. ``verify`` compares them (and the predictions, when given) with the limits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..analysis import measure_latency, profile
from .budget import LABELS, Budget, format_limit
from .cost import Prediction


@dataclass
class Measured:
    """Figures measured on written artifacts; ``None`` where not measured."""

    flash_bytes: int | None = None
    ram_bytes: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    accuracy_drop: float | None = None
    memory_source: str = "flash: the .cnnc container's size; RAM: live activations of the graph + reserve"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Miss:
    """One limit the measurement exceeds, and by how much."""

    field: str
    limit: float
    measured: float
    excess: float
    message: str


@dataclass
class Verification:
    measured: Measured
    budget: Budget
    misses: list[Miss] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    prediction_error: dict[str, float] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        """Every set limit was measured and holds."""
        return not self.misses and not self.unmeasured

    def describe(self) -> str:
        if self.fits:
            return "fits: " + self.budget.describe()
        parts = [m.message for m in self.misses] + [f"{f} not measured" for f in self.unmeasured]
        return "does not fit: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "measured": self.measured.to_dict(), "budget": self.budget.to_dict(),
                "misses": [asdict(m) for m in self.misses], "unmeasured": self.unmeasured,
                "prediction_error": self.prediction_error}


def verify(measured: Measured, budget: Budget, predicted: Prediction | None = None) -> Verification:
    """Compare ``measured`` with every limit of ``budget``; relative prediction errors when ``predicted``."""
    limits = {**budget.limits(), "accuracy_drop": budget.max_accuracy_drop}
    result = Verification(measured, budget)
    for key, limit in limits.items():
        value = getattr(measured, key)
        if value is None:
            result.unmeasured.append(key)
        elif value > limit:
            text = f"{_label(key)} {_show(key, value)} exceeds {_show(key, limit)} by {_show(key, value - limit)}"
            result.misses.append(Miss(key, limit, value, value - limit, text))
    if predicted is not None:
        for key in ("flash_bytes", "ram_bytes", "macs", "latency_ms"):
            value, guess = getattr(measured, key), getattr(predicted, key)
            if value and guess is not None:
                result.prediction_error[key] = (guess - value) / value
    return result


def tighten(budget: Budget, verification: Verification, margin: float = 0.02) -> Budget:
    """The budget to plan against next round, so the next *measured* figures meet the real limits.

    Where the cost model under-predicted a figure by a relative error ``e < 0`` (prediction_error),
    the limit handed to the planner shrinks to ``limit * (1 + e) * (1 - margin)``; limits it predicted
    well or over-predicted are kept. The real budget stays the one ``verify`` checks.
    """
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    changes: dict[str, float] = {}
    for key, limit in budget.limits().items():
        error = verification.prediction_error.get(key)
        if error is not None and error < 0:
            changes[key] = limit * (1 + error) * (1 - margin)
    whole = {k: max(1, int(v)) if k != "latency_ms" else v for k, v in changes.items()}
    return budget.merge(whole)


def _label(key: str) -> str:
    return LABELS.get(key, "accuracy drop")


def _show(key: str, value: float) -> str:
    return f"{value:.2f} pt" if key == "accuracy_drop" else format_limit(key, value)


def measure_artifacts(artifacts: str | os.PathLike | Sequence[str | os.PathLike], model: nn.Module,
                      input_shape: tuple[int, ...], act_bits: int = 8, scratch_bytes: int = 0,
                      onnx_path: str | os.PathLike | None = None, accuracy_drop: float | None = None,
                      latency_repeats: int = 30) -> Measured:
    """Measure the deployable files (flash), the final model (RAM, MACs) and the ONNX file (latency).

    RAM is the activation peak of the deployed integer graph (BatchNorm folded, activations fused), as the
    planner predicts it, plus ``scratch_bytes``."""
    paths = [artifacts] if isinstance(artifacts, (str, os.PathLike)) else list(artifacts)
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing or not paths:
        raise FileNotFoundError(f"artifacts to measure not found: {missing or 'none given'}")
    report = profile(model, input_shape, act_bits=act_bits, fused=True)
    latency = None
    if onnx_path is not None:
        timing = measure_latency(onnx_path, input_shape, batch_sizes=(1,), backend="onnxruntime",
                                 repeats=latency_repeats)
        latency = timing.batches[1].median_ms
    return Measured(sum(Path(p).stat().st_size for p in paths), report.peak_activation_bytes + scratch_bytes,
                    report.macs, latency, accuracy_drop)
