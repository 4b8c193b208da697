"""Per-layer sensitivity: how validation loss and accuracy change when one layer alone is compressed.

Three kinds of entries, each ``unit -> option -> Delta``: ``prune`` (channel group -> fraction of
channels removed), ``bits`` (layer -> weight bit width) and ``sparsity`` (layer -> fraction of
weights zeroed). Deltas are measured against the uncompressed model, one unit at a time; the planner
adds them up (the usual additive assumption). The table is plain data, cached as JSON in a run
directory so a resumed run never measures twice.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..utils import atomic_write_text

Kind = Literal["prune", "bits", "sparsity"]
KINDS: tuple[Kind, ...] = ("prune", "bits", "sparsity")
Objective = Literal["accuracy", "loss"]
# Accuracy deltas on a finite validation set tie often; a small weight on the loss breaks the ties.
TIE_BREAK_LOSS_WEIGHT = 1e-3


@dataclass(frozen=True)
class Delta:
    """Change from the baseline: ``loss`` increase (positive = worse), ``accuracy`` in points (negative = worse)."""

    loss: float
    accuracy: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.loss) and math.isfinite(self.accuracy)):
            raise ValueError(f"sensitivity deltas must be finite, got loss={self.loss}, accuracy={self.accuracy}")

    def cost(self, objective: Objective = "accuracy") -> float:
        """Non-negative penalty the planner adds up; improvements count as zero (measurement noise)."""
        if objective == "loss":
            return max(self.loss, 0.0)
        if objective != "accuracy":
            raise ValueError(f"objective must be 'accuracy' or 'loss', got {objective!r}")
        return max(-self.accuracy, 0.0) + TIE_BREAK_LOSS_WEIGHT * max(self.loss, 0.0)


def _check_option(kind: str, option: float) -> float | int:
    if kind == "bits":
        if isinstance(option, bool) or int(option) != option or not 1 <= option <= 32:
            raise ValueError(f"bits option must be an integer in 1..32, got {option!r}")
        return int(option)
    if not 0 <= float(option) < 1:
        raise ValueError(f"{kind} option must be a fraction in [0, 1), got {option!r}")
    return float(option)


@dataclass
class SensitivityTable:
    """Baseline figures plus ``{kind: {unit: {option: Delta}}}``; ``meta`` records how it was measured."""

    baseline_loss: float
    baseline_accuracy: float
    prune: dict[str, dict[float, Delta]] = field(default_factory=dict)
    bits: dict[str, dict[int, Delta]] = field(default_factory=dict)
    sparsity: dict[str, dict[float, Delta]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def entries(self, kind: Kind) -> dict[str, dict[Any, Delta]]:
        if kind not in KINDS:
            raise ValueError(f"sensitivity kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)

    def add(self, kind: Kind, unit: str, option: float, delta: Delta) -> None:
        self.entries(kind).setdefault(unit, {})[_check_option(kind, option)] = delta

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; options become string keys."""
        out: dict[str, Any] = {"baseline_loss": self.baseline_loss, "baseline_accuracy": self.baseline_accuracy,
                               "meta": self.meta}
        for kind in KINDS:
            out[kind] = {unit: {str(opt): [d.loss, d.accuracy] for opt, d in sorted(opts.items())}
                         for unit, opts in self.entries(kind).items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensitivityTable:
        """Inverse of ``to_dict``; validates options and values."""
        table = cls(float(data["baseline_loss"]), float(data["baseline_accuracy"]), meta=dict(data.get("meta", {})))
        for kind in KINDS:
            for unit, opts in data.get(kind, {}).items():
                for opt, (loss, acc) in opts.items():
                    table.add(kind, unit, float(opt), Delta(float(loss), float(acc)))
        return table

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as JSON (non-finite numbers refused)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityTable:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid sensitivity table: {exc}") from None


EvaluateFn = Callable[[nn.Module], tuple[float, float]]
ApplyFn = Callable[[nn.Module, str, Any], nn.Module]


def measure_sensitivity(model: nn.Module, units: Sequence[str], evaluate_fn: EvaluateFn, apply_fn: ApplyFn,
                        options: Iterable[float], kind: Kind = "prune", table: SensitivityTable | None = None,
                        cache: str | os.PathLike | None = None, progress: bool = False) -> SensitivityTable:
    """Measure one kind of entry for every unit and option, compressing one unit at a time.

    ``evaluate_fn(model) -> (loss, top-1 %)`` on validation data; ``apply_fn(copy, unit, option)``
    returns the copy compressed at ``unit`` by ``option`` (it receives a deep copy, so it may edit it
    in place). Entries already in ``table`` (or in the JSON at ``cache``) are not measured again, and
    ``cache`` is rewritten after every unit so an interrupted measurement resumes where it stopped.
    Under torch.distributed the units are dealt out to the ranks, one each at a time, and their
    entries gathered in unit order: the table equals the single-process one.
    """
    options = [_check_option(kind, o) for o in options]
    if table is None and cache is not None and Path(cache).exists():
        table = SensitivityTable.load(cache)
    if table is None:
        loss, acc = evaluate_fn(model)
        table = SensitivityTable(loss, acc)
    entries = table.entries(kind)
    todo = [(unit, [o for o in options if o not in entries.get(unit, {})]) for unit in units]
    todo = [(unit, missing) for unit, missing in todo if missing]

    def measure(task: tuple[str, list[float]]) -> list[tuple[float, float]]:
        unit, missing = task
        return [evaluate_fn(apply_fn(copy.deepcopy(model), unit, option)) for option in missing]

    step = distributed.world_size()
    with tqdm(total=len(units), initial=len(units) - len(todo), desc=f"sensitivity ({kind})",
              disable=not (progress and distributed.is_main())) as bar:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            for (unit, missing), measured in zip(chunk, distributed.shard_map(measure, chunk), strict=True):
                for option, (loss, acc) in zip(missing, measured, strict=True):
                    table.add(kind, unit, option, Delta(loss - table.baseline_loss, acc - table.baseline_accuracy))
            if cache is not None:
                table.save(cache)
            bar.update(len(chunk))
    return table
