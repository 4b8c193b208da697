"""Save and reload simulated quantized models without pickling code.

The file holds the float architecture's ``ModelSpec``, the ``QuantConfig`` and the quantized
state_dict (folded weights, scales, zero points). Loading rebuilds the structure with ``prepare``
(deterministic) and loads the tensors, so ``torch.load(weights_only=True)`` suffices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import fx

from ..models import ModelSpec, adopt_shapes, apply_module_attrs
from ..utils import torch_save_atomic
from .core import FakeQuantize
from .graph import set_mode
from .ptq import QuantConfig, prepare

FORMAT = "cnncompress-quantized"


def save_quantized(path: str | os.PathLike, qmodel: fx.GraphModule, spec: ModelSpec, **meta: Any) -> Path:
    """Atomically write ``qmodel`` (from ``quantize``/``qat``) with the spec of its float model."""
    config = getattr(qmodel, "quant_config", None)
    if not isinstance(config, QuantConfig):
        raise ValueError("save_quantized needs a model returned by cnncompress.quant.quantize")
    payload = {"format": FORMAT, "spec": spec.to_dict(), "quant_config": config.to_dict(),
               "module_attrs": getattr(qmodel, "module_attrs", {}), "state_dict": qmodel.state_dict(),
               "meta": meta}
    torch_save_atomic(payload, path)
    return Path(path)


def load_quantized(path: str | os.PathLike) -> tuple[fx.GraphModule, ModelSpec, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_quantized`: ``(qmodel, spec, meta)``, quantizers on."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"cannot read quantized checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cnncompress quantized checkpoint")
    spec = ModelSpec.from_dict(payload["spec"])
    config = QuantConfig.from_dict(payload["quant_config"])
    qmodel = rebuild_quantized(spec, config, payload["state_dict"], payload.get("module_attrs", {}))
    return qmodel, spec, payload.get("meta", {})


def rebuild_quantized(spec: ModelSpec, config: QuantConfig, state: dict[str, torch.Tensor],
                      module_attrs: dict[str, dict[str, int]]) -> fx.GraphModule:
    """The quantized model a checkpoint describes: build, replay structure, prepare, load, quantizers on."""
    model = apply_module_attrs(spec.build(), module_attrs)
    adopt_shapes(model, state)
    qmodel = prepare(model, config, fold_stats=False)
    qmodel.module_attrs = module_attrs
    if config.learnable_scales:
        for module in qmodel.modules():
            if isinstance(module, FakeQuantize):
                module.make_learnable()
    for name, module in qmodel.named_modules():  # per-channel buffers take their stored length
        if isinstance(module, FakeQuantize):
            for attr in ("scale", "zero_point"):
                stored = state.get(f"{name}.{attr}")
                if stored is not None and stored.shape != getattr(module, attr).shape:
                    getattr(module, attr).data = torch.empty_like(stored)
    qmodel.load_state_dict(state)
    set_mode(qmodel, "quant", "quant")
    return qmodel.eval()
