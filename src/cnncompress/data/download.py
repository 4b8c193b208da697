"""Opt-in download of the official files (``download=True`` / ``--download``), MD5-checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.request import urlopen

from cnncompress.data.catalog import CIFAR_ARCHIVES, CIFAR_URL, IDX_FILES, IDX_URLS, SUBDIRS
from cnncompress.data.errors import DataCorruptError
from cnncompress.utils import atomic_path


def download_target(dirs: list[Path] | tuple[Path, ...]) -> Path:
    """First existing writable candidate, else the last one (the per-user cache), created.

    Creating the others would litter the filesystem (e.g. ../shared/data beside a fresh clone).
    A directory without write bits counts as read-only even for root, who could write anyway.
    """
    for d in dirs:
        if d.is_dir() and os.access(d, os.W_OK) and d.stat().st_mode & 0o222:
            return d
    dirs[-1].mkdir(parents=True, exist_ok=True)
    return dirs[-1]


def fetch(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` atomically; a checksum mismatch leaves nothing behind."""
    digest = hashlib.md5(usedforsecurity=False)
    with atomic_path(dest) as tmp, urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataCorruptError(f"download of {url} has MD5 {digest.hexdigest()}, expected {md5}")
    return dest


def download_dataset(name: str, target: Path) -> list[Path]:
    """Fetch the files of dataset ``name`` that ``target`` lacks; return the paths fetched."""
    if name == "cifar10":
        file = CIFAR_URL.rsplit("/", 1)[1]
        jobs = [(CIFAR_URL, target / SUBDIRS[name][0] / file, CIFAR_ARCHIVES[file][0])]
    else:
        files = [(f"{spec.stem}.gz", spec.gz_md5) for pair in IDX_FILES[name].values() for spec in pair]
        jobs = [(IDX_URLS[name] + file, target / SUBDIRS[name][0] / file, md5) for file, md5 in files]
    return [fetch(url, dest, md5) for url, dest, md5 in jobs if not dest.exists()]
