"""Each calibrator on distributions whose right answer is known."""

from __future__ import annotations

import pytest
import torch

from cnncompress.quant import KL, MSE, MinMax, MovingAverageMinMax, Percentile, QuantSpec, make_calibrator
from cnncompress.quant.calibrate import clipping_mse

AFFINE8 = QuantSpec(bits=8, symmetric=False, signed=False)
SYM4 = QuantSpec(bits=4, symmetric=True, signed=True)


def _gauss(n=200_000, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_minmax_is_the_exact_extremes_per_tensor_and_per_channel():
    cal = MinMax(AFFINE8)
    cal.observe(torch.tensor([-1.0, 0.5]))
    cal.observe(torch.tensor([2.0, 3.0]))
    assert [t.item() for t in cal.range(AFFINE8)] == [-1.0, 3.0]
    per_channel = QuantSpec(bits=8, per_channel=True)
    cal = MinMax(per_channel)
    cal.observe(torch.tensor([[1.0, -2.0], [0.5, 4.0]]))
    lo, hi = cal.range(per_channel)
    assert lo.tolist() == [-2.0, 0.5] and hi.tolist() == [1.0, 4.0]


def test_moving_average_follows_the_batches_with_momentum():
    cal = MovingAverageMinMax(AFFINE8, momentum=0.1)
    cal.observe(torch.tensor([0.0, 1.0]))
    cal.observe(torch.tensor([0.0, 3.0]))
    assert cal.range(AFFINE8)[1].item() == pytest.approx(1.2)


def test_percentile_matches_the_gaussian_quantile_and_ignores_an_outlier():
    cal = Percentile(AFFINE8, percentile=99.9)
    x = _gauss()
    x[0] = 1000.0
    cal.observe(x)
    lo, hi = cal.range(AFFINE8)
    assert hi.item() == pytest.approx(3.09, abs=0.15)
    assert lo.item() == pytest.approx(-3.09, abs=0.15)


def test_mse_finds_the_known_optimal_clip_for_a_gaussian_at_4_bits():
    """Banner et al. (2019): the MSE-optimal 4-bit clipping of N(0, 1) is about 2.5 sigma."""
    cal = MSE(SYM4)
    x = _gauss()
    cal.observe(x)
    lo, hi = cal.range(SYM4)
    assert 2.2 < hi.item() < 2.9 and lo.item() == -hi.item()
    full = x.abs().max()
    values = cal.values()
    assert clipping_mse(values, lo, hi, SYM4) < 0.5 * clipping_mse(values, -full[None], full[None], SYM4)


def test_kl_clips_a_heavy_tail_but_keeps_a_uniform_range():
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    torch.manual_seed(0)
    heavy = torch.distributions.Laplace(0.0, 1.0).sample((200_000,)).abs()
    heavy[:20] = 60.0  # a few far outliers
    cal = KL(spec)
    cal.observe(heavy)
    hi = cal.range(spec)[1].item()
    assert 4.0 < hi < 0.5 * heavy.max().item()
    uniform = torch.rand(200_000, generator=torch.Generator().manual_seed(3))
    cal = KL(spec)
    cal.observe(uniform)
    assert cal.range(spec)[1].item() > 0.95


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "mse", "kl"])
def test_every_calibrator_refuses_bad_data_and_empty_state(name):
    cal = make_calibrator(name, AFFINE8)
    with pytest.raises(RuntimeError, match="no data"):
        cal.range(AFFINE8)
    with pytest.raises(ValueError, match="non-finite"):
        cal.observe(torch.tensor([1.0, float("inf")]))


def test_unknown_calibrator_is_named():
    with pytest.raises(ValueError, match="minmax"):
        make_calibrator("entropy2", AFFINE8)


def test_kl_is_not_fooled_by_the_relu_spike_at_zero():
    """Half the values of a ReLU output are exactly 0; the threshold must follow the positive tail."""
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    cal = KL(spec)
    cal.observe(torch.relu(_gauss(seed=4)))
    assert 3.0 < cal.range(spec)[1].item() < 4.6  # 2.0 if the zero bin drives the divergence
    cal = KL(spec)
    torch.manual_seed(0)
    cal.observe(torch.relu(torch.distributions.Laplace(0.0, 1.0).sample((200_000,))))
    assert cal.range(spec)[1].item() > 5.0
