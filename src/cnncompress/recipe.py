"""Hand-written stage lists (Distiller-style recipes) instead of the planner.

A recipe is YAML (read like ``yaml.safe_load``, within the limits of :mod:`cnncompress.safe_yaml`)::

    stages:
      - prune: {target_macs: 0.5, criterion: fpgm}
      - finetune: {epochs: 3, lr: 0.01}
      - sparsify: {sparsity: 0.8}
      - finetune: {epochs: 2}
      - quantize: {weight_bits: 4, act_bits: 8, layer_bits: {conv1: 8}}
      - qat: {epochs: 1, lr: 0.0001}

Every stage's option names and types are checked before anything runs (an option given as ``null``
keeps its default); the run uses the same run directory, resume, export and verification as the
planned path, so a recipe's result is measured the same way.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .data import ImageSet
from .models import ModelSpec
from .prune import enforce_masks, lock_zeros, make_permanent, prune_channels, prune_weights
from .quant import qat, quantize
from .rundir import RunDirectory, Stage, quantized_stage
from .safe_yaml import YamlInputError, load_yaml
from .train import TrainConfig, evaluate, fit
from .utils import brief

#: stage name -> options it accepts
STAGE_OPTIONS: dict[str, frozenset[str]] = {
    "prune": frozenset({"ratio", "target_macs", "target_params", "criterion", "global_ranking", "round_to",
                        "exclude", "per_layer", "min_channels", "max_ratio"}),
    "sparsify": frozenset({"sparsity", "scope", "exclude"}),
    "finetune": frozenset({"epochs", "lr", "batch_size", "max_batches_per_epoch", "distill"}),
    "quantize": frozenset({"weight_bits", "act_bits", "per_channel", "calibration", "layer_bits",
                           "weight_calibration", "cle", "bias_correction", "adaround", "adaround_iters",
                           "calib_images"}),
    "qat": frozenset({"epochs", "lr", "batch_size", "max_batches_per_epoch", "learnable_scales", "distill"}),
}
_FLOAT_ONLY = {"prune", "sparsify", "finetune"}


def _whole(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError
        return value
    return check


def _number(value: Any) -> float:
    """A finite number; text too, since YAML 1.1 reads ``1e-4`` (no dot) as text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return value


def _names(value: Any) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError
    return names


def _per_layer(check: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    def per_layer(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError
        return {layer: check(v) for layer, v in value.items()}
    return per_layer


_numbers_per_layer = _per_layer(_number)


def _number_or_per_layer(value: Any) -> float | dict[str, float]:
    return _numbers_per_layer(value) if isinstance(value, dict) else _number(value)


_COUNT = ("an integer >= 1", _whole(1))
_NUMBER = ("a finite number", _number)
_FLAG = ("true or false", _flag)
_TEXT = ("text", _text)
#: option -> (what it must be, check returning the value to use); one meaning per name in every stage
OPTION_TYPES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "ratio": _NUMBER, "target_macs": _NUMBER, "target_params": _NUMBER, "max_ratio": _NUMBER, "lr": _NUMBER,
    "criterion": _TEXT, "scope": _TEXT, "calibration": _TEXT, "weight_calibration": _TEXT,
    "global_ranking": _FLAG, "distill": _FLAG, "per_channel": _FLAG, "cle": _FLAG, "bias_correction": _FLAG,
    "adaround": _FLAG, "learnable_scales": _FLAG,
    "round_to": _COUNT, "min_channels": _COUNT, "batch_size": _COUNT, "max_batches_per_epoch": _COUNT,
    "weight_bits": _COUNT, "act_bits": _COUNT, "adaround_iters": _COUNT, "calib_images": _COUNT,
    "epochs": ("an integer >= 0", _whole(0)),
    "exclude": ("a list of layer names", _names),
    "per_layer": ("a mapping {layer: number}", _numbers_per_layer),
    "layer_bits": ("a mapping {layer: integer >= 1}", _per_layer(_whole(1))),
    "sparsity": ("a number or a mapping {layer: number}", _number_or_per_layer),
}


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the stage and the offending option."""


def load_recipe(source: str | os.PathLike | dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Parse and validate a recipe file (or mapping) into ``[(stage, options), ...]``.

    Errors about a file start with ``recipe PATH:``.
    """
    if isinstance(source, dict):
        return _validate(source)
    try:
        return _validate(_read_yaml(Path(source)))
    except RecipeError as exc:
        raise RecipeError(f"recipe {source}: {exc}") from None


def _validate(data: Any) -> list[tuple[str, dict[str, Any]]]:
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, list) or not stages:
        raise RecipeError("a recipe needs a non-empty 'stages' list")
    parsed = [_parse_stage(i, entry) for i, entry in enumerate(stages, 1)]
    quantized = False
    for i, (name, _) in enumerate(parsed, 1):
        if quantized and name in _FLOAT_ONLY:
            raise RecipeError(f"stage {i} ({name}) comes after 'quantize': only 'qat' may follow it")
        if name == "qat" and not quantized:
            raise RecipeError(f"stage {i} (qat) needs a 'quantize' stage before it")
        if name == "quantize" and quantized:
            raise RecipeError(f"stage {i}: the model is already quantized")
        quantized = quantized or name == "quantize"
    return parsed


def _read_yaml(path: Path) -> Any:
    try:
        return load_yaml(path)
    except OSError as exc:
        raise RecipeError(f"cannot read it: {exc.strerror or exc}") from None
    except YamlInputError as exc:
        raise RecipeError(str(exc)) from None


def _parse_stage(index: int, entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise RecipeError(f"stage {index} must be one 'name: {{options}}' mapping, got {brief(entry)}")
    (name, options), = entry.items()
    if name not in STAGE_OPTIONS:
        raise RecipeError(f"stage {index}: unknown stage {brief(name)}; stages: {', '.join(STAGE_OPTIONS)}")
    options = options or {}
    if not isinstance(options, dict):
        raise RecipeError(f"stage {index} ({name}): options must be a mapping, got {brief(options)}")
    unknown = [key for key in options if key not in STAGE_OPTIONS[name]]
    if unknown:
        raise RecipeError(f"stage {index} ({name}): unknown options {brief(unknown)}; "
                          f"allowed: {', '.join(sorted(STAGE_OPTIONS[name]))}")
    return name, {key: _option(index, name, key, value) for key, value in options.items() if value is not None}


def _option(index: int, stage: str, key: str, value: Any) -> Any:
    expected, check = OPTION_TYPES[key]
    try:
        return check(value)
    except (ValueError, TypeError, OverflowError):
        raise RecipeError(f"stage {index} ({stage}), option {key!r}: expected {expected}, "
                          f"got {brief(value)}") from None


class RecipeRunner:
    """Turns recipe entries into run-directory stages over the given data."""

    def __init__(self, original: nn.Module, train: ImageSet, val: ImageSet, device: str, seed: int,
                 progress: bool) -> None:
        self.original, self.train, self.val = original, train, val
        self.device, self.seed, self.progress = device, seed, progress
        self.shape = train.info.input_shape

    def stage(self, name: str, options: dict[str, Any]) -> Callable[[nn.Module], tuple[nn.Module, dict]]:
        return lambda model: getattr(self, name)(model, dict(options))

    def _summary(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        return {"val_top1": evaluate(model, self.val, device=self.device).top1, **extra}

    def prune(self, model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        options.setdefault("ratio", None if {"target_macs", "target_params"} & set(options) else 0.0)
        pruned, record = prune_channels(model, self.shape, return_record=True, **options)
        return pruned, self._summary(pruned, macs_after=record.macs_after, params_after=record.params_after)

    def sparsify(self, model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        sparsity = options.pop("sparsity", None)
        if sparsity is None:
            raise RecipeError("sparsify needs 'sparsity' (a fraction or {layer: fraction})")
        model = make_permanent(prune_weights(model, sparsity, **options))
        return model, self._summary(model, sparsity=sparsity)

    def _config(self, options: dict[str, Any], lr: float, optimizer: str) -> TrainConfig:
        return TrainConfig(epochs=int(options.get("epochs", 1)), lr=float(options.get("lr", lr)),
                           batch_size=int(options.get("batch_size", 128)), optimizer=optimizer,
                           weight_decay=5e-4 if optimizer == "sgd" else 0.0, seed=self.seed, device=self.device,
                           max_batches_per_epoch=options.get("max_batches_per_epoch"))

    def _teacher(self, options: dict[str, Any]) -> nn.Module | None:
        return self.original if options.get("distill", True) else None

    def finetune(self, model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        lock_zeros(model)  # zeros from pruning or sparsify stay zero
        fit(model, self.train, self._config(options, 0.01, "sgd"), teacher=self._teacher(options),
            after_step=[enforce_masks], progress=self.progress)
        return make_permanent(model), self._summary(model)

    def quantize(self, model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        calib = self.train.take(min(int(options.pop("calib_images", 512)), len(self.train)), seed=self.seed)
        qmodel = quantize(model, calib, **options)
        return qmodel, self._summary(qmodel)

    def qat(self, qmodel: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        qat(qmodel, self.train, self._config(options, 1e-4, "adam"), teacher=self._teacher(options),
            learnable_scales=bool(options.get("learnable_scales", False)), progress=self.progress)
        return qmodel, self._summary(qmodel)


def run_recipe(model: nn.Module, recipe: list[tuple[str, dict[str, Any]]], spec: ModelSpec, train: ImageSet,
               val: ImageSet, run_dir: RunDirectory, device: str = "cpu", seed: int = 0,
               progress: bool = True) -> tuple[nn.Module, nn.Module, list[dict[str, Any]]]:
    """Run the recipe's stages: (last float model, final model, stage records)."""
    runner = RecipeRunner(copy.deepcopy(model).eval(), train, val, device, seed, progress)
    records, float_model, quantized = [], model, False
    for i, (name, options) in enumerate(recipe, 1):
        quantized = quantized or name == "quantize"
        run = runner.stage(name, options)
        label = f"{name}{i}"  # unique even when a stage kind repeats
        stage = quantized_stage(label, run, spec) if quantized else Stage(label, run)
        model, record = run_dir.run(stage, model)
        records.append(record)
        if not quantized:
            float_model = model
    return float_model, model, [vars(r) for r in records]

