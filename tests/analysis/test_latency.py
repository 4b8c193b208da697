"""Latency reports and comparisons: structure and statistics only, never timings."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cnncompress.analysis import LatencyReport, compare_latency, measure_latency, paired_speedup


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


positive = st.floats(0.01, 1e4, allow_nan=False)


@given(st.lists(st.tuples(positive, st.floats(0.2, 5.0)), min_size=1, max_size=30))
def test_paired_speedup_lies_within_the_round_ratios(rounds: list[tuple[float, float]]) -> None:
    base = [b for b, _ in rounds]
    model = [b / ratio for b, ratio in rounds]
    result = paired_speedup(base, model)
    ratios = np.array(base) / np.array(model)
    assert ratios.min() - 1e-9 <= result.low <= result.median <= result.high <= ratios.max() + 1e-9
    assert result.rounds == len(rounds)


@given(st.lists(st.floats(0.1, 10.0), min_size=2, max_size=30), st.floats(1.1, 3.0))
def test_paired_speedup_ignores_a_drift_both_models_share(slowdowns: list[float], ratio: float) -> None:
    """A round that is slow for both members (a busy neighbour) does not move the estimate."""
    result = paired_speedup([10 * s for s in slowdowns], [10 * s / ratio for s in slowdowns])
    assert result.median == pytest.approx(ratio) and result.low == pytest.approx(ratio)
    assert result.high == pytest.approx(ratio)


def test_paired_speedup_rejects_bad_timings() -> None:
    for base, model in (([], []), ([1.0, 2.0], [1.0]), ([1.0], [0.0]), ([math.nan], [1.0])):
        with pytest.raises(ValueError, match="positive, finite"):
            paired_speedup(base, model)
    with pytest.raises(ValueError, match="confidence"):
        paired_speedup([1.0], [1.0], confidence=1.0)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_compare_latency_times_every_model_each_round(backend: str) -> None:
    models = {"base": tiny(), "same": tiny()}
    result = compare_latency(models, (3, 8, 8), "base", batch_sizes=(1, 2), backend=backend, rounds=3,
                             warmup=1, repeats=2, threads=1)
    assert (result.backend, result.threads, result.baseline) == (backend, 1, "base")
    assert all(len(times) == 3 and min(times) > 0 for per in result.round_ms.values() for times in per.values())
    assert result.speedup("base", 2).median == 1.0
    assert result.speedup("same", 2, against="same").median == 1.0
    swapped = result.speedup("base", 2, against="same")
    assert swapped.median == pytest.approx(1 / result.speedup("same", 2).median)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["models"]["same"]["2"]["speedup"]["rounds"] == 3


def test_compare_latency_needs_its_baseline_and_a_round() -> None:
    with pytest.raises(ValueError, match="baseline"):
        compare_latency({"a": tiny()}, (3, 8, 8), "b")
    with pytest.raises(ValueError, match="round"):
        compare_latency({"a": tiny()}, (3, 8, 8), "a", rounds=0)
