"""Relative-gap coding of sparse positions with a bounded gap width (Deep Compression, sec. 2).

An entry is (gap, symbol): the entry sits ``gap + 1`` places after the previous one (the first
after position -1). Gaps must fit in ``width`` bits; a longer run of zeros is bridged by filler
entries carrying the symbol ``filler`` (an explicit zero) at the largest gap.
"""

from __future__ import annotations

import numpy as np


def to_gaps(positions: np.ndarray, symbols: np.ndarray, width: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Turn strictly increasing ``positions`` and their ``symbols`` into (gaps, symbols) with fillers."""
    if not 1 <= width <= 30:
        raise ValueError(f"gap width must be 1..30 bits, got {width}")
    positions = np.asarray(positions, dtype=np.int64)
    symbols = np.asarray(symbols, dtype=np.int64)
    if positions.shape != symbols.shape or positions.ndim != 1:
        raise ValueError("positions and symbols must be 1-D arrays of equal length")
    if len(positions) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if positions[0] < 0 or (np.diff(positions) <= 0).any():
        raise ValueError("positions must be non-negative and strictly increasing")
    step = 2**width  # one entry advances at most max_gap + 1 = 2**width places
    raw = np.diff(positions, prepend=-1) - 1
    fillers = raw // step
    last_gap = raw - fillers * step
    total = len(raw) + int(fillers.sum())
    gaps = np.full(total, step - 1, dtype=np.int64)
    out_symbols = np.full(total, filler, dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1
    gaps[ends] = last_gap
    out_symbols[ends] = symbols
    return gaps, out_symbols


def from_gaps(gaps: np.ndarray, symbols: np.ndarray, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_gaps`: (positions, symbols) with the filler entries dropped."""
    gaps = np.asarray(gaps, dtype=np.int64)
    symbols = np.asarray(symbols, dtype=np.int64)
    if gaps.shape != symbols.shape:
        raise ValueError(f"{len(gaps)} gaps but {len(symbols)} symbols")
    positions = np.cumsum(gaps + 1) - 1
    keep = symbols != filler
    return positions[keep], symbols[keep]
