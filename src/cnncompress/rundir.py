"""Run directories: one checkpoint per finished stage, so an interrupted run resumes.

Every stage maps a model to a model plus a JSON-able summary. After a stage finishes, its model is
saved (atomically) and the run manifest lists it as done; ``resume=True`` skips finished stages by
reloading their output. Stages whose models are not plain "spec + state_dict" (e.g. quantized ones)
bring their own ``save``/``load`` pair.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from torch import nn

from . import distributed
from .models import ModelSpec, load_model, save_checkpoint
from .quant import load_quantized, save_quantized
from .utils import atomic_write_text, shorten

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"


class RunDirectoryBusy(RuntimeError):
    """Another process is running stages in the same run directory."""


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
    return Stage(name, run, save=lambda m, p: save_quantized(p, m, spec), load=lambda p: load_quantized(p, spec)[0])


#: a manifest holds a few stage records: anything larger is not one of ours
MAX_MANIFEST_BYTES = 4 * 2**20


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's JSON object; a damaged or foreign one is a ValueError naming the file."""
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path} is not a cnncompress run manifest (over {MAX_MANIFEST_BYTES:,} bytes)")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path} is not a readable run manifest ({shorten(exc)})") from exc
    if not isinstance(stored, dict) or not isinstance(stored.get("stages", []), list):
        raise ValueError(f"{path} is not a cnncompress run manifest")
    return stored


def _stage_record(entry: Any, manifest: Path) -> StageRecord:
    """One finished stage as recorded; its artifact must be a plain file name inside the run directory."""
    fields = {"name": str, "seconds": int | float, "summary": dict, "artifact": str | None, "resumed": bool}
    if not isinstance(entry, dict) or set(entry) - set(fields) or "name" not in entry or "seconds" not in entry \
            or not all(isinstance(entry[key], fields[key]) for key in entry):
        raise ValueError(f"{manifest} holds a malformed stage record: {shorten(entry)}")
    artifact = entry.get("artifact")
    if artifact is not None and (Path(artifact).name != artifact or artifact in ("", ".", "..")):
        raise ValueError(f"{manifest} names an artifact outside its run directory: {shorten(artifact)}")
    return StageRecord(**entry)


class RunDirectory:
    """A run folder holding one checkpoint per finished stage and ``manifest.json``."""

    def __init__(self, path: str | Path, spec: ModelSpec, config: dict[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.spec = spec
        self.config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
        self._lock: IO[str] | None = None
        self.records: list[StageRecord] = distributed.on_main(lambda: self._open(resume))

    def _open(self, resume: bool) -> list[StageRecord]:
        """Take the folder (rank 0 alone under torch.distributed): lock it, read earlier stages, write the manifest."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _hold_lock(self.path)
        try:
            self.records = self._earlier_records(resume)
            self._write_manifest()
        except BaseException:
            self.close()
            raise
        return self.records

    def close(self) -> None:
        """Release the run directory to other processes (``with RunDirectory(...)`` does it on exit)."""
        if self._lock is not None:
            self._lock.close()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _earlier_records(self, resume: bool) -> list[StageRecord]:
        """The finished stages of the run already here, if any; refuses one without ``resume`` or changed."""
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            return []
        if not resume:
            raise FileExistsError(f"{self.path} already holds a run; pass --resume to continue it "
                                  "or choose another --output")
        stored = _read_manifest(manifest)
        if stored.get("config") != self.config:
            old = stored.get("config") if isinstance(stored.get("config"), dict) else {}
            changed = sorted(k for k in {*old, *self.config} if old.get(k) != self.config.get(k))
            raise ValueError(f"cannot resume {self.path}: it was started with other settings "
                             f"({', '.join(changed)} differ); choose another --output for these")
        return [_stage_record(entry, manifest) for entry in stored.get("stages", [])]

    def _write_manifest(self) -> None:
        payload = {"version": 1, "spec": self.spec.to_dict(), "config": self.config,
                   "stages": [asdict(r) for r in self.records]}
        atomic_write_text(self.path / MANIFEST, json.dumps(payload, indent=2))

    def done(self, name: str) -> StageRecord | None:
        return next((r for r in self.records if r.name == name), None)

    def run(self, stage: Stage, model: nn.Module) -> tuple[nn.Module, StageRecord]:
        """Run ``stage`` on ``model``, or reload its stored output when it already finished.

        Under torch.distributed every rank runs the stage and ends it holding rank 0's model, which
        rank 0 alone saves; a resumed stage is read by every rank (keep the run directory on a
        filesystem all ranks see).
        """
        finished = self.done(stage.name)
        if finished is not None and finished.artifact:
            artifact = self.path / finished.artifact
            log.info("stage %s: resumed from %s", stage.name, artifact)
            loaded = stage.load(artifact) if stage.load else load_model(artifact, self.spec)[0]
            return loaded, StageRecord(**{**asdict(finished), "resumed": True})
        log.info("stage %s: started", stage.name)  # logged, not drawn: a run without a terminal says it too
        began = time.perf_counter()
        model, summary = stage.run(model)
        log.info("stage %s: %s", stage.name, _figures(summary))
        distributed.broadcast_model(model)
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


def _figures(summary: dict[str, Any]) -> str:
    """A stage summary's scalar figures as one log line (``val top-1 97.85%, epochs 3``)."""
    figures = [f"val top-1 {v:.2f}%" if k == "val_top1" else f"{k.replace('_', ' ')} {v:.4g}"
               if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
               for k, v in summary.items() if isinstance(v, (int, float, str))]
    return ", ".join(figures) or "finished"


def _hold_lock(folder: Path) -> IO[str]:
    """Lock ``folder`` for this process, or raise :class:`RunDirectoryBusy` naming the holder's pid.

    Two runs in one folder would run every stage at once and overwrite each other's checkpoints.
    ``flock`` dies with its file: closing it (or the process ending, however) frees the folder.
    """
    handle = open(folder / LOCK, "a+")  # noqa: SIM115 -- held open while the run lasts
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read(20).strip() or "unknown"
        handle.close()
        raise RunDirectoryBusy(f"run directory {folder} is in use by another cnncompress process "
                               f"(pid {holder})") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
