"""The static activation arena: buffer offsets planned from tensor lifetimes.

Every tensor the ops write lives from the op that writes it to the last op that reads it (the
model output to the end, when it is copied out). Greedy first fit by size, as TFLite Micro's
planner does: the largest tensors are placed first, each at the lowest aligned offset that does
not overlap a placed tensor whose lifetime overlaps its own. Two references come with the plan:
the sum of all tensors (no reuse at all) and the lower bound no placement can beat, the largest
total of tensors live at one op.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...analysis.activations import LiveBuffer
from .ir import Program

ALIGN = 4  # word-aligned buffers (Cortex-M loads words faster; some kernels need it)


@dataclass(frozen=True)
class ArenaPlan:
    offsets: dict[str, int]
    size: int  # bytes of the arena, the planned buffers' end
    tensor_sum: int  # bytes of all arena tensors placed end to end
    lower_bound: int  # largest sum of tensors live at one op

    def to_dict(self) -> dict[str, int]:
        return {"arena_bytes": self.size, "activation_sum_bytes": self.tensor_sum,
                "lower_bound_bytes": self.lower_bound}


def lifetimes(program: Program) -> dict[str, LiveBuffer]:
    """Each op-written tensor's size (int8: bytes) and the first and last op index it is live."""
    lives = {op.output: LiveBuffer(program.tensors[op.output].size, i, i) for i, op in enumerate(program.ops)}
    for i, op in enumerate(program.ops):
        for name in op.inputs:
            if name in lives:
                lives[name].last = max(lives[name].last, i)
    lives[program.output].last = len(program.ops)  # read by the final copy to the caller's buffer
    return lives


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _first_fit(size: int, busy: list[tuple[int, int]]) -> int:
    """Lowest aligned offset where ``size`` bytes avoid every (offset, size) in ``busy``."""
    offset = 0
    for start, length in sorted(busy):
        if offset + size <= start:
            break
        offset = max(offset, _align(start + length))
    return offset


def plan_arena(program: Program) -> ArenaPlan:
    lives = lifetimes(program)
    order = sorted(lives, key=lambda name: (-lives[name].elements, lives[name].first))
    offsets: dict[str, int] = {}
    for name in order:
        life = lives[name]
        busy = [(offsets[other], lives[other].elements) for other in offsets
                if lives[other].first <= life.last and life.first <= lives[other].last]
        offsets[name] = _first_fit(life.elements, busy)
    size = max((offsets[n] + lives[n].elements for n in offsets), default=0)
    steps = range(len(program.ops) + 1)
    bound = max((sum(b.elements for b in lives.values() if b.first <= s <= b.last) for s in steps), default=0)
    return ArenaPlan(offsets, size, sum(b.elements for b in lives.values()), bound)
