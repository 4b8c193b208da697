"""Real image datasets (sklearn digits, MNIST, Fashion-MNIST, CIFAR-10) as verified uint8 tensors,
and a user's own data (a torch Dataset or DataLoader of float tensors) through :func:`as_image_set`.

Files are found in ``data_dir`` / ``$CNNCOMPRESS_DATA`` / ``../shared/data`` / ``~/.cache``, checked
against the published MD5s, and decoded from their original formats.
"""

from cnncompress.data.adapt import as_image_set
from cnncompress.data.catalog import DATASETS, DatasetInfo
from cnncompress.data.errors import DataCorruptError, DataNotFoundError, UserDataError
from cnncompress.data.factory import is_factory_ref, load_user_dataset
from cnncompress.data.imageset import ImageSet
from cnncompress.data.load import load_dataset
from cnncompress.data.locate import resolve_data_dir

__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataNotFoundError",
    "DatasetInfo",
    "ImageSet",
    "UserDataError",
    "as_image_set",
    "is_factory_ref",
    "load_dataset",
    "load_user_dataset",
    "resolve_data_dir",
]
