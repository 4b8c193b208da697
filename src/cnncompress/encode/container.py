"""The ``.cnnc`` container: a model's architecture and entropy-coded weights in one checked file.

Layout (all integers little-endian; full description in docs/cnnc-format.md)::

    "CNNC" | u8 version | u32 file length | u32 header length | zlib(JSON header) | sections | u32 CRC32

Tensors with at most ``MAX_CODEBOOK`` distinct non-zero values (shared weights) are stored sparse:
a codebook, Huffman-coded codebook indices and Huffman-coded relative gaps. Every other tensor is
stored raw in the narrowest dtype that holds it exactly. Decoding is bit-exact.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import ModelSpec, default_input_shape
from ..models.checkpoint import CheckpointError, adopt_shapes, load_weights
from ..utils import atomic_write_bytes
from . import huffman
from .huffman import HuffmanError
from .sparse import from_gaps, to_gaps

MAGIC = b"CNNC"
VERSION = 1
MAX_CODEBOOK = 256
MAX_GAP_WIDTH = 12
_PREFIX = struct.Struct("<4sBII")  # magic, version, file length, header length
_TRAILER = struct.Struct("<I")  # CRC32 of everything before it
_INT_DTYPES = ("int8", "int16", "int32", "int64")


class CnncFormatError(ValueError):
    """A ``.cnnc`` file that is not one, is of another version, truncated or corrupted."""


@dataclass
class TensorStats:
    """How one state_dict entry was stored."""

    name: str
    numel: int
    nonzero: int
    coding: str  # "shared" or "raw"
    codebook: int  # distinct non-zero values (0 for raw)
    bits: int  # ceil(log2(codebook)) for shared, storage bits per value for raw
    gap_width: int
    bytes: int  # bytes of this tensor's section


@dataclass
class EncodeReport:
    """What was written: sizes measured on the bytes of the file."""

    path: str
    file_bytes: int
    header_bytes: int
    params: int
    dense_bytes: int
    ratio: float
    tensors: list[TensorStats]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dense_param_count(model: nn.Module) -> int:
    """Parameters of ``model``: the ``params x 4 bytes`` denominator of the compression ratio."""
    return sum(p.numel() for p in model.parameters())


def bit_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state_dicts hold the same keys with bit-identical tensors (so -0.0 != 0.0, NaN == NaN)."""
    if a.keys() != b.keys():
        return False
    return all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(_bits(x), _bits(y)) for x, y in
               ((a[k].detach().cpu(), b[k].detach().cpu()) for k in a))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.is_floating_point() else flat


# ----------------------------------------------------------------------------------------- encode
def encode_model(model: nn.Module, spec: ModelSpec, meta: dict[str, Any] | None = None,
                 input_shape: tuple[int, ...] | None = None) -> tuple[bytes, list[TensorStats]]:
    """Serialise ``model`` (built by ``spec``) to ``.cnnc`` bytes; returns the bytes and per-tensor stats.

    ``input_shape`` (C, H, W; default: a zoo model's usual input when built without keyword arguments)
    lets the decoder check that the rebuilt model runs.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _check_layout(spec, state)
    shape = input_shape or (None if spec.kwargs else default_input_shape(spec.factory))
    return encode_state(state, spec, dense_param_count(model), meta, shape)


def encode_state(state: dict[str, torch.Tensor], spec: ModelSpec, params: int, meta: dict[str, Any] | None = None,
                 input_shape: tuple[int, ...] | None = None) -> tuple[bytes, list[TensorStats]]:
    """Serialise any state_dict with its spec and ``meta`` (no layout check: callers rebuild it themselves)."""
    entries, sections, stats = [], [], []
    for name, tensor in state.items():
        entry, section = _encode_tensor(name, tensor)
        entries.append(entry)
        sections.append(section)
        stats.append(_stats(entry, tensor, len(section)))
    header = {"spec": spec.to_dict(), "params": params, "meta": meta or {},
              "input_shape": list(input_shape) if input_shape else None, "tensors": entries}
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode("utf-8"), 9)
    body = b"".join(sections)
    length = _PREFIX.size + len(header_bytes) + len(body) + _TRAILER.size
    data = _PREFIX.pack(MAGIC, VERSION, length, len(header_bytes)) + header_bytes + body
    return data + _TRAILER.pack(zlib.crc32(data)), stats


def write_cnnc(path: str | os.PathLike, model: nn.Module, spec: ModelSpec, meta: dict[str, Any] | None = None,
               input_shape: tuple[int, ...] | None = None) -> EncodeReport:
    """Encode ``model`` to ``path`` atomically; the ratio is measured on the written file."""
    data, stats = encode_model(model, spec, meta, input_shape)
    atomic_write_bytes(path, data)
    size = Path(path).stat().st_size
    params = dense_param_count(model)
    header_len = _PREFIX.unpack_from(data)[3]
    return EncodeReport(path=str(path), file_bytes=size, header_bytes=_PREFIX.size + header_len + _TRAILER.size,
                        params=params, dense_bytes=4 * params, ratio=4 * params / size, tensors=stats)


def _check_layout(spec: ModelSpec, state: dict[str, torch.Tensor]) -> None:
    """Refuse a state_dict the spec cannot rebuild (e.g. masks not yet made permanent)."""
    model = spec.build()
    adopt_shapes(model, state)
    try:
        load_weights(model, state, source="model to encode")
    except CheckpointError as exc:
        raise ValueError(f"{exc} (make pruning masks / weight sharing permanent before encoding)") from exc


def _encode_tensor(name: str, tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} holds non-finite values; refusing to encode it")
        values = tensor.reshape(-1).float().numpy()
        nonzero = values[values != 0]
        if tensor.dtype == torch.float32 and tensor.dim() >= 2 and len(np.unique(nonzero)) <= MAX_CODEBOOK:
            return _encode_shared(entry, values)
    return _encode_raw(entry, tensor)


def _narrow_float(values: np.ndarray) -> np.ndarray:
    """float16 when it represents every value exactly, else float32."""
    half = values.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), values) else values.astype(np.float32)


def _encode_raw(entry: dict[str, Any], tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    array = tensor.reshape(-1).numpy() if tensor.dtype != torch.bfloat16 else tensor.float().reshape(-1).numpy()
    if tensor.is_floating_point() and tensor.dtype in (torch.float16, torch.float32, torch.bfloat16):
        stored = _narrow_float(array.astype(np.float32))
    elif tensor.dtype == torch.bool:
        stored = array.astype(np.uint8)
    elif array.dtype.kind == "i":
        stored = array.astype(_narrow_int(array))
    else:
        stored = array
    entry.update(coding="raw", stored=stored.dtype.name)
    return entry, stored.astype(stored.dtype.newbyteorder("<")).tobytes()


def _narrow_int(array: np.ndarray) -> str:
    for name in _INT_DTYPES:
        info = np.iinfo(name)
        if len(array) == 0 or (array.min() >= info.min and array.max() <= info.max):
            return name
    return "int64"


def _encode_shared(entry: dict[str, Any], values: np.ndarray) -> tuple[dict[str, Any], bytes]:
    positions = np.flatnonzero(values)
    codebook = _narrow_float(np.unique(values[positions]))
    symbols = np.searchsorted(codebook.astype(np.float32), values[positions])
    filler = len(codebook)
    width = _best_gap_width(positions, symbols, filler)
    gaps, syms = to_gaps(positions, symbols, width, filler)
    sym_lengths = huffman.code_lengths(np.bincount(syms, minlength=filler + 1))
    gap_lengths = huffman.code_lengths(np.bincount(gaps, minlength=2**width))
    sym_bytes, sym_bits = huffman.encode(syms, sym_lengths)
    gap_bytes, gap_bits = huffman.encode(gaps, gap_lengths)
    entry.update(coding="shared", codebook=len(codebook), codebook_dtype=codebook.dtype.name, gap_width=width,
                 entries=len(gaps), index_bits=sym_bits, gap_bits=gap_bits)
    section = (codebook.astype(codebook.dtype.newbyteorder("<")).tobytes() + _pack_nibbles(sym_lengths)
               + _pack_nibbles(gap_lengths) + sym_bytes + gap_bytes)
    return entry, section


def _best_gap_width(positions: np.ndarray, symbols: np.ndarray, filler: int) -> int:
    """The gap width (bits) minimising coded gaps + indices + their code tables."""
    best, best_cost = 1, None
    for width in range(1, MAX_GAP_WIDTH + 1):
        gaps, syms = to_gaps(positions, symbols, width, filler)
        cost = 4 * (2**width + filler + 1)
        for stream, size in ((gaps, 2**width), (syms, filler + 1)):
            counts = np.bincount(stream, minlength=size)
            cost += huffman.coded_bits(counts, huffman.code_lengths(counts))
        if best_cost is None or cost < best_cost:
            best, best_cost = width, cost
    return best


def _pack_nibbles(lengths: np.ndarray) -> bytes:
    values = np.asarray(lengths, dtype=np.uint8)
    if len(values) % 2:
        values = np.append(values, 0)
    return ((values[0::2] << 4) | values[1::2]).astype(np.uint8).tobytes()


def _stats(entry: dict[str, Any], tensor: torch.Tensor, size: int) -> TensorStats:
    numel = tensor.numel()
    nonzero = int(torch.count_nonzero(tensor)) if numel else 0
    if entry["coding"] == "shared":
        k = entry["codebook"]
        return TensorStats(entry["name"], numel, nonzero, "shared", k, max(1, int(np.ceil(np.log2(max(k, 1))))),
                           entry["gap_width"], size)
    bits = 8 * np.dtype(entry["stored"]).itemsize
    return TensorStats(entry["name"], numel, nonzero, "raw", 0, bits, 0, size)


# ----------------------------------------------------------------------------------------- decode
class _Reader:
    """Bounds-checked cursor over the file's sections."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise CnncFormatError(f"corrupt file: {what} runs past the end of the data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def decode_model(data: bytes) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model in ``.cnnc`` bytes: (model in eval mode, spec, header). Raises CnncFormatError."""
    state, spec, header = parse_cnnc(data)
    try:
        model = load_weights(spec.build(), state, source="the .cnnc file", adopt=True)
    except CheckpointError as exc:
        raise CnncFormatError(f"corrupt file: its tensors do not fit {spec.factory}: {exc}") from exc
    _check_runs(model.eval(), header.get("input_shape"))
    return model, spec, header


def _check_runs(model: nn.Module, input_shape: Any) -> None:
    """One forward pass on zeros: layer shapes that load but do not chain mean a forged/corrupt file."""
    if not input_shape:
        return
    try:
        with torch.no_grad():
            model(torch.zeros(1, *[int(d) for d in input_shape]))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CnncFormatError(f"corrupt file: the decoded model does not run on {input_shape}: {exc}") from exc


def decode_state(data: bytes) -> tuple[dict[str, torch.Tensor], ModelSpec, dict[str, Any]]:
    """The decoded state_dict (in file order), spec and header, checked against the rebuilt architecture."""
    model, spec, header = decode_model(data)
    state = model.state_dict()
    return {entry["name"]: state[entry["name"]] for entry in header["tensors"]}, spec, header


def parse_cnnc(data: bytes) -> tuple[dict[str, torch.Tensor], ModelSpec, dict[str, Any]]:
    """The stored tensors, spec and header of ``.cnnc`` bytes, checked but not rebuilt into a model."""
    header_len = _check_envelope(data)
    start = _PREFIX.size
    try:
        header = json.loads(zlib.decompress(data[start:start + header_len]).decode("utf-8"))
        spec = ModelSpec.from_dict(header["spec"])
        entries = list(header["tensors"])
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CnncFormatError(f"corrupt header: {exc}") from exc
    reader = _Reader(data, start + header_len, len(data) - _TRAILER.size)
    state = {}
    for entry in entries:
        try:
            state[entry["name"]] = _decode_tensor(entry, reader)
        except CnncFormatError:
            raise
        except (KeyError, TypeError, ValueError, HuffmanError) as exc:
            raise CnncFormatError(f"corrupt tensor {entry.get('name', '?')!r}: {exc}") from exc
    if reader.pos != reader.end:
        raise CnncFormatError(f"corrupt file: {reader.end - reader.pos} unexplained bytes after the last tensor")
    return state, spec, header


def _check_envelope(data: bytes) -> int:
    if len(data) < _PREFIX.size + _TRAILER.size:
        raise CnncFormatError(f"not a .cnnc file: only {len(data)} bytes")
    magic, version, length, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CnncFormatError(f"not a .cnnc file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise CnncFormatError(f"unsupported .cnnc version {version}; this cnncompress reads version {VERSION}")
    if length != len(data):
        state = "truncated" if len(data) < length else "has trailing bytes"
        raise CnncFormatError(f"file {state}: header says {length} bytes, got {len(data)}")
    (crc,) = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if zlib.crc32(data[:-_TRAILER.size]) != crc:
        raise CnncFormatError("checksum mismatch: the file is corrupted")
    if _PREFIX.size + header_len > len(data) - _TRAILER.size:
        raise CnncFormatError("corrupt file: header length exceeds the file")
    return header_len


def _decode_tensor(entry: dict[str, Any], reader: _Reader) -> torch.Tensor:
    shape = [int(d) for d in entry["shape"]]
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    numel = int(np.prod(shape, dtype=np.int64))
    dtype = getattr(torch, str(entry["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {entry['dtype']!r}")
    if entry["coding"] == "raw":
        stored = np.dtype(entry["stored"]).newbyteorder("<")
        array = np.frombuffer(reader.take(numel * stored.itemsize, entry["name"]), dtype=stored)
        return torch.from_numpy(array.astype(stored.newbyteorder("="))).to(dtype).reshape(shape)
    if entry["coding"] != "shared":
        raise ValueError(f"unknown coding {entry['coding']!r}")
    return torch.from_numpy(_decode_shared(entry, reader, numel)).reshape(shape)


def _decode_shared(entry: dict[str, Any], reader: _Reader, numel: int) -> np.ndarray:
    k, width, name = int(entry["codebook"]), int(entry["gap_width"]), entry["name"]
    if not 0 <= k <= MAX_CODEBOOK or not 1 <= width <= MAX_GAP_WIDTH:
        raise ValueError(f"codebook size {k} or gap width {width} out of range")
    book_dtype = np.dtype(entry["codebook_dtype"]).newbyteorder("<")
    if book_dtype.kind != "f":
        raise ValueError(f"codebook dtype {book_dtype} is not a float type")
    codebook = np.frombuffer(reader.take(k * book_dtype.itemsize, name), dtype=book_dtype).astype(np.float32)
    sym_lengths = _unpack_nibbles(reader.take((k + 2) // 2, name), k + 1)
    gap_lengths = _unpack_nibbles(reader.take((2**width + 1) // 2, name), 2**width)
    index_bits, gap_bits = int(entry["index_bits"]), int(entry["gap_bits"])
    syms = huffman.decode(reader.take((index_bits + 7) // 8, name), index_bits, sym_lengths)
    gaps = huffman.decode(reader.take((gap_bits + 7) // 8, name), gap_bits, gap_lengths)
    if len(syms) != len(gaps) or len(syms) != int(entry["entries"]):
        raise ValueError(f"{len(syms)} indices and {len(gaps)} gaps, header says {entry['entries']}")
    positions, symbols = from_gaps(gaps, syms, filler=k)
    if len(positions) and positions[-1] >= numel:
        raise ValueError(f"position {positions[-1]} beyond the tensor's {numel} values")
    values = np.zeros(numel, dtype=np.float32)
    values[positions] = codebook[symbols]
    return values


def _unpack_nibbles(data: bytes, count: int) -> np.ndarray:
    packed = np.frombuffer(data, dtype=np.uint8)
    return np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:count].astype(np.int64)


def read_cnnc(path: str | os.PathLike) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model stored in a ``.cnnc`` file from the file alone: (model in eval mode, spec, header)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return decode_model(path.read_bytes())
