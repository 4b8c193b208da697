"""Real image datasets (sklearn digits, MNIST, Fashion-MNIST, CIFAR-10) as verified uint8 tensors.

Files are found in ``data_dir`` / ``$CNNCOMPRESS_DATA`` / ``../shared/data`` / ``~/.cache``, checked
against the published MD5s, and decoded from their original formats.
"""

from cnncompress.data.catalog import DATASETS, DatasetInfo
from cnncompress.data.errors import DataCorruptError, DataNotFoundError
from cnncompress.data.imageset import ImageSet
from cnncompress.data.load import load_dataset
from cnncompress.data.locate import resolve_data_dir

__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataNotFoundError",
    "DatasetInfo",
    "ImageSet",
    "load_dataset",
    "resolve_data_dir",
]
