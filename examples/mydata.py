"""A dataset of your own for cnncompress: `--dataset examples/mydata.py:build` (see README, "Your own data")."""

import torch
from torch.utils.data import TensorDataset

from cnncompress.data import load_dataset


def build(split: str) -> TensorDataset:
    """Called with "train" or "test": (float image C x H x W, int label) items, as the model takes them."""
    digits = load_dataset("digits", split)          # stands in for your own loading code
    images = digits.images.to(torch.float32) / 255  # N x 1 x 8 x 8, in [0, 1]
    images = (images - 0.306) / 0.376               # normalised the way the deployed model will see them
    return TensorDataset(images, digits.labels)     # labels: int64 class indices 0..9
