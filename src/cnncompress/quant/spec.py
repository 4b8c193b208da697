"""What a quantized tensor looks like (``QuantSpec``) and how a value range becomes scale and zero point.

The integer grid follows ONNX ``QuantizeLinear``: ``q = saturate(round_half_even(x / scale) + zero_point)``
and ``x' = (q - zero_point) * scale``, so whatever is simulated here is what an integer runtime computes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

MIN_SCALE = 1e-8  # a zero range (dead channel) still needs a positive scale for ONNX


@dataclass(frozen=True)
class QuantSpec:
    """Format of one quantized tensor.

    ``symmetric`` forces the zero point to 0 (required for weights so pruned zeros stay exactly zero);
    ``narrow`` drops the most negative signed code (-127..127 instead of -128..127) so the grid is
    symmetric around zero; ``per_channel`` gives each slice along ``axis`` its own scale.
    """

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    per_channel: bool = False
    axis: int = 0
    narrow: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"quantization bits must be an integer in 2..8, got {self.bits!r}")
        if self.narrow and not self.signed:
            raise ValueError("narrow range applies to signed grids only")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_spec(bits: int, per_channel: bool = True) -> QuantSpec:
    """Symmetric signed narrow-range weights (zero point 0), per output channel by default."""
    return QuantSpec(bits=bits, symmetric=True, signed=True, per_channel=per_channel, axis=0, narrow=True)


def activation_spec(bits: int) -> QuantSpec:
    """Affine unsigned per-tensor activations (uint8 in ONNX), the format CPU integer kernels prefer."""
    return QuantSpec(bits=bits, symmetric=False, signed=False, per_channel=False)


def qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point (both float32 tensors) mapping ``[lo, hi]`` onto the spec's grid.

    The range is widened to contain 0 so that zero (ReLU floor, padding, pruned weights) is exact.
    """
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("cannot quantize a non-finite range (NaN or inf in the observed values)")
    if spec.symmetric:
        bound = torch.maximum(-lo, hi) if spec.signed else hi
        scale = torch.clamp(bound / spec.qmax, min=MIN_SCALE)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((hi - lo) / (spec.qmax - spec.qmin), min=MIN_SCALE)
    zero_point = torch.clamp(torch.round(spec.qmin - lo / scale), spec.qmin, spec.qmax)
    return scale, zero_point
