"""The one adapter from data as users have it to the :class:`ImageSet` every stage takes.

Training, evaluation, calibration, sensitivity, pruning and ``compress`` accept an ``ImageSet``, any
map-style ``torch.utils.data.Dataset`` whose items are ``(image, label)`` or an image alone, a
``DataLoader`` (or any iterable) yielding ``(x, y)`` batches or image batches, or a tensor of images.
Each entry point calls :func:`as_image_set` once; an ``ImageSet`` passes through untouched.

Why user data is materialised in memory rather than streamed: the stages need random access (the
training loop shuffles an in-memory permutation and augments whole batches on tensors; validation
splits, calibration subsets and sensitivity probes are seeded stratified subsets) and read the data
many times (every epoch, every sensitivity measurement). Reading a Python ``Dataset`` item by item each
time would repeat its decoding and transforms, make results depend on its worker order, and find a NaN
in item 9,000 only after an hour of work. Loading once validates every item up front (float tensors,
one shape, finite values, integer labels in range) and gives the same batches, bit for bit, as an
``ImageSet`` holding the same images. Datasets for small devices are small (digits, MNIST, CIFAR-10 and
keyword spotting sets are tens to hundreds of MB in float32); the load is capped at ``max_bytes``
(:data:`MAX_BYTES` by default) with an error saying how much was needed, and shows a progress bar when
it takes more than a second. Random transforms a ``Dataset`` applies in ``__getitem__`` are drawn once;
ask for the built-in random crop and flip instead (``crop_pad``, ``hflip``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from tqdm.auto import tqdm

from ..utils import brief
from .catalog import DatasetInfo
from .errors import UserDataError
from .imageset import ImageSet

#: the most bytes (float32 images) :func:`as_image_set` loads into memory unless told otherwise
MAX_BYTES = 2 * 2**30
#: the largest number of classes inferred from labels (a label above it is an error, not a class)
MAX_CLASSES = 100_000
PROGRESS_DELAY_S = 1.0  # a load that takes less shows no progress bar

#: what :func:`as_image_set` accepts
UserData = ImageSet | Dataset | DataLoader | torch.Tensor | Iterable[Any]


def as_image_set(data: UserData, *, need_labels: bool = True, source: str = "data", name: str | None = None,
                 num_classes: int | None = None, crop_pad: int = 0, hflip: bool = False,
                 max_bytes: int = MAX_BYTES, progress: bool = True) -> ImageSet:
    """``data`` as an :class:`ImageSet`: unchanged if it is one, else loaded into memory and validated.

    - ``ImageSet``: returned as is (the built-in datasets, bit for bit as before).
    - map-style ``Dataset``: items ``(image, label)``, ``(image,)`` or ``image``, read in index order;
      an image is a floating-point ``C x H x W`` tensor, a label an ``int`` or integer tensor.
    - ``DataLoader`` or other iterable (an ``IterableDataset``, a list of batches): each element is
      ``(x, y)``, ``(x,)`` or ``x`` where ``x`` is ``N x C x H x W`` (a batch) or ``C x H x W`` (one
      image); read once, in the order it yields (a shuffling loader gives a shuffled copy).
    - a tensor: ``N x C x H x W`` images without labels.

    Float images are stored as float32 and used as given: no scaling or normalisation is applied (do
    that in your Dataset). Labels are needed for training and evaluation (``need_labels``); without
    them (calibration) the set is marked ``labelled=False``. ``num_classes`` defaults to the length of
    ``data.classes`` (the torchvision convention) or the largest label + 1. ``crop_pad``/``hflip``
    declare which random crop (zero-padded by ``crop_pad``) and horizontal flip keep your labels
    right; training augments with them only (none by default: cnncompress cannot know what a
    transform means for your data). ``source`` names the data in errors (e.g. "fit: train").

    Raises :class:`UserDataError` (a ValueError) with one line naming the first bad item.
    """
    if isinstance(data, ImageSet):
        if need_labels and not data.labelled:
            raise UserDataError(f"{source}: these images have no labels; training and evaluation need "
                                "(image, label) pairs")
        return data
    if crop_pad < 0 or isinstance(crop_pad, bool) or not isinstance(crop_pad, int):
        raise UserDataError(f"{source}: crop_pad must be a non-negative integer, got {brief(crop_pad)}")
    if num_classes is not None and not (isinstance(num_classes, int) and 1 <= num_classes <= MAX_CLASSES):
        raise UserDataError(f"{source}: num_classes must be an integer in [1, {MAX_CLASSES:,}], "
                            f"got {brief(num_classes)}")
    loader = _Loader(source, need_labels, max_bytes)
    try:
        _read(data, loader, source, progress)
    except UserDataError:
        raise
    except Exception as exc:  # the user's own __getitem__ / collate failed: say where, on one line
        raise UserDataError(f"{source}: reading item {loader.count} failed: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}") from exc
    images, labels = loader.result()
    classes = _class_names(data)
    if num_classes is None:
        num_classes = len(classes) if classes else max(int(labels.max()) + 1, 1)
    _check_label_range(labels, num_classes, source, bool(classes))
    names = tuple(classes) if classes and len(classes) == num_classes else tuple(str(i) for i in range(num_classes))
    c, h, w = images.shape[1:]
    if crop_pad >= min(h, w):
        raise UserDataError(f"{source}: crop_pad {crop_pad} must be smaller than the image ({h} x {w})")
    info = DatasetInfo(name or _default_name(data), num_classes, (c, h, w), (0.0,) * c, (1.0,) * c, names,
                       crop_pad=crop_pad, hflip=bool(hflip))
    return ImageSet(images, labels, info, labelled=loader.labelled is True)


def _default_name(data: Any) -> str:
    inner = data.dataset if isinstance(data, DataLoader) else data
    return f"user {type(inner).__name__}"


def _class_names(data: Any) -> list[str] | None:
    """``data.classes`` (or its loader's dataset's) when it is a non-empty sequence of names."""
    inner = data.dataset if isinstance(data, DataLoader) else data
    classes = getattr(inner, "classes", None)
    if isinstance(classes, Sequence) and not isinstance(classes, str) and 0 < len(classes) <= MAX_CLASSES:
        return [str(c) for c in classes]
    return None


def _check_label_range(labels: torch.Tensor, num_classes: int, source: str, from_classes: bool) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(bad.nonzero()[0])
        where = f"data.classes has {num_classes} names" if from_classes else f"num_classes is {num_classes}"
        raise UserDataError(f"{source}: item {i}: label {int(labels[i])} is outside 0..{num_classes - 1} ({where})")


def _read(data: Any, loader: _Loader, source: str, progress: bool) -> None:
    """Feed every image (and label) of ``data`` to ``loader``, item by item or batch by batch."""
    if isinstance(data, torch.Tensor):
        loader.add_element(data, batched=True)
    elif isinstance(data, TensorDataset):  # one batch of all items: same checks, vectorised
        loader.total = len(data)
        loader.add_element(tuple(data.tensors), batched=True)
    elif isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        loader.total = len(data)
        with _bar(len(data), source, "images", progress) as bar:
            for i in range(len(data)):
                loader.add_element(data[i], batched=False)
                bar.update(1)
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes | dict):
        if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset) \
                and hasattr(data.dataset, "__len__"):
            loader.total = len(data.dataset)  # type: ignore[arg-type]
        try:
            total = len(data) if isinstance(data, DataLoader | Sequence) else None
        except TypeError:  # a DataLoader over an IterableDataset without a length
            total = None
        with _bar(total, source, "batches", progress) as bar:
            for element in data:
                loader.add_element(element, batched=None)
                bar.update(1)
    else:
        raise UserDataError(f"{source}: expected an ImageSet, a torch Dataset, a DataLoader or an iterable of "
                            f"batches, got {type(data).__name__}")


def _bar(total: int | None, source: str, unit: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=f"loading {source}", unit=f" {unit}", disable=not progress,
                delay=PROGRESS_DELAY_S, leave=False)


class _Loader:
    """Collects validated float32 image chunks and int64 label chunks, counting items for messages."""

    def __init__(self, source: str, need_labels: bool, max_bytes: int) -> None:
        self.source, self.need_labels, self.max_bytes = source, need_labels, max_bytes
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.count = 0
        self.total: int | None = None  # items expected, when known: checked against max_bytes up front
        self.shape: tuple[int, ...] | None = None
        self.labelled: bool | None = None

    def fail(self, message: str, index: int | None = None) -> UserDataError:
        at = f"item {self.count if index is None else index}: "
        return UserDataError(f"{self.source}: {at}{message}")

    def add_element(self, element: Any, batched: bool | None) -> None:
        """One item (``batched=False``), one batch (True) or either, told apart by the image's rank."""
        x, y = self._unpack(element)
        if not isinstance(x, torch.Tensor):
            raise self.fail(f"the image is {_kind(x)}, not a torch tensor")
        if batched is None:
            batched = x.dim() == 4
        if batched and x.dim() != 4:
            raise self.fail(f"a batch of images has shape {tuple(x.shape)}, not N x C x H x W")
        if not batched and x.dim() != 3:
            raise self.fail(f"the image has shape {tuple(x.shape)}, not C x H x W")
        if not x.is_floating_point():
            raise self.fail(f"the image dtype is {x.dtype}, not floating point; give float images "
                            "(e.g. x.float() / 255, then normalised as your model expects)")
        self._check_shape(tuple(x.shape[1:] if batched else x.shape), len(x) if batched else 1)
        images = x.detach().to("cpu", torch.float32)
        images = images if batched else images[None]
        finite = torch.isfinite(images.flatten(1)).all(1)
        if not finite.all():
            raise self.fail("the image holds NaN or inf values", self.count + int((~finite).nonzero()[0]))
        labels = None if y is None else self._labels(y, len(images), batched)
        self._note_labels(labels is not None)
        self.images.append(images)
        if labels is not None:
            self.labels.append(labels)
        self.count += len(images)

    def _unpack(self, element: Any) -> tuple[Any, Any]:
        if isinstance(element, tuple | list):
            if len(element) == 1:
                return element[0], None
            if len(element) == 2:
                return element[0], element[1]
            raise self.fail(f"expected (image, label) or an image, got a {type(element).__name__} of "
                            f"{len(element)} values")
        return element, None

    def _check_shape(self, shape: tuple[int, ...], n: int) -> None:
        """One shape for all images, and no more than ``max_bytes`` of them (checked before converting)."""
        if self.shape is None:
            if min(shape, default=0) < 1:
                raise self.fail(f"the image shape {shape} is empty")
            self.shape = shape
            if (self.total or 0) * math.prod(shape) * 4 > self.max_bytes:
                raise UserDataError(self._too_big(self.total or 0))
        elif shape != self.shape:
            raise self.fail(f"the image shape {shape} differs from the first item's {self.shape}")
        if (self.count + n) * math.prod(shape) * 4 > self.max_bytes:
            raise UserDataError(self._too_big(self.count + n, at_least=True))

    def _too_big(self, n: int, at_least: bool = False) -> str:
        c, h, w = self.shape or (0, 0, 0)
        return (f"{self.source}: {'over ' if at_least else ''}{n:,} images of {c} x {h} x {w} float32 need "
                f"{_size(n * c * h * w * 4)}, more than the {_size(self.max_bytes)} cnncompress loads into "
                "memory; pass a subset (torch.utils.data.Subset) or a larger max_bytes to as_image_set")

    def _labels(self, y: Any, n: int, batched: bool) -> torch.Tensor:
        if isinstance(y, bool | np.bool_) or (isinstance(y, torch.Tensor) and y.dtype == torch.bool):
            raise self.fail(f"the label is a boolean ({brief(y)}), not an integer class index")
        if isinstance(y, int | np.integer):
            if batched:
                raise self.fail(f"a batch of {n} images has a single label {brief(y)}")
            return torch.tensor([int(y)], dtype=torch.int64)
        if isinstance(y, np.ndarray) or (batched and isinstance(y, list | tuple)):
            try:
                y = torch.as_tensor(np.asarray(y))
            except (TypeError, ValueError) as exc:
                raise self.fail(f"the labels {brief(y)} are not integers") from exc
        if not isinstance(y, torch.Tensor):
            raise self.fail(f"the label is {_kind(y)}, not an integer")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise self.fail(f"the label dtype is {y.dtype}; labels must be integer class indices (use .long())")
        y = y.detach().cpu().reshape(-1) if y.dim() <= 1 or y.numel() == n else y
        if y.dim() != 1 or len(y) != n:
            raise self.fail(f"{n} image(s) came with labels of shape {tuple(y.shape)}")
        return y.to(torch.int64)

    def _note_labels(self, has: bool) -> None:
        if self.labelled is None:
            self.labelled = has
            if self.need_labels and not has:
                raise self.fail("the data has no labels; training and evaluation need (image, label) pairs")
        elif self.labelled != has:
            raise self.fail("some items have labels and others do not")

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.count:
            raise UserDataError(f"{self.source}: the data is empty: it holds no images")
        images = torch.cat(self.images)  # a copy even of one chunk: the set never shares the caller's memory
        self.images.clear()
        if self.labelled:
            labels = torch.cat(self.labels)
            if int(labels.max()) >= MAX_CLASSES:
                raise self.fail(f"label {int(labels.max())} is not a plausible class index "
                                f"(at most {MAX_CLASSES - 1:,})", int(labels.argmax()))
        else:
            labels = torch.zeros(len(images), dtype=torch.int64)
        return images, labels


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:,.1f} {unit}"
    return f"{n:,} bytes"


def _kind(value: Any) -> str:
    return f"a {type(value).__name__} ({brief(value, 40)})"

