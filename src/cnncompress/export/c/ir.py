"""The integer IR the C backend lowers a quantized model to, and its numpy reference interpreter.

Every tensor is int8 in CHW layout (a flat vector is ``(F, 1, 1)``) on one affine grid; the model's
unsigned activation codes are shifted by -128 into int8, as TFLite does with uint8 models. An op
names its handler (the object that lowered it, which also runs it in numpy and emits its C), so
the interpreter and the code generator need no op table of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .ops import OpHandler

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Grid:
    """An int8 tensor's quantization: ``real = (code - zero_point) * scale``, codes in ``[qmin, qmax]``."""

    scale: float
    zero_point: int
    qmin: int = -128
    qmax: int = 127

    def quantize(self, x: Any) -> np.ndarray:
        """int8 codes of real values, rounded half to even in float32 as the simulation's quantizers do."""
        scaled = np.round(np.asarray(x, np.float32) / np.float32(self.scale))
        return np.clip(scaled + self.zero_point, self.qmin, self.qmax).astype(np.int8)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax}


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: Shape
    grid: Grid

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Op:
    """One kernel call: ``output = handler(inputs)`` with integer attributes and constant arrays."""

    handler: OpHandler
    name: str  # the fx node it came from, for messages and C comments
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Program:
    """A lowered model: ops in execution order over named tensors; ``input`` is owned by the caller."""

    tensors: dict[str, Tensor]
    ops: list[Op]
    input: str
    output: str

    @property
    def input_tensor(self) -> Tensor:
        return self.tensors[self.input]

    @property
    def output_tensor(self) -> Tensor:
        return self.tensors[self.output]


def run_program(program: Program, codes: np.ndarray) -> np.ndarray:
    """The integer reference: int8 output codes ``(N, output size)`` for int8 input codes ``(N, C, H, W)``.

    Arithmetic is int64 numpy mirroring the C kernels' int32 (which the lowering checks cannot overflow).
    """
    codes = np.asarray(codes)
    if codes.dtype != np.int8:
        raise ValueError(f"input codes must be int8, got {codes.dtype}")
    n = codes.shape[0]
    values: dict[str, np.ndarray] = {program.input: codes.reshape(n, *program.input_tensor.shape).astype(np.int64)}
    for op in program.ops:
        values[op.output] = op.handler.run(op, [values[name] for name in op.inputs])
    return values[program.output].reshape(n, -1).astype(np.int8)
