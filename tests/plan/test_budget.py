"""Budget parsing: human units, refusal of nonsense, merge and round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnncompress.plan import Budget, parse_bytes, parse_count, parse_duration_ms
from cnncompress.plan.units import BYTE_UNITS, COUNT_UNITS, format_bytes


@pytest.mark.parametrize(("text", "expected"), [
    ("256KB", 256_000), ("256KiB", 262_144), ("1.5MiB", 1_572_864), ("4MB", 4_000_000), ("100", 100),
    ("64 kb", 64_000), ("2GiB", 2 * 2**30), (" 10B ", 10), (4096, 4096), (100.7, 100),
])
def test_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("20M", 20_000_000), ("300k", 300_000), ("1.5G", 1_500_000_000),
                                                ("2e7", 20_000_000), (12345, 12345)])
def test_counts(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("5ms", 5.0), ("2 s", 2000.0), ("800us", 0.8), ("3", 3.0), (1.5, 1.5)])
def test_durations(text, expected):
    assert parse_duration_ms(text) == pytest.approx(expected)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("flash_bytes", "-5KB", "must be positive"),
    ("flash_bytes", "0", "must be positive"),
    ("ram_bytes", "nanKB", "not a finite"),
    ("ram_bytes", "12 parsecs", "unknown unit"),
    ("ram_bytes", "", "expected a number"),
    ("ram_bytes", "256K", "ambiguous"),
    ("macs", "20 bananas", "unknown unit"),
    ("macs", float("inf"), "not a finite"),
    ("macs", True, "expected a number"),
    ("latency_ms", "5 parsecs", "unknown unit"),
    ("latency_ms", "-1ms", "must be positive"),
    ("max_accuracy_drop", "-1", "[0, 100]"),
    ("max_accuracy_drop", "lots", "percentage points"),
    ("ram_bytes", "0.5", "less than one whole"),
])
def test_nonsense_is_refused_naming_the_field(field, value, needle):
    with pytest.raises(ValueError) as err:
        Budget(**{field: value})
    assert field in str(err.value) and needle in str(err.value)


def test_budget_from_mapping_merge_and_dict():
    budget = Budget.from_mapping({"flash": "64KB", "ram-bytes": "32KiB", "macs": "20M", "latency": "2ms",
                                  "max_accuracy_drop": "0.5%"})
    assert budget.to_dict() == {"flash_bytes": 64_000, "ram_bytes": 32_768, "macs": 20_000_000, "latency_ms": 2.0,
                                "max_accuracy_drop": 0.5}
    merged = budget.merge({"flash": "128KB", "ram": None})
    assert merged.flash_bytes == 128_000 and merged.ram_bytes == 32_768
    assert Budget(**budget.to_dict()) == budget
    assert "flash <= 64.0 KB" in budget.describe()
    with pytest.raises(ValueError, match="unknown budget field 'flsh'"):
        Budget.from_mapping({"flsh": "1KB"})
    with pytest.raises(ValueError, match="given twice"):
        Budget.from_mapping({"flash": "1KB", "flash_bytes": 2000})


def test_unset_limits_stay_free():
    budget = Budget(macs="1M")
    assert budget.limits() == {"macs": 1_000_000}


@given(st.integers(min_value=1, max_value=10**7), st.sampled_from(sorted(BYTE_UNITS)))
def test_byte_units_round_trip(n, unit):
    assert parse_bytes(f"{n}{unit}") == n * BYTE_UNITS[unit]
    assert parse_bytes(f"{n} {unit.upper()}") == n * BYTE_UNITS[unit]


@given(st.integers(min_value=1, max_value=10**12))
def test_formatted_bytes_parse_back_within_display_precision(n):
    back = parse_bytes(format_bytes(n).replace(" ", ""))
    assert abs(back - n) <= 0.05 * n + 1  # one decimal of KB/MB/GB: within 5%


@given(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), st.sampled_from(sorted(COUNT_UNITS)))
def test_count_units_scale_and_floor(x, unit):
    expected = math.floor(x * COUNT_UNITS[unit])
    if expected < 1:
        with pytest.raises(ValueError):
            parse_count(f"{x!r}{unit}")
    else:
        assert parse_count(f"{x!r}{unit}") == expected
