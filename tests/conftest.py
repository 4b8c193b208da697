"""Shared test fixtures: the location of ../shared and small real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cnncompress.data import ImageSet, load_dataset
from cnncompress.models import build_model
from cnncompress.train import TrainConfig, fit
from testsupport import DIGITS8, SHARED_DATA, SHARED_PRESENT, SHARED_REASON


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``@pytest.mark.shared`` skip, with a reason, where ../shared is absent or partial."""
    if SHARED_PRESENT:
        return
    skip = pytest.mark.skip(reason=SHARED_REASON)
    for item in items:
        if item.get_closest_marker("shared"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def requires_shared() -> Path:
    """The shared data directory; skips the requesting test where ../shared is absent or partial."""
    if not SHARED_PRESENT:
        pytest.skip(SHARED_REASON)
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits_train() -> ImageSet:
    """sklearn digits train split (1347 images, 1x8x8); always available. Do not modify in place."""
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test() -> ImageSet:
    """sklearn digits test split (450 images), disjoint from ``digits_train``."""
    return load_dataset("digits", "test")


@pytest.fixture(scope="session")
def mnist_test_small(requires_shared: Path) -> ImageSet:
    """1000 stratified MNIST test images (seed 0)."""
    return load_dataset("mnist", "test", data_dir=requires_shared).take(1000)


@pytest.fixture(scope="session")
def cifar10_test_small(requires_shared: Path) -> ImageSet:
    """1000 stratified CIFAR-10 test images (seed 0); the first use per machine decodes the archive."""
    return load_dataset("cifar10", "test", data_dir=requires_shared).take(1000)


@pytest.fixture(scope="session")
def digits_split() -> tuple[ImageSet, ImageSet, ImageSet]:
    """Digits (train minus 200 held out, the 200 validation images, test) for end-to-end runs."""
    train, val = load_dataset("digits", "train").split(200, seed=0)
    return train, val, load_dataset("digits", "test")


@pytest.fixture(scope="session")
def digits_cnn8(digits_split) -> nn.Module:
    """``DIGITS8`` trained for 12 epochs on ``digits_split``'s training part (~96% test top-1)."""
    torch.manual_seed(0)
    model = DIGITS8.build()
    fit(model, digits_split[0], TrainConfig(epochs=12, batch_size=64, lr=0.05), progress=False)
    return model.eval()


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models: they gain nothing from threads, and on busy shared
    cores OpenMP's waiting slows them manyfold. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
