"""The one training and evaluation loop every stage uses (fine-tuning, QAT, distillation).

Hooks keep it generic: ``loss_terms`` add penalties (e.g. L1 on BatchNorm scales for network
slimming) and ``after_step`` callbacks run after each optimizer step (e.g. re-applying pruning masks).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .data import ImageSet, as_image_set
from .data.adapt import UserData
from .utils import NO_WEIGHT_DECAY, check_finite, seed_everything, torch_save_atomic

log = logging.getLogger(__name__)

LossTerm = Callable[[nn.Module], torch.Tensor]
StepHook = Callable[[nn.Module], None]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; validated on construction."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (momentum, nesterov) or "adam"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine", "step" or "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the run, for "step"
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9  # weight of the distillation term when a teacher is given
    seed: int = 0
    device: str = "cpu"
    channels_last: bool = False  # NHWC convolutions: faster training of the CIFAR ResNets on CPU
    max_batches_per_epoch: int | None = None  # for quick runs and tests

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (self.optimizer in ("sgd", "adam"), "optimizer must be 'sgd' or 'adam'"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.schedule in ("cosine", "step", "constant"), "schedule must be cosine, step or constant"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.kd_alpha <= 1, "kd_alpha must be in [0, 1]"),
            (self.kd_temperature > 0, "kd_temperature must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")


@dataclass
class EvalResult:
    """Accuracy figures in percent, mean cross-entropy loss, and the confusion counts."""

    top1: float
    top5: float
    loss: float
    n: int
    confusion: list[list[int]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainRecord:
    """What a training run did, one entry per finished epoch (the figures are over all processes)."""

    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lr_factor(config: TrainConfig, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` (fraction of the run done, 0..1)."""
    total = max(config.epochs, 1)
    if config.warmup_epochs > 0 and progress * total < config.warmup_epochs:
        return (progress * total + 1e-3) / config.warmup_epochs
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.gamma ** sum(progress >= m for m in config.milestones)
    return 1.0


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    exempt = [p for p in params if getattr(p, NO_WEIGHT_DECAY, False)]
    decayed = [p for p in params if not getattr(p, NO_WEIGHT_DECAY, False)]
    return [{"params": decayed, "weight_decay": weight_decay}] + ([{"params": exempt, "weight_decay": 0.0}]
                                                                   if exempt else [])


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KL(teacher || student) at temperature T, scaled by T^2 to keep gradient magnitudes."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * t * t


def _batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                teacher: nn.Module | None, loss_terms: Sequence[LossTerm]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(x)
        kd = distillation_loss(logits, teacher_logits, config.kd_temperature)
        loss = (1 - config.kd_alpha) * loss + config.kd_alpha * kd
    for term in loss_terms:
        loss = loss + term(model)
    return loss, logits


def _check_finite(loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training diverged: loss is {loss.item()} in epoch {epoch + 1}; lower the lr")


def _to_device(tensor: torch.Tensor, device: str) -> torch.Tensor:
    """Copy without stalling the host: from pageable memory a CUDA copy waits for the queued kernels."""
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


SYNC_EVERY = 25  # steps between host reads of the running loss: each read stalls an accelerator's queue


def _run_epoch(model, train: ImageSet, config, optimizer, epoch, teacher, loss_terms, after_step, progress, device):
    """One epoch of global batches; under torch.distributed each rank trains on its share of each batch
    (the batches and their augmentation are drawn identically on every rank, so the run does not depend
    on the number of processes)."""
    model.train()
    n_batches = train.num_batches(config.batch_size, drop_last=True)
    if config.max_batches_per_epoch:
        n_batches = min(n_batches, config.max_batches_per_epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    batches = train.batches(config.batch_size, shuffle=True, augment=config.augment,
                            seed=config.seed * 1000 + epoch, drop_last=True)
    bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    for step, (x, y) in enumerate(batches):
        if step >= n_batches:
            break
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(config, (epoch + step / n_batches) / max(config.epochs, 1))
        x, y = _to_device(distributed.my_slice(x), device), _to_device(distributed.my_slice(y), device)
        if config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits = _batch_loss(model, x, y, config, teacher, loss_terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for hook in after_step:
            hook(model)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if (step + 1) % SYNC_EVERY == 0:
            _check_finite(loss_sum, epoch)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}")
    bar.close()
    loss_total, correct_total, seen_total = distributed.all_reduce_sum([loss_sum.item(), correct.item(), seen])
    _check_finite(torch.tensor(loss_total), epoch)
    return loss_total / max(seen_total, 1), 100.0 * correct_total / max(seen_total, 1)


def fit(model: nn.Module, train: UserData, config: TrainConfig, val: UserData | None = None,
        teacher: nn.Module | None = None, checkpoint: str | os.PathLike | None = None, resume: bool = False,
        loss_terms: Sequence[LossTerm] = (), after_step: Sequence[StepHook] = (),
        progress: bool = True) -> TrainRecord:
    """Train ``model`` in place; checkpoint atomically after every epoch and resume from it on request.

    ``train``/``val``: an ImageSet, a Dataset of (float image, label) or a DataLoader of (x, y) batches
    (see :func:`~cnncompress.data.as_image_set`; a user's data is loaded once and batched here with
    ``config.batch_size``, so the same images give the same run whichever form they come in).

    Under ``torch.distributed`` (e.g. launched by ``torchrun``) the model trains as DistributedDataParallel:
    ``config.batch_size`` and ``config.lr`` are per global batch, each rank trains on an equal share of
    every batch, BatchNorm uses the global batch's statistics, and rank 0 alone writes the checkpoint,
    so the same seed gives the same weights on any number of processes (to float rounding) and a run
    resumes on a different number of them.
    """
    train = as_image_set(train, need_labels=True, source="fit: train data", progress=progress)
    if val is not None:
        val = as_image_set(val, need_labels=True, source="fit: validation data", progress=progress)
    progress = progress and distributed.is_main()
    seed_everything(config.seed)
    device = distributed.torch_device(config.device)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=layout)
    if teacher is not None:
        teacher.to(device, memory_format=layout).eval()
    optimizer = _make_optimizer(model, config)
    record = TrainRecord(config=asdict(config), processes=distributed.world_size())
    start = 0
    if resume and checkpoint:
        start = _restore(checkpoint, model, optimizer, record)
        if start:
            log.info("resumed from %s after epoch %d", checkpoint, start)
    with distributed.data_parallel(model) as trained:
        for epoch in range(start, config.epochs):
            began = time.perf_counter()
            loss, acc = _run_epoch(trained, train, config, optimizer, epoch, teacher, loss_terms, after_step,
                                   progress, device)
            entry = {"epoch": epoch + 1, "train_loss": loss, "train_top1": acc,
                     "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
            if val is not None:
                result = evaluate(model, val, device=config.device)
                entry.update(val_top1=result.top1, val_loss=result.loss)
            record.history.append(entry)
            log.info("epoch %d/%d %s", epoch + 1, config.epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "epoch"))
            if checkpoint:
                _save_state(checkpoint, model, optimizer, record, epoch + 1)
    for module in (model, teacher):  # hand back the ordinary layout that export and other tools expect
        if module is not None:
            module.to(memory_format=torch.contiguous_format)
    model.eval()
    return record


def _save_state(path, model, optimizer, record: TrainRecord, epoch: int) -> None:
    torch_save_atomic({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "history": record.history, "config": record.config}, path)


def _read_state(path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The epoch checkpoint at ``path`` (None when there is none); a foreign or damaged one is a ValueError."""
    if not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise ValueError(f"cannot resume from {path}: not a readable checkpoint ({str(exc)[:120]})") from exc
    if not isinstance(state, dict) or state.get("config") != config:
        raise ValueError(f"cannot resume from {path}: it was written with a different training config")
    return state


def _restore(path, model, optimizer, record: TrainRecord) -> int:
    """Continue from the epoch checkpoint at ``path`` (read by rank 0, handed to every rank); 0 without one."""
    state = distributed.on_main(lambda: _read_state(path, record.config))
    if state is None:
        return 0
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, epoch = list(state["history"]), int(state["epoch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot resume from {path}: damaged epoch checkpoint ({str(exc)[:120]})") from exc
    if not 0 <= epoch <= record.config["epochs"]:
        raise ValueError(f"cannot resume from {path}: epoch {epoch} out of range")
    record.history, record.resumed_from_epoch = history, epoch
    return epoch


@torch.no_grad()
def evaluate(model: nn.Module, data: UserData, batch_size: int = 256, device: str = "cpu",
             progress: bool = False) -> EvalResult:
    """Top-1/top-5 accuracy (percent), mean loss and confusion counts of ``model`` on ``data``.

    ``data``: an ImageSet, a Dataset of (float image, label) or a DataLoader of (x, y) batches. The
    confusion matrix is square over the model's classes or the data's, whichever are more. Under
    ``torch.distributed`` the batches are shared out across the ranks and the figures gathered in
    batch order, so every rank gets exactly the single-process result.
    """
    check_finite(model, "evaluate")
    data = as_image_set(data, need_labels=True, source="evaluate: data", progress=progress)
    was_training = model.training
    device = distributed.torch_device(device)
    model.eval().to(device)
    n_batches = data.num_batches(batch_size)
    bar = tqdm(total=n_batches, desc="evaluate", disable=not (progress and distributed.is_main()), leave=False)

    def score(index: int) -> tuple[float, int, torch.Tensor, int]:
        """One batch: summed loss, top-5 hits, top-1 predictions and the model's number of classes."""
        x, y = data.batch(index, batch_size)
        logits = model(x.to(device)).float().cpu()
        hits = (logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]).any(1).sum().item()
        bar.update(1)
        return F.cross_entropy(logits, y, reduction="sum").item(), hits, logits.argmax(1), logits.shape[1]

    scores = distributed.shard_map(score, range(n_batches))
    bar.close()
    model.train(was_training)
    classes = max([data.info.num_classes] + [width for *_, width in scores])  # a split need not hold every class
    predictions = torch.cat([p for _, _, p, _ in scores]) if scores else torch.zeros(0, dtype=torch.long)
    confusion = torch.bincount(data.labels * classes + predictions, minlength=classes * classes)
    n = len(data)
    return EvalResult(top1=100.0 * int((predictions == data.labels).sum()) / max(n, 1),
                      top5=100.0 * sum(h for _, h, _, _ in scores) / max(n, 1),
                      loss=sum(loss for loss, *_ in scores) / max(n, 1), n=n,
                      confusion=confusion.view(classes, classes).tolist())
