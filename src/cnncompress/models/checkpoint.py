"""Checkpoints as architecture description + state_dict (never pickled modules).

Structured pruning changes layer widths, so loading adopts each Conv/Linear/BatchNorm's shape from
the stored tensors before copying them in: a pruned model rebuilds from its original spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import torch_save_atomic
from .registry import ModelSpec, ModelSpecError, UntrustedFactoryError, rebuild

FORMAT = "cnncompress-checkpoint"
QUANTIZED_FORMAT = "cnncompress-quantized"  # written by quant.save_quantized
VERSION = 1
#: meta key of the integer module attributes a structural change made (e.g. shortcut pad widths)
MODULE_ATTRS_KEY = "module_attrs"
ModuleAttrs = dict[str, dict[str, int]]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the requested architecture."""


def structural_attrs(model: nn.Module) -> ModuleAttrs:
    """Integer attributes modules declare in ``STRUCTURAL_ATTRS`` (e.g. ``PadShortcut`` pad widths).

    They shape the computation without being tensors, so checkpoints record them next to the weights.
    """
    return {name: {attr: int(getattr(module, attr)) for attr in module.STRUCTURAL_ATTRS}
            for name, module in model.named_modules() if getattr(module, "STRUCTURAL_ATTRS", ())}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: ModelSpec, **meta: Any) -> Path:
    """Atomically save ``model``'s weights with its spec, structural attributes and JSON-able ``meta``."""
    attrs = structural_attrs(model)
    if attrs:
        meta = {MODULE_ATTRS_KEY: attrs, **meta}
    payload = {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(),
               "state_dict": model.state_dict(), "meta": meta}
    torch_save_atomic(payload, path)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict safely; accepts cnncompress files and plain/``module.``-prefixed state_dicts."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return _checked_payload(raw, path)
    if isinstance(raw, dict) and raw.get("format") == QUANTIZED_FORMAT:
        raise CheckpointError(f"{path} is a quantized checkpoint: open it with cnncompress.load_artifact "
                              "(or quant.load_quantized)")
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        state = raw["state_dict"]
        meta = {k: v for k, v in raw.items() if k != "state_dict" and isinstance(v, (int, float, str))}
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, meta = raw, {}
    else:
        raise CheckpointError(f"{path} holds neither a cnncompress checkpoint nor a state_dict")
    return {"format": "state_dict", "spec": None, "state_dict": _strip_prefix(state), "meta": meta}


def _checked_payload(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """A cnncompress checkpoint's fields, type-checked so a forged file fails here with one line."""
    state, meta = raw.get("state_dict"), raw.get("meta", {})
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'meta' is not a mapping")
    return {**raw, "meta": meta}


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def adopt_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize layers in place to the widths stored in ``state``.

    Grouped convs and GroupNorm keep their per-group width, as pruning removes whole groups.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(f"{prefix}weight")
        if isinstance(module, nn.Conv2d) and weight is not None and weight.shape != module.weight.shape:
            per_group = module.out_channels // module.groups
            module.out_channels = weight.shape[0]
            module.groups = weight.shape[0] // per_group if module.groups > 1 else 1
            module.in_channels = weight.shape[1] * module.groups
            _resize_params(module, weight.shape)
        elif isinstance(module, nn.Linear) and weight is not None and weight.shape != module.weight.shape:
            module.out_features, module.in_features = weight.shape
            _resize_params(module, weight.shape)
        elif isinstance(module, nn.GroupNorm) and weight is not None and weight.shape[0] != module.num_channels:
            per_group = module.num_channels // module.num_groups
            module.num_channels = weight.shape[0]
            module.num_groups = weight.shape[0] // per_group
            _resize_params(module, weight.shape)
        elif isinstance(module, nn.LayerNorm) and weight is not None and weight.shape != module.weight.shape:
            module.normalized_shape = tuple(weight.shape)
            _resize_params(module, weight.shape)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            mean = state.get(f"{prefix}running_mean")
            if mean is not None and mean.shape[0] != module.num_features:
                module.num_features = mean.shape[0]
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    tensor = getattr(module, attr)
                    if tensor is not None:
                        tensor.data = torch.empty(mean.shape[0], dtype=tensor.dtype)


def _resize_params(module: nn.Module, weight_shape: torch.Size) -> None:
    module.weight = nn.Parameter(torch.empty(weight_shape))
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(torch.empty(weight_shape[0]))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                 adopt: bool = False) -> nn.Module:
    """Copy ``state`` into ``model`` strictly, with an error listing every mismatch.

    ``adopt`` first resizes layers to the stored widths (for cnncompress's own pruned checkpoints);
    third-party files load without it, so a wrong file is reported instead of silently reshaping.
    BatchNorm's ``num_batches_tracked`` counters, absent from older files, may be missing.
    """
    if adopt:
        adopt_shapes(model, state)
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or misshaped:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("mis-shaped keys", misshaped)) if keys]
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model


#: the largest value a recorded structural attribute (a pad width, a stride) may take
MAX_MODULE_ATTR = 65_536


def apply_module_attrs(model: nn.Module, attrs: Any) -> nn.Module:
    """Replay recorded non-tensor changes (e.g. pruned shortcut pad widths) on a freshly built model.

    ``attrs`` comes from a file, so only attributes a module declares in ``STRUCTURAL_ATTRS`` may be set,
    to integers in ``[0, MAX_MODULE_ATTR]``.
    """
    if not isinstance(attrs, dict):
        raise CheckpointError("recorded module attributes are not a mapping")
    modules = dict(model.named_modules())
    for name, values in attrs.items():
        module = modules.get(name) if isinstance(name, str) else None
        if module is None or not isinstance(values, dict):
            raise CheckpointError(f"recorded module attributes name no module of {type(model).__name__}: "
                                  f"{str(name)[:60]!r}")
        for attr, value in values.items():
            if attr not in getattr(module, "STRUCTURAL_ATTRS", ()) or isinstance(value, bool) \
                    or not isinstance(value, int) or not 0 <= value <= MAX_MODULE_ATTR:
                raise CheckpointError(f"cannot set {name}.{str(attr)[:60]} = {str(value)[:60]}: not a structural "
                                      f"integer attribute of {type(module).__name__} in [0, {MAX_MODULE_ATTR}]")
            setattr(module, attr, value)
    return model


def load_model(path: str | os.PathLike, spec: ModelSpec | None = None) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild the model stored in ``path`` and load its weights: ``(model in eval mode, spec, meta)``.

    ``spec`` is the caller's: the architecture of a bare state_dict, and the factory used when the file
    names one outside the zoo (a name read from the file is never imported; see ``models.registry``).
    """
    ckpt = read_checkpoint(path)
    try:
        stored = ModelSpec.from_dict(ckpt["spec"]) if ckpt.get("spec") is not None else None
        model, spec = rebuild(stored, spec, str(path))
    except UntrustedFactoryError:
        raise
    except ModelSpecError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    own_format = ckpt.get("format") == FORMAT
    if own_format:
        apply_module_attrs(model, ckpt["meta"].get(MODULE_ATTRS_KEY, {}))
    model = load_weights(model, ckpt["state_dict"], source=str(path), adopt=own_format)
    model.eval()
    return model, spec, ckpt["meta"]
