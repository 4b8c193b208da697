"""Calibration inputs: accept an ImageSet, a tensor or an iterable of batches; run them through a model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..data import ImageSet

CalibrationData = ImageSet | torch.Tensor | Iterable[torch.Tensor]


def calibration_batches(data: CalibrationData, batch_size: int = 64) -> list[torch.Tensor]:
    """Materialise calibration inputs as float NCHW batches (reused by several passes); refuse bad data."""
    if isinstance(data, ImageSet):
        batches = [x for x, _ in data.batches(batch_size)]
    elif isinstance(data, torch.Tensor):
        x = data[None] if data.dim() == 3 else data
        batches = list(x.float().split(batch_size))
    else:
        batches = []
        for item in data:
            x = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"calibration data must yield tensors, got {type(x).__name__}")
            batches.append((x[None] if x.dim() == 3 else x).float())
    if not batches or sum(len(b) for b in batches) == 0:
        raise ValueError("calibration data is empty")
    if not all(torch.isfinite(b).all() for b in batches):
        raise ValueError("calibration data contains NaN or inf")
    return batches


@torch.no_grad()
def run_batches(model: nn.Module, batches: list[torch.Tensor]) -> None:
    device = next(model.parameters()).device
    model.eval()
    for x in batches:
        model(x.to(device))
