"""Channel graph and structured pruning on one tiny model per operator family (``tests/opnets.py``).

Per family: the groups the graph finds, exactness (pruned output equals the original with the removed
channels cut at their consumers), a MACs target reached with default arguments, and couplings that
cannot be pruned reported with their reason.
"""

from __future__ import annotations

import logging

import pytest
import torch
from test_channels import LiteralView, group_of, members
from test_equivalence import calibrate_bn, check_equivalent

import opnets
from cnncompress.graph import build_channel_graph
from cnncompress.prune import TargetNotReached, prune_channels

EXACT = sorted(set(opnets.OPNETS) - {"channels_last"})
# Widths at which a MACs target within 2% exists (a single group of 8 channels moves MACs in ~12% steps).
TARGET_NETS = {"se": lambda: opnets.SENet("hardsigmoid", 16), "swish": lambda: opnets.SwishNet(24),
               "densenet": opnets.DenseNet, "shufflev2": opnets.ShuffleV2Net, "upsample": opnets.UpsampleNet,
               "groupnorm": lambda: opnets.NormNet(16), "grouped": lambda: opnets.GroupedNet(16),
               "inception": opnets.InceptionNet, "channels_last": lambda: opnets.ChannelsLastNet(16),
               "split_sizes": opnets.SplitSizesNet, "pools": lambda: opnets.PoolNet(16)}


@pytest.fixture(scope="module")
def digits_x(digits_test):
    return digits_test.tensors()[0][:32]


def graph_of(name: str):
    torch.manual_seed(0)
    return build_channel_graph(opnets.OPNETS[name](), (1, 8, 8))


@pytest.mark.parametrize("name", EXACT)
def test_pruning_is_exact(name, digits_x):
    torch.manual_seed(0)
    check_equivalent(calibrate_bn(opnets.OPNETS[name](), digits_x), digits_x)


def test_channels_last_linears_prune_exactly_with_the_layernorm_channels_kept(digits_x):
    torch.manual_seed(0)
    check_equivalent(calibrate_bn(opnets.ChannelsLastNet(), digits_x), digits_x, exclude=("ln", "head_ln"))


@pytest.mark.parametrize("name", sorted(TARGET_NETS))
def test_half_the_macs_with_default_arguments(name, digits_x):
    torch.manual_seed(0)
    model = TARGET_NETS[name]().eval()
    pruned, record = prune_channels(model, digits_x[:1], target_macs=0.5, return_record=True)
    assert abs(record.macs_fraction / 0.5 - 1) <= 0.02
    assert record.params_after < record.params_before
    assert pruned.eval()(digits_x).shape == (len(digits_x), 10)


def test_groupnorm_groups_go_whole_and_one_group_layernorm_is_kept():
    graph = graph_of("norms")
    (group,) = group_of(graph, "conv1.out")
    assert group.index[0] == [[0, 1, 2, 3], [4, 5, 6, 7]] and "gn.affine" in members(group)
    assert any("ln (LayerNorm) normalises over more than the channel axis" in k["reasons"] for k in graph.kept)
    pruned = prune_channels(opnets.NormNet(), (1, 8, 8), ratio=0.5)
    assert (pruned.gn.num_groups, pruned.gn.num_channels, pruned.conv1.out_channels) == (1, 4, 4)


def test_grouped_convs_keep_their_group_widths():
    graph = graph_of("grouped")
    (group,) = group_of(graph, "g1.0.out")
    assert group.index[0] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # g1's groups of 4 (two of g2's groups of 2 each)
    pruned = prune_channels(opnets.GroupedNet(), (1, 8, 8), ratio=0.5)
    assert (pruned.g1[0].groups, pruned.g2[0].groups, pruned.g2[0].in_channels) == (1, 2, 4)


def test_channel_shuffle_with_size_calls_fixes_nothing():
    graph = graph_of("shufflev2")
    assert set(graph.fixed) == {"model input", "model output"}
    assert sum(g.size for g in graph.groups) > 16  # the branches' inner channels are free


def test_split_sizes_computed_from_the_width_prune_and_constant_sizes_are_reported():
    assert not any("constant sizes" in r for k in graph_of("shufflenet").kept for r in k["reasons"])
    _, record = prune_channels(opnets.SplitSizesNet(), (1, 8, 8), ratio=0.5, return_record=True)
    assert any("has constant sizes [3, 5]" in r for k in record.kept_whole for r in k["reasons"])
    assert record.layers["stem.0"]["out"] == [8, 8] and record.layers["a.0"]["out"] == [16, 8]


def test_inception_concat_offsets():
    graph = graph_of("inception")
    offsets = {m: members(group_of(graph, f"{m}.out")[0])["mix.0.in"] for m in ("b1.0", "b3.2.0", "b5.4.0", "bp.1.0")}
    assert offsets == {"b1.0": [0, 1, 2, 3], "b3.2.0": list(range(4, 10)), "b5.4.0": [10, 11, 12, 13],
                       "bp.1.0": [14, 15]}


def test_se_gate_and_preactivation_densenet_couplings():
    (stem,) = group_of(graph_of("se_sigmoid"), "stem.0.out")
    assert {"expand.out", "reduce.in", "fc.in"} <= set(members(stem))
    dense = graph_of("densenet")
    (first,) = group_of(dense, "layers.0.2.out")
    assert members(first)["layers.1.0.bn"] == [8, 9, 10, 11] and members(first)["norm.bn"] == [8, 9, 10, 11]


def test_channels_last_layernorm_and_linears_are_pruned():
    graph = graph_of("channels_last")
    (stream,) = group_of(graph, "stem.0.out")
    assert {"dw.out", "ln.affine", "up.in", "down.out", "head_ln.affine", "fc.in"} <= set(members(stream))
    pruned = prune_channels(opnets.ChannelsLastNet(), (1, 8, 8), ratio=0.5)
    assert pruned.ln.normalized_shape == (4,) and pruned.up.out_features == 8
    assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_a_prune_that_removes_nothing_says_why(caplog):  # LiteralView: a hard-coded view keeps every channel
    with caplog.at_level(logging.WARNING, logger="cnncompress.prune.structured"):
        pruned, record = prune_channels(LiteralView(), (1, 8, 8), ratio=0.5, return_record=True)
    assert record.macs_after == record.macs_before
    assert len(record.warnings) == 1 and "dropped 0 of 14" in record.warnings[0]
    assert "no channel can be pruned" in record.warnings[0] and "hard-codes a channel count" in record.warnings[0]
    assert record.warnings[0] in caplog.text
    with pytest.raises(TargetNotReached, match=r"closest reachable is 1\.000 .*hard-codes a channel count"):
        prune_channels(LiteralView(), (1, 8, 8), target_macs=0.5)
