"""A small BN CNN trained on the bundled digits: the real model the quantization tests quantize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnncompress.data import ImageSet
from cnncompress.models import build_model
from cnncompress.train import TrainConfig, fit


@pytest.fixture(scope="session")
def digits_model(digits_train: ImageSet) -> nn.Module:
    """digits_cnn (width 16) after 8 epochs: ~97-98% test top-1. Do not modify: copy first."""
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    fit(model, digits_train, TrainConfig(epochs=8, batch_size=64, lr=0.05, seed=0), progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def calib(digits_train: ImageSet) -> ImageSet:
    return digits_train.take(256, seed=1)
