"""The one quantizer core used by PTQ, QAT, sensitivity analysis and export.

``fake_quantize`` rounds onto the integer grid and back in float (straight-through gradient, LSQ
gradient for a learnable scale); ``FakeQuantize`` holds a tensor's scale/zero point and switches
between float, observe (feed a calibrator) and quantize; ``QConv2d``/``QLinear`` quantize their
weights and, like an integer runtime, their bias to int32 with scale ``s_in * s_w``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import NO_WEIGHT_DECAY
from .calibrate import Calibrator
from .spec import MIN_SCALE, QuantSpec, qparams

Mode = Literal["float", "observe", "quant"]
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def along_axis(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``t`` (one value per slice of ``x`` along ``axis``, or a scalar) shaped to broadcast against ``x``."""
    if axis is None or t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX QuantizeLinear) with an identity gradient."""
    return v + (torch.round(v) - v).detach()


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
             axis: int | None = None) -> torch.Tensor:
    """Integer codes (as float tensor) ``clamp(round(x / scale) + zero_point, qmin, qmax)``."""
    s, z = along_axis(scale, x, axis), along_axis(zero_point, x, axis)
    return torch.clamp(_round_ste(x / s) + z, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None
               ) -> torch.Tensor:
    return (q - along_axis(zero_point, q, axis)) * along_axis(scale, q, axis)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                  axis: int | None = None) -> torch.Tensor:
    """Quantize and dequantize; gradients: 1 for x inside the range, 0 outside; LSQ's for ``scale``."""
    return dequantize(quantize(x, scale, zero_point, qmin, qmax, axis), scale, zero_point, axis)


def _grad_scaled(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value as ``t``; gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return (t - t * factor).detach() + t * factor


class FakeQuantize(nn.Module):
    """Scale and zero point of one tensor plus its mode: ``float`` (pass through), ``observe`` or ``quant``."""

    def __init__(self, spec: QuantSpec, channels: int = 1, calibrator: Calibrator | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.calibrator = calibrator
        self.mode: Mode = "float"
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels))

    @property
    def axis(self) -> int | None:
        return self.spec.axis if self.spec.per_channel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            if self.calibrator is None:
                raise RuntimeError("FakeQuantize in observe mode needs a calibrator")
            self.calibrator.observe(x.detach())
            return x
        if self.mode == "float":
            return x
        scale = self.scale
        if isinstance(scale, nn.Parameter):
            scale = _grad_scaled(scale, (x.numel() / scale.numel() * self.spec.qmax) ** -0.5)
        return fake_quantize(x, scale, self.zero_point, self.spec.qmin, self.spec.qmax, self.axis)

    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Set scale and zero point from a value range (per channel if the spec says so)."""
        scale, zero_point = qparams(lo, hi, self.spec)
        with torch.no_grad():
            self.scale.data = scale.reshape(-1).to(self.scale.device)
            self.zero_point = zero_point.reshape(-1).to(self.scale.device)

    def calibrate(self) -> None:
        """Turn what the calibrator observed into scale/zero point, then start quantizing."""
        if self.calibrator is None:
            raise RuntimeError("no calibrator attached")
        self.set_range(*self.calibrator.range(self.spec))
        self.mode = "quant"

    def make_learnable(self) -> None:
        """LSQ: the scale becomes a trained parameter (the zero point stays a fixed integer)."""
        if not isinstance(self.scale, nn.Parameter):
            scale = self.scale.detach().clone()
            del self.scale
            self.scale = nn.Parameter(scale)
        setattr(self.scale, NO_WEIGHT_DECAY, True)  # decay would pull the steps to zero; deepcopy drops the mark

    def clamp_scale_(self) -> None:
        with torch.no_grad():
            self.scale.clamp_(min=MIN_SCALE)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` (int64) on this quantizer's grid, as exported."""
        with torch.no_grad():
            return quantize(x, self.scale, self.zero_point, self.spec.qmin, self.spec.qmax, self.axis).long()

    def extra_repr(self) -> str:
        s = self.spec
        kind = "symmetric" if s.symmetric else "affine"
        return f"bits={s.bits}, {kind}, signed={s.signed}, per_channel={s.per_channel}, mode={self.mode}"


class _QuantWeights:
    """Shared behaviour of QConv2d/QLinear: quantized weight, int32 bias at scale ``s_in * s_w``."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_quant: FakeQuantize
    quantize_bias: bool

    def _init_quant(self, source: nn.Module, spec: QuantSpec) -> None:
        """Copy weight and bias (not masks or hooks) from the float layer; attach the weight quantizer."""
        with torch.no_grad():
            self.weight.copy_(source.weight)
            if self.bias is not None:
                self.bias.copy_(source.bias)
        channels = self.weight.shape[0] if spec.per_channel else 1
        self.weight_quant = FakeQuantize(spec, channels)
        self.quantize_bias = False

    def quantized_params(self, in_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = self.weight_quant(self.weight)
        bias = self.bias
        if bias is not None and self.quantize_bias and in_scale is not None and self.weight_quant.mode == "quant":
            bias_scale = (in_scale.detach() * self.weight_quant.scale.detach()).expand(bias.shape[0])
            bias = fake_quantize(bias, bias_scale, torch.zeros_like(bias_scale), INT32_MIN, INT32_MAX, axis=0)
        return weight, bias

    def linear_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """This layer's linear operation with the given weight and bias."""
        raise NotImplementedError

    def bias_scale(self, in_scale: torch.Tensor) -> torch.Tensor:
        """The int32 bias scale the runtime uses, one per output channel."""
        return (in_scale.detach() * self.weight_quant.scale.detach()).expand(self.weight.shape[0]).contiguous()


class QConv2d(nn.Conv2d, _QuantWeights):
    """Conv2d with fake-quantized weights; ``forward(x, in_scale)`` gets the input quantizer's scale."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: QuantSpec) -> QConv2d:
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding can be quantized, got padding_mode={conv.padding_mode!r}")
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, bias=conv.bias is not None, device=conv.weight.device)
        q._init_quant(conv, spec)
        return q

    def linear_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear_op(x, *self.quantized_params(in_scale))


class QLinear(nn.Linear, _QuantWeights):
    """Linear with fake-quantized weights; ``forward(x, in_scale)`` gets the input quantizer's scale."""

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec) -> QLinear:
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=linear.weight.device)
        q._init_quant(linear, spec)
        return q

    def linear_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear_op(x, *self.quantized_params(in_scale))


QUANT_LAYERS = (QConv2d, QLinear)
