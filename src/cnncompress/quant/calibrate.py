"""Range estimation (calibration): from observed values to the ``[lo, hi]`` a quantizer should cover.

Calibrators only see data and return a range; turning the range into scale/zero point is
``spec.qparams``'s job, so every calibrator works for any bit width and grid. Min-max variants keep
running statistics; percentile, MSE and KL keep a seeded random sample of the values (plus the exact
extremes), which is plenty for 1-D range searches and bounded in memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .spec import QuantSpec, qparams

CALIBRATORS = ("minmax", "moving_average", "percentile", "mse", "kl")


def _check_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError("calibration saw non-finite values (NaN/inf) in an activation or weight")


class Calibrator:
    """Observes tensors, then proposes a range for a ``QuantSpec``; the base keeps exact extremes."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the CPU as (channels, values) for per-channel specs, (1, values) otherwise."""
        _check_finite(x)
        x = x.detach().float().cpu()
        if self.spec.per_channel:
            return x.movedim(self.spec.axis, 0).reshape(x.shape[self.spec.axis], -1)
        return x.reshape(1, -1)

    def update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def observe(self, x: torch.Tensor) -> None:
        rows = self.rows(x)
        self.update(rows.min(1).values, rows.max(1).values)

    def range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None or self.hi is None:
            raise RuntimeError("calibrator observed no data: run calibration batches first")
        return self.lo, self.hi


class MinMax(Calibrator):
    """The full observed range: no clipping error, the coarsest grid."""


class MovingAverageMinMax(Calibrator):
    """Exponential moving average of per-batch extremes: robust to a few outlier batches."""

    def __init__(self, spec: QuantSpec, momentum: float = 0.1) -> None:
        super().__init__(spec)
        self.momentum = momentum

    def update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


class _Sampled(Calibrator):
    """Keeps exact extremes plus up to ``per_batch`` random values of each observed tensor."""

    def __init__(self, spec: QuantSpec, per_batch: int = 1 << 15, seed: int = 0) -> None:
        super().__init__(spec)
        self.per_batch = per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.samples: list[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        rows = self.rows(x)
        self.update(rows.min(1).values, rows.max(1).values)
        if rows.shape[1] > self.per_batch and not self.spec.per_channel:
            idx = torch.randint(rows.shape[1], (self.per_batch,), generator=self.generator)
            rows = rows[:, idx]
        self.samples.append(rows)

    def values(self) -> torch.Tensor:
        if not self.samples:
            raise RuntimeError("calibrator observed no data: run calibration batches first")
        return torch.cat(self.samples, 1)


class Percentile(_Sampled):
    """Clip to the ``percentile`` of the values (of |x| for symmetric grids)."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, **kw) -> None:
        super().__init__(spec, **kw)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.q = percentile / 100

    def range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values()
        if spec.symmetric:
            bound = torch.quantile(v.abs(), self.q, dim=1)
            return -bound, bound
        return torch.quantile(v, 1 - self.q, dim=1), torch.quantile(v, self.q, dim=1)


def clipping_mse(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Mean squared quantization error per row of ``values`` for the grid covering ``[lo, hi]``."""
    from .core import fake_quantize

    scale, zero_point = qparams(lo, hi, spec)
    err = fake_quantize(values, scale, zero_point, spec.qmin, spec.qmax, axis=0) - values
    return err.pow(2).mean(1)


def mse_range(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec, steps: int = 100
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink ``[lo, hi]`` by the factor in (0, 1] minimising each row's quantization MSE."""
    best = torch.full_like(lo, math.inf)
    best_lo, best_hi = lo.clone(), hi.clone()
    for alpha in torch.linspace(1.0, 1.0 / steps, steps):
        mse = clipping_mse(values, lo * alpha, hi * alpha, spec)
        better = mse < best
        best = torch.where(better, mse, best)
        best_lo = torch.where(better, lo * alpha, best_lo)
        best_hi = torch.where(better, hi * alpha, best_hi)
    return best_lo, best_hi


class MSE(_Sampled):
    """The clipping range that minimises mean squared quantization error on the observed values."""

    def range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = super().range(spec)
        if spec.symmetric and spec.signed:  # the grid is symmetric anyway: search its half-width
            hi = torch.maximum(-lo, hi)
            lo = -hi
        return mse_range(self.values(), lo, hi, spec)


def _kl_threshold(hist: np.ndarray, edges: np.ndarray, levels: int) -> float:
    """TensorRT's entropy calibration: the threshold whose ``levels``-level histogram is closest in KL."""
    n = len(hist)
    best, best_i = math.inf, n
    for i in range(max(levels, n // 16), n + 1, max(1, n // 512)):
        sliced = hist[:i].astype(np.float64)
        p = sliced.copy()
        p[-1] += hist[i:].sum()  # clipped values pile up in the last bin of the reference
        nonzero = sliced > 0
        group = (np.arange(i) * levels) // i
        sums = np.bincount(group, weights=sliced, minlength=levels)
        counts = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        p, q = p / p.sum(), q / max(q.sum(), 1e-12)
        q = np.where(q > 0, q, 1e-4 / i)  # smoothing: a bin the quantized copy lost costs, not infinity
        kl = float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


class KL(_Sampled):
    """Entropy calibration: minimise KL divergence between the value histogram and its quantized copy."""

    def __init__(self, spec: QuantSpec, bins: int = 2048, **kw) -> None:
        super().__init__(spec, **kw)
        self.bins = bins

    def range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = super().range(spec)
        values = self.values()
        out_lo, out_hi = lo.clone(), hi.clone()
        levels = spec.qmax - spec.qmin + 1
        for row in range(values.shape[0]):
            v = values[row].numpy()
            one_sided = lo[row] >= 0 and not spec.symmetric
            mag = v if one_sided else np.abs(v)
            top = float(mag.max())
            if top <= 0:
                continue
            hist, edges = np.histogram(mag, bins=self.bins, range=(0.0, top))
            hist[0] = hist[1]  # as NVIDIA's entropy calibrator: the ReLU spike at 0 would dominate P
            t = _kl_threshold(hist, edges, levels if one_sided else levels // 2)
            out_hi[row] = min(float(hi[row]), t)
            out_lo[row] = max(float(lo[row]), -t) if not one_sided else lo[row]
        return out_lo, out_hi


def make_calibrator(name: str, spec: QuantSpec) -> Calibrator:
    """A fresh calibrator by name (one of ``CALIBRATORS``)."""
    classes = {"minmax": MinMax, "moving_average": MovingAverageMinMax, "percentile": Percentile,
               "mse": MSE, "kl": KL}
    if name not in classes:
        raise ValueError(f"unknown calibration {name!r}; choose one of {', '.join(CALIBRATORS)}")
    return classes[name](spec)
