"""Zero-channel equivalence: zero chosen channels, prune exactly those, and the outputs must not move.

If the channel graph missed a coupling (a consumer, a concat offset, a shortcut position), the pruned
model would drop or misalign a live channel and its outputs would differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from graph_nets import TEST_NETS
from torch import nn

from cnncompress.graph import build_channel_graph
from cnncompress.models import CifarResNet, ModelSpec, build_model, load_model, save_checkpoint
from cnncompress.prune import Importance, prune_channels
from cnncompress.train import TrainConfig, fit
from testsupport import SHARED_PRETRAINED

ATOL = 1e-5


class Chosen(Importance):
    """Scores fixed per group id: the zeroed channels score 0, so exactly they are pruned."""

    name = "chosen"

    def __init__(self, scores: dict[int, torch.Tensor]) -> None:
        self.scores = scores

    def score(self, model, group):
        return self.scores[group.id]


@torch.no_grad()
def zero_channels(model: nn.Module, x: torch.Tensor, frac: float, seed: int = 0,
                  exclude: tuple[str, ...] = ()) -> dict[int, torch.Tensor]:
    """Zero ``round(frac * size)`` random channels of every group at all their producers (filters, norms)."""
    graph = build_channel_graph(model, x[:1], exclude=exclude)
    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for group in graph.groups:
        drop = torch.randperm(group.size, generator=gen)[:round(frac * group.size)].tolist()
        scores[group.id] = torch.ones(group.size, dtype=torch.float64)
        scores[group.id][drop] = 0
        for binding, classes in zip(group.bindings, group.index, strict=True):
            if binding.role in ("out", "bn", "affine"):
                module = model.get_submodule(binding.module)
                for c in drop:
                    for p in (module.weight, module.bias):
                        if p is not None:
                            p[classes[c]] = 0
    return scores


def check_equivalent(model: nn.Module, x: torch.Tensor, frac: float = 0.3, exclude: tuple[str, ...] = ()) -> None:
    model.eval()
    scores = zero_channels(model, x, frac, exclude=exclude)
    assert any(bool((s == 0).any()) for s in scores.values()), "nothing was chosen for pruning"
    with torch.no_grad():
        reference = model(x)
    pruned, record = prune_channels(model, x, ratio=frac, criterion=Chosen(scores), exclude=exclude,
                                    return_record=True)
    assert record.macs_after < record.macs_before and record.params_after < record.params_before
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), reference, rtol=0, atol=ATOL)


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BatchNorm realistic running statistics from real images (for untrained zoo models)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()(x)
    return model.eval()


@pytest.fixture(scope="module")
def digits_x(digits_test):
    return digits_test.tensors()[0][:64]


@pytest.mark.parametrize("name", sorted(TEST_NETS))
def test_test_graphs(name, digits_x):
    torch.manual_seed(0)
    check_equivalent(calibrate_bn(TEST_NETS[name](), digits_x), digits_x)


def test_option_a_shortcuts_on_a_tiny_resnet(digits_x):
    torch.manual_seed(0)
    model = calibrate_bn(CifarResNet(depth=8, in_channels=1), digits_x)
    check_equivalent(model, digits_x, frac=0.4)


def test_trained_digits_cnn(digits_train, digits_x):
    model = build_model("digits_cnn")
    fit(model, digits_train, TrainConfig(epochs=2, batch_size=64, lr=0.05, augment=False), progress=False)
    check_equivalent(model, digits_x)


def test_lenet_flatten_into_linear(mnist_test_small):
    x = mnist_test_small.tensors()[0][:32]
    torch.manual_seed(0)
    check_equivalent(build_model("lenet5"), x)
    check_equivalent(build_model("lenet300"), x)


@pytest.mark.shared
@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_pretrained_resnets(name, cifar10_test_small):
    path = next(SHARED_PRETRAINED.glob(f"{name}-*.th"))
    model, _, _ = load_model(path, ModelSpec(name))
    check_equivalent(model, cifar10_test_small.tensors()[0][:16], frac=0.35)


@pytest.mark.parametrize("name", ["vgg16_bn", "mobilenetv2"])
def test_cifar_zoo_models(name, cifar10_test_small):
    torch.manual_seed(0)
    x = cifar10_test_small.tensors()[0][:16]
    check_equivalent(calibrate_bn(build_model(name), x), x)


def test_pruned_grouped_conv_reloads_from_its_spec(tmp_path, digits_x):
    spec = ModelSpec(f"{Path(__file__).with_name('graph_nets.py')}:GroupedNet")
    torch.manual_seed(0)
    model = calibrate_bn(spec.build(), digits_x)
    pruned = prune_channels(model, digits_x, ratio=0.5).eval()
    assert pruned.grouped[0].in_channels == 4 and pruned.grouped[0].groups == 1  # one whole group left
    loaded, _, _ = load_model(save_checkpoint(tmp_path / "g.pt", pruned, spec), spec)  # a user factory: named
    torch.testing.assert_close(loaded(digits_x), pruned(digits_x), rtol=0, atol=0)
