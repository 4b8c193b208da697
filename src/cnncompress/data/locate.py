"""Where datasets are looked for, and MD5 verification that is paid for once per file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from cnncompress.data.errors import DataCorruptError, DataNotFoundError
from cnncompress.utils import atomic_write_text

DATA_ENV = "CNNCOMPRESS_DATA"
CACHE_ENV = "CNNCOMPRESS_CACHE"
_REPO_ROOT = Path(__file__).resolve().parents[3]  # src/cnncompress/data/ -> repo root


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Candidate data directories, highest priority first.

    An explicit ``data_dir`` (CLI ``--data-dir``) or ``$CNNCOMPRESS_DATA`` is the only candidate, so
    a user who names a directory never silently gets data from elsewhere. Otherwise: ``../shared/data``
    beside the repository, the same relative to the working directory, then ``~/.cache/cnncompress/data``.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    if chosen is not None:
        return [Path(chosen).expanduser().resolve()]
    candidates = [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                  Path.home() / ".cache" / "cnncompress" / "data"]
    return list(dict.fromkeys(p.resolve() for p in candidates))


def cache_dir() -> Path:
    """Directory for derived files (decoded arrays, verification stamps): ``$CNNCOMPRESS_CACHE``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cnncompress").expanduser()


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"


def _fingerprint(path: Path) -> dict[str, object]:
    """What a stamp trusts. ``touch``/``os.utime`` can put mtime back after an edit, but the edit
    still moves ctime (which no user can set) or, for a replacement file, the inode."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def verify_md5(path: Path, expected: str) -> None:
    """Raise DataCorruptError unless ``path`` has MD5 ``expected``.

    A successful check is stamped in the cache under (path, size, mtime, ctime, inode), so hashing a
    140 MB archive happens once per file version, not on every load.
    """
    stamp = _stamp_path(path)
    fingerprint = _fingerprint(path)
    try:
        if json.loads(stamp.read_text()) == {**fingerprint, "md5": expected}:
            return
    except (OSError, ValueError):
        pass
    actual = md5_file(path)
    if actual != expected:
        raise DataCorruptError(
            f"{path} is corrupt or not the expected file: MD5 {actual}, expected {expected}. "
            "Delete it and fetch it again (download=True / --download), or point --data-dir / "
            f"${DATA_ENV} to a good copy."
        )
    with contextlib.suppress(OSError):  # read-only cache: the check is just repeated next time
        atomic_write_text(stamp, json.dumps({**fingerprint, "md5": expected}))


def not_found(dataset: str, dirs: list[Path] | tuple[Path, ...], subdirs: tuple[str, ...],
              wanted: list[str], url: str) -> DataNotFoundError:
    """The error for a missing dataset: every directory searched, the files (with MD5s), and remedies."""
    searched = [str((d / sub).resolve()) for d in dirs for sub in subdirs]
    return DataNotFoundError(
        f"{dataset}: no usable file found.\n  Looked in:\n    " + "\n    ".join(searched)
        + "\n  Expected one of:\n    " + "\n    ".join(wanted)
        + f"\n  Get it from {url} (or pass download=True / --download), then place it in one of the "
        f"directories above, or point --data-dir / ${DATA_ENV} to where it is."
    )
