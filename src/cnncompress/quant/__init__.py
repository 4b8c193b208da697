"""Quantization: own fake-quant core, calibrators, PTQ refinements, QAT, mixed precision, sensitivity."""

from .adaround import adaround_weights
from .calibrate import CALIBRATORS, KL, MSE, Calibrator, MinMax, MovingAverageMinMax, Percentile, make_calibrator
from .checkpoint import load_quantized, save_quantized
from .core import FakeQuantize, QConv2d, QLinear, dequantize, fake_quantize
from .core import quantize as quantize_tensor
from .equalize import equalize
from .graph import act_quantizers, fold_batchnorm, fold_bn_into_conv, quant_layers, set_mode
from .ptq import QuantConfig, calibrate_activations, calibrate_weights, correct_bias, prepare, quantize
from .qat import qat
from .sensitivity import LayerSensitivity, SensitivityTable, sensitivity
from .spec import QuantSpec, activation_spec, qparams, weight_spec

__all__ = [
    "CALIBRATORS", "KL", "MSE", "Calibrator", "FakeQuantize", "LayerSensitivity", "MinMax", "MovingAverageMinMax",
    "Percentile", "QConv2d", "QLinear", "QuantConfig", "QuantSpec", "SensitivityTable", "act_quantizers",
    "activation_spec", "adaround_weights", "calibrate_activations", "calibrate_weights", "correct_bias",
    "dequantize", "equalize", "fake_quantize", "fold_batchnorm", "fold_bn_into_conv", "load_quantized",
    "make_calibrator", "prepare", "qat", "qparams", "quant_layers", "quantize", "quantize_tensor",
    "save_quantized", "sensitivity", "set_mode", "weight_spec",
]
