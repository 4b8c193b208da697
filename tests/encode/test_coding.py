"""Huffman and relative-gap coding: round trips over arbitrary streams, limits and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompress.encode import huffman
from cnncompress.encode.huffman import MAX_CODE_LENGTH, HuffmanError
from cnncompress.encode.sparse import from_gaps, to_gaps

streams = st.lists(st.integers(0, 40), max_size=400)


def _roundtrip(symbols: list[int], alphabet: int) -> tuple[np.ndarray, int]:
    lengths = huffman.code_lengths(np.bincount(np.asarray(symbols, dtype=np.int64), minlength=alphabet))
    data, n_bits = huffman.encode(np.asarray(symbols), lengths)
    assert n_bits == huffman.coded_bits(np.bincount(symbols, minlength=alphabet), lengths) if symbols else True
    return huffman.decode(data, n_bits, lengths), n_bits


@settings(max_examples=150, deadline=None)
@given(streams)
def test_huffman_roundtrip_arbitrary_streams(symbols):
    decoded, _ = _roundtrip(symbols, 41)
    assert decoded.tolist() == symbols


def test_huffman_empty_and_single_symbol_streams():
    decoded, n_bits = _roundtrip([], 5)
    assert decoded.tolist() == [] and n_bits == 0
    decoded, n_bits = _roundtrip([3] * 17, 5)
    assert decoded.tolist() == [3] * 17 and n_bits == 17  # one bit per symbol, count recoverable


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=60))
def test_huffman_lengths_are_prefix_free_and_near_entropy(counts):
    counts = np.asarray(counts)
    lengths = huffman.code_lengths(counts)
    codes = huffman.canonical_codes(lengths)
    words = {format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)}
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert sum(2.0 ** -lengths.astype(float)) <= 1.0
    p = counts / counts.sum()
    mean_length = float((p * lengths).sum())
    if lengths.max() < MAX_CODE_LENGTH:  # unconstrained Huffman: within one bit of the entropy
        assert mean_length < -(p * np.log2(p)).sum() + 1 + 1e-9


def test_huffman_limits_code_length_on_skewed_counts():
    fibonacci = [1, 1]
    while len(fibonacci) < 40:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    lengths = huffman.code_lengths(np.asarray(fibonacci))
    assert lengths.max() == MAX_CODE_LENGTH
    symbols = np.repeat(np.arange(40), 3)
    data, n_bits = huffman.encode(symbols, lengths)
    assert huffman.decode(data, n_bits, lengths).tolist() == symbols.tolist()


def test_huffman_rejects_bad_streams_and_tables():
    lengths = huffman.code_lengths(np.asarray([5, 1, 1]))  # codes 0, 10, 11
    data, n_bits = huffman.encode(np.asarray([0, 1, 2, 1]), lengths)  # 0 10 11 10
    with pytest.raises(HuffmanError, match="cannot hold"):
        huffman.decode(data + b"\x00", n_bits, lengths)
    with pytest.raises(HuffmanError, match="invalid Huffman code"):
        huffman.decode(data, n_bits - 1, lengths)  # last code word cut in half
    with pytest.raises(HuffmanError, match="Kraft"):
        huffman.decode(data, n_bits, np.asarray([1, 1, 1]))
    with pytest.raises(HuffmanError, match="invalid Huffman code"):
        huffman.decode(b"\xff", 8, np.asarray([1, 0, 0]))  # incomplete table: prefix 1 unused
    with pytest.raises(ValueError, match="no code"):
        huffman.encode(np.asarray([2]), np.asarray([1, 1, 0]))


@st.composite
def sparse_rows(draw):
    size = draw(st.integers(0, 3000))
    positions = sorted(draw(st.sets(st.integers(0, max(size - 1, 0)), max_size=min(size, 200)))) if size else []
    symbols = draw(st.lists(st.integers(0, 6), min_size=len(positions), max_size=len(positions)))
    return np.asarray(positions, dtype=np.int64), np.asarray(symbols, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(sparse_rows(), st.integers(1, 8))
def test_gap_coding_roundtrip_with_fillers(row, width):
    positions, symbols = row
    filler = 7
    gaps, coded = to_gaps(positions, symbols, width, filler)
    assert len(gaps) == 0 or int(gaps.max()) < 2**width  # bounded index width
    raw = np.diff(positions, prepend=-1) - 1
    assert int((coded == filler).sum()) == int((raw // 2**width).sum())  # one filler per overflow
    back_positions, back_symbols = from_gaps(gaps, coded, filler)
    assert back_positions.tolist() == positions.tolist() and back_symbols.tolist() == symbols.tolist()


def test_gap_beyond_width_uses_fillers_exactly():
    gaps, coded = to_gaps(np.asarray([20]), np.asarray([3]), width=3, filler=9)
    # 20 zeros before the entry; each filler covers 8 places (7 zeros + itself)
    assert gaps.tolist() == [7, 7, 4] and coded.tolist() == [9, 9, 3]
    assert from_gaps(gaps, coded, 9)[0].tolist() == [20]


def test_gap_coding_validates_input():
    with pytest.raises(ValueError, match="strictly increasing"):
        to_gaps(np.asarray([3, 3]), np.asarray([0, 0]), 4, 5)
    with pytest.raises(ValueError, match="width"):
        to_gaps(np.asarray([1]), np.asarray([0]), 0, 5)
    assert len(to_gaps(np.zeros(0), np.zeros(0), 4, 1)[0]) == 0
