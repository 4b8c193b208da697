"""Decoders for the original on-disk formats: idx (MNIST family) and both CIFAR-10 versions.

Decoders take bytes and check structure; trust (MD5) is decided by the caller.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2 renamed numpy.core to numpy._core
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

from cnncompress.data.errors import DataCorruptError

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
CIFAR_RECORD = 1 + 3 * 32 * 32


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte idx file, gzip-compressed or raw (detected by content, not by name)."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataCorruptError(f"{path}: broken gzip stream ({err})") from err
    return parse_idx(data, str(path))


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parse idx bytes: 2 zero bytes, type code, number of dims, big-endian uint32 dims, data."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UBYTE:
        raise DataCorruptError(f"{source}: not an unsigned-byte idx file (header {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    if len(data) != header + int(np.prod(dims)):
        raise DataCorruptError(f"{source}: idx header says {dims} but holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def parse_cifar_bin(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Binary version: records of 1 label byte then R, G, B planes of 32x32 -> (N,3,32,32), (N,)."""
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise DataCorruptError(f"{source}: {len(data)} bytes is not a whole number of CIFAR records")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 protocols 0-2 use to store bytes."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can build plain containers and numpy arrays, and nothing else.

    A pickle can name any importable callable (``os.system``...), so a data file must never reach
    the stock unpickler. Containers and scalars need no globals at all; ndarrays need only the
    reconstruction helpers listed here (numpy 1.x spells the module ``numpy.core``), plus a
    latin-1-only ``_codecs.encode`` because Python 3 protocols 0-2 build bytes with it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: CIFAR pickles may hold only plain containers "
                "and numpy arrays"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("refusing persistent id: not a plain CIFAR pickle")


def restricted_loads(data: bytes, source: str) -> object:
    """Unpickle ``data`` with RestrictedUnpickler; ``encoding='bytes'`` keeps Python 2 keys as bytes."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataCorruptError(f"{source}: {err}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataCorruptError(f"{source}: not a readable pickle ({err})") from err


def parse_cifar_pickle(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Python version batch: dict with ``data`` (N x 3072 uint8, planes R,G,B) and ``labels``."""
    batch = restricted_loads(data, source)
    if not isinstance(batch, dict):
        raise DataCorruptError(f"{source}: expected a dict batch, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    pixels, labels = batch.get("data"), batch.get("labels")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
            or pixels.shape[1] != CIFAR_RECORD - 1:
        raise DataCorruptError(f"{source}: 'data' must be a uint8 array of shape (N, 3072)")
    if not isinstance(labels, list | tuple) or len(labels) != len(pixels) \
            or not all(type(v) is int for v in labels):
        raise DataCorruptError(f"{source}: 'labels' must be {len(pixels)} ints")
    return pixels.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)
