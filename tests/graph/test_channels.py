"""Structure of the channel graph: which axes each group couples, and why channels are kept."""

from __future__ import annotations

import json

import pytest
from graph_nets import ChannelPadNet, ConcatNet, GroupedNet, SENet, SplitNet, UntraceableNet
from torch import nn

from cnncompress.graph import GraphTraceError, build_channel_graph
from cnncompress.models import build_model


def members(group) -> dict[str, list[int]]:
    """Map "module.role" to the sorted axis indices the group owns there."""
    return {f"{b.module}.{b.role}": sorted(i for cls in classes for i in cls)
            for b, classes in zip(group.bindings, group.index, strict=True)}


def group_of(graph, key: str):
    found = [g for g in graph.groups if key in members(g)]
    assert len(found) >= 1, f"no group touches {key}"
    return found


def test_option_a_residual_groups_map_through_the_shortcut_padding():
    graph = build_channel_graph(build_model("resnet20"), (3, 32, 32))
    assert len(graph.groups) == 12  # 9 block-internal groups + 3 residual groups (one per stage's padding)
    (stem,) = group_of(graph, "conv1.out")
    m = members(stem)
    assert m["layer1.2.conv2.out"] == list(range(16))
    assert m["layer2.0.shortcut.pad"] == list(range(8, 24))  # stage-1 channels sit after 8 padded zeros
    assert m["layer3.0.shortcut.pad"] == list(range(24, 40))
    assert m["linear.in"] == list(range(24, 40))
    padded = [g for g in graph.groups if "layer2.0.shortcut.pad" in members(g) and "conv1.out" not in members(g)]
    assert members(padded[0])["layer2.0.conv2.out"] == [*range(8), *range(24, 32)]
    json.dumps(graph.to_dict())  # inspectable as JSON
    assert "linear.in [24-39] of 64" in stem.describe()


def test_concat_offsets_reach_the_consumer():
    graph = build_channel_graph(ConcatNet(), (1, 8, 8))
    (a,) = group_of(graph, "a.0.out")
    (b,) = group_of(graph, "b.0.out")
    assert members(a)["c.0.in"] == list(range(6))
    assert members(b)["c.0.in"] == list(range(6, 16))


def test_chunk_pieces_are_pruned_in_lockstep():
    graph = build_channel_graph(SplitNet(), (1, 8, 8))
    (stem,) = group_of(graph, "stem.0.out")
    assert [cls for cls in stem.index[0]][:2] == [[0, 6], [1, 7]]  # channel i of each chunk goes together
    assert members(stem)["left.0.in"] == list(range(6)) == members(stem)["right.0.in"]


def test_se_gate_couples_expansion_with_gated_channels_and_flatten_spans_hw():
    graph = build_channel_graph(SENet(), (1, 8, 8))
    (stem,) = group_of(graph, "stem.0.out")
    assert {"fc1.in", "fc2.out", "body.0.in"} <= set(members(stem))
    (body,) = group_of(graph, "body.0.out")
    assert body.index[[b.role for b in body.bindings].index("in")][0] == list(range(16))  # channel 0 -> 16 features


def test_grouped_conv_prunes_whole_groups():
    graph = build_channel_graph(GroupedNet(), (1, 8, 8))
    (group,) = group_of(graph, "grouped.0.out")
    m = members(group)
    assert group.index[0] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # conv group k: its inputs and outputs together
    assert m["stem.0.out"] == m["grouped.0.out"] == m["head.0.in"] == list(range(8))
    assert "grouped.0.in" not in m


def test_channel_pad_in_forward_code_is_kept_with_a_reason():
    graph = build_channel_graph(ChannelPadNet(), (1, 8, 8))
    assert not any("stem.0" in g.modules for g in graph.groups)
    assert any("F.pad on the channel axis" in reason for reason in graph.fixed)


def test_untraceable_module_is_named_and_can_be_declared_a_leaf():
    with pytest.raises(GraphTraceError, match=r"gate \(Gate\)"):
        build_channel_graph(UntraceableNet(), (1, 8, 8))
    graph = build_channel_graph(UntraceableNet(), (1, 8, 8), leaf_modules=["gate"])
    assert [g.modules for g in graph.groups] == [["head.0"]]  # the leaf's input and output stay whole
    assert any("gate (Gate) is opaque" in reason for reason in graph.fixed)


def test_exclude_keeps_a_layers_output_channels_and_rejects_unknown_names():
    model = build_model("digits_cnn")
    graph = build_channel_graph(model, (1, 8, 8), exclude=["conv2"])
    assert [g.modules for g in graph.groups] == [["conv1"], ["conv3"]]  # conv2's input still shrinks
    assert any("excluded by the user (conv2)" in reason for reason in graph.fixed)
    with pytest.raises(ValueError, match="exclude names no module"):
        build_channel_graph(model, (1, 8, 8), exclude=["nope*"])


class LiteralView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 36, 10)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 144))


def test_hard_coded_view_sizes_keep_channels():
    graph = build_channel_graph(LiteralView(), (1, 8, 8))
    assert graph.groups == []
    assert any("hard-codes a channel count" in reason for reason in graph.fixed)


def test_depthwise_groups_pass_channels_through():
    graph = build_channel_graph(build_model("mobilenetv2"), (3, 32, 32))
    (dw,) = group_of(graph, "features.4.block.3.out")  # first block's depthwise conv with expansion
    assert {"features.4.block.0.out", "features.4.block.1.bn", "features.4.block.6.in"} <= set(members(dw))
