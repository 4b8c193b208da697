"""A dataset of the user's own, named like a user model: ``path/to/mydata.py:build`` or ``pkg.module:build``.

The contract: ``build(split)`` is called with ``split`` "train" or "test" and returns an
:class:`~cnncompress.data.ImageSet`, a map-style ``torch.utils.data.Dataset`` of ``(float image
C x H x W, int label)`` items, or a ``DataLoader`` of ``(x, y)`` batches; the result goes through
:func:`~cnncompress.data.as_image_set` like any data given to the Python API. Return
``as_image_set(ds, crop_pad=..., hflip=...)`` to have training augment it.

Naming a factory imports and runs its code, so only a name the *user* gives is ever resolved (the
command line's ``--dataset``). Checkpoints record the dataset name as plain text for display; a name
read from a file is never imported (see ``cli.common.load_split``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..utils import import_callable
from .adapt import as_image_set
from .errors import UserDataError
from .imageset import ImageSet

DataFactory = Callable[[str], Any]
SPLITS = ("train", "test")


def is_factory_ref(name: str) -> bool:
    """Whether ``name`` names a factory (``file.py:fn``, ``pkg.module:fn``) rather than a built-in dataset."""
    return isinstance(name, str) and ":" in name


def resolve_data_factory(ref: str) -> DataFactory:
    """The callable ``ref`` names. This imports code: pass only a name the user gave."""
    return import_callable(ref, "dataset factory")


def load_user_dataset(ref: str, split: str, *, factory: DataFactory | None = None,
                      progress: bool = True) -> ImageSet:
    """``build(split)`` of the factory ``ref`` names (or ``factory`` itself), loaded and validated."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    build = factory or resolve_data_factory(ref)
    try:
        data = build(split)
    except Exception as exc:  # the user's code: report it on one line, with where it came from
        raise UserDataError(f"dataset factory {ref!r} failed for split {split!r}: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}") from exc
    return as_image_set(data, need_labels=True, source=f"{ref} ({split})", name=ref, progress=progress)
