"""Fixed-point requantization: the Python reference against exact rational rounding, and the C
kernel against the Python reference."""

from __future__ import annotations

import ctypes
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompress.export.c.codegen import kernel_sources
from cnncompress.export.c.fixedpoint import quantize_multiplier, requantize
from cnncompress.export.c.host import HOST_FLAGS, compile_c
from cnncompress.export.c.ops import run_requant

multipliers = st.floats(min_value=1e-9, max_value=2.0**20, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(real=multipliers, x=st.integers(-(2**31), 2**31 - 1))
def test_requantize_within_one_step_of_exact_rounding(real: float, x: int) -> None:
    exact = Fraction(x) * Fraction(real)
    if abs(exact) >= 2**31:  # the product no longer fits the int32 the kernels return
        return
    m, shift = quantize_multiplier(real)
    got = int(requantize(np.array([x]), m, shift)[0])
    assert abs(got - exact) <= 1


@given(real=multipliers)
def test_multiplier_is_a_q31_mantissa_and_shift(real: float) -> None:
    m, shift = quantize_multiplier(real)
    if m:
        assert 2**30 <= m < 2**31
        assert abs(Fraction(m, 2**31) * Fraction(2) ** shift - Fraction(real)) <= Fraction(real) * 2**-30


def test_tiny_multiplier_rounds_everything_to_zero_and_bad_ones_are_refused() -> None:
    assert quantize_multiplier(1e-12) == (0, 0)
    for bad in (float("nan"), -1.0, 2.0**40):
        with pytest.raises(ValueError):
            quantize_multiplier(bad)


class RequantParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in ("size", "input_offset", "multiplier", "shift", "output_offset",
                                                     "act_min", "act_max")]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The project's kernels alone, built with the host flags the exports use."""
    if shutil.which("gcc") is None:
        pytest.skip("needs the system C compiler gcc")
    folder: Path = tmp_path_factory.mktemp("kernels")
    for name, text in kernel_sources().items():
        (folder / name).write_text(text)
    library = folder / "libkernels.so"
    compile_c("gcc", [*HOST_FLAGS, "-shared", "-fPIC", str(folder / "cnnc_kernels.c"), "-o", str(library)], "kernels")
    return ctypes.CDLL(str(library))


@settings(max_examples=150, deadline=None)
@given(real=st.floats(min_value=1e-6, max_value=300.0), codes=st.lists(st.integers(-128, 127), min_size=1,
                                                                         max_size=64),
       offsets=st.tuples(st.integers(-128, 127), st.integers(-128, 127)),
       bounds=st.tuples(st.integers(-128, 127), st.integers(-128, 127)))
def test_c_requant_kernel_equals_numpy_reference(kernels: ctypes.CDLL, real: float, codes: list[int],
                                                 offsets: tuple[int, int], bounds: tuple[int, int]) -> None:
    m, shift = quantize_multiplier(real)
    low, high = sorted(bounds)
    attrs = {"size": len(codes), "input_offset": offsets[0], "multiplier": m, "shift": shift,
             "output_offset": offsets[1], "act_min": low, "act_max": high}
    x = np.array(codes, np.int8)
    out = np.zeros_like(x)
    kernels.cnnc_requant(ctypes.byref(RequantParams(**attrs)), x.ctypes.data_as(ctypes.c_void_p),
                         out.ctypes.data_as(ctypes.c_void_p))
    np.testing.assert_array_equal(out, run_requant(x.astype(np.int64), attrs))
