"""Calibration inputs: any data :func:`~cnncompress.data.as_image_set` takes, or a tensor; run them through a model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..data import ImageSet, as_image_set

CalibrationData = ImageSet | torch.Tensor | Iterable[Any]


def calibration_batches(data: CalibrationData, batch_size: int = 64) -> list[torch.Tensor]:
    """Materialise calibration inputs as float NCHW batches (reused by several passes); refuse bad data.

    A tensor (N x C x H x W, or one C x H x W image) is split as it is. Anything else (an ImageSet,
    a Dataset of images or (image, label) items, a DataLoader or list of batches) goes through
    :func:`~cnncompress.data.as_image_set`, which validates every image, and is re-batched with
    ``batch_size`` (a loader's own batch size does not matter); labels are not needed.
    """
    if isinstance(data, torch.Tensor):
        x = data[None] if data.dim() == 3 else data
        batches = list(x.float().split(batch_size))
    else:
        images = as_image_set(data, need_labels=False, source="calibration data")
        batches = [x for x, _ in images.batches(batch_size)]
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
