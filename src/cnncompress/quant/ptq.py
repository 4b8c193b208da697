"""Post-training quantization: prepare (fold BN, equalize, insert quantizers), calibrate, refine.

Order matters: cross-layer equalization changes float weights, so it precedes weight ranges; AdaRound
needs the weight grid fixed; bias correction measures the error of the final rounded weights; the
activation ranges are calibrated last, on the network that will actually run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import fx, nn

from ..models import structural_attrs
from ..utils import check_finite
from .adaround import adaround_weights
from .calibrate import CALIBRATORS, make_calibrator
from .core import INT32_MAX
from .data import CalibrationData, calibration_batches, run_batches
from .equalize import equalize
from .graph import (
    act_quantizers,
    fold_batchnorm,
    insert_quantizers,
    layer_input_scales,
    quant_layers,
    set_mode,
    trace,
)
from .rewrite import rewrite_for_integers


@dataclass
class QuantConfig:
    """Everything needed to rebuild a quantized model's structure from its float architecture."""

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    calibration: str = "mse"
    weight_calibration: str = "mse"
    layer_bits: dict[str, int] = field(default_factory=dict)
    cle: bool = False
    cle_relu6: bool = False
    bias_correction: bool = False
    adaround: bool = False
    adaround_iters: int = 1000
    learnable_scales: bool = False
    layer_input_bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        widths = {"weight_bits": self.weight_bits, "act_bits": self.act_bits,
                  **{f"layer_bits[{k!r}]": v for k, v in self.layer_bits.items()},
                  **{f"layer_input_bits[{k!r}]": v for k, v in self.layer_input_bits.items()}}
        for name, bits in widths.items():
            if not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ValueError(f"{name} must be an integer in 2..8, got {bits!r}")
        for name in ("calibration", "weight_calibration"):
            if getattr(self, name) not in CALIBRATORS:
                raise ValueError(f"{name} must be one of {', '.join(CALIBRATORS)}, got {getattr(self, name)!r}")
        if self.adaround_iters < 1:
            raise ValueError("adaround_iters must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> QuantConfig:
        """A config read from a file: known fields of the declared types only, else ValueError."""
        if not isinstance(data, dict):
            raise ValueError("quant_config is not a mapping")
        kinds = {f.name: f.type for f in fields(cls)}
        for key, value in data.items():
            expected = kinds.get(key) if isinstance(key, str) else None
            if expected is None:
                raise ValueError(f"quant_config has an unknown field {str(key)[:60]!r}")
            if not _is_of(value, expected):
                raise ValueError(f"quant_config field {key!r} must be {expected}, got {type(value).__name__}")
        return cls(**data)


def _is_of(value: Any, annotation: str) -> bool:
    """Whether a JSON value matches one of QuantConfig's field annotations (``int``, ``dict[str, int]``...)."""
    if annotation == "dict[str, int]":
        return isinstance(value, dict) and all(isinstance(k, str) and _is_of(v, "int") for k, v in value.items())
    python_type = {"int": int, "bool": bool, "str": str, "float": int | float}[annotation]
    return isinstance(value, python_type) and (annotation == "bool" or not isinstance(value, bool))


def prepare(model: nn.Module, config: QuantConfig, fold_stats: bool = True) -> fx.GraphModule:
    """The quantization-simulating graph of ``model`` (a copy), every quantizer in float mode.

    ``fold_stats=False`` drops BatchNorm without using its statistics (a checkpoint's folded weights
    are loaded next).
    """
    gm = trace(model)
    fold_batchnorm(gm, use_stats=fold_stats)
    rewrite_for_integers(gm)
    if config.cle:
        equalize(gm, relu6_to_relu=config.cle_relu6)
    insert_quantizers(gm, config.weight_bits, config.act_bits, config.per_channel, config.layer_bits,
                      config.layer_input_bits)
    # Tracing inlines modules such as PadShortcut: keep their (possibly pruned) structure for rebuilding.
    preserved = {"quant_config": config, "module_attrs": structural_attrs(model)}
    for name, value in preserved.items():
        setattr(gm, name, value)
    # fx's deepcopy rebuilds the GraphModule and restores only attributes listed under this meta key
    gm.meta.setdefault("_user_preserved_attributes", {}).update(preserved)
    return gm


def calibrate_weights(qmodel: nn.Module, method: str) -> None:
    """Per-layer weight grids from the weights themselves (no data needed)."""
    for _, layer in quant_layers(qmodel):
        calibrator = make_calibrator(method, layer.weight_quant.spec)
        calibrator.observe(layer.weight.detach())
        layer.weight_quant.calibrator = calibrator
        layer.weight_quant.calibrate()
        layer.weight_quant.calibrator = None


def calibrate_activations(qmodel: nn.Module, batches: list[torch.Tensor], method: str) -> None:
    """Observe float activations (quantized weights) on the batches, then fix every activation grid."""
    quantizers = dict(act_quantizers(qmodel))
    for q in quantizers.values():
        q.calibrator = make_calibrator(method, q.spec)
    set_mode(qmodel, "quant", "observe")
    run_batches(qmodel, batches)
    for name, q in quantizers.items():
        try:
            q.calibrate()
        except RuntimeError as exc:
            raise RuntimeError(f"activation quantizer {name}: {exc}") from exc
        q.calibrator = None
    fit_bias_to_int32(qmodel)
    set_mode(qmodel, "quant", "quant")


@torch.no_grad()
def fit_bias_to_int32(qmodel: fx.GraphModule) -> None:
    """Widen weight scales of near-dead channels so their bias fits int32 at scale ``s_in * s_w``.

    BN folding leaves channels with ~zero weights but a real bias; their tiny weight scale would
    saturate the int32 bias. A wider scale only rounds those tiny weights to zero.
    """
    in_scales = layer_input_scales(qmodel)
    for name, layer in quant_layers(qmodel):
        if layer.bias is None:
            continue
        need = layer.bias.detach().abs() / (in_scales[name].detach() * INT32_MAX * 0.5)
        quantizer = layer.weight_quant
        widened = torch.maximum(quantizer.scale.detach(), need if quantizer.spec.per_channel else need.max())
        quantizer.scale.data.copy_(widened)


@torch.no_grad()
def correct_bias(qmodel: nn.Module, batches: list[torch.Tensor]) -> None:
    """Empirical bias correction: add back the mean output shift the weight rounding causes, per channel."""
    set_mode(qmodel, "quant", "float")
    shift: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name, layer):
        def record(module, args, output):
            error = layer.linear_op(args[0], layer.weight - layer.weight_quant(layer.weight))
            dims = [d for d in range(error.dim()) if d != 1]
            shift[name] = shift.get(name, 0) + error.sum(dims)
            counts[name] = counts.get(name, 0) + error.numel() // error.shape[1]
        return record

    layers = dict(quant_layers(qmodel))
    handles = [layer.register_forward_hook(hook(name, layer)) for name, layer in layers.items()]
    try:
        run_batches(qmodel, batches)
    finally:
        for h in handles:
            h.remove()
    for name, layer in layers.items():
        if name not in shift:
            continue
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device))
        layer.bias.add_(shift[name] / counts[name])


def quantize(model: nn.Module, calibration_data: CalibrationData, weight_bits: int = 8, act_bits: int = 8,
             per_channel: bool = True, calibration: str = "mse", layer_bits: dict[str, int] | None = None, *,
             weight_calibration: str = "mse", cle: bool = False, cle_relu6: bool = False,
             bias_correction: bool = False, adaround: bool = False, adaround_iters: int = 1000,
             layer_input_bits: dict[str, int] | None = None, batch_size: int = 64) -> fx.GraphModule:
    """Post-training quantization of a trained float model; returns the simulated quantized model.

    ``layer_bits`` maps layer names (``"layer1.0.conv1"``) to their own weight bits (mixed precision);
    ``layer_input_bits`` maps layer names to the bits of the activation they read (e.g. 8 for the
    first conv, whose input is the image, and the classifier, as low-bit papers keep them).
    AdaRound, when asked, learns the rounding of every layer below 8 bits. ``model`` is not modified.
    """
    check_finite(model, "quantize")
    config = QuantConfig(weight_bits, act_bits, per_channel, calibration, weight_calibration,
                         dict(layer_bits or {}), cle, cle_relu6, bias_correction, adaround, adaround_iters,
                         layer_input_bits=dict(layer_input_bits or {}))
    batches = calibration_batches(calibration_data, batch_size)
    qmodel = prepare(model, config).to(next(model.parameters()).device)
    calibrate_weights(qmodel, config.weight_calibration)
    if config.adaround:
        adaround_weights(qmodel, batches, iters=config.adaround_iters)
    if config.bias_correction:
        correct_bias(qmodel, batches)
    calibrate_activations(qmodel, batches, config.calibration)
    return qmodel.eval()
