"""load_dataset on the real files in ../shared/data, and on damaged or missing copies of them."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cnncompress.data import (
    DATASETS,
    DataCorruptError,
    DataNotFoundError,
    catalog,
    cifar,
    load_dataset,
    locate,
    resolve_data_dir,
)
from cnncompress.data.formats import CIFAR_RECORD

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Stamps and arrays of damaged or synthetic copies go to tmp, never into the user's cache.

    Tests of the real files keep the user's cache, so CIFAR-10 is decoded once per machine.
    """
    monkeypatch.setenv(locate.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(locate.DATA_ENV, raising=False)


@pytest.fixture(scope="module")
def cifar_test(requires_shared):
    """Loaded with the real cache (warm after the first run on a machine)."""
    return load_dataset("cifar10", "test", data_dir=requires_shared)


@pytest.mark.shared
@pytest.mark.parametrize(("name", "split", "counts"), [
    ("mnist", "train", MNIST_TRAIN_COUNTS), ("mnist", "test", MNIST_TEST_COUNTS),
    ("fashion-mnist", "train", [6000] * 10), ("fashion-mnist", "test", [1000] * 10),
])
def test_mnist_family_matches_readme(requires_shared, name, split, counts):
    data = load_dataset(name, split, data_dir=requires_shared)
    assert data.images.shape == (sum(counts), 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64 and torch.bincount(data.labels).tolist() == counts
    if split == "train":
        pixels = data.images.double() / 255
        assert pixels.mean().item() == pytest.approx(data.info.mean[0], abs=1e-6)
        assert pixels.std().item() == pytest.approx(data.info.std[0], abs=1e-6)


@pytest.mark.shared
def test_cifar10_matches_readme(requires_shared, cifar_test):
    train = load_dataset("cifar-10", "train", data_dir=requires_shared)
    assert train.info is DATASETS["cifar10"] and train.images.shape == (50000, 3, 32, 32)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert cifar_test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(cifar_test.labels).tolist() == [1000] * 10
    channel_mean = (cifar_test.images.double() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(channel_mean, torch.tensor([0.4942, 0.4851, 0.4504], dtype=torch.double), atol=1e-3)


@pytest.mark.shared
def test_cifar_bin_directory_rebuilt_from_arrays_has_official_md5(tmp_path, cifar_test, private_cache):
    folder = tmp_path / "cifar-10" / catalog.CIFAR_BIN_DIR
    folder.mkdir(parents=True)
    records = np.concatenate([cifar_test.labels.numpy().astype(np.uint8)[:, None],
                              cifar_test.images.numpy().reshape(-1, CIFAR_RECORD - 1)], axis=1)
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    assert locate.md5_file(folder / "test_batch.bin") == catalog.CIFAR_BIN_MEMBERS["test"]["test_batch.bin"]
    again = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert torch.equal(again.images, cifar_test.images) and torch.equal(again.labels, cifar_test.labels)


def _copy_mnist_test(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for file in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(src / "mnist" / file, dest / file)
    return dest


@pytest.mark.shared
def test_raw_idx_reads_like_gzip(requires_shared, tmp_path, private_cache):
    folder = _copy_mnist_test(requires_shared, tmp_path / "mnist")
    labels_gz = folder / "t10k-labels-idx1-ubyte.gz"
    (folder / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(labels_gz.read_bytes()))
    labels_gz.unlink()
    raw = load_dataset("mnist", "test", data_dir=tmp_path)
    assert torch.equal(raw.labels, load_dataset("mnist", "test", data_dir=requires_shared).labels)


@pytest.mark.shared
def test_flipped_byte_is_reported_as_corrupt(requires_shared, tmp_path, private_cache):
    folder = _copy_mnist_test(requires_shared, tmp_path)  # files directly in the data dir
    target = folder / "t10k-images-idx3-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataCorruptError, match="t10k-images-idx3-ubyte.gz") as err:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert "9fb629c4189551a2d022fa330f9573f3" in str(err.value)


def test_missing_dataset_lists_every_place_and_remedy(tmp_path, monkeypatch, private_cache):
    monkeypatch.setattr(locate, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dirs = resolve_data_dir()
    assert dirs == [tmp_path / "shared" / "data", tmp_path.parent / "shared" / "data",
                    tmp_path / "home" / ".cache" / "cnncompress" / "data"]
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", "test")
    message = str(err.value)
    for d in dirs:
        assert str(d / "fashion-mnist") in message and f"{d}\n" in message
    for needed in ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "fashion-mnist.s3",
                   "--download", "--data-dir", "CNNCOMPRESS_DATA"):
        assert needed in message
    with pytest.raises(DataNotFoundError, match="cifar-10-binary.tar.gz") as err:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    for md5 in ("c32a1d4ab5d03f1284b67883e8d87530", "5dd7e06a14cb22eb9f671a540d1b7c25"):
        assert md5 in str(err.value)


def test_explicit_dir_and_env_override_defaults(tmp_path, monkeypatch, private_cache):
    monkeypatch.setenv(locate.DATA_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == [tmp_path / "env"]
    assert resolve_data_dir(tmp_path / "arg") == [tmp_path / "arg"]
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", "val")


def test_verification_is_stamped_and_redone_when_the_file_changes(tmp_path, monkeypatch, private_cache):
    """Even after a same-size edit whose mtime was put back: the stamp also holds ctime and inode."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    good = hashlib.md5(b"abc").hexdigest()
    locate.verify_md5(path, good)
    monkeypatch.setattr(locate, "md5_file", lambda _: pytest.fail("hashed despite a valid stamp"))
    locate.verify_md5(path, good)
    monkeypatch.undo()
    monkeypatch.setenv(locate.CACHE_ENV, str(tmp_path / "cache"))
    before = path.stat()
    time.sleep(0.05)  # the edit lands in a later tick of the file system's clock than the check
    path.write_bytes(b"abd")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(DataCorruptError, match="f.bin"):
        locate.verify_md5(path, good)


def _bin_member(labels: list[int]) -> bytes:
    pixels = np.random.default_rng(len(labels)).integers(0, 256, (len(labels), CIFAR_RECORD - 1), np.uint8)
    return np.concatenate([np.array(labels, np.uint8)[:, None], pixels], axis=1).tobytes()


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data))
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_cifar_archive_is_decoded_once_then_served_from_cache(tmp_path, monkeypatch, private_cache):
    """A small synthetic binary-version archive, with the checksum tables pointed at it."""
    members = {name: _bin_member([i] * (i + 2)) for i, name in
               enumerate([*catalog.CIFAR_BIN_MEMBERS["train"], *catalog.CIFAR_BIN_MEMBERS["test"]])}
    archive = _tar_gz(tmp_path / "cifar-10" / "cifar-10-binary.tar.gz",
                      [(_member(f"{catalog.CIFAR_BIN_DIR}/{name}"), data) for name, data in members.items()])
    for split in catalog.CIFAR_BIN_MEMBERS.values():
        for name in split:
            monkeypatch.setitem(split, name, hashlib.md5(members[name]).hexdigest())
    monkeypatch.setitem(catalog.CIFAR_ARCHIVES, archive.name, (locate.md5_file(archive), "bin"))
    images, labels = cifar.load_cifar10("train", (tmp_path,))
    assert labels.tolist() == [0] * 2 + [1] * 3 + [2] * 4 + [3] * 5 + [4] * 6
    assert images.shape == (20, 3, 32, 32)
    monkeypatch.setattr(cifar, "decode_archive", lambda *_: pytest.fail("decoded twice"))
    test_images, test_labels = cifar.load_cifar10("test", (tmp_path,))
    assert test_labels.tolist() == [5] * 7
    np.testing.assert_array_equal(test_images.reshape(7, -1), np.frombuffer(
        members["test_batch.bin"], np.uint8).reshape(7, -1)[:, 1:])


BATCH = f"{catalog.CIFAR_BIN_DIR}/data_batch_1.bin"


@pytest.mark.parametrize(("hostile", "problem"), [
    (_member(f"../../{BATCH}"), "has a path leaving the archive"),
    (_member(f"{catalog.CIFAR_BIN_DIR}/../{BATCH}"), "has a path leaving the archive"),
    (_member(f"/tmp/{BATCH}"), "has a path leaving the archive"),
    (_member(BATCH, tarfile.SYMTYPE, "/etc/passwd"), "is a link or special file"),
    (_member(BATCH, tarfile.LNKTYPE, "/etc/passwd"), "is a link or special file"),
    (_member(BATCH, tarfile.FIFOTYPE), "is a link or special file"),
])
def test_cifar_archive_with_a_hostile_member_is_refused_before_its_data_is_read(tmp_path, hostile, problem):
    """The hostile member comes first and claims 100 MB that the archive does not hold: reading its
    data (or anything after it) would end in another error, so the refusal is the header check's."""
    hostile.size = 100_000_000
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(gzip.compress(hostile.tobuf(tarfile.GNU_FORMAT)))
    with pytest.raises(DataCorruptError) as err:
        cifar.decode_archive(archive, "bin")
    assert f"{problem}; archive refused unread" in str(err.value) and str(archive) in str(err.value)


def test_cifar_archive_size_claims_and_decompressed_bytes_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_BYTES", 4096)
    claim = tarfile.TarInfo(BATCH)
    claim.size = 5000
    archive = tmp_path / "claim.tar.gz"
    archive.write_bytes(gzip.compress(claim.tobuf(tarfile.GNU_FORMAT)))  # the data is never read
    with pytest.raises(DataCorruptError, match="claims 5000 bytes, more than a CIFAR-10 archive holds"):
        cifar.decode_archive(archive, "bin")
    bomb = _tar_gz(tmp_path / "bomb.tar.gz", [(_member("x" * 8000), b"")])  # tarfile reads a long name itself
    with pytest.raises(DataCorruptError, match="more than 4096 bytes decompressed"):
        cifar.decode_archive(bomb, "bin")


def test_cifar_archive_that_is_not_a_tar_is_refused_in_one_line(tmp_path):
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(gzip.compress(b"not a tar archive" * 100)[:-20])
    with pytest.raises(DataCorruptError, match="not a readable tar archive"):
        cifar.decode_archive(archive, "bin")


def test_cifar_python_batches_directory(tmp_path, monkeypatch, private_cache):
    import pickle

    folder = tmp_path / catalog.CIFAR_PY_DIR
    folder.mkdir()
    for i, name in enumerate([*catalog.CIFAR_PY_MEMBERS["train"], *catalog.CIFAR_PY_MEMBERS["test"]]):
        batch = {b"labels": [i, i], b"data": np.full((2, 3072), i, np.uint8), b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        split = "test" if name == "test_batch" else "train"
        monkeypatch.setitem(catalog.CIFAR_PY_MEMBERS[split], name, locate.md5_file(folder / name))
    images, labels = cifar.load_cifar10("train", (tmp_path,))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and images[9].max() == 4
    (folder / "test_batch").write_bytes(b"tampered")
    with pytest.raises(DataCorruptError, match="test_batch"):
        cifar.load_cifar10("test", (tmp_path,))


def test_digits_rejects_non_finite_pixels(monkeypatch):
    import sklearn.datasets

    real = sklearn.datasets.load_digits

    def poisoned():
        bunch = real()
        bunch.data[3, 5] = np.nan
        return bunch

    monkeypatch.setattr(sklearn.datasets, "load_digits", poisoned)
    from cnncompress.data import load as load_module

    with pytest.raises(DataCorruptError, match="finite"):
        load_module._digits("train")
