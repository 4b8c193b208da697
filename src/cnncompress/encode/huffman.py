"""Canonical Huffman coding of small integer alphabets, vectorised with NumPy.

Only the code lengths are stored: canonical codes are rebuilt from them, so a table costs one
4-bit length per symbol. Lengths are limited to ``MAX_CODE_LENGTH`` (15) so a decoder can use one
flat lookup table of ``2**max_len`` entries.
"""

from __future__ import annotations

import heapq
from array import array

import numpy as np

MAX_CODE_LENGTH = 15


class HuffmanError(ValueError):
    """A bit stream or code-length table that does not decode."""


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths (uint8) for symbol ``counts``; unused symbols get length 0.

    A single used symbol gets length 1 so every coded symbol costs at least one bit and the
    stream length alone tells how many symbols there are. Lengths over ``max_length`` are avoided
    by flattening the counts (halving, keeping used symbols >= 1) until the tree is shallow enough.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative integers")
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    if len(used) > 2**max_length:
        raise ValueError(f"{len(used)} symbols cannot be coded in {max_length} bits")
    weights = counts[used]
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= max_length:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights // 2, 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Leaf depths of a Huffman tree over ``weights`` (ties broken by insertion order)."""
    heap = [(int(w), i, (i,)) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = np.zeros(len(weights), dtype=np.int64)
    order = len(weights)
    while len(heap) > 1:
        w1, _, leaves1 = heapq.heappop(heap)
        w2, _, leaves2 = heapq.heappop(heap)
        merged = leaves1 + leaves2
        depth[list(merged)] += 1
        heapq.heappush(heap, (w1 + w2, order, merged))
        order += 1
    return depth


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code words (as integers) for code ``lengths``; checks the Kraft inequality."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 0).any() or (lengths > MAX_CODE_LENGTH).any():
        raise HuffmanError(f"code lengths must be in 0..{MAX_CODE_LENGTH}")
    used = lengths > 0
    if used.any() and np.sum(2.0 ** -lengths[used]) > 1.0 + 1e-12:
        raise HuffmanError("code lengths violate the Kraft inequality (corrupt table)")
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in np.lexsort((np.arange(len(lengths)), lengths)):
        length = int(lengths[symbol])
        if length == 0:
            continue
        code <<= length - previous
        codes[symbol] = code
        code += 1
        previous = length
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Pack ``symbols`` with the canonical code of ``lengths``; return (bytes, number of bits)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(symbols) == 0:
        return b"", 0
    if symbols.min() < 0 or symbols.max() >= len(lengths) or (lengths[symbols] == 0).any():
        raise ValueError("a symbol has no code in this table")
    codes = canonical_codes(lengths)
    sym_len, sym_code = lengths[symbols], codes[symbols]
    width = int(sym_len.max())
    shifts = sym_len[:, None] - 1 - np.arange(width)[None, :]
    bits = (sym_code[:, None] >> np.maximum(shifts, 0)) & 1
    bits = bits[shifts >= 0].astype(np.uint8)
    return np.packbits(bits).tobytes(), int(sym_len.sum())


def decode(data: bytes, n_bits: int, lengths: np.ndarray) -> np.ndarray:
    """Decode the ``n_bits``-bit stream in ``data``; every bit must belong to a whole code word.

    The stream is untrusted: memory stays a few bytes per bit and the walk takes one step per code
    word, so any stream costs time and memory linear in its length.
    """
    if n_bits < 0 or (n_bits + 7) // 8 != len(data):
        raise HuffmanError(f"stream of {len(data)} bytes cannot hold {n_bits} bits")
    if n_bits == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    if not lengths.any():
        raise HuffmanError("non-empty stream but the code table is empty")
    width = int(lengths.max())
    table_sym, table_len = _lookup_table(codes, lengths, width)
    windows = _windows(data, n_bits, width)
    starts = _walk(table_len[windows].tobytes(), n_bits)
    return table_sym[windows[starts]]


def _lookup_table(codes: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Map every ``width``-bit window to (symbol, code length); 0 length marks an invalid prefix."""
    table_sym = np.zeros(2**width, dtype=np.int64)
    table_len = np.zeros(2**width, dtype=np.uint8)
    for symbol in np.flatnonzero(lengths):
        length = int(lengths[symbol])
        start = int(codes[symbol]) << (width - length)
        table_sym[start:start + (1 << (width - length))] = symbol
        table_len[start:start + (1 << (width - length))] = length
    return table_sym, table_len


def _windows(data: bytes, n_bits: int, width: int) -> np.ndarray:
    """The ``width`` (<= 15) bits starting at every bit position, zero-padded past the end, as uint16."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_bits)
    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)]).astype(np.uint16)
    windows = np.zeros(n_bits, dtype=np.uint16)
    for k in range(width):
        windows <<= 1
        windows |= padded[k:k + n_bits]
    return windows


def _walk(code_lengths: bytes, n_bits: int) -> np.ndarray:
    """Bit positions where the code words start, given the code length found at every position."""
    starts = array("q")
    pos = 0
    while pos < n_bits:
        length = code_lengths[pos]
        if length == 0 or pos + length > n_bits:
            raise HuffmanError(f"invalid Huffman code at bit {pos} of {n_bits}")
        starts.append(pos)
        pos += length
    return np.frombuffer(starts, dtype=np.int64)


def coded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Size in bits of a stream with symbol ``counts`` under code ``lengths``."""
    return int(np.dot(np.asarray(counts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))
