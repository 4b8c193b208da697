"""The deployable artifact: a quantized model's integer weight codes in the ``.cnnc`` container.

Weights are stored as their integer codes (at most 2^bits distinct values, so the container's
codebook + Huffman coding packs them near their entropy, and pruned zeros cost only gaps) beside
the per-channel scales, zero points, biases and activation quantizers. Decoding rebuilds the
quantized model with weights ``(code - zero_point) * scale``, which re-quantize to the same codes:
the decoded model computes exactly what the simulated one did. Its byte size is the flash figure
the budget verifies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import fx

from ..encode.container import CnncFormatError, encode_state, parse_cnnc, rebuild_architecture
from ..models import ModelSpec
from ..utils import atomic_write_bytes
from .checkpoint import rebuild_quantized
from .core import dequantize
from .graph import quant_layers
from .ptq import QuantConfig

KIND = "quantized"


def integer_state(qmodel: fx.GraphModule) -> dict[str, torch.Tensor]:
    """``qmodel``'s state_dict with every quantized layer's weight replaced by its integer codes."""
    state = {k: v.detach().cpu() for k, v in qmodel.state_dict().items()}
    for name, layer in quant_layers(qmodel):
        state[f"{name}.weight"] = layer.weight_quant.codes(layer.weight.detach()).float().cpu()
    return state


def write_deployable(path: str | os.PathLike, qmodel: fx.GraphModule, spec: ModelSpec,
                     input_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``qmodel`` (from ``quantize``/``qat``) as a ``.cnnc`` file of integer codes, atomically."""
    config = getattr(qmodel, "quant_config", None)
    if not isinstance(config, QuantConfig):
        raise ValueError("write_deployable needs a model returned by cnncompress.quant.quantize")
    meta: dict[str, Any] = {"kind": KIND, "quant_config": config.to_dict(),
                            "module_attrs": getattr(qmodel, "module_attrs", {})}
    params = sum(p.numel() for p in qmodel.parameters())
    data, _ = encode_state(integer_state(qmodel), spec, params, meta, input_shape)
    atomic_write_bytes(path, data)
    return Path(path)


def read_deployable(path: str | os.PathLike, spec: ModelSpec | None = None) -> tuple[fx.GraphModule, ModelSpec,
                                                                                      dict[str, Any]]:
    """Rebuild the quantized model in a file written by :func:`write_deployable`: ``(qmodel, spec, header)``.

    ``spec`` is the caller's: its factory rebuilds a file that names a model outside the zoo.
    """
    state, stored, header = parse_cnnc(Path(path).read_bytes())
    meta = header.get("meta") or {}
    if meta.get("kind") != KIND:
        raise CnncFormatError(f"{path} holds a float model, not a quantized deployable (use `cnncompress decode`)")
    model, spec = rebuild_architecture(stored, spec)
    try:
        qmodel = rebuild_quantized(model, QuantConfig.from_dict(meta.get("quant_config")), state,
                                   meta.get("module_attrs", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CnncFormatError(f"corrupt file: its tensors do not fit a quantized {spec.factory}: {exc}") from exc
    with torch.no_grad():
        for _, layer in quant_layers(qmodel):
            q = layer.weight_quant
            layer.weight.copy_(dequantize(layer.weight, q.scale, q.zero_point, q.axis))
    return qmodel, spec, header
