"""Run directories: one checkpoint per finished stage, so an interrupted run resumes.

Every stage maps a model to a model plus a JSON-able summary. After a stage finishes, its model is
saved (atomically) and the run manifest lists it as done; ``resume=True`` skips finished stages by
reloading their output. Stages whose models are not plain "spec + state_dict" (e.g. quantized ones)
bring their own ``save``/``load`` pair.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .models import ModelSpec, load_model, save_checkpoint
from .quant import load_quantized, save_quantized
from .utils import atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class StageRecord:
    """What one stage did: its summary figures and how long it took."""

    name: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    artifact: str | None = None
    resumed: bool = False


SaveFn = Callable[[nn.Module, Path], None]
LoadFn = Callable[[Path], nn.Module]


@dataclass
class Stage:
    """A named step ``run(model) -> (model, summary)`` with optional custom persistence."""

    name: str
    run: Callable[[nn.Module], tuple[nn.Module, dict[str, Any]]]
    save: SaveFn | None = None
    load: LoadFn | None = None
    suffix: str = ".pt"


def quantized_stage(name: str, run: Callable[[nn.Module], tuple[nn.Module, dict[str, Any]]],
                    spec: ModelSpec) -> Stage:
    """A stage whose output is a quantized model, persisted as a quantized checkpoint."""
    return Stage(name, run, save=lambda m, p: save_quantized(p, m, spec), load=lambda p: load_quantized(p)[0])


class RunDirectory:
    """A run folder holding one checkpoint per finished stage and ``manifest.json``."""

    def __init__(self, path: str | Path, spec: ModelSpec, config: dict[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.spec = spec
        self.path.mkdir(parents=True, exist_ok=True)
        config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
        manifest = self.path / MANIFEST
        self.records: list[StageRecord] = []
        if manifest.is_file():
            stored = json.loads(manifest.read_text())
            if not resume:
                raise FileExistsError(f"{self.path} already holds a run; pass --resume to continue it "
                                      "or choose another --output")
            if stored.get("config") != config:
                raise ValueError(f"cannot resume {self.path}: it was started with different settings "
                                 f"(stored {stored.get('config')}, now {config})")
            self.records = [StageRecord(**r) for r in stored["stages"]]
        self.config = config
        self._write_manifest()

    def _write_manifest(self) -> None:
        payload = {"version": 1, "spec": self.spec.to_dict(), "config": self.config,
                   "stages": [asdict(r) for r in self.records]}
        atomic_write_text(self.path / MANIFEST, json.dumps(payload, indent=2))

    def done(self, name: str) -> StageRecord | None:
        return next((r for r in self.records if r.name == name), None)

    def run(self, stage: Stage, model: nn.Module) -> tuple[nn.Module, StageRecord]:
        """Run ``stage`` on ``model``, or reload its stored output when it already finished."""
        finished = self.done(stage.name)
        if finished is not None and finished.artifact:
            artifact = self.path / finished.artifact
            log.info("stage %s: resumed from %s", stage.name, artifact)
            loaded = stage.load(artifact) if stage.load else load_model(artifact)[0]
            return loaded, StageRecord(**{**asdict(finished), "resumed": True})
        began = time.perf_counter()
        model, summary = stage.run(model)
        artifact = self.path / f"{len(self.records):02d}-{stage.name}{stage.suffix}"
        if stage.save:
            stage.save(model, artifact)
        else:
            save_checkpoint(artifact, model, self.spec, stage=stage.name)
        record = StageRecord(stage.name, time.perf_counter() - began, summary, artifact.name)
        self.records.append(record)
        self._write_manifest()
        log.info("stage %s: done in %.1f s", stage.name, record.seconds)
        return model, record
