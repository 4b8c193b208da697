"""Cost analysis: parameters, MACs, weight bytes, peak activation memory and measured latency."""

from .activations import ActivationPeak, ActivationTraceError, peak_activation
from .cost import CostReport, LayerCost, count_macs, profile
from .latency import (
    BatchLatency,
    LatencyComparison,
    LatencyReport,
    Speedup,
    compare_latency,
    measure_latency,
    paired_speedup,
)

__all__ = [
    "ActivationPeak", "ActivationTraceError", "BatchLatency", "CostReport", "LatencyComparison", "LatencyReport",
    "LayerCost", "Speedup", "compare_latency", "count_macs", "measure_latency", "paired_speedup", "peak_activation",
    "profile",
]
