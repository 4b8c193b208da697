"""download=True, with urlopen served from local files (no network in tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from cnncompress.data import DataCorruptError, download, load_dataset, locate


def _serve(folder: Path, requested: list[str]):
    def fake_urlopen(url: str, timeout: float):
        requested.append(url)
        return open(folder / url.rsplit("/", 1)[1], "rb")  # noqa: SIM115 - closed by fetch's with
    return fake_urlopen


def test_fetch_writes_verified_file_atomically(tmp_path, monkeypatch):
    (tmp_path / "blob").write_bytes(b"x" * 3_000_000)
    monkeypatch.setattr(download, "urlopen", _serve(tmp_path, []))
    dest = tmp_path / "out" / "blob"
    download.fetch("https://example.org/blob", dest, hashlib.md5(b"x" * 3_000_000).hexdigest())
    assert dest.read_bytes() == b"x" * 3_000_000
    with pytest.raises(DataCorruptError, match="expected 0+"):
        download.fetch("https://example.org/blob", tmp_path / "bad" / "blob", "0" * 32)
    assert list((tmp_path / "bad").iterdir()) == []


def test_download_target_skips_read_only_dirs(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    candidates = [read_only, tmp_path / "missing", tmp_path / "cache"]
    assert download.download_target(candidates) == tmp_path / "cache"
    assert (tmp_path / "cache").is_dir() and not (tmp_path / "missing").exists()
    assert download.download_target([tmp_path / "cache"]) == tmp_path / "cache"


@pytest.mark.shared
def test_load_with_download_fetches_official_files(requires_shared, tmp_path, monkeypatch):
    monkeypatch.setenv(locate.CACHE_ENV, str(tmp_path / "cache"))
    requested: list[str] = []
    monkeypatch.setattr(download, "urlopen", _serve(requires_shared / "mnist", requested))
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", "test", data_dir=tmp_path / "data")
    fetched = load_dataset("mnist", "test", data_dir=tmp_path / "data", download=True)
    assert len(requested) == 4 and all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
                                       for u in requested)
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert torch.equal(fetched.images, load_dataset("mnist", "test", data_dir=requires_shared).images)
