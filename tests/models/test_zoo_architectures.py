"""The zoo's mobile, dense, grouped and GroupNorm CIFAR networks: they trace, run, hold the operators
they stand for, rebuild from a file's spec, and stay within MAX_FILE_PARAMS over their whole allowed range."""

from __future__ import annotations

import itertools
import operator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from cnncompress.models import MAX_FILE_PARAMS, DropPath, ModelSpec, ModelSpecError, build_model, resolve_factory
from cnncompress.models.checkpoint import load_model, save_checkpoint
from cnncompress.models.registry import zoo_kwargs
from cnncompress.prune import prune_channels

#: parameters at the default keyword arguments (10 classes), low and high
PARAM_RANGES = {
    "mobilenetv3_small": (1_400_000, 1_700_000),
    "efficientnet_b0": (3_900_000, 4_200_000),
    "shufflenetv2": (1_200_000, 1_350_000),
    "densenet_cifar": (150_000, 200_000),
    "regnet_cifar": (2_200_000, 2_450_000),
    "resnet_gn": (250_000, 300_000),
}
NAMES = sorted(PARAM_RANGES)

#: the keyword ranges the registry checks: name -> {kwarg: (low, high)}; depths step by 6
RANGES = {
    "mobilenetv3_small": {"width_mult": (0.1, 4.0)},
    "efficientnet_b0": {"width_mult": (0.1, 2.0), "depth_mult": (0.1, 3.0), "drop_path_rate": (0.0, 0.5)},
    "shufflenetv2": {"width_mult": (0.1, 4.0)},
    "densenet_cifar": {"depth": (10, 190), "growth_rate": (1, 48)},
    "regnet_cifar": {"width_mult": (0.1, 4.0), "group_width": (1, 64)},
    "resnet_gn": {"depth": (8, 164), "num_groups": (1, 32), "width_mult": (0.25, 4.0)},
}
COMMON_RANGES = {"num_classes": (1, 10_000), "in_channels": (1, 64)}

#: keyword arguments away from the defaults, as a file might carry them
REBUILD_KWARGS = {
    "mobilenetv3_small": {"width_mult": 0.75, "num_classes": 7},
    "efficientnet_b0": {"width_mult": 0.5, "depth_mult": 0.5, "drop_path_rate": 0.1, "num_classes": 7},
    "shufflenetv2": {"width_mult": 0.5, "num_classes": 7},
    "densenet_cifar": {"depth": 22, "growth_rate": 6, "num_classes": 7},
    "regnet_cifar": {"width_mult": 0.5, "group_width": 4, "num_classes": 7},
    "resnet_gn": {"depth": 8, "num_groups": 4, "width_mult": 0.5, "num_classes": 7, "in_channels": 1},
}


def _ranges(name: str) -> dict[str, tuple[float, float]]:
    return {**RANGES[name], **COMMON_RANGES}


def _step(key: str, bound: float) -> float:
    return 6 if key == "depth" else 1 if isinstance(bound, int) else 0.01


def _meta_params(name: str, kwargs: dict) -> int:
    """Parameters of the model built with checked ``kwargs``, on the meta device (nothing allocated)."""
    checked = zoo_kwargs(name, kwargs)
    with torch.device("meta"):
        return sum(p.numel() for p in resolve_factory(name)(**checked).parameters())


def _graph_ops(gm: fx.GraphModule) -> set:
    """Module types, functions and method names the traced graph calls."""
    modules = dict(gm.named_modules())
    return {type(modules[n.target]) if n.op == "call_module" else n.target
            for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    torch.manual_seed(0)
    return request.param, build_model(request.param).eval()


def test_builds_traces_and_maps_images_to_logits(built):
    name, model = built
    low, high = PARAM_RANGES[name]
    assert low <= sum(p.numel() for p in model.parameters()) <= high
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.allclose(fx.symbolic_trace(model)(x), out, atol=1e-5)


def test_traces_in_training_mode(built):
    _, model = built
    try:
        fx.symbolic_trace(model.train())
    finally:
        model.eval()


#: the operators each network stands for in issue 17, as its eval-mode graph calls them
OPERATORS = {
    "mobilenetv3_small": {nn.Hardswish, nn.Hardsigmoid, operator.mul, operator.add},
    "efficientnet_b0": {nn.SiLU, nn.Sigmoid, operator.mul, operator.add},
    "shufflenetv2": {"size", "chunk", "view", "transpose", "contiguous", torch.cat},
    "densenet_cifar": {torch.cat, nn.AvgPool2d, nn.BatchNorm2d},
    "regnet_cifar": {nn.Conv2d, operator.add},
    "resnet_gn": {nn.GroupNorm, operator.add},
}


def test_graph_holds_the_operators_the_network_stands_for(built):
    name, model = built
    assert OPERATORS[name] <= _graph_ops(fx.symbolic_trace(model))


def test_special_layers_are_where_the_pruner_must_handle_them(built):
    name, model = built
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if name == "regnet_cifar":  # grouped, not depthwise
        assert any(1 < m.groups < m.in_channels for m in convs)
    if name == "resnet_gn":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if name == "densenet_cifar":  # a BatchNorm that opens a layer, after a concat
        assert isinstance(model.features[1].layers[1][0].norm, nn.BatchNorm2d)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 4, 4)
    assert drop.eval()(x) is x
    out = drop.train()(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all() and 0 < (per_sample[:, 0] == 0).sum() < 64


def test_efficientnet_graph_has_stochastic_depth_only_in_training():
    model = build_model("efficientnet_b0", depth_mult=0.1, width_mult=0.1)
    assert "bernoulli_" not in _graph_ops(fx.symbolic_trace(model.eval()))
    training = fx.symbolic_trace(model.train())
    assert "bernoulli_" in _graph_ops(training)
    assert training(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_rebuilds_from_a_files_spec(name):
    spec = ModelSpec(name, REBUILD_KWARGS[name])
    rebuilt = ModelSpec.from_dict(spec.to_dict()).build().eval()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in spec.build().state_dict().items()}
    channels = REBUILD_KWARGS[name].get("in_channels", 3)
    with torch.no_grad():
        assert rebuilt(torch.randn(2, channels, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name, key", [(n, k) for n in NAMES for k in _ranges(n)])
def test_keyword_ranges_are_enforced(name, key):
    low, high = _ranges(name)[key]
    assert zoo_kwargs(name, {key: low}) == {key: low} and zoo_kwargs(name, {key: high}) == {key: high}
    for outside in (low - _step(key, low), high + _step(key, high)):
        with pytest.raises(ModelSpecError, match=key):
            ModelSpec.from_dict({"factory": name, "kwargs": {key: outside}}).build()


@pytest.mark.parametrize("name, kwargs", [
    ("densenet_cifar", {"depth": 41}), ("resnet_gn", {"depth": 21}), ("shufflenetv2", {"width_mult": "2"}),
    ("regnet_cifar", {"group_width": 8.0}), ("efficientnet_b0", {"dropout": 0.2}),
])
def test_malformed_keywords_are_refused(name, kwargs):
    with pytest.raises(ModelSpecError, match=next(iter(kwargs))):
        ModelSpec.from_dict({"factory": name, "kwargs": kwargs}).build()


#: keywords whose largest value does not always give the most parameters (widths round to their multiples)
ROUNDING = {"group_width", "num_groups"}


@pytest.mark.parametrize("name", NAMES)
def test_the_largest_allowed_models_fit_the_file_limit(name):
    ranges = _ranges(name)
    choices = [(low, high) if key in ROUNDING else (high,) for key, (low, high) in ranges.items()]
    for values in itertools.product(*choices):
        assert _meta_params(name, dict(zip(ranges, values, strict=True))) <= MAX_FILE_PARAMS


def _value(key: str, low: float, high: float) -> st.SearchStrategy:
    if key == "depth":
        return st.integers(0, int(high - low) // 6).map(lambda n: int(low) + 6 * n)
    if isinstance(low, int):
        return st.integers(low, high)
    return st.floats(low, high)


def _allowed_kwargs(name: str) -> st.SearchStrategy:
    return st.fixed_dictionaries({k: _value(k, lo, hi) for k, (lo, hi) in _ranges(name).items()})


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(NAMES).flatmap(lambda name: st.tuples(st.just(name), _allowed_kwargs(name))))
def test_any_allowed_keywords_build_within_the_file_limit(case):
    name, kwargs = case
    assert 0 < _meta_params(name, kwargs) <= MAX_FILE_PARAMS


@pytest.mark.parametrize("name", NAMES)
def test_pruned_model_reloads_from_its_checkpoint(name, tmp_path):
    """Whole-group pruning (grouped convs, GroupNorm) changes group counts; the checkpoint's shapes restore them."""
    spec = ModelSpec(name, REBUILD_KWARGS[name])
    channels = REBUILD_KWARGS[name].get("in_channels", 3)
    torch.manual_seed(0)
    x = torch.randn(4, channels, 32, 32)
    pruned = prune_channels(spec.build().eval(), x, ratio=0.5).eval()
    loaded, _, _ = load_model(save_checkpoint(tmp_path / "p.pt", pruned, spec))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)
