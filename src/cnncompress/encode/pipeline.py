"""The Deep Compression pipeline: prune (AGP) + retrain, share weights + fine-tune centroids.

Used by the ``encode`` command and the Deep Compression benchmark; the result is a plain model whose
weights hold only codebook values, ready for :func:`cnncompress.encode.write_cnnc`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..data import ImageSet, as_image_set
from ..data.adapt import UserData
from ..prune.schedules import AGPSchedule, iterative_rounds
from ..prune.unstructured import Sparsity, enforce_masks, make_permanent, prune_weights, sparsity_record
from ..train import TrainConfig, evaluate, fit
from .share import Bits, finalize_sharing, round_vectors, share_weights


@dataclass
class DeepCompressionConfig:
    """What to prune and share, and how long to retrain.

    ``prune_epochs`` of retraining with masks tightening along an AGP ramp over the first
    ``ramp_fraction`` of them, or, with ``rounds`` > 0, split over that many prune-retrain rounds
    (Han et al. 2015's iterative pruning; 0 epochs: one-shot pruning); ``share_epochs`` of centroid fine-tuning
    with Adam at ``share_lr``: a centroid's gradient is the sum over its cluster, whose size differs by
    orders of magnitude between layers, so SGD at one rate diverges on big clusters or stalls on small
    ones; Adam's per-parameter scaling suits all. ``train`` supplies the other training settings of both
    phases. ``distill`` makes the dense input model the teacher of both phases (``train.kd_alpha``,
    ``train.kd_temperature``).
    """

    sparsity: Sparsity
    bits: Bits
    scope: str = "layer"
    exclude: tuple[str, ...] = ()
    prune_epochs: int = 0
    ramp_fraction: float = 0.6
    rounds: int = 0
    share_epochs: int = 0
    share_lr: float = 1e-4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(augment=False))
    distill: bool = False
    half_codebooks: bool = True
    half_vectors: bool = True

    def __post_init__(self) -> None:
        if self.prune_epochs < 0 or self.share_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.rounds < 0 or (self.rounds and self.prune_epochs < self.rounds):
            raise ValueError("rounds must be >= 0 and at most prune_epochs")
        if not 0 < self.ramp_fraction <= 1:
            raise ValueError("ramp_fraction must be in (0, 1]")


@dataclass
class DeepCompressionRecord:
    sparsity: dict[str, Any]
    shared: list[dict[str, Any]]
    prune_history: list[dict[str, float]]
    shared_top1: float | None  # on ``val`` right after clustering, before centroid fine-tuning
    share_history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _steps_per_epoch(train: ImageSet, config: TrainConfig) -> int:
    steps = train.num_batches(config.batch_size, drop_last=True)
    return min(steps, config.max_batches_per_epoch) if config.max_batches_per_epoch else steps


def _iterative(model: nn.Module, config: DeepCompressionConfig, train: ImageSet, val: ImageSet | None,
               teacher: nn.Module | None, progress: bool) -> list[dict[str, float]]:
    """Prune-retrain rounds, each removing the same share of the surviving weights."""
    if isinstance(config.sparsity, Mapping):
        steps = {name: iterative_rounds(s, config.rounds) for name, s in config.sparsity.items()}
        targets = [{name: steps[name][r] for name in steps} for r in range(config.rounds)]
    else:
        targets = iterative_rounds(config.sparsity, config.rounds)
    history = []
    for r, target in enumerate(targets):
        epochs = config.prune_epochs // config.rounds + (r < config.prune_epochs % config.rounds)
        prune_weights(model, target, config.scope, exclude=config.exclude)
        history += fit(model, train, replace(config.train, epochs=epochs), val=val, teacher=teacher,
                       after_step=(enforce_masks,), progress=progress).history
    return history


def _prune(model: nn.Module, config: DeepCompressionConfig, train: ImageSet | None, val: ImageSet | None,
           teacher: nn.Module | None, progress: bool) -> list[dict[str, float]]:
    """One-shot, AGP (default) or iterative pruning with retraining; returns the training history."""
    if config.rounds:
        return _iterative(model, config, train, val, teacher, progress)
    if not config.prune_epochs:
        prune_weights(model, config.sparsity, config.scope, exclude=config.exclude)
        return []
    phase = replace(config.train, epochs=config.prune_epochs)
    ramp = max(1, int(config.ramp_fraction * config.prune_epochs * _steps_per_epoch(train, phase)))
    schedule = AGPSchedule(steps=ramp, every=max(1, ramp // 50))
    prune_weights(model, config.sparsity, config.scope, schedule=schedule, exclude=config.exclude)
    return fit(model, train, phase, val=val, teacher=teacher, after_step=(enforce_masks,), progress=progress).history


def deep_compress(model: nn.Module, config: DeepCompressionConfig, train: UserData | None = None,
                  val: UserData | None = None, progress: bool = False) -> tuple[nn.Module, DeepCompressionRecord]:
    """Prune, retrain, share and fine-tune ``model`` in place; needs ``train`` when any epochs are asked.

    ``val`` only monitors: its top-1 after each epoch and right after clustering goes into the record.
    Either may be an ImageSet, a Dataset of (float image, label) or a DataLoader (loaded once, see
    :func:`~cnncompress.data.as_image_set`).
    """
    if (config.prune_epochs or config.share_epochs) and train is None:
        raise ValueError("retraining epochs were requested but no training data was given")
    if train is not None:
        train = as_image_set(train, need_labels=True, source="deep_compress: train data", progress=progress)
    if val is not None:
        val = as_image_set(val, need_labels=True, source="deep_compress: validation data", progress=progress)
    teacher = copy.deepcopy(model).eval() if config.distill and train is not None else None
    prune_history = _prune(model, config, train, val, teacher, progress)
    make_permanent(model)
    record = sparsity_record(model, config.exclude).to_dict()
    model, shared = share_weights(model, config.bits, config.exclude)
    shared_top1 = evaluate(model, val).top1 if val is not None else None
    share_history: list[dict[str, float]] = []
    if config.share_epochs:
        phase = replace(config.train, epochs=config.share_epochs, optimizer="adam", lr=config.share_lr,
                        weight_decay=0.0)
        share_history = fit(model, train, phase, val=val, teacher=teacher, progress=progress).history
    finalize_sharing(model, torch.float16 if config.half_codebooks else torch.float32)
    if config.half_vectors:
        round_vectors(model)
    model.eval()
    return model, DeepCompressionRecord(record, [asdict(s) for s in shared], prune_history, shared_top1,
                                        share_history)
