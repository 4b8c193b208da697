"""The zoo: exact parameter counts, forward shapes, user factories and spec round trips."""

from __future__ import annotations

import textwrap

import pytest
import torch

from cnncompress.models import ModelSpec, build_model, default_input_shape, model_names

# Exact counts: LeNets from Deep Compression's paper; CIFAR ResNets match the published checkpoints.
EXPECTED_PARAMS = {
    "lenet300": 266_610,
    "lenet5": 431_080,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts_are_exact(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", model_names())
def test_every_zoo_model_maps_its_input_to_class_logits(name):
    model = build_model(name).eval()
    x = torch.randn(2, *default_input_shape(name))
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_num_classes_is_a_constructor_argument():
    assert build_model("resnet20", num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_depth_must_be_six_n_plus_two():
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet20", depth=21)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="resnet56"):
        build_model("resnet57")


def test_user_factory_from_a_file(tmp_path):
    source = tmp_path / "mynet.py"
    source.write_text(textwrap.dedent("""
        from torch import nn
        def tiny(width=4):
            return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    """))
    spec = ModelSpec(f"{source}:tiny", {"width": 6})
    model = spec.build()
    assert model[0].out_channels == 6
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_user_factory_from_a_module_path():
    model = ModelSpec("cnncompress.models.lenet:LeNet300", {"num_classes": 5}).build()
    assert model.fc3.out_features == 5


@pytest.mark.parametrize("ref, message", [
    ("cnncompress.models.lenet:Missing", "no callable named 'Missing'"),
    ("no_such_package_xyz.mod:fn", "cannot import module"),
    ("/nonexistent/file.py:fn", "does not exist"),
])
def test_bad_factory_references_are_explained(ref, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(ref).build()


def test_factory_must_return_a_module():
    with pytest.raises(TypeError, match="not an nn.Module"):
        ModelSpec("builtins:dict").build()
