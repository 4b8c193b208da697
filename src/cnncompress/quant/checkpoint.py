"""Save and reload simulated quantized models without pickling code.

The file holds the float architecture's ``ModelSpec``, the ``QuantConfig`` and the quantized
state_dict (folded weights, scales, zero points). Loading rebuilds the structure with ``prepare``
(deterministic) and loads the tensors, so ``torch.load(weights_only=True)`` suffices.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..models import CheckpointError, ModelSpec, UntrustedFactoryError, adopt_shapes, apply_module_attrs, rebuild
from ..models.checkpoint import QUANTIZED_FORMAT
from ..utils import torch_save_atomic
from .core import FakeQuantize
from .graph import set_mode
from .ptq import QuantConfig, prepare

FORMAT = QUANTIZED_FORMAT


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


def load_quantized(path: str | os.PathLike, spec: ModelSpec | None = None) -> tuple[fx.GraphModule, ModelSpec,
                                                                                  dict[str, Any]]:
    """Rebuild a model saved by :func:`save_quantized`: ``(qmodel, spec, meta)``, quantizers on.

    ``spec`` is the caller's: its factory rebuilds a file that names a model outside the zoo.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read quantized checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnncompress quantized checkpoint")
    meta = payload.get("meta", {})
    try:
        model, spec = rebuild(ModelSpec.from_dict(payload.get("spec")), spec, str(path))
        config = QuantConfig.from_dict(payload.get("quant_config"))
        if not isinstance(meta, dict):
            raise ValueError("'meta' is not a mapping")
        qmodel = rebuild_quantized(model, config, payload.get("state_dict"), payload.get("module_attrs", {}))
    except UntrustedFactoryError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return qmodel, spec, meta


def rebuild_quantized(model: nn.Module, config: QuantConfig, state: Any, module_attrs: Any) -> fx.GraphModule:
    """The quantized model a file describes, from its freshly built float architecture ``model``:
    replay structure, prepare, load the tensors, quantizers on."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the state_dict is not a mapping of names to tensors")
    model = apply_module_attrs(model, module_attrs)
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
