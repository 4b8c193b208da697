"""The ``.cnnc`` container: a model's architecture and entropy-coded weights in one checked file.

Layout (all integers little-endian; full description in docs/cnnc-format.md)::

    "CNNC" | u8 version | u32 file length | u32 header length | zlib(JSON header) | sections | u32 CRC32

Tensors with at most ``MAX_CODEBOOK`` distinct non-zero values (shared weights) are stored sparse:
a codebook, Huffman-coded codebook indices and Huffman-coded relative gaps. Every other tensor is
stored raw in the narrowest dtype that holds it exactly. Decoding is bit-exact.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import ModelSpec, ModelSpecError, UntrustedFactoryError, default_input_shape, rebuild
from ..models.checkpoint import CheckpointError, adopt_shapes, load_weights
from ..utils import atomic_write_bytes, brief, shorten
from . import huffman
from .sparse import from_gaps, to_gaps

MAGIC = b"CNNC"
VERSION = 1
MAX_CODEBOOK = 256
MAX_GAP_WIDTH = 12
_PREFIX = struct.Struct("<4sBII")  # magic, version, file length, header length
_TRAILER = struct.Struct("<I")  # CRC32 of everything before it
_INT_DTYPES = ("int8", "int16", "int32", "int64")

# A file is untrusted data: its header is checked against these limits (docs/cnnc-format.md, "Security")
# before any of it is used, and every size it claims before anything is allocated.
MAX_HEADER_BYTES = 1 << 20  # the JSON header once inflated
MAX_JSON_DEPTH = 32
MAX_NAME_CHARS = 256  # tensor names, spec keyword names and string values
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_PARAMS = 2**40
MAX_KWARG_LIST = 256
MAX_INPUT_SIDE = 4096  # C, H and W of input_shape each
MAX_INPUT_VALUES = 1 << 22  # C * H * W: the check forward pass runs on one such image
#: all decoded tensors together may take at most BASE + PER_FILE_BYTE * (file size) bytes; the base
#: covers every zoo model's dense state at any compression (VGG-16-BN, the largest, takes 56 MiB)
DECODED_BYTES_BASE = 64 << 20
DECODED_BYTES_PER_FILE_BYTE = 256
_MAX_STREAM_BITS = 8 * 0xFFFFFFFF  # a u32-long file holds no more bits
#: tensor dtype -> the stored dtypes the encoder writes for it; a raw section may pair nothing else
_RAW_STORED: dict[str, tuple[str, ...]] = {
    "float32": ("float16", "float32"), "float16": ("float16",), "bfloat16": ("float16", "float32"),
    "float64": ("float64",), "uint8": ("uint8",), "bool": ("uint8",),
    **{name: _INT_DTYPES[:i + 1] for i, name in enumerate(_INT_DTYPES)},
}
#: dtypes whose cast from the stored values can lose information, so every value is checked to survive it
_CHECKED_CASTS = frozenset({"bfloat16", "bool"})
_CODEBOOK_DTYPES = ("float16", "float32")
_HEADER_REQUIRED = frozenset({"spec", "params", "tensors"})
_HEADER_FIELDS = _HEADER_REQUIRED | {"meta", "input_shape"}
_ENTRY_FIELDS = {"raw": frozenset({"name", "shape", "dtype", "coding", "stored"}),
                 "shared": frozenset({"name", "shape", "dtype", "coding", "codebook", "codebook_dtype", "gap_width",
                                      "entries", "index_bits", "gap_bits"})}
_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"?', re.DOTALL)  # an unterminated string runs to the end


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
    try:  # write nothing the decoder would refuse (an exotic dtype, an over-long name or keyword value)
        _check_header(json.loads(json.dumps(header)), length)
    except CnncFormatError as exc:
        raise ValueError(f"cannot encode this model as .cnnc: {str(exc).removeprefix('corrupt header: ')}") from exc
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
            raise CnncFormatError(f"corrupt file: {shorten(what, 60)} runs past the end of the data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def decode_model(data: bytes, spec: ModelSpec | None = None) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model in ``.cnnc`` bytes: (model in eval mode, spec, header). Raises CnncFormatError.

    A file naming a zoo model rebuilds from the file alone; one naming any other factory needs the
    caller's ``spec`` (its factory is used; the file's is never imported), else UntrustedFactoryError.
    """
    state, stored, header = parse_cnnc(data)
    model, spec = rebuild_architecture(stored, spec)
    try:
        model = load_weights(model, state, source="the .cnnc file", adopt=True)
    except CheckpointError as exc:
        raise CnncFormatError(f"corrupt file: its tensors do not fit {spec.factory}: "
                              f"{shorten(exc, 300)}") from exc
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
        raise CnncFormatError(f"corrupt file: the decoded model does not run on {input_shape}: "
                              f"{shorten(exc, 200)}") from exc


def rebuild_architecture(stored: ModelSpec, spec: ModelSpec | None) -> tuple[nn.Module, ModelSpec]:
    """The untrained model a file's spec describes (see ``models.rebuild``), malformed specs as CnncFormatError."""
    try:
        return rebuild(stored, spec, "the .cnnc file")
    except UntrustedFactoryError:
        raise
    except ModelSpecError as exc:
        raise CnncFormatError(f"corrupt header: {exc}") from exc


def decode_state(data: bytes, spec: ModelSpec | None = None) -> tuple[dict[str, torch.Tensor], ModelSpec,
                                                                     dict[str, Any]]:
    """The decoded state_dict (in file order), spec and header, checked against the rebuilt architecture."""
    model, spec, header = decode_model(data, spec)
    state = model.state_dict()
    return {entry["name"]: state[entry["name"]] for entry in header["tensors"]}, spec, header


def read_header(data: bytes) -> tuple[dict[str, Any], ModelSpec, int]:
    """The checked header of ``.cnnc`` bytes, its spec and where the tensor data starts; no tensor is decoded."""
    header_len = _check_envelope(data)
    header = _read_header(data[_PREFIX.size:_PREFIX.size + header_len])
    return header, _check_header(header, len(data)), _PREFIX.size + header_len


def parse_cnnc(data: bytes) -> tuple[dict[str, torch.Tensor], ModelSpec, dict[str, Any]]:
    """The stored tensors, spec and header of ``.cnnc`` bytes, checked but not rebuilt into a model."""
    header, spec, start = read_header(data)
    reader = _Reader(data, start, len(data) - _TRAILER.size)
    state = {}
    for entry in header["tensors"]:
        try:
            state[entry["name"]] = _decode_tensor(entry, reader)
        except CnncFormatError:
            raise
        except ValueError as exc:  # HuffmanError included
            raise CnncFormatError(f"corrupt tensor {brief(entry['name'])}: "
                                  f"{shorten(exc, 200)}") from exc
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


def _read_header(packed: bytes) -> Any:
    """The header's JSON, inflated to at most MAX_HEADER_BYTES (a zlib bomb stops there) and parsed
    only when it nests at most MAX_JSON_DEPTH deep (json.loads recurses once per level)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed, MAX_HEADER_BYTES + 1)
    except zlib.error as exc:
        raise CnncFormatError(f"corrupt header: {shorten(str(exc), 200)}") from exc
    if len(raw) > MAX_HEADER_BYTES:
        raise CnncFormatError(f"corrupt header: it inflates to more than {MAX_HEADER_BYTES:,} bytes")
    if not inflater.eof or inflater.unused_data:
        raise CnncFormatError("corrupt header: its zlib stream is truncated or followed by stray bytes")
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise CnncFormatError(f"corrupt header: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # bad UTF-8, bad JSON, an integer too long to convert
        raise CnncFormatError(f"corrupt header: {shorten(str(exc), 200)}") from exc


def _json_depth(text: bytes) -> int:
    """How deep the brackets of JSON ``text`` nest outside strings, counted without recursion.

    On every prefix json.loads accepts, this count is its recursion depth, so it bounds that depth.
    """
    codes = np.frombuffer(_JSON_STRING.sub(b"", text), dtype=np.uint8)
    opens = np.isin(codes, (ord("["), ord("{"))).astype(np.int32)
    closes = np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(opens - closes, dtype=np.int32).max(initial=0))


def _expect(ok: bool, what: str, value: Any) -> None:
    if not ok:
        raise CnncFormatError(f"corrupt header: {what}, got {brief(value)}")


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high  # bool is no int here


def _is_one_of(value: Any, options: Any) -> bool:
    return isinstance(value, str) and value in options  # unhashable values never reach ``in``


def _check_fields(obj: Any, required: frozenset[str], allowed: frozenset[str], what: str) -> None:
    _expect(isinstance(obj, dict), f"{what} must be a JSON object", obj)
    missing, unknown = sorted(required - obj.keys()), sorted(obj.keys() - allowed)
    if missing:
        raise CnncFormatError(f"corrupt header: {what} lacks the field {missing[0]!r}")
    _expect(not unknown, f"{what} has an unknown field", unknown[:1])


def _check_header(header: Any, file_bytes: int) -> ModelSpec:
    """Validate the header against the schema, and its tensors' sizes against the file's; the file's spec."""
    _check_fields(header, _HEADER_REQUIRED, _HEADER_FIELDS, "the header")
    _expect(_is_int(header["params"], 0, MAX_PARAMS), f"params must be an integer in 0..{MAX_PARAMS}",
            header["params"])
    _expect(isinstance(header.get("meta", {}), dict), "meta must be a JSON object", header.get("meta"))
    _check_input_shape(header.get("input_shape"))
    entries = header["tensors"]
    _expect(isinstance(entries, list), "tensors must be a list", entries)
    names: set[str] = set()
    for index, entry in enumerate(entries):
        _check_entry(entry, f"tensor #{index}")
        _expect(entry["name"] not in names, "tensor names must be unique", entry["name"])
        names.add(entry["name"])
    _check_decoded_bytes(entries, file_bytes)
    return _check_spec(header["spec"])


def _check_input_shape(shape: Any) -> None:
    _expect(shape is None or isinstance(shape, list) and len(shape) == 3
            and all(_is_int(d, 1, MAX_INPUT_SIDE) for d in shape) and math.prod(shape) <= MAX_INPUT_VALUES,
            f"input_shape must be null or [C, H, W], each in 1..{MAX_INPUT_SIDE}, at most {MAX_INPUT_VALUES:,} "
            "values", shape)


def _check_entry(entry: Any, where: str) -> None:
    coding = entry.get("coding") if isinstance(entry, dict) else None
    _expect(_is_one_of(coding, _ENTRY_FIELDS), f"{where} must be an object with coding 'raw' or 'shared'", entry)
    _check_fields(entry, _ENTRY_FIELDS[coding], _ENTRY_FIELDS[coding], where)
    name, shape = entry["name"], entry["shape"]
    _expect(isinstance(name, str) and 1 <= len(name) <= MAX_NAME_CHARS,
            f"{where} name must be a string of 1 to {MAX_NAME_CHARS} characters", name)
    where = f"tensor {brief(name)}"
    _expect(isinstance(shape, list) and len(shape) <= MAX_RANK and all(_is_int(d, 0, MAX_DIM) for d in shape),
            f"{where} shape must be a list of at most {MAX_RANK} integers in 0..{MAX_DIM}", shape)
    if coding == "raw":
        dtype, stored = entry["dtype"], entry["stored"]
        _expect(_is_one_of(dtype, _RAW_STORED) and _is_one_of(stored, _RAW_STORED[dtype]),
                f"{where} must pair a dtype with a stored dtype the encoder writes", [dtype, stored])
    else:
        _check_shared_entry(entry, where)


def _check_shared_entry(entry: dict[str, Any], where: str) -> None:
    _expect(entry["dtype"] == "float32", f"{where}: only float32 tensors are shared", entry["dtype"])
    _expect(_is_one_of(entry["codebook_dtype"], _CODEBOOK_DTYPES), f"{where} codebook_dtype must be one of "
            f"{', '.join(_CODEBOOK_DTYPES)}", entry["codebook_dtype"])
    _expect(_is_int(entry["codebook"], 0, MAX_CODEBOOK), f"{where} codebook must be in 0..{MAX_CODEBOOK}",
            entry["codebook"])
    _expect(_is_int(entry["gap_width"], 1, MAX_GAP_WIDTH), f"{where} gap_width must be in 1..{MAX_GAP_WIDTH}",
            entry["gap_width"])
    _expect(_is_int(entry["entries"], 0, _MAX_STREAM_BITS), f"{where} entries must be a count", entry["entries"])
    count, longest = entry["entries"], huffman.MAX_CODE_LENGTH
    for stream in ("index_bits", "gap_bits"):  # each code word is 1 to MAX_CODE_LENGTH bits
        _expect(_is_int(entry[stream], count, longest * count),
                f"{where} {stream} must be {count}..{longest * count} for {count} entries", entry[stream])


def _check_decoded_bytes(entries: list[dict[str, Any]], file_bytes: int) -> None:
    """Refuse, before anything is allocated, tensors whose dense size the file's own size cannot justify."""
    total = sum(math.prod(entry["shape"]) * getattr(torch, entry["dtype"]).itemsize for entry in entries)
    limit = DECODED_BYTES_BASE + DECODED_BYTES_PER_FILE_BYTE * file_bytes
    if total > limit:
        raise CnncFormatError(f"corrupt header: its tensors claim {total:,} decoded bytes, more than the "
                              f"{limit:,} a {file_bytes:,}-byte file may expand to")


def _check_spec(spec: Any) -> ModelSpec:
    """The spec's shape (the factory and keyword ranges are ModelSpec's to check), then the spec itself."""
    _check_fields(spec, frozenset({"factory"}), frozenset({"factory", "kwargs"}), "spec")
    kwargs = spec.get("kwargs", {})
    _expect(isinstance(kwargs, dict), "spec kwargs must be a JSON object", kwargs)
    for key, value in kwargs.items():
        _expect(_is_scalar(value) or isinstance(value, list) and len(value) <= MAX_KWARG_LIST
                and all(_is_scalar(item) for item in value),
                f"spec kwarg {brief(key)} must be a JSON scalar or a list of at most "
                f"{MAX_KWARG_LIST}",
                value)
    try:
        return ModelSpec.from_dict(spec)
    except ValueError as exc:
        raise CnncFormatError(f"corrupt header: {shorten(str(exc), 200)}") from exc


def _is_scalar(value: Any) -> bool:
    """A JSON scalar of bounded size: null, a boolean, an integer, a finite number or a short string."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_NAME_CHARS
    return value is None or isinstance(value, int)


def _decode_tensor(entry: dict[str, Any], reader: _Reader) -> torch.Tensor:
    """One tensor of a validated entry: raw, or dense from its shared coding."""
    numel = math.prod(entry["shape"])
    if entry["coding"] == "raw":
        return _decode_raw(entry, reader, numel).reshape(entry["shape"])
    return torch.from_numpy(_decode_shared(entry, reader, numel)).reshape(entry["shape"])


def _decode_raw(entry: dict[str, Any], reader: _Reader, numel: int) -> torch.Tensor:
    stored = np.dtype(entry["stored"]).newbyteorder("<")
    array = np.frombuffer(reader.take(numel * stored.itemsize, entry["name"]), dtype=stored)
    values = torch.from_numpy(array.astype(stored.newbyteorder("=")))
    tensor = values.to(getattr(torch, entry["dtype"]))
    if entry["dtype"] in _CHECKED_CASTS and not torch.equal(tensor.to(values.dtype), values):
        raise ValueError(f"its {stored.name} values do not convert to {entry['dtype']} exactly")
    return tensor


def _decode_shared(entry: dict[str, Any], reader: _Reader, numel: int) -> np.ndarray:
    k, width, name = entry["codebook"], entry["gap_width"], entry["name"]
    book_dtype = np.dtype(entry["codebook_dtype"]).newbyteorder("<")
    codebook = np.frombuffer(reader.take(k * book_dtype.itemsize, name), dtype=book_dtype).astype(np.float32)
    sym_lengths = _unpack_nibbles(reader.take((k + 2) // 2, name), k + 1)
    gap_lengths = _unpack_nibbles(reader.take((2**width + 1) // 2, name), 2**width)
    index_bits, gap_bits = entry["index_bits"], entry["gap_bits"]
    syms = huffman.decode(reader.take((index_bits + 7) // 8, name), index_bits, sym_lengths)
    gaps = huffman.decode(reader.take((gap_bits + 7) // 8, name), gap_bits, gap_lengths)
    if len(syms) != len(gaps) or len(syms) != entry["entries"]:
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


def read_cnnc(path: str | os.PathLike, spec: ModelSpec | None = None) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model stored in a ``.cnnc`` file: (model in eval mode, spec, header).

    ``spec`` names the factory of a user's own architecture (see :func:`decode_model`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return decode_model(path.read_bytes(), spec)
