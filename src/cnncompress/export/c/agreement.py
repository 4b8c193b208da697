"""How closely the C outputs (int8 logit codes) follow another model's float logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .ir import Grid


@dataclass(frozen=True)
class OutputAgreement:
    """Percentages over ``n`` images: same top-1 class, logits identical once put on the C output grid."""

    n: int
    top1: float
    identical_logits: float
    identical_images: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compare_logits(codes: np.ndarray, logits: np.ndarray, grid: Grid) -> OutputAgreement:
    """Compare int8 output ``codes`` (N, K) with float ``logits`` (N, K) quantized onto ``grid``."""
    codes, logits = np.asarray(codes), np.asarray(logits, np.float32).reshape(len(codes), -1)
    if len(codes) == 0:
        raise ValueError("compare_logits needs at least one image")
    same = codes == grid.quantize(logits)
    return OutputAgreement(len(codes), 100 * float((codes.argmax(1) == logits.argmax(1)).mean()),
                           100 * float(same.mean()), 100 * float(same.all(1).mean()))
