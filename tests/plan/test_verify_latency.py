"""Verification of written artifacts against the budget, and the host latency line."""

from __future__ import annotations

import math

import pytest
from plan_helpers import ResDepthNet

from cnncompress.analysis import profile
from cnncompress.export import export_onnx_fp32
from cnncompress.plan import (
    Budget,
    Choice,
    CostModel,
    LatencyModel,
    Measured,
    Prediction,
    host_latency_model,
    measure_artifacts,
    probe_models,
    tighten,
    verify,
)
from cnncompress.utils import torch_save_atomic


def test_measured_artifacts_against_budget(tmp_path):
    model = ResDepthNet().eval()
    weights = tmp_path / "model.pt"
    torch_save_atomic(model.state_dict(), weights)
    onnx = export_onnx_fp32(model, tmp_path / "model.onnx", (1, 8, 8))
    measured = measure_artifacts(weights, model, (1, 8, 8), act_bits=8, scratch_bytes=64, onnx_path=onnx,
                                 latency_repeats=3, accuracy_drop=0.4)
    assert measured.flash_bytes == weights.stat().st_size
    assert measured.ram_bytes == profile(model, (1, 8, 8), act_bits=8, fused=True).peak_activation_bytes + 64
    assert measured.latency_ms > 0 and math.isfinite(measured.latency_ms)
    loose = verify(measured, Budget(flash_bytes="1MB", ram_bytes="1MB", macs="10M", max_accuracy_drop=1.0))
    assert loose.fits and loose.describe().startswith("fits")
    tight = verify(measured, Budget(flash_bytes=measured.flash_bytes - 100, macs=measured.macs,
                                    max_accuracy_drop=0.1))
    assert not tight.fits and [m.field for m in tight.misses] == ["flash_bytes", "accuracy_drop"]
    assert tight.misses[0].excess == 100 and "exceeds" in tight.misses[0].message
    assert "by 0.30 pt" in tight.misses[1].message
    with pytest.raises(FileNotFoundError):
        measure_artifacts(tmp_path / "absent.cnnc", model, (1, 8, 8))


def test_unmeasured_limits_do_not_pass_and_prediction_error_is_reported():
    cost = CostModel.from_model(ResDepthNet(), (1, 8, 8))
    predicted = cost.predict(Choice(act_bits=8))
    measured = Measured(flash_bytes=predicted.flash_bytes * 2, ram_bytes=predicted.ram_bytes, macs=predicted.macs,
                        accuracy_drop=0.0)
    result = verify(measured, Budget(flash_bytes="1MB", latency_ms="5ms"), predicted)
    assert not result.fits and result.unmeasured == ["latency_ms"]
    assert result.prediction_error["flash_bytes"] == pytest.approx(-0.5)
    assert result.prediction_error["macs"] == 0.0
    assert result.to_dict()["fits"] is False


def test_latency_line_fit_and_limits():
    line = LatencyModel.fit([(1_000_000, 2.0), (3_000_000, 4.0), (2_000_000, 3.0)])
    assert line.intercept_ms == pytest.approx(1.0) and line.ms_per_mac == pytest.approx(1e-6)
    assert line.max_macs(3.0) == pytest.approx(2_000_000, abs=1) and line.max_macs(0.5) is None
    assert LatencyModel.from_dict(line.to_dict()) == line
    anchored = line.anchored(4_000_000, 9.0)
    assert anchored.intercept_ms == pytest.approx(1.0) and anchored.predict_ms(4_000_000) == pytest.approx(9.0)
    assert line.anchored(10, 0.5).intercept_ms == 0.5  # overhead never exceeds the model's own time
    flat = LatencyModel.fit([(1, 2.0), (2, 1.0)])  # noise: slower for fewer MACs
    assert flat.ms_per_mac == 0.0 and flat.intercept_ms == pytest.approx(1.5)
    with pytest.raises(ValueError, match="two or more"):
        LatencyModel.fit([(5, 1.0), (5, 2.0)])


def test_host_line_is_measured_and_anchored_at_the_model(tmp_path):
    model = ResDepthNet().eval()
    line = host_latency_model(model, (1, 8, 8), backend="torch", repeats=2)  # onnxruntime: tested above
    probes = [CostModel.from_model(m, (1, 8, 8)).predict(Choice()).macs for m in probe_models((1, 8, 8))]
    own = CostModel.from_model(model, (1, 8, 8)).predict(Choice()).macs
    assert [p[0] for p in line.points] == [*probes, own]
    assert all(t > 0 and math.isfinite(t) for _, t in line.points) and line.backend == "torch"
    assert line.predict_ms(own) == pytest.approx(line.points[-1][1])
    assert line.ms_per_mac >= 0 and line.intercept_ms >= 0


def test_tighten_shrinks_only_under_predicted_limits():
    budget = Budget(flash_bytes="100KB", ram_bytes="50KB", macs="10M")
    predicted = Prediction(flash_bytes=90_000, ram_bytes=40_000, macs=9_000_000, weights=1)
    measured = Measured(flash_bytes=112_500, ram_bytes=40_000, macs=8_000_000, accuracy_drop=0.1)
    result = verify(measured, budget, predicted)
    assert [m.field for m in result.misses] == ["flash_bytes"]
    tighter = tighten(budget, result, margin=0.0)
    assert tighter.flash_bytes == 80_000  # 90 KB predicted became 112.5 KB: plan for 100 * 0.8 KB
    assert (tighter.ram_bytes, tighter.macs) == (budget.ram_bytes, budget.macs)
    assert tighten(budget, result, margin=0.1).flash_bytes == 72_000
