"""The cost model predicts what the profiler measures on physically narrower models (RAM: the deployed integer
graph's activations, ``profile(..., fused=True)``)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from plan_helpers import ResDepthNet, layer_weights
from torch import nn

from cnncompress.analysis import profile
from cnncompress.graph import build_channel_graph
from cnncompress.models import build_model
from cnncompress.plan import Choice, CostModel, FlashFormat, kept_channels
from cnncompress.prune import prune_channels
from opnets import OPNETS


def test_groups_ties_and_full_width_figures_match_the_profiler():
    model = ResDepthNet()
    cost = CostModel.from_model(model, (1, 8, 8), scratch_bytes=100)
    assert cost.groups == {"conv1": 8, "conv2": 12, "fc1": 20}
    by_name = {layer.name: layer for layer in cost.layers}
    assert by_name["dw"].depthwise and by_name["dw"].in_group == by_name["dw"].out_group == "conv1"
    assert by_name["conv3"].out_group == "conv2"  # tied by the residual sum
    assert cost.group_layers("conv2") == ["conv2", "conv3"] and cost.group_layers("conv1") == ["conv1", "dw"]
    assert by_name["fc1"].in_group == "conv2" and by_name["fc1"].in_channels == 12
    assert by_name["conv1"].in_group is None and by_name["fc2"].out_group is None
    measured = profile(model, (1, 8, 8), act_bits=8, fused=True)
    predicted = cost.predict(Choice(act_bits=8))
    assert predicted.macs == measured.macs
    assert predicted.ram_bytes == measured.peak_activation_bytes + 100
    assert predicted.weights == layer_weights(model)


@pytest.mark.parametrize(("widths", "act_bits"), [((4, 6, 5), 8), ((1, 3, 20), 4), ((8, 12, 1), 32)])
def test_predictions_match_the_profile_of_a_shrunk_model(widths, act_bits):
    full = CostModel.from_model(ResDepthNet(), (1, 8, 8))
    keep = {"conv1": widths[0] / 8, "conv2": widths[1] / 12, "fc1": widths[2] / 20}
    predicted = full.predict(Choice(keep=keep, act_bits=act_bits))
    shrunk = ResDepthNet(*widths)
    measured = profile(shrunk, (1, 8, 8), act_bits=act_bits, fused=True)
    assert (predicted.macs, predicted.ram_bytes) == (measured.macs, measured.peak_activation_bytes)
    assert predicted.weights == layer_weights(shrunk)


def test_zoo_model_at_half_width_matches_profile():
    full = CostModel.from_model(build_model("digits_cnn"), (1, 8, 8))
    half = build_model("digits_cnn", width=8)
    predicted = full.predict(Choice(keep={g: 0.5 for g in full.groups}, act_bits=8))
    measured = profile(half, (1, 8, 8), act_bits=8, fused=True)
    assert (predicted.macs, predicted.ram_bytes) == (measured.macs, measured.peak_activation_bytes)


@pytest.mark.parametrize(("name", "shape"), [("digits_cnn", (1, 8, 8)), ("lenet5", (1, 28, 28))])
def test_groups_agree_with_the_channel_graph(name, shape):
    model = build_model(name)
    cost = CostModel.from_model(model, shape)
    graph = build_channel_graph(model, shape)
    mine = sorted(tuple(cost.group_layers(g)) for g in cost.groups)
    assert mine == sorted(tuple(g.modules) for g in graph.groups)


def test_option_a_resnet_keeps_residual_channels_fixed():
    cost = CostModel.from_model(build_model("resnet20"), (3, 32, 32))
    assert sorted(cost.groups) == sorted(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))


def test_flash_of_one_layer_by_hand():
    fmt = FlashFormat(bias_bits=32, scale_bytes=4, layer_bytes=64, fixed_bytes=1000)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    cost = CostModel.from_model(model, (1, 4, 4), flash=fmt)
    predicted = cost.predict(Choice(bits={"1": 4}, act_bits=8))
    assert predicted.flash_bytes == 1000 + 160 * 4 // 8 + 10 * 4 + 10 * 4 + 64
    float_weights = cost.predict(Choice(act_bits=8)).flash_bytes
    assert float_weights == 1000 + 160 * 4 + 10 * 4 + 64  # no scales for float weights


def _simulated_entries(mask: np.ndarray, index_bits: int) -> int:
    """Relative-index coding: each stored entry holds a gap < 2**index_bits; fillers bridge longer gaps."""
    span, entries, gap = 2**index_bits, 0, 0
    for nonzero in mask:
        if nonzero:
            entries += 1
            gap = 0
        else:
            gap += 1
            if gap == span:
                entries += 1
                gap = 0
    return entries


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.97])
def test_sparse_flash_estimate_matches_simulated_coding(sparsity):
    fmt = FlashFormat(index_bits=4)
    rng = np.random.default_rng(0)
    weights = 200_000
    mask = rng.random(weights) >= sparsity
    simulated = math.ceil(_simulated_entries(mask, 4) * (4 + 4) / 8)
    assert fmt.weight_bytes(weights, 4, sparsity) == pytest.approx(simulated, rel=0.02)
    assert fmt.weight_bytes(weights, 4, 0.0) == weights // 2


def test_choice_validation():
    cost = CostModel.from_model(ResDepthNet(), (1, 8, 8))
    with pytest.raises(ValueError, match="unknown groups/layers"):
        cost.predict(Choice(keep={"nope": 0.5}))
    with pytest.raises(ValueError, match="bit widths"):
        cost.predict(Choice(bits={"conv1": 0}))
    with pytest.raises(ValueError, match="keep ratio"):
        kept_channels(8, 0.0)
    assert kept_channels(8, 0.01) == 1


def _plan_and_prune(model: nn.Module, shape: tuple[int, ...], keep: float):
    """Predict a uniform keep ratio, then prune the groups the planner named as a pruning stage does."""
    cost = CostModel.from_model(model, shape)
    choice = Choice(keep={g: keep for g in cost.groups}, act_bits=8)
    per_layer = {layer: 1 - keep for g in cost.groups for layer in cost.group_layers(g)}
    pruned = prune_channels(model, shape, ratio=0.0, per_layer=per_layer)
    return cost, cost.predict(choice), profile(pruned, shape, act_bits=8, fused=True), pruned


#: nets whose every prunable group covers only part of an axis (one side of a chunk or concat): the
#: planner keeps them at full width and names them in ``unplanned``
PARTIAL_ONLY = {"densenet", "shufflenet", "split_sizes"}


@pytest.mark.parametrize("name", sorted(OPNETS))
def test_plans_on_every_operator_family_are_what_the_pruner_builds(name):
    """The planner sizes the pruner's own groups: MACs and weights of the pruned model exactly,
    RAM never under (a group that covers part of an activation is planned at full width)."""
    torch.manual_seed(0)
    cost, predicted, measured, pruned = _plan_and_prune(OPNETS[name]().eval(), (1, 8, 8), 0.5)
    assert bool(cost.groups) == (name not in PARTIAL_ONLY)
    assert cost.unplanned or name not in PARTIAL_ONLY
    assert predicted.macs == measured.macs
    assert predicted.weights == layer_weights(pruned)
    assert predicted.ram_bytes >= measured.peak_activation_bytes


@pytest.mark.parametrize(("name", "kwargs"), [
    ("mobilenetv3_small", {"width_mult": 0.25}), ("shufflenetv2", {"width_mult": 0.5}),
    ("resnet_gn", {"depth": 8, "num_groups": 4}), ("regnet_cifar", {"width_mult": 0.25, "group_width": 4}),
    ("densenet_cifar", {"depth": 10, "growth_rate": 4}), ("efficientnet_b0", {"width_mult": 0.25, "depth_mult": 0.2}),
])
def test_plans_on_the_zoo_networks_are_what_the_pruner_builds(name, kwargs):
    torch.manual_seed(0)
    cost, predicted, measured, pruned = _plan_and_prune(build_model(name, **kwargs).eval(), (3, 32, 32), 0.5)
    assert cost.groups
    assert predicted.macs == measured.macs and predicted.weights == layer_weights(pruned)
    assert predicted.ram_bytes >= measured.peak_activation_bytes


def test_kernel_calls_count_what_the_c_export_lowers():
    """Adds, pools, windows (the option-A slice + pad is one) and requantizing copies, as the C lowering emits them."""
    from cnncompress.export.c import lower
    from cnncompress.plan.cost import kernel_calls
    from cnncompress.quant import quantize
    from opnets import OddNet

    kinds = {"Add": "add", "Window": "window", "MaxPool": "maxpool", "AvgPool": "avgpool", "Concat": "requant"}
    for model, shape in ((OddNet(), (3, 16, 16)), (build_model("resnet20"), (3, 32, 32)),
                         (build_model("digits_cnn"), (1, 8, 8))):
        torch.manual_seed(0)
        calib = torch.randn(4, *shape)
        qmodel = quantize(model.eval(), calib, calibration="minmax", weight_calibration="minmax")
        lowered: dict[str, int] = {}
        for op in lower(qmodel, shape, calib).ops:
            kind = kinds.get(type(op.handler).__name__)
            if kind:
                lowered[kind] = lowered.get(kind, 0) + len(op.attrs.get("parts", [None]))
        assert kernel_calls(model) == lowered
    assert kernel_calls(build_model("resnet20")) == {"add": 9, "window": 2, "avgpool": 1}


def test_kernel_calls_cost_flash_only_with_a_code_format():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 4 * 4 * 2, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x)) + x  # one add; the ReLU is fused into the conv
            z = torch.relu(self.pool(y))  # a ReLU after a max pool: a requantizing copy
            return self.fc(torch.flatten(torch.cat([z, z], 1), 1))  # two more copies

    fmt = FlashFormat(fixed_bytes=100, op_bytes={"add": 10, "maxpool": 20, "requant": 1})
    cost = CostModel.from_model(Block(), (4, 8, 8), flash=fmt)
    assert cost.op_calls == {"add": 1, "maxpool": 1, "requant": 3}
    plain = CostModel.from_model(Block(), (4, 8, 8), flash=replace(fmt, op_bytes={}))
    assert plain.op_calls == {}
    assert cost.const_flash_bytes == plain.const_flash_bytes + 10 + 20 + 3
    assert cost.predict(Choice(act_bits=8)).flash_bytes - plain.predict(Choice(act_bits=8)).flash_bytes == 33


class _Unfusable(nn.Module):
    """What the deployed graph cannot fuse: a ReLU of a conv output read twice (a copy), a BN after an add
    (a depthwise conv of its own, into which the next ReLU fuses), a ReLU after a max pool (a copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.conv1(x)
        s = torch.relu(self.bn(torch.relu(y) + y))
        return torch.relu(self.pool(self.conv2(s)))


@pytest.mark.parametrize(("name", "shape"), [("digits_cnn", (1, 8, 8)), ("oddnet", (3, 16, 16)),
                                             ("unfusable", (2, 8, 8))])
def test_ram_buffers_are_the_tensors_the_c_export_writes(name, shape):
    """One activation buffer per tensor the integer program writes (BN folded into the conv, ReLU/ReLU6 fused
    into the op before it, copies where they cannot fuse), the input image besides; so the RAM prediction is
    the lower bound of the C arena whenever the input is not part of the peak. No compiler needed."""
    from cnncompress.analysis.activations import live_buffers
    from cnncompress.export.c import lower, plan_arena
    from cnncompress.quant import quantize
    from opnets import OddNet

    torch.manual_seed(0)
    model = {"digits_cnn": lambda: build_model("digits_cnn"), "oddnet": OddNet, "unfusable": _Unfusable}[name]().eval()
    calib = torch.randn(8, *shape)
    program = lower(quantize(model, calib, calibration="minmax", weight_calibration="minmax"), shape, calib)
    gm, buffers = live_buffers(model, calib[:1].clone(), fused=True)
    nodes = list(gm.graph.nodes)
    mine = {nodes[b.first].name: b.elements for b in buffers}
    written = {op.name: program.tensors[op.output].size for op in program.ops}
    if name == "oddnet":  # a slice is a view here, a copy in C: its slice + pad is one op named after the
        # slice (same size), and the lone slice ``short[:, :4]`` (256 values) is a copy no buffer stands for
        written["pad"] = written.pop("getitem")
        assert written.pop("getitem_1") == 256
    assert mine == {"x": math.prod(shape), **written}
    predicted = CostModel.from_model(model, shape).predict(Choice(act_bits=8)).ram_bytes
    assert predicted == plan_arena(program).lower_bound
    assert predicted == profile(model, shape, act_bits=8, fused=True).peak_activation_bytes


def test_ram_of_digits_cnn_by_hand():
    """conv -> BN -> ReLU is one buffer: the peak is conv1's and conv2's outputs (16 + 32 channels of 8x8 at
    8 bits), where the PyTorch graph also holds BN2's output beside conv2's."""
    model = build_model("digits_cnn").eval()
    assert CostModel.from_model(model, (1, 8, 8)).predict(Choice(act_bits=8)).ram_bytes == (16 + 32) * 64
    assert profile(model, (1, 8, 8), act_bits=8).peak_activation_bytes == (32 + 32) * 64
