"""Measured inference latency on torch or onnxruntime: median and spread per batch size.

Single timings on a shared CPU are noise; the median of repeated runs after warm-up, with the
10th/90th percentiles as spread and the thread count recorded, is comparable between runs.
A speedup is a comparison, so ``compare_latency`` times the models back to back in rounds and
reports the median of the per-round ratios with a bootstrap interval.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .inputs import eval_mode, model_device

Backend = Literal["torch", "onnxruntime"]


@dataclass
class BatchLatency:
    """Timing of one batch size, in milliseconds per batch (and per image for the median)."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    median_ms_per_image: float
    repeats: int


@dataclass
class LatencyReport:
    """Latencies keyed by batch size, with the conditions they were measured under."""

    backend: str
    threads: int
    input_shape: tuple[int, ...]
    warmup: int
    repeats: int
    batches: dict[int, BatchLatency]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; batch sizes become string keys."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["batches"] = {str(bs): asdict(b) for bs, b in self.batches.items()}
        return out


def _time(run: Callable[[], Any], warmup: int, repeats: int) -> np.ndarray:
    for _ in range(warmup):
        run()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        run()
        times[i] = (time.perf_counter() - start) * 1e3
    return times


def _summarise(batch_size: int, times: np.ndarray) -> BatchLatency:
    median = float(np.median(times))
    p10, p90 = (float(v) for v in np.percentile(times, [10, 90]))
    return BatchLatency(batch_size, median, p10, p90, median / batch_size, len(times))


def _torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    if x.device.type == "cuda":
        def run() -> Any:
            out = model(x)
            torch.cuda.synchronize(x.device)
            return out
        return run
    return lambda: model(x)


def _time_torch(model: nn.Module, shape: tuple[int, ...], batch_sizes: Sequence[int], warmup: int,
                repeats: int) -> list[BatchLatency]:
    device = model_device(model)
    results = []
    with eval_mode(model):
        for bs in batch_sizes:
            x = torch.randn((bs, *shape), device=device)
            results.append(_summarise(bs, _time(_torch_runner(model, x), warmup, repeats)))
    return results


def _time_onnx(path: Path, shape: tuple[int, ...], batch_sizes: Sequence[int], warmup: int, repeats: int,
               threads: int) -> list[BatchLatency]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = []
    for bs in batch_sizes:
        x = np.random.default_rng(0).standard_normal((bs, *shape), dtype=np.float32)
        results.append(_summarise(bs, _time(lambda x=x: session.run(None, {name: x}), warmup, repeats)))
    return results


def _time_onnx_model(model: nn.Module | str | os.PathLike, shape: tuple[int, ...], batch_sizes: Sequence[int],
                     warmup: int, repeats: int, threads: int) -> list[BatchLatency]:
    """Time an .onnx file, exporting an nn.Module to a temporary fp32 file first."""
    if not isinstance(model, nn.Module):
        return _time_onnx(Path(model), shape, batch_sizes, warmup, repeats, threads)
    from ..export.onnx_fp32 import export_onnx_fp32

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx_fp32(model, Path(tmp) / "model.onnx", shape)
        return _time_onnx(path, shape, batch_sizes, warmup, repeats, threads)


def measure_latency(model: nn.Module | str | os.PathLike, input_shape: tuple[int, ...],
                    batch_sizes: Sequence[int] = (1, 64), backend: Backend = "torch", warmup: int = 5,
                    repeats: int = 30, threads: int | None = None) -> LatencyReport:
    """Median and 10th/90th-percentile latency of ``model`` (module or .onnx path) per batch size.

    ``threads`` defaults to ``torch.get_num_threads()``; the torch thread count is restored afterwards.
    """
    shape = tuple(int(d) for d in input_shape)
    if warmup < 0 or repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("need warmup >= 0, repeats >= 1 and positive batch sizes")
    threads = threads or torch.get_num_threads()
    if backend == "onnxruntime":
        results = _time_onnx_model(model, shape, batch_sizes, warmup, repeats, threads)
    elif backend == "torch":
        if not isinstance(model, nn.Module):
            raise ValueError("backend 'torch' needs an nn.Module; time an .onnx path with 'onnxruntime'")
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results = _time_torch(model, shape, batch_sizes, warmup, repeats)
        finally:
            torch.set_num_threads(previous)
    else:
        raise ValueError(f"unknown backend {backend!r}; use 'torch' or 'onnxruntime'")
    return LatencyReport(backend, threads, shape, warmup, repeats, {r.batch_size: r for r in results})


@dataclass
class Speedup:
    """Baseline latency over a model's: the median of per-round ratios and its bootstrap interval."""

    median: float
    low: float
    high: float
    rounds: int


def paired_speedup(baseline_ms: Sequence[float], model_ms: Sequence[float], confidence: float = 0.9,
                   resamples: int = 2000, seed: int = 0) -> Speedup:
    """Median of ``baseline / model`` over rounds that timed both back to back, with a percentile
    bootstrap interval of that median (rounds resampled; ``confidence`` is the interval's coverage).

    Pairing cancels the slow drifts of a shared machine (both members of a round see the same
    load), and the median ignores the rounds a neighbour's burst spoiled.
    """
    base, model = np.asarray(baseline_ms, dtype=float), np.asarray(model_ms, dtype=float)
    if base.ndim != 1 or base.shape != model.shape or not len(base) or not all(
            np.all(np.isfinite(t)) and np.all(t > 0) for t in (base, model)):
        raise ValueError("need one positive, finite timing per round for both models, as many for each")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    ratios = base / model
    picks = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.median(ratios[picks], axis=1), [tail, 100 - tail])
    return Speedup(float(np.median(ratios)), float(low), float(high), len(ratios))


@dataclass
class LatencyComparison:
    """Per-round median latencies (ms per batch) of several models timed in turn on one backend."""

    backend: str
    threads: int
    input_shape: tuple[int, ...]
    baseline: str
    warmup: int
    repeats: int
    round_ms: dict[str, dict[int, list[float]]]

    def median_ms(self, name: str, batch_size: int) -> float:
        """The median over rounds of a model's per-round median."""
        return float(np.median(self.round_ms[name][batch_size]))

    def speedup(self, name: str, batch_size: int, confidence: float = 0.9, against: str | None = None) -> Speedup:
        """``name`` against the baseline (or any other model of the run, ``against``), paired by round."""
        reference = self.round_ms[against or self.baseline][batch_size]
        return paired_speedup(reference, self.round_ms[name][batch_size], confidence)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: round timings, medians and speedups (with interval) per model and batch size."""
        return {"backend": self.backend, "threads": self.threads, "input_shape": list(self.input_shape),
                "baseline": self.baseline, "warmup": self.warmup, "repeats": self.repeats,
                "models": {name: {str(bs): {"round_ms": times, "median_ms": self.median_ms(name, bs),
                                            "speedup": asdict(self.speedup(name, bs))}
                                  for bs, times in per_batch.items()}
                           for name, per_batch in self.round_ms.items()}}


def compare_latency(models: Mapping[str, nn.Module | str | os.PathLike], input_shape: tuple[int, ...],
                    baseline: str, batch_sizes: Sequence[int] = (1, 64), backend: Backend = "torch",
                    rounds: int = 10, warmup: int = 5, repeats: int = 20,
                    threads: int | None = None) -> LatencyComparison:
    """Time every model once per round, in an order rotated each round, for paired speedups.

    Each round measures each model's median of ``repeats`` runs; onnxruntime gets a fresh session
    per measurement, exported once up front (a session's worker threads spin for a while after each
    run, which slows another session run right after it on a small CPU). Torch models run on the
    device they are on.
    """
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models {sorted(models)}")
    if rounds < 1:
        raise ValueError(f"need at least one round, got {rounds}")
    shape = tuple(int(d) for d in input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        timed = dict(models)
        if backend == "onnxruntime":
            from ..export.onnx_fp32 import export_onnx_fp32

            timed = {name: export_onnx_fp32(m, Path(tmp) / f"model{i}.onnx", shape) if isinstance(m, nn.Module)
                     else m for i, (name, m) in enumerate(models.items())}
        names = list(timed)
        round_ms: dict[str, dict[int, list[float]]] = {name: {bs: [] for bs in batch_sizes} for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                report = measure_latency(timed[name], shape, batch_sizes, backend, warmup, repeats, threads)
                for bs, batch in report.batches.items():
                    round_ms[name][bs].append(batch.median_ms)
    return LatencyComparison(backend, report.threads, shape, baseline, warmup, repeats, round_ms)
