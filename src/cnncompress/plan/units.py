"""Human units for budgets: bytes, MAC counts and durations.

Byte units follow SI/IEC strictly so a limit means one thing: ``KB``/``MB``/``GB`` are powers of
1000 and ``KiB``/``MiB``/``GiB`` powers of 1024 (``B`` or a bare number is bytes); units are
case-insensitive. A bare ``K``/``M`` is refused for bytes because it is ambiguous. Counts (MACs)
take ``K``/``k``, ``M``, ``G`` (powers of 1000). Durations take ``us``/``µs``, ``ms``, ``s``; a bare
number is milliseconds. Fractional results round down to whole bytes/MACs (a 100.5-byte limit
admits 100 bytes). Zero, negative, NaN/inf, empty text and unknown units are refused, naming the field.
"""

from __future__ import annotations

import math
import re

BYTE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}
COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
TIME_UNITS_MS = {"": 1.0, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}

_NUMBER = re.compile(r"^\s*([+-]?(?:nan|inf|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))\s*([A-Za-zµ]*)\s*$",
                     re.IGNORECASE)


def _split(field: str, text: str) -> tuple[float, str]:
    match = _NUMBER.match(text)
    if not match:
        raise ValueError(f"{field}: cannot read {text!r} as a number with an optional unit")
    return float(match.group(1)), match.group(2)


def _positive(field: str, value: float, shown: object) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{field}: {shown!r} is not a finite number")
    if value <= 0:
        raise ValueError(f"{field}: {shown!r} must be positive")
    return value


def _from_text_or_number(field: str, value: object, units: dict[str, float], hint: str,
                         case_fold: bool = True) -> float:
    """Scale ``value`` (number in base units or text with a unit) to base units; refuse nonsense."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field}: expected a number or text like {hint}, got {value!r}")
    if isinstance(value, (int, float)):
        return _positive(field, float(value), value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: expected a number or text like {hint}, got {value!r}")
    number, unit = _split(field, value)
    key = unit.lower() if case_fold else unit
    if key not in units:
        raise ValueError(f"{field}: unknown unit {unit!r} in {value!r}; use one of {hint}")
    return _positive(field, number * units[key], value)


def _whole(field: str, value: float, shown: object) -> int:
    whole = math.floor(value)
    if whole < 1:
        raise ValueError(f"{field}: {shown!r} is less than one whole unit")
    return whole


def parse_bytes(value: object, field: str = "bytes") -> int:
    """Bytes from ``256KB`` (256 000), ``1.5MiB`` (1 572 864), ``4096`` or an int; refuse nonsense."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and re.search(r"\d\s*[kKmMgG]\s*$", text):
        raise ValueError(f"{field}: {value!r} is ambiguous; write KB (1000 B) or KiB (1024 B)")
    return _whole(field, _from_text_or_number(field, value, BYTE_UNITS, "256KB, 1.5MiB, 4096B"), value)


def parse_count(value: object, field: str = "count") -> int:
    """A count such as MACs from ``20M``, ``1.5G``, ``300k``, ``2e7`` or an int."""
    return _whole(field, _from_text_or_number(field, value, COUNT_UNITS, "20M, 300k, 1.5G"), value)


def parse_duration_ms(value: object, field: str = "latency") -> float:
    """Milliseconds from ``5ms``, ``2 s``, ``800us`` or a number (already in ms)."""
    return _from_text_or_number(field, value, TIME_UNITS_MS, "5ms, 2 s, 800us")


def format_bytes(n: float) -> str:
    """Bytes for people, SI units to match how limits are usually quoted (``23.4 KB``)."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n:.0f} B"


def format_count(n: float) -> str:
    """Counts for people (``20.5M``)."""
    for unit, factor in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{unit}"
    return f"{n:.0f}"
