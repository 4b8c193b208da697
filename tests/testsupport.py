"""Constants the tests share (imported by name; pytest fixtures live in conftest.py)."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from cnncompress.models import ModelSpec

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the repository
SHARED_DATA = SHARED / "data"
SHARED_PRETRAINED = SHARED / "pretrained"
SHARED_PRESENT = SHARED_DATA.is_dir() and SHARED_PRETRAINED.is_dir()
SHARED_REASON = "needs ../shared/data and ../shared/pretrained (only present in CI and dev sessions)"
DIGITS8 = ModelSpec("digits_cnn", {"width": 8})  # the small model the end-to-end tests compress


def reseal_cnnc(body: bytes) -> bytes:
    """``body`` (a .cnnc file without its CRC) with its length field and CRC recomputed."""
    body = body[:5] + struct.pack("<I", len(body) + 4) + body[9:]
    return body + struct.pack("<I", zlib.crc32(body))


def with_packed_header(data: bytes, packed: bytes) -> bytes:
    """``data`` with its compressed header replaced by ``packed`` (any bytes), sealed again."""
    header_len = struct.unpack_from("<I", data, 9)[0]
    return reseal_cnnc(data[:9] + struct.pack("<I", len(packed)) + packed + data[13 + header_len:-4])


def rewrite_cnnc_header(data: bytes, edit: Callable[[dict], object]) -> bytes:
    """``data`` with its JSON header changed in place by ``edit``, length and CRC recomputed (a valid forgery)."""
    header_len = struct.unpack_from("<I", data, 9)[0]
    header = json.loads(zlib.decompress(data[13:13 + header_len]))
    edit(header)
    return with_packed_header(data, zlib.compress(json.dumps(header).encode()))


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """YAML whose anchors ``l0..l{levels-1}`` each hold ``width`` aliases of the one before: about a
    kilobyte of text that a naive loader expands to ``width ** levels`` values."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"
