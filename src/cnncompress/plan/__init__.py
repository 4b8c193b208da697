"""Budgets, device profiles, cost prediction, sensitivity, the planner and verification."""

from .budget import Budget
from .cost import ActivationBuffer, Choice, CostModel, FlashFormat, LayerSpec, Prediction, kept_channels
from .devices import DeviceProfile, device_from_mapping, list_devices, load_device
from .latency import LatencyModel, calibrate_latency, host_latency_model, probe_models
from .planner import Candidate, GroupPlan, Infeasible, LayerPlan, Plan, PlanOptions, plan
from .sensitivity import Delta, SensitivityTable, measure_sensitivity
from .units import format_bytes, format_count, parse_bytes, parse_count, parse_duration_ms
from .verify import Measured, Miss, Verification, measure_artifacts, tighten, verify

__all__ = [
    "ActivationBuffer", "Budget", "Candidate", "Choice", "CostModel", "Delta", "DeviceProfile", "FlashFormat",
    "GroupPlan", "Infeasible", "LatencyModel", "LayerPlan", "LayerSpec", "Measured", "Miss", "Plan",
    "PlanOptions", "Prediction", "SensitivityTable", "Verification", "calibrate_latency",
    "device_from_mapping", "format_bytes", "format_count", "host_latency_model", "kept_channels",
    "list_devices", "load_device", "measure_artifacts", "measure_sensitivity", "parse_bytes", "parse_count",
    "parse_duration_ms", "plan", "probe_models", "tighten", "verify",
]
