"""Sparsity schedules: AGP's cubic ramp (Zhu & Gupta 2017) and iterative prune-retrain rounds."""

from __future__ import annotations

from dataclasses import dataclass


def _check_fraction(value: float, what: str) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value}")
    return float(value)


@dataclass(frozen=True)
class AGPSchedule:
    """Sparsity rises from ``initial`` to the target as ``s_f + (s_i - s_f)(1 - t/T)^3``.

    ``t`` counts training steps from ``start``; ``T = steps``. Masks are recomputed every
    ``every`` steps, so most pruning happens early while the network can still recover.
    """

    steps: int
    start: int = 0
    every: int = 1
    initial: float = 0.0

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.every <= 0 or self.start < 0:
            raise ValueError("AGP schedule needs steps > 0, every > 0 and start >= 0")
        _check_fraction(self.initial, "initial sparsity")

    def sparsity(self, step: int, final: float) -> float:
        """Target sparsity after ``step`` training steps for a final sparsity ``final``."""
        progress = min(max(step - self.start, 0) / self.steps, 1.0)
        initial = min(self.initial, final)
        return final + (initial - final) * (1.0 - progress) ** 3

    def due(self, step: int) -> bool:
        """Whether masks are recomputed at ``step`` (on the grid, until the ramp is over)."""
        offset = step - self.start
        return 0 <= offset <= self.steps and (offset % self.every == 0 or offset == self.steps)


def iterative_rounds(final: float, rounds: int) -> list[float]:
    """Sparsities of ``rounds`` prune-retrain rounds keeping a geometrically shrinking fraction.

    Each round removes the same share of the surviving weights (Han et al. 2015's iterative pruning).
    """
    _check_fraction(final, "final sparsity")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    return [1.0 - (1.0 - final) ** ((i + 1) / rounds) for i in range(rounds)]
