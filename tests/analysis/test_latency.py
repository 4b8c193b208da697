"""Latency reports: structure only (never timings) for torch and onnxruntime backends."""

import json

import pytest
import torch
from torch import nn

from cnncompress.analysis import LatencyReport, measure_latency


def tiny() -> nn.Module:
    layers = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)]
    return nn.Sequential(*layers)


def check(report: LatencyReport, backend: str, threads: int) -> None:
    assert (report.backend, report.threads, report.input_shape) == (backend, threads, (3, 8, 8))
    assert sorted(report.batches) == [1, 4]
    for bs, b in report.batches.items():
        assert b.batch_size == bs and b.repeats == 3
        assert 0 < b.p10_ms <= b.median_ms <= b.p90_ms
        assert b.median_ms_per_image == pytest.approx(b.median_ms / bs)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["batches"]) == {"1", "4"} and "median_ms" in data["batches"]["4"]


def test_torch_latency_structure_and_thread_restore() -> None:
    before = torch.get_num_threads()
    report = measure_latency(tiny(), (3, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=3, threads=1)
    check(report, "torch", 1)
    assert torch.get_num_threads() == before


def test_onnxruntime_latency_from_module() -> None:
    report = measure_latency(tiny(), (3, 8, 8), batch_sizes=(1, 4), backend="onnxruntime", warmup=1,
                             repeats=3, threads=1)
    check(report, "onnxruntime", 1)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="onnxruntime"):
        measure_latency("model.onnx", (3, 8, 8))
    with pytest.raises(ValueError, match="backend"):
        measure_latency(tiny(), (3, 8, 8), backend="tvm")
