"""Latency prediction from MACs: a straight line fitted to onnxruntime timings on this host.

The planner needs latency for thousands of candidates, so it predicts ``intercept + slope * MACs``
from a handful of models timed on the host (``calibrate_latency``). Such figures are predictions for
this host and are labelled so; the verifier measures the exported model itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from ..analysis import count_macs, measure_latency


@dataclass(frozen=True)
class LatencyModel:
    """``latency_ms = intercept_ms + ms_per_mac * MACs`` (batch 1), fitted on ``points``."""

    intercept_ms: float
    ms_per_mac: float
    points: tuple[tuple[int, float], ...] = ()
    backend: str = "onnxruntime"
    threads: int = 0

    @classmethod
    def fit(cls, points: Sequence[tuple[int, float]], backend: str = "onnxruntime", threads: int = 0
            ) -> LatencyModel:
        """Least-squares line through (MACs, ms); needs two distinct MAC counts and finite timings."""
        macs = np.array([p[0] for p in points], dtype=float)
        ms = np.array([p[1] for p in points], dtype=float)
        if len(set(macs.tolist())) < 2 or not np.all(np.isfinite(ms)) or np.any(ms <= 0):
            raise ValueError("latency calibration needs positive finite timings at two or more MAC counts")
        slope, intercept = (float(v) for v in np.polyfit(macs, ms, 1))
        if slope < 0:  # timing noise on near-equal models: latency is flat in MACs
            slope, intercept = 0.0, float(np.mean(ms))
        return cls(max(intercept, 0.0), slope, tuple((int(m), float(t)) for m, t in points), backend, threads)

    def anchored(self, macs: int, ms: float) -> LatencyModel:
        """The line through a model's own measured (MACs, ms), keeping the probes' fixed overhead.

        Probe nets have one cost per MAC; a real model's layers (depthwise, many small ones) may not,
        so width-pruned versions of it are predicted along its own slope instead.
        """
        if macs <= 0 or not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"anchor needs positive MACs and a positive finite time, got {macs}, {ms}")
        intercept = min(self.intercept_ms, ms)
        return LatencyModel(intercept, (ms - intercept) / macs, (*self.points, (int(macs), float(ms))),
                            self.backend, self.threads)

    def predict_ms(self, macs: int) -> float:
        """Predicted batch-1 latency on the calibration host (a prediction, not a measurement)."""
        return self.intercept_ms + self.ms_per_mac * macs

    def max_macs(self, latency_ms: float) -> int | None:
        """Largest MAC count predicted to run within ``latency_ms`` (None: not even zero MACs do)."""
        if latency_ms < self.intercept_ms:
            return None
        if self.ms_per_mac == 0:
            return 2**62
        return int((latency_ms - self.intercept_ms) / self.ms_per_mac)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "points": [list(p) for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        return cls(float(data["intercept_ms"]), float(data["ms_per_mac"]),
                   tuple((int(m), float(t)) for m, t in data.get("points", ())), str(data.get("backend", "")),
                   int(data.get("threads", 0)))


def probe_models(input_shape: tuple[int, int, int], widths: Sequence[int] = (4, 8, 16, 32)) -> list[nn.Module]:
    """Plain conv stacks of growing width: a ladder of MAC counts at the model's input shape."""
    channels = input_shape[0]
    return [nn.Sequential(
        nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10),
    ).eval() for w in widths]


def host_latency_model(model: nn.Module, input_shape: tuple[int, int, int], backend: str = "onnxruntime",
                       repeats: int = 20, threads: int | None = None) -> LatencyModel:
    """Probe line anchored at ``model``'s own measured batch-1 latency on this host."""
    line = calibrate_latency(probe_models(input_shape), input_shape, backend, repeats, threads)
    macs, ms, _ = calibrate_point(model, input_shape, backend, repeats, threads)
    return line.anchored(macs, ms)


def calibrate_point(model: nn.Module, input_shape: tuple[int, int, int], backend: str, repeats: int,
                    threads: int | None) -> tuple[int, float, int]:
    """(MACs, median batch-1 ms, threads used) of one model on this host."""
    report = measure_latency(model, input_shape, batch_sizes=(1,), backend=backend, repeats=repeats,
                             threads=threads)
    return count_macs(model, input_shape), report.batches[1].median_ms, report.threads


def calibrate_latency(models: Sequence[nn.Module], input_shape: tuple[int, int, int],
                      backend: str = "onnxruntime", repeats: int = 20, threads: int | None = None) -> LatencyModel:
    """Time each model at batch 1 on this host (median) and fit the MACs -> ms line."""
    measured = [calibrate_point(m, input_shape, backend, repeats, threads) for m in models]
    return LatencyModel.fit([(macs, ms) for macs, ms, _ in measured], backend, measured[-1][2] if measured else 0)
