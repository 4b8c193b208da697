"""The limits a compressed model must meet: flash, RAM, MACs, latency and an accuracy tolerance.

Every limit is optional (``None`` means unconstrained) and accepts human units (see ``units``):
``Budget(flash_bytes="256KB", ram_bytes="64KiB", macs="20M", latency_ms="5ms")``.
``max_accuracy_drop`` is in percentage points of top-1 accuracy (``"1%"`` or ``1.0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .units import format_bytes, format_count, parse_bytes, parse_count, parse_duration_ms

# Accepted spellings of each field (CLI-style short names and the attribute names).
ALIASES = {
    "flash": "flash_bytes", "flash_bytes": "flash_bytes",
    "ram": "ram_bytes", "ram_bytes": "ram_bytes",
    "macs": "macs",
    "latency": "latency_ms", "latency_ms": "latency_ms",
    "max_accuracy_drop": "max_accuracy_drop", "accuracy_drop": "max_accuracy_drop",
}
LIMITS = ("flash_bytes", "ram_bytes", "macs", "latency_ms")


def parse_accuracy_drop(value: object, field: str = "max_accuracy_drop") -> float:
    """Percentage points from ``1.0``, ``"1"`` or ``"1%"``; must lie in [0, 100]."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field}: expected percentage points such as 1.0 or '1%', got {value!r}")
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        points = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{field}: cannot read {value!r} as percentage points (e.g. 1.0 or '1%')") from None
    if not math.isfinite(points) or not 0 <= points <= 100:
        raise ValueError(f"{field}: {value!r} must be a finite number of percentage points in [0, 100]")
    return points


_PARSERS = {
    "flash_bytes": parse_bytes, "ram_bytes": parse_bytes, "macs": parse_count,
    "latency_ms": parse_duration_ms, "max_accuracy_drop": parse_accuracy_drop,
}


@dataclass(frozen=True)
class Budget:
    """Resource limits in base units (bytes, MACs, milliseconds); ``None`` leaves a resource free."""

    flash_bytes: int | None = None
    ram_bytes: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    max_accuracy_drop: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, _PARSERS[f.name](value, f.name))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Budget:
        """Budget from a dict/YAML section using attribute or short names (``flash: 256KB``)."""
        return cls(**_canonical(mapping))

    def merge(self, overrides: Mapping[str, Any] | Budget | None) -> Budget:
        """A copy where every non-``None`` value of ``overrides`` replaces this budget's value."""
        if overrides is None:
            return self
        given = overrides.to_dict() if isinstance(overrides, Budget) else _canonical(overrides)
        current = self.to_dict()
        current.update({k: v for k, v in given.items() if v is not None})
        return Budget(**current)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in base units (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def limits(self) -> dict[str, float]:
        """The resource limits that are set, by field name."""
        return {name: getattr(self, name) for name in LIMITS if getattr(self, name) is not None}

    def describe(self) -> str:
        """One line for people: ``flash <= 256.0 KB, MACs <= 20.00M, accuracy drop <= 1.0 pt``."""
        parts = [f"{LABELS[k]} <= {format_limit(k, v)}" for k, v in self.limits().items()]
        parts.append(f"accuracy drop <= {self.max_accuracy_drop:g} pt")
        return ", ".join(parts)


LABELS = {"flash_bytes": "flash", "ram_bytes": "RAM", "macs": "MACs", "latency_ms": "latency"}


def format_limit(field: str, value: float) -> str:
    """A figure of ``field`` in human units."""
    if field in ("flash_bytes", "ram_bytes"):
        return format_bytes(value)
    if field == "macs":
        return format_count(value)
    return f"{value:.3g} ms"


def _canonical(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Map short/long key spellings (``-`` or ``_``) to field names; refuse unknown keys and clashes."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = ALIASES.get(str(key).replace("-", "_").lower())
        if name is None:
            raise ValueError(f"unknown budget field {key!r}; known: {sorted(set(ALIASES))}")
        if name in out:
            raise ValueError(f"budget field {name!r} given twice (as {key!r})")
        out[name] = value
    return out
