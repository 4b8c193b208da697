"""Per-layer quantization sensitivity: what each layer costs in accuracy at each bit width.

Only the one layer's weights are quantized (everything else float), so the deltas are that layer's
own contribution; the mixed-precision planner reads ``SensitivityTable.to_dict()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from ..data import as_image_set
from ..data.adapt import UserData
from ..train import evaluate
from .calibrate import make_calibrator
from .graph import quant_layers, set_mode
from .ptq import QuantConfig, prepare


@dataclass
class LayerSensitivity:
    """Accuracy (percent) and loss with only this layer at ``bits``, and the change from float."""

    top1: float
    loss: float
    delta_top1: float
    delta_loss: float


@dataclass
class SensitivityTable:
    """``layers[name][bits]`` for every quantizable layer; baseline is the float model."""

    baseline_top1: float
    baseline_loss: float
    images: int
    bits: list[int]
    layers: dict[str, dict[int, LayerSensitivity]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_top1": self.baseline_top1, "baseline_loss": self.baseline_loss, "images": self.images,
                "bits": list(self.bits),
                "layers": {name: {str(b): vars(s) for b, s in per.items()} for name, per in self.layers.items()}}

    def table(self) -> str:
        from ..cli.common import format_table

        rows = [[name, *(f"{per[b].delta_top1:+.2f} / {per[b].delta_loss:+.4f}" for b in self.bits)]
                for name, per in self.layers.items()]
        header = ["layer", *(f"W{b}: d top-1 / d loss" for b in self.bits)]
        return (f"baseline top-1 {self.baseline_top1:.2f}%  loss {self.baseline_loss:.4f}  "
                f"({self.images} images)\n" + format_table(rows, header))


def sensitivity(model: nn.Module, data: UserData, bits: Sequence[int] = (8, 6, 4, 3, 2), per_channel: bool = True,
                weight_calibration: str = "mse", batch_size: int = 256) -> SensitivityTable:
    """Evaluate ``model`` on ``data`` once per (layer, bits) with only that layer's weights quantized.

    ``data``: an ImageSet, a Dataset of (float image, label) or a DataLoader (loaded once, see
    :func:`~cnncompress.data.as_image_set`).
    """
    if not bits:
        raise ValueError("give at least one bit width")
    data = as_image_set(data, need_labels=True, source="sensitivity: data")
    qmodel = prepare(model, QuantConfig(per_channel=per_channel, weight_calibration=weight_calibration))
    set_mode(qmodel, "float", "float")
    base = evaluate(qmodel, data, batch_size)
    table = SensitivityTable(base.top1, base.loss, base.n, sorted(set(bits), reverse=True))
    for name, layer in quant_layers(qmodel):
        quantizer = layer.weight_quant
        table.layers[name] = {}
        for b in table.bits:
            quantizer.spec = replace(quantizer.spec, bits=b)
            calibrator = make_calibrator(weight_calibration, quantizer.spec)
            calibrator.observe(layer.weight.detach())
            quantizer.calibrator = calibrator
            quantizer.calibrate()
            result = evaluate(qmodel, data, batch_size)
            table.layers[name][b] = LayerSensitivity(result.top1, result.loss, result.top1 - base.top1,
                                                     result.loss - base.loss)
        quantizer.mode, quantizer.calibrator = "float", None
    return table
