"""Open any model file cnncompress writes, whichever command wrote it.

Four kinds exist: a float checkpoint (``train``, ``prune``, ``decode --output``), a quantized
checkpoint (``quantize``, compress's ``model.pt``), a float ``.cnnc`` (``encode``) and a quantized
deployable ``.cnnc`` (compress's ``model.cnnc``). ``load_artifact`` tells them apart by their
contents (the container's magic and header, the checkpoint's ``format``), so ``evaluate --weights``,
``decode`` and user code take any of them. Every kind is read as data (see ``models.registry``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encode.container import MAGIC, decode_model, read_header
from .models import ModelSpec, load_model
from .models.checkpoint import CheckpointError
from .quant.checkpoint import FORMAT as QUANTIZED_FORMAT
from .quant.checkpoint import load_quantized
from .quant.deployable import KIND as DEPLOYABLE_KIND
from .quant.deployable import read_deployable

KINDS = ("checkpoint", "quantized checkpoint", "container", "deployable")


@dataclass
class Artifact:
    """A rebuilt model (in eval mode; quantized kinds with their quantizers on) and what its file said."""

    model: nn.Module
    spec: ModelSpec
    kind: str  # one of KINDS
    meta: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] | None = None  # a .cnnc file's header

    @property
    def quantized(self) -> bool:
        return self.kind in ("quantized checkpoint", "deployable")


def load_artifact(path: str | os.PathLike, spec: ModelSpec | None = None) -> Artifact:
    """Rebuild the model in ``path``, whatever kind of cnncompress file it is.

    ``spec`` is the caller's: the architecture of a bare state_dict, and the factory used when the file
    names a model outside the zoo (a name read from a file is never imported).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open("rb") as handle:
        container = handle.read(len(MAGIC)) == MAGIC
    if container:
        data = path.read_bytes()
        header, _, _ = read_header(data)
        meta = header.get("meta") or {}
        if meta.get("kind") == DEPLOYABLE_KIND:
            qmodel, spec, header = read_deployable(path, spec)
            return Artifact(qmodel.eval(), spec, "deployable", meta, header)
        model, spec, header = decode_model(data, spec)
        return Artifact(model, spec, "container", meta, header)
    if _checkpoint_format(path) == QUANTIZED_FORMAT:
        qmodel, spec, meta = load_quantized(path, spec)
        return Artifact(qmodel.eval(), spec, "quantized checkpoint", meta)
    model, spec, meta = load_model(path, spec)
    return Artifact(model, spec, "checkpoint", meta)


def _checkpoint_format(path: Path) -> Any:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad or non-zip files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    return payload.get("format") if isinstance(payload, dict) else None
