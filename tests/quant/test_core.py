"""The quantizer core: grid bounds, round trips, ONNX-identical rounding, gradients."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from cnncompress.quant import FakeQuantize, QuantSpec, dequantize, fake_quantize, qparams, quantize_tensor
from cnncompress.utils import NO_WEIGHT_DECAY

specs = st.builds(QuantSpec, bits=st.integers(2, 8), symmetric=st.booleans(), signed=st.booleans())
ranges = st.tuples(st.floats(-100, 0), st.floats(1e-3, 100))


def _grid(spec, lo, hi):
    return qparams(torch.tensor([lo]), torch.tensor([hi]), spec)


@settings(max_examples=80, deadline=None)
@given(spec=specs, rng=ranges, seed=st.integers(0, 2**16))
def test_codes_stay_in_range_and_round_trip(spec, rng, seed):
    lo, hi = rng
    scale, zp = _grid(spec, lo, hi)
    x = torch.empty(512).uniform_(lo * 2 - 1, hi * 2 + 1, generator=torch.Generator().manual_seed(seed))
    q = quantize_tensor(x, scale, zp, spec.qmin, spec.qmax)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax
    assert torch.equal(q, q.round())
    back = dequantize(q, scale, zp)
    assert torch.equal(quantize_tensor(back, scale, zp, spec.qmin, spec.qmax), q)  # idempotent on the grid
    inside = (x >= dequantize(torch.tensor(float(spec.qmin)), scale, zp)) & \
             (x <= dequantize(torch.tensor(float(spec.qmax)), scale, zp))
    assert ((back - x)[inside].abs() <= scale / 2 * (1 + 1e-5)).all()
    assert quantize_tensor(torch.zeros(1), scale, zp, spec.qmin, spec.qmax).item() == zp.item()  # zero exact


@settings(max_examples=40, deadline=None)
@given(spec=specs, rng=ranges)
def test_range_is_covered_and_symmetric_has_zero_point_zero(spec, rng):
    lo, hi = rng
    scale, zp = _grid(spec, lo, hi)
    assert spec.qmin <= zp.item() <= spec.qmax
    if spec.symmetric:
        assert zp.item() == 0
    top = dequantize(torch.tensor(float(spec.qmax)), scale, zp).item()
    bottom = dequantize(torch.tensor(float(spec.qmin)), scale, zp).item()
    slack = 0.0 if spec.symmetric else scale.item() / 2  # the integer zero point moves the grid by < 1/2 step
    assert top >= hi * (1 - 1e-5) - slack
    if not spec.symmetric:
        assert bottom <= lo * (1 - 1e-5) + slack


def test_weight_grid_is_narrow_and_symmetric():
    spec = QuantSpec(bits=4, narrow=True)
    assert (spec.qmin, spec.qmax) == (-7, 7)
    assert (QuantSpec(bits=8, signed=False).qmin, QuantSpec(bits=8, signed=False).qmax) == (0, 255)
    with pytest.raises(ValueError, match="2..8"):
        QuantSpec(bits=9)
    with pytest.raises(ValueError, match="non-finite"):
        qparams(torch.tensor([float("nan")]), torch.tensor([1.0]), spec)


@pytest.fixture(scope="module")
def ort_quantize_linear():
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("z", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@settings(max_examples=60, deadline=None)
@given(rng=ranges, seed=st.integers(0, 2**16))
def test_rounding_matches_onnxruntime_quantizelinear(ort_quantize_linear, rng, seed):
    """Half-to-even ties and saturation agree bit for bit with the runtime the model deploys to."""
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    scale, zp = _grid(spec, *rng)
    gen = torch.Generator().manual_seed(seed)
    ties = (torch.randint(-300, 300, (256,), generator=gen) + 0.5) * scale  # exact .5 cases
    x = torch.cat([ties, torch.randn(256, generator=gen) * 50]).float()
    ours = quantize_tensor(x, scale, zp, spec.qmin, spec.qmax).numpy().astype(np.uint8)
    theirs = ort_quantize_linear.run(None, {"x": x.numpy(), "s": scale.numpy().reshape(()),
                                            "z": zp.numpy().astype(np.uint8).reshape(())})[0]
    np.testing.assert_array_equal(ours, theirs)


def test_straight_through_gradient_is_clipped():
    scale, zp = torch.tensor([0.1]), torch.tensor([0.0])
    x = torch.tensor([-0.5, 0.05, 0.3, 0.9], requires_grad=True)
    fake_quantize(x, scale, zp, -4, 3).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_learnable_scale_gets_lsq_gradient_and_per_channel_broadcasts():
    fq = FakeQuantize(QuantSpec(bits=4, per_channel=True), channels=3)
    fq.set_range(torch.tensor([-1.0, -2.0, -4.0]), torch.tensor([1.0, 2.0, 4.0]))
    fq.mode = "quant"
    fq.make_learnable()
    w = (torch.rand(3, 5) * 2 - 1) * torch.tensor([[1.0], [2.0], [4.0]])
    out = fq(w)
    assert ((out - w).abs().amax(1) <= fq.scale.detach() / 2 + 1e-6).all()
    out.pow(2).sum().backward()
    assert fq.scale.grad is not None and fq.scale.grad.shape == (3,) and fq.scale.grad.abs().sum() > 0
    assert "scale" in dict(fq.named_parameters())
    again = copy.deepcopy(fq)  # deepcopy drops parameter attributes; make_learnable marks the scale again
    again.make_learnable()
    assert getattr(again.scale, NO_WEIGHT_DECAY)
