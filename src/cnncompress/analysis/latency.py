"""Measured inference latency on torch or onnxruntime: median and spread per batch size.

Single timings on a shared CPU are noise; the median of repeated runs after warm-up, with the
10th/90th percentiles as spread and the thread count recorded, is comparable between runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
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
