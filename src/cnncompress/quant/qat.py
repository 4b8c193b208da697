"""Quantization-aware training: fine-tune a PTQ-calibrated model through its fake quantizers.

Training runs in the foundation's ``fit`` loop. Gradients pass the rounding straight through (zero
outside the clipping range); with ``learnable_scales`` every scale is trained too (LSQ, Esser et al.
2020, with its gradient scaling). Weights that are exactly zero when QAT starts (pruning) are masked
with the pruning stage's masks and stay zero, and a zero weight always quantizes to code 0.
"""

from __future__ import annotations

import os

from torch import fx, nn

from ..data import ImageSet
from ..prune.unstructured import enforce_masks, lock_zeros, make_permanent
from ..train import TrainConfig, TrainRecord, fit
from .core import FakeQuantize
from .graph import set_mode


def _clamp_scales(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, FakeQuantize) and isinstance(module.scale, nn.Parameter):
            module.clamp_scale_()


def qat(qmodel: fx.GraphModule, train: ImageSet, config: TrainConfig, val: ImageSet | None = None,
        teacher: nn.Module | None = None, learnable_scales: bool = False, keep_zeros: bool = True,
        progress: bool = True, checkpoint: str | os.PathLike | None = None, resume: bool = False) -> TrainRecord:
    """Fine-tune ``qmodel`` (from :func:`quantize`) in place with quantization in the loop.

    ``teacher`` (e.g. the float model) adds distillation, which recovers low-bit accuracy faster.
    BatchNorm is already folded, which leaves per-layer gradient scales uneven: Adam at ~1e-4 is a
    safe start (SGD at fine-tuning rates of 1e-2..1e-3 diverged on the CIFAR ResNets at 4 bits).
    ``checkpoint``/``resume``: per-epoch checkpoints, as in :func:`~cnncompress.train.fit`.
    """
    if not hasattr(qmodel, "quant_config"):
        raise ValueError("qat needs a model returned by cnncompress.quant.quantize (calibrated first)")
    set_mode(qmodel, "quant", "quant")
    if learnable_scales:
        for module in qmodel.modules():
            if isinstance(module, FakeQuantize):
                module.make_learnable()
        qmodel.quant_config.learnable_scales = True
    hooks = [_clamp_scales]
    if keep_zeros:
        lock_zeros(qmodel)
        hooks.append(enforce_masks)
    try:
        return fit(qmodel, train, config, val=val, teacher=teacher, after_step=hooks, progress=progress,
                   checkpoint=checkpoint, resume=resume)
    finally:
        if keep_zeros:
            make_permanent(qmodel)
