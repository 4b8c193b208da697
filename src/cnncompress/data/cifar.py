"""CIFAR-10 from any official layout, with archives decoded once into a .npy cache."""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from cnncompress.data.catalog import (
    CIFAR_ARCHIVES,
    CIFAR_BIN_DIR,
    CIFAR_BIN_MEMBERS,
    CIFAR_PY_DIR,
    CIFAR_PY_MEMBERS,
    CIFAR_URL,
    SUBDIRS,
)
from cnncompress.data.errors import DataCorruptError
from cnncompress.data.formats import parse_cifar_bin, parse_cifar_pickle
from cnncompress.data.locate import cache_dir, md5_bytes, not_found, verify_md5
from cnncompress.utils import atomic_path, brief

Arrays = tuple[np.ndarray, np.ndarray]
Parser = Callable[[bytes, str], Arrays]
_FORMATS: dict[str, tuple[str, dict[str, dict[str, str]], Parser]] = {
    "bin": (CIFAR_BIN_DIR, CIFAR_BIN_MEMBERS, parse_cifar_bin),
    "py": (CIFAR_PY_DIR, CIFAR_PY_MEMBERS, parse_cifar_pickle),
}
#: decompressed bytes an archive may hold; each official one holds about 185 MB
MAX_ARCHIVE_BYTES = 256 * 2**20
_DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"\xfd7zXZ\x00": lzma.open, b"BZh": bz2.open}


def load_cifar10(split: str, dirs: tuple[Path, ...]) -> Arrays:
    """(images N x 3 x 32 x 32 uint8, labels int64) of ``split`` from the first source found.

    Per directory: extracted ``cifar-10-batches-bin/`` or ``-py/`` first (fast to read), then the
    archives, which are decoded once and cached.
    """
    for base in (d / sub for d in dirs for sub in SUBDIRS["cifar10"]):
        for folder, members, parser in _FORMATS.values():
            if all((base / folder / name).is_file() for name in members[split]):
                return _read_extracted(base / folder, members[split], parser)
        for name, (md5, fmt) in CIFAR_ARCHIVES.items():
            if (base / name).is_file():
                return _load_archive(base / name, md5, fmt, split)
    raise not_found("cifar10", dirs, SUBDIRS["cifar10"], _wanted(split), CIFAR_URL)


def _wanted(split: str) -> list[str]:
    wanted = [f"{folder}/ holding " + ", ".join(f"{name} (MD5 {md5})" for name, md5 in members[split].items())
              for folder, members, _ in _FORMATS.values()]
    return wanted + [f"{name} (MD5 {md5})" for name, (md5, _) in CIFAR_ARCHIVES.items()]


def _read_extracted(folder: Path, members: dict[str, str], parser: Parser) -> Arrays:
    parts = []
    for name, md5 in members.items():
        verify_md5(folder / name, md5)
        parts.append(parser((folder / name).read_bytes(), str(folder / name)))
    return _concat(parts)


def _concat(parts: list[Arrays]) -> Arrays:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_archive(path: Path, md5: str, fmt: str, split: str) -> Arrays:
    """Verify the archive, then serve ``split`` from the decoded cache, decoding on a miss."""
    verify_md5(path, md5)
    folder = cache_dir() / "arrays" / f"cifar10-{md5}"
    cached = _read_cache(folder, split)
    if cached is not None:
        return cached
    decoded = decode_archive(path, fmt)
    for name, arrays in decoded.items():
        _write_cache(folder, name, arrays)
    return decoded[split]


def decode_archive(path: Path, fmt: str) -> dict[str, Arrays]:
    """Both splits from one streaming pass over a tar archive; every member is MD5-checked.

    Members are read into memory, never extracted. Each member's header is checked before its data
    is read: a link, device or path leaving the archive, or a size beyond what an official archive
    holds, refuses the whole archive at once, and no more than ``MAX_ARCHIVE_BYTES`` are ever
    decompressed, so a hostile archive costs little to refuse.
    """
    folder, members, _ = _FORMATS[fmt]
    try:
        with _Decompressed(path) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            found = _read_members(path, archive, stream, fmt)
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataCorruptError(f"{path}: not a readable tar archive ({exc})") from None
    missing = sorted({name for split in members.values() for name in split} - set(found))
    if missing:
        raise DataCorruptError(f"{path}: archive lacks {folder}/{', '.join(missing)}")
    return {split: _concat([found[name] for name in names]) for split, names in members.items()}


def _read_members(path: Path, archive: tarfile.TarFile, stream: _Decompressed, fmt: str) -> dict[str, Arrays]:
    """The wanted members, parsed; stops as soon as all are in, so whatever follows is never decompressed."""
    folder, members, parser = _FORMATS[fmt]
    wanted = {name: md5 for split in members.values() for name, md5 in split.items()}
    found: dict[str, Arrays] = {}
    for member in archive:
        if problem := _member_problem(member, stream.left):
            raise DataCorruptError(f"{path}: member {brief(member.name)} {problem}; archive refused unread")
        member_path = PurePosixPath(member.name)
        if not member.isfile() or member_path.parent.name != folder or member_path.name not in wanted:
            continue
        data = archive.extractfile(member).read()
        source, expected = f"{path}:{member.name}", wanted[member_path.name]
        if md5_bytes(data) != expected:
            raise DataCorruptError(f"{source}: MD5 {md5_bytes(data)}, expected {expected}")
        found[member_path.name] = parser(data, source)
        if len(found) == len(wanted):
            break
    return found


class _Decompressed:
    """An archive's decompressed bytes, refused past ``MAX_ARCHIVE_BYTES`` (a decompression bomb)."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            magic = f.read(6)
        opener = next((o for prefix, o in _DECOMPRESSORS.items() if magic.startswith(prefix)), open)
        self.stream: BinaryIO = opener(path, "rb")
        self.path, self.left = path, MAX_ARCHIVE_BYTES

    def __enter__(self) -> _Decompressed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stream.close()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise DataCorruptError(f"{self.path}: more than {MAX_ARCHIVE_BYTES} bytes decompressed; "
                                   "not a CIFAR-10 archive")
        return data


def _member_problem(member: tarfile.TarInfo, left: int) -> str | None:
    """Why no official CIFAR-10 archive has ``member`` (judged on its header alone), or None."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        return "has a path leaving the archive"
    if not (member.isfile() or member.isdir()):
        return "is a link or special file"
    if member.size > left:
        return f"claims {member.size} bytes, more than a CIFAR-10 archive holds"
    return None


def _cache_files(folder: Path, split: str) -> tuple[Path, Path]:
    return folder / f"{split}_images.npy", folder / f"{split}_labels.npy"


def _read_cache(folder: Path, split: str) -> Arrays | None:
    images_file, labels_file = _cache_files(folder, split)
    try:
        images, labels = np.load(images_file), np.load(labels_file)
    except (OSError, ValueError):
        return None
    ok = images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32) and labels.dtype == np.int64 \
        and labels.shape == images.shape[:1]
    return (images, labels) if ok else None


def _write_cache(folder: Path, split: str, arrays: Arrays) -> None:
    try:
        for file, array in zip(_cache_files(folder, split), arrays, strict=True):
            with atomic_path(file) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
    except OSError:
        pass  # unwritable cache: correct but slow, the archive is decoded again next time
