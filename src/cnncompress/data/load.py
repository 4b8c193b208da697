"""``load_dataset``: find, verify, decode and cache a dataset split as an ImageSet."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from cnncompress.data.catalog import ALIASES, DATASETS, IDX_FILES, IDX_URLS, SUBDIRS, IdxFile
from cnncompress.data.cifar import load_cifar10
from cnncompress.data.download import download_dataset, download_target
from cnncompress.data.errors import DataCorruptError, DataNotFoundError
from cnncompress.data.formats import read_idx
from cnncompress.data.imageset import ImageSet
from cnncompress.data.locate import not_found, resolve_data_dir, verify_md5

SPLITS = ("train", "test")
DIGITS_TEST_SIZE = 450  # sklearn digits has no official split: 1347 train / 450 test, stratified
DIGITS_SPLIT_SEED = 0


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False) -> ImageSet:
    """Load ``split`` of dataset ``name`` (see DATASETS) from the data directories.

    Raises DataNotFoundError (listing every place searched) or DataCorruptError (MD5 or format).
    With ``download=True`` a missing dataset is fetched from its official URL first. Results are
    cached per process, so callers share tensors and must not modify them in place.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    dirs = tuple(resolve_data_dir(data_dir))
    try:
        return _load(key, split, dirs)
    except DataNotFoundError:
        if not download or key == "digits":
            raise
    download_dataset(key, download_target(dirs))
    return _load(key, split, dirs)


@functools.lru_cache(maxsize=16)
def _load(name: str, split: str, dirs: tuple[Path, ...]) -> ImageSet:
    info = DATASETS[name]
    if name == "digits":
        return _digits(split)
    if name == "cifar10":
        images, labels = load_cifar10(split, dirs)
    else:
        image_spec, label_spec = IDX_FILES[name][split]
        images, labels = _read_idx_file(name, image_spec, dirs), _read_idx_file(name, label_spec, dirs)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataCorruptError(f"{name} {split}: images {images.shape} mismatch labels {labels.shape}")
        images = images[:, None]
    return ImageSet(_tensor(images), _tensor(labels.astype(np.int64)), info)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(array, requirements=["C", "W"]))


def _read_idx_file(name: str, spec: IdxFile, dirs: tuple[Path, ...]) -> np.ndarray:
    """The first ``<stem>.gz`` or raw ``<stem>`` found, MD5-checked against its own variant."""
    variants = ((f"{spec.stem}.gz", spec.gz_md5), (spec.stem, spec.raw_md5))
    for folder in (d / sub for d in dirs for sub in SUBDIRS[name]):
        for file, md5 in variants:
            if (folder / file).is_file():
                verify_md5(folder / file, md5)
                return read_idx(folder / file)
    wanted = [f"{file} (MD5 {md5})" for file, md5 in variants]
    raise not_found(name, dirs, SUBDIRS[name], wanted, IDX_URLS[name] + variants[0][0])


def _digits(split: str) -> ImageSet:
    """sklearn's bundled digits (values 0..16 as float) rescaled to uint8, then the fixed split."""
    from sklearn.datasets import load_digits  # deferred: sklearn import costs about a second

    bunch = load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float64)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 16:
        raise DataCorruptError("sklearn digits: pixel values outside the finite range 0..16")
    images = np.rint(pixels * (255 / 16)).astype(np.uint8).reshape(-1, 1, 8, 8)
    full = ImageSet(_tensor(images), _tensor(bunch.target.astype(np.int64)), DATASETS["digits"])
    train, test = full.split(DIGITS_TEST_SIZE, seed=DIGITS_SPLIT_SEED)
    return train if split == "train" else test
