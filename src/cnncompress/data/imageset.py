"""In-memory image sets: uint8 (or float32) tensors plus the cheap, deterministic operations training needs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnncompress.data.catalog import DatasetInfo

Indices = Sequence[int] | np.ndarray | torch.Tensor | slice


@dataclass(eq=False, repr=False)
class ImageSet:
    """Images (uint8 or float32, N x C x H x W) with int64 labels.

    The built-in datasets are kept as uint8 (4x smaller than float) and normalised per batch. A user's
    float data (see :func:`cnncompress.data.as_image_set`, which validates it) is float32 and used as
    given: ``info.mean``/``std`` do not apply to it. ``labelled=False`` marks images without labels
    (calibration only; ``labels`` are then zeros). Loaded sets are cached and shared within a
    process: treat the tensors as read-only.
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    labelled: bool = True

    def __post_init__(self) -> None:
        if self.images.dtype not in (torch.uint8, torch.float32) \
                or tuple(self.images.shape[1:]) != self.info.input_shape:
            raise ValueError(f"{self.info.name}: images must be uint8 or float32 N x {self.info.input_shape}, "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"{self.info.name}: labels must be int64 of length {len(self.images)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) \
                < self.info.num_classes:
            raise ValueError(f"{self.info.name}: labels outside 0..{self.info.num_classes - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ImageSet({self.info.name!r}, n={len(self)}, shape={self.info.input_shape})"

    def subset(self, indices: Indices) -> ImageSet:
        """The images at ``indices``: a slice, a boolean mask, or positions in any order."""
        idx = indices if isinstance(indices, slice) else torch.as_tensor(indices)
        if isinstance(idx, torch.Tensor) and idx.dtype != torch.bool:
            idx = idx.long()
        return ImageSet(self.images[idx], self.labels[idx], self.info, self.labelled)

    def stratified_order(self, seed: int = 0) -> torch.Tensor:
        """A seeded permutation whose every prefix holds the classes in their overall proportions.

        Each class's images are shuffled and the k-th of a class with c images gets key (k + 0.5)/c;
        sorting by key interleaves classes, so taking a prefix is stratified sampling.
        """
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=generator)
        labels = self.labels[perm]
        counts = torch.bincount(labels, minlength=self.info.num_classes)
        by_class = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(labels)
        rank[by_class] = torch.arange(len(self)) - starts[labels[by_class]]
        key = (rank.double() + 0.5) / counts[labels].double()
        return perm[torch.argsort(key, stable=True)]

    def take(self, n: int, seed: int = 0) -> ImageSet:
        """Deterministic stratified random subset of ``n`` images, in original order."""
        return self.split(n, seed)[1]

    def split(self, n_holdout: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Disjoint ``(rest, holdout)`` with a stratified, seeded holdout of ``n_holdout`` images."""
        if not 0 <= n_holdout <= len(self):
            raise ValueError(f"cannot hold out {n_holdout} of {len(self)} images")
        order = self.stratified_order(seed)
        return self.subset(order[n_holdout:].sort().values), self.subset(order[:n_holdout].sort().values)

    @property
    def is_float(self) -> bool:
        """True for a user's float32 images, which are used as given (no scaling or normalisation)."""
        return self.images.dtype == torch.float32

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """float32 ``(x / 255 - mean) / std`` per channel, for N x C x H x W or C x H x W uint8.

        A float set's images are already model inputs: they come back unchanged, as a copy (so a
        model that writes into its input cannot change the set).
        """
        if images_uint8.dtype != self.images.dtype:
            raise TypeError(f"normalize expects {self.images.dtype} images, got {images_uint8.dtype}")
        if self.is_float:
            return images_uint8.clone()
        mean = torch.tensor(self.info.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.info.std, dtype=torch.float32).view(-1, 1, 1)
        return (images_uint8.float().div_(255) - mean).div_(std)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images normalised (float32) and the labels."""
        return self.normalize(self.images), self.labels

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of the unshuffled set in ``batch_size`` steps, as :meth:`batches` yields it."""
        window = slice(index * batch_size, (index + 1) * batch_size)
        return self.normalize(self.images[window]), self.labels[window]

    def batches(self, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int | None = None, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float32 batches and labels by tensor slicing (no DataLoader workers needed).

        ``augment`` applies the dataset's random crop (and flip for CIFAR-10; for float data what
        ``info.crop_pad``/``hflip`` say, padding with 0.0). One generator seeded by ``seed`` drives
        shuffling and augmentation; ``seed=None`` draws it from torch's global RNG.
        """
        count = self.num_batches(batch_size, drop_last)
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator) if shuffle else None
        for i in range(count):
            window = slice(i * batch_size, (i + 1) * batch_size)
            idx = window if order is None else order[window]
            images = self.images[idx]
            if augment:
                images = random_crop_flip(images, self.info.crop_pad, self.info.hflip, generator)
            yield self.normalize(images), self.labels[idx]


def random_crop_flip(images: torch.Tensor, pad: int, hflip: bool,
                     generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch, optionally mirrored, in one gather (any dtype)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    cols = torch.arange(w).expand(n, w)
    if hflip:
        mirror = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)
    rows = (top + torch.arange(h))[:, None, :, None]
    cols = (left + cols)[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
