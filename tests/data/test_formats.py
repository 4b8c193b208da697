"""Decoders of the original formats, on synthetic files written here."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from cnncompress.data import DataCorruptError
from cnncompress.data.formats import CIFAR_RECORD, parse_cifar_bin, parse_cifar_pickle, read_idx


def _idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()


def test_idx_raw_and_gzip_read_the_same(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    (tmp_path / "x-idx3-ubyte").write_bytes(_idx_bytes(array))
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), array)


@pytest.mark.parametrize("data", [b"\0\0\x0d\x01\0\0\0\x01abcd", b"\0\0\x08\x01\0\0\0\x05ab", b"\x1f\x8bxx"])
def test_idx_rejects_bad_content(tmp_path, data):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(DataCorruptError, match="bad"):
        read_idx(tmp_path / "bad")


def test_cifar_bin_layout():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    data = b"".join(bytes([label]) + image.tobytes() for label, image in zip(labels, images, strict=True))
    got_images, got_labels = parse_cifar_bin(data, "x")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == [7, 0, 9]
    with pytest.raises(DataCorruptError, match="whole number"):
        parse_cifar_bin(data[:-1], "x")
    assert CIFAR_RECORD == 3073


def _batch(n: int = 4) -> tuple[dict, np.ndarray]:
    pixels = np.random.default_rng(1).integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": list(range(n)), b"data": pixels,
             b"filenames": [b"img_%d.png" % i for i in range(n)]}
    return batch, pixels


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_a_valid_batch(protocol):
    batch, pixels = _batch()
    images, labels = parse_cifar_pickle(pickle.dumps(batch, protocol=protocol), "batch")
    np.testing.assert_array_equal(images, pixels.reshape(-1, 3, 32, 32))
    assert labels.tolist() == [0, 1, 2, 3]


def test_restricted_unpickler_accepts_python3_str_keys():
    batch, _ = _batch()
    _, labels = parse_cifar_pickle(pickle.dumps({k.decode(): v for k, v in batch.items()}), "batch")
    assert labels.tolist() == [0, 1, 2, 3]


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_unpickler_rejects_code_execution(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(f"touch {marker}"), b"labels": []}, protocol=protocol)
    with pytest.raises(DataCorruptError, match=r"refusing global (posix|os)\.system"):
        parse_cifar_pickle(payload, "evil_batch")
    assert not marker.exists()


def test_restricted_unpickler_rejects_other_codecs_and_shapes():
    codec_trick = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(DataCorruptError, match="rot13"):
        parse_cifar_pickle(codec_trick, "x")
    with pytest.raises(DataCorruptError, match="dict"):
        parse_cifar_pickle(pickle.dumps([1, 2]), "x")
    with pytest.raises(DataCorruptError, match="uint8"):
        parse_cifar_pickle(pickle.dumps({b"data": np.zeros((2, 3072)), b"labels": [0, 1]}), "x")
    with pytest.raises(DataCorruptError, match="ints"):
        parse_cifar_pickle(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "x")
    with pytest.raises(DataCorruptError, match="truncated"):
        parse_cifar_pickle(b"\x80\x04garbage", "x")
