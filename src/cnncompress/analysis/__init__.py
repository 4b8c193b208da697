"""Cost analysis: parameters, MACs, weight bytes, peak activation memory and measured latency."""

from .activations import ActivationPeak, ActivationTraceError, peak_activation
from .cost import CostReport, LayerCost, count_macs, profile
from .latency import BatchLatency, LatencyReport, measure_latency

__all__ = [
    "ActivationPeak", "ActivationTraceError", "BatchLatency", "CostReport", "LatencyReport", "LayerCost",
    "count_macs", "measure_latency", "peak_activation", "profile",
]
