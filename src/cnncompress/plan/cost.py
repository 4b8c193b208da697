"""Predict flash, RAM and MACs of a compressed model from full-width per-layer figures, fast.

The planner weighs thousands of candidate settings, so it cannot build each model. ``CostModel``
traces the model once and records, per conv/linear layer, its weights and MACs at full width and
which *channel group* sets its input and output widths; per activation buffer, its size, group and
lifetime (the profiler's live-tensor analysis of the deployed integer graph, where a BatchNorm folds into
the conv before it and a ReLU/ReLU6 fuses into the integer op before it, as in the QDQ ONNX model and the
C export). A candidate (``Choice``: keep ratio per group, weight bits and sparsity per layer, one
activation width) is then costed with integer arithmetic that matches what
``analysis.profile(..., fused=True)`` reports for the physically shrunk model.

Channel groups are the pruner's own (:func:`cnncompress.graph.build_channel_graph`), so a plan names
exactly what a pruning stage can remove. The planner takes the groups that cover every parameter axis
they touch (a conv's outputs, the BN after it, the inputs of its consumers, a grouped conv's whole
groups); a group that covers part of an axis (one side of a chunk, one input of a concat) is planned
at full width, a conservative prediction, and listed in ``CostModel.unplanned``. A group is named by
the first layer that produces it and counted in its units (one unit of a grouped conv's group is a
whole conv group).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import fx, nn

from ..analysis.activations import LiveBuffer, live_buffers
from ..analysis.inputs import ExampleInput, model_device, one_image
from ..graph import ChannelGraph, build_channel_graph

_FOLDED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # folded into the conv at export


@dataclass(frozen=True)
class LayerSpec:
    """Full-width figures of one conv/linear layer; ``None`` group = channels that cannot change."""

    name: str
    in_channels: int
    out_channels: int
    weights: int
    macs: int
    in_group: str | None
    out_group: str | None
    depthwise: bool = False  # any grouped conv: whole groups go, so its cost follows its outputs alone

    def scaled(self, value: int, kept_in: int, kept_out: int) -> int:
        """``value`` (weights or MACs) with kept input/output channels (in their groups' units)."""
        if self.depthwise:
            return value * kept_out // self.out_channels
        return value * kept_in * kept_out // (self.in_channels * self.out_channels)


@dataclass(frozen=True)
class ActivationBuffer:
    """One activation buffer: ``elements`` at full width, the group of its channels, live steps."""

    elements: int
    channels: int
    group: str | None
    first: int
    last: int


@dataclass(frozen=True)
class FlashFormat:
    """Storage rules of the deployable artifact; the overheads are estimates checked by ``verify``.

    Weights are packed at their width; every layer stores a bias per output channel (BN folds into
    it) at ``bias_bits``, and quantized layers (< 32 bits) a scale per output channel. Sparse layers
    use Deep Compression's relative indexing: each kept weight carries an ``index_bits`` gap, with
    filler zeros when a gap exceeds what the index can hold (expected count for random positions).
    ``op_bytes``: flash of each kernel call besides the conv/linear layers, by the kinds
    :func:`kernel_calls` counts (a code-generating runtime such as the C export; empty for the container).
    ``runtime_ram_bytes``: RAM the runtime needs besides the activation buffers (the C kernels' stack).
    """

    bias_bits: int = 32
    scale_bytes: int = 4
    layer_bytes: int = 64
    fixed_bytes: int = 1024
    index_bits: int = 4
    op_bytes: Mapping[str, int] = field(default_factory=dict)
    runtime_ram_bytes: int = 0

    def weight_bytes(self, weights: int, bits: int, sparsity: float) -> int:
        """Bytes of ``weights`` values at ``bits`` with a fraction ``sparsity`` pruned to zero."""
        if sparsity <= 0:
            return (weights * bits + 7) // 8
        density = 1.0 - sparsity
        kept = math.ceil(weights * density)
        span = 2**self.index_bits
        entries = kept / (1.0 - sparsity**span)  # nonzeros plus expected fillers (geometric gaps)
        return math.ceil(entries * (bits + self.index_bits) / 8)

    def layer_bytes_total(self, weights: int, out_channels: int, bits: int, sparsity: float) -> int:
        """Weights, bias, scales and header of one layer."""
        scales = out_channels * self.scale_bytes if bits < 32 else 0
        bias = (out_channels * self.bias_bits + 7) // 8
        return self.weight_bytes(weights, bits, sparsity) + bias + scales + self.layer_bytes


@dataclass(frozen=True)
class Choice:
    """One candidate: keep ratio per group, weight bits and sparsity per layer, activation width.

    Groups/layers not named keep every channel, 32-bit weights and no sparsity.
    """

    keep: Mapping[str, float] = field(default_factory=dict)
    bits: Mapping[str, int] = field(default_factory=dict)
    sparsity: Mapping[str, float] = field(default_factory=dict)
    act_bits: int = 32


@dataclass(frozen=True)
class Prediction:
    """Predicted figures of a candidate (labelled predictions, never measurements)."""

    flash_bytes: int
    ram_bytes: int
    macs: int
    weights: int
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kept_channels(channels: int, keep: float) -> int:
    """Channels left at keep ratio ``keep``, at least one.

    Rounds the *removed* count as the structured-pruning allocator does, so a sensitivity measured at
    prune ratio r and a plan keeping 1 - r describe the same width.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep}")
    return max(1, channels - round(channels * (1.0 - keep)))


class CostModel:
    """Fast cost prediction for candidates; build with ``CostModel.from_model``."""

    def __init__(self, layers: list[LayerSpec], buffers: list[ActivationBuffer], groups: Mapping[str, int],
                 steps: int, flash: FlashFormat | None = None, extra_flash_bytes: int = 0,
                 scratch_bytes: int = 0, unplanned: list[str] | None = None,
                 op_calls: Mapping[str, int] | None = None) -> None:
        self.layers = layers
        self.op_calls = dict(op_calls or {})  # kernel calls besides conv/linear, by kind (see kernel_calls)
        self.unplanned = list(unplanned or [])
        self.buffers = buffers
        self.groups = dict(groups)
        self.steps = steps
        self.flash = flash or FlashFormat()
        self.extra_flash_bytes = extra_flash_bytes
        self.scratch_bytes = scratch_bytes
        names = {layer.name for layer in layers}
        for layer in layers:
            for g in (layer.in_group, layer.out_group):
                if g is not None and g not in self.groups:
                    raise ValueError(f"layer {layer.name!r} refers to unknown channel group {g!r}")
        self.layer_names = [layer.name for layer in layers]
        if len(names) != len(layers):
            raise ValueError("layer names must be unique")

    @classmethod
    def from_model(cls, model: nn.Module, example_input: ExampleInput, flash: FlashFormat | None = None,
                   scratch_bytes: int = 0) -> CostModel:
        """Trace ``model`` once on one image shaped like ``example_input`` and record its costs."""
        example = one_image(example_input, model_device(model))
        graph = build_channel_graph(model, example)
        planned = _planned_groups(graph)
        layers = _layer_specs(model, graph, planned)
        groups = {name: graph.groups[g].size for g, name in planned.items()}
        gm, live = live_buffers(model, example, fused=True)  # BN folded, activations fused
        nodes = list(gm.graph.nodes)
        buffers = [_buffer(graph, planned, nodes[b.first].name, b) for b in live]
        layer_names = {layer.name for layer in layers}
        extra = sum(_extra_param_bytes(m) for n, m in model.named_modules() if n not in layer_names)
        unplanned = [g.modules[0] for g in graph.groups if g.id not in planned and g.modules]
        calls = kernel_calls(model) if flash is not None and flash.op_bytes else {}
        return cls(layers, buffers, groups, len(nodes), flash, extra, scratch_bytes, unplanned, calls)

    @property
    def fixed_ram_bytes(self) -> int:
        """RAM no choice changes: the reserved scratch and what the runtime itself needs."""
        return self.scratch_bytes + self.flash.runtime_ram_bytes

    @property
    def const_flash_bytes(self) -> int:
        """Flash no choice changes: the format's fixed bytes, other modules' parameters, the non-layer calls."""
        ops = sum(self.flash.op_bytes.get(kind, 0) * count for kind, count in self.op_calls.items())
        return self.flash.fixed_bytes + self.extra_flash_bytes + ops

    def group_layers(self, group: str) -> list[str]:
        """Layers whose output channels form ``group`` (what a pruning stage prunes for it)."""
        if group not in self.groups:
            raise ValueError(f"unknown channel group {group!r}; groups: {sorted(self.groups)}")
        return [layer.name for layer in self.layers if layer.out_group == group]

    def kept(self, choice: Choice, group: str | None) -> int | None:
        """Kept channels of ``group`` under ``choice`` (``None`` for fixed channels)."""
        if group is None:
            return None
        return kept_channels(self.groups[group], choice.keep.get(group, 1.0))

    def layer_io(self, choice: Choice, layer: LayerSpec) -> tuple[int, int]:
        """(kept input channels, kept output channels) of ``layer``."""
        kin = self.kept(choice, layer.in_group)
        kout = self.kept(choice, layer.out_group)
        return (layer.in_channels if kin is None else kin), (layer.out_channels if kout is None else kout)

    def layer_flash(self, layer: LayerSpec, kept_in: int, kept_out: int, bits: int, sparsity: float) -> int:
        return self.flash.layer_bytes_total(layer.scaled(layer.weights, kept_in, kept_out), kept_out, bits,
                                            sparsity)

    def buffer_bytes(self, buffer: ActivationBuffer, kept: int | None, act_bits: int) -> int:
        elements = buffer.elements if kept is None else buffer.elements // buffer.channels * kept
        return math.ceil(elements * act_bits / 8)

    def ram_profile(self, choice: Choice) -> list[int]:
        """Live activation bytes at every step (without scratch)."""
        live = [0] * self.steps
        for b in self.buffers:
            size = self.buffer_bytes(b, self.kept(choice, b.group), choice.act_bits)
            for step in range(b.first, b.last + 1):
                live[step] += size
        return live

    def predict(self, choice: Choice, latency: Any = None) -> Prediction:
        """Flash, RAM (activation peak + scratch + runtime), MACs and conv/linear weight count of ``choice``.

        ``latency``: an object with ``predict_ms(macs)`` (``LatencyModel``) to add a latency figure.
        """
        self.check(choice)
        flash, macs, weights = self.const_flash_bytes, 0, 0
        for layer in self.layers:
            kin, kout = self.layer_io(choice, layer)
            bits, sparsity = choice.bits.get(layer.name, 32), choice.sparsity.get(layer.name, 0.0)
            flash += self.layer_flash(layer, kin, kout, bits, sparsity)
            macs += layer.scaled(layer.macs, kin, kout)
            weights += layer.scaled(layer.weights, kin, kout)
        ram = max(self.ram_profile(choice), default=0) + self.fixed_ram_bytes
        ms = latency.predict_ms(macs) if latency is not None else None
        return Prediction(flash, ram, macs, weights, ms)

    def check(self, choice: Choice) -> None:
        """Refuse choices naming unknown groups/layers or impossible values."""
        unknown = (set(choice.keep) - set(self.groups)) | (
            (set(choice.bits) | set(choice.sparsity)) - set(self.layer_names))
        if unknown:
            raise ValueError(f"choice names unknown groups/layers: {sorted(unknown)}")
        if any(not isinstance(b, int) or not 1 <= b <= 32 for b in (*choice.bits.values(), choice.act_bits)):
            raise ValueError(f"bit widths must be integers in 1..32: {dict(choice.bits)}, act {choice.act_bits}")
        if any(not 0 <= s < 1 for s in choice.sparsity.values()):
            raise ValueError(f"sparsity must be in [0, 1): {dict(choice.sparsity)}")

    def to_dict(self) -> dict[str, Any]:
        """Layers, groups and overheads (buffers summarised) for reports."""
        return {"layers": [asdict(layer) for layer in self.layers], "groups": dict(self.groups),
                "buffers": len(self.buffers), "flash_format": asdict(self.flash),
                "extra_flash_bytes": self.extra_flash_bytes, "op_calls": dict(self.op_calls),
                "scratch_bytes": self.scratch_bytes, "unplanned_groups": self.unplanned}


def kernel_calls(model: nn.Module) -> dict[str, int]:
    """Kernel calls an integer runtime makes besides conv/linear, by kind, as the C export lowers the graph.

    One ``add`` per residual add, one ``maxpool`` per max pool, one ``avgpool`` per average or global
    average pool, one ``window`` per slice or zero pad (a slice read only by the pad after it is one call
    with it: the option-A shortcut), one ``requant`` (a requantizing copy) per concat input and per ReLU or
    ReLU6 that no integer op right before it absorbs. Flatten, identity and BN (folded) cost no call.
    Counted on the graph quantization traces, so the model must trace as it must to be quantized.
    """
    from ..quant.graph import trace
    from ..quant.ops import Role, op_kind, role

    gm = trace(model)
    modules = dict(gm.named_modules())
    kinds = {node: op_kind(node, modules) for node in gm.graph.nodes}

    def producer(node: fx.Node) -> fx.Node:  # BN folds into the conv before it
        while kinds[node] == "bn" and len(node.users) == 1:
            node = node.args[0]
        return node

    def absorbed(node: fx.Node) -> bool:  # an activation fused into the integer op (or activation) before it
        source = producer(node.args[0])
        if len(node.args[0].users) != 1:
            return False
        if kinds[source] in ("relu", "relu6"):
            return absorbed(source)
        return role(source, modules) is Role.INTEGER

    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        kind, count = kinds[node], 1
        if kind in ("add", "maxpool"):
            name = kind
        elif kind in ("avgpool", "gap"):
            name = "avgpool"
        elif kind == "slice" or (kind == "pad" and not (kinds[node.args[0]] == "slice"
                                                        and len(node.args[0].users) == 1)):
            name = "window"
        elif kind == "cat":
            name, count = "requant", len(node.args[0]) if isinstance(node.args[0], list | tuple) else 1
        elif kind in ("relu", "relu6") and not absorbed(node):
            name = "requant"
        else:
            continue
        calls[name] = calls.get(name, 0) + count
    return calls


def _extra_param_bytes(module: nn.Module) -> int:
    """fp32 bytes of parameters owned by modules that are neither conv/linear nor folded BN."""
    if isinstance(module, _FOLDED):
        return 0
    return sum(p.numel() * 4 for p in module.parameters(recurse=False))


def _planned_groups(graph: ChannelGraph) -> dict[int, str]:
    """Group id -> name of the groups the planner sizes: produced by a layer, covering every axis they touch."""
    planned = {}
    for group in graph.groups:
        whole = all(sum(map(len, index)) == binding.size and len({len(i) for i in index}) == 1
                    for binding, index in zip(group.bindings, group.index, strict=True))
        if whole and group.modules:
            planned[group.id] = group.modules[0]
    return planned


def _layer_specs(model: nn.Module, graph: ChannelGraph, planned: dict[int, str]) -> list[LayerSpec]:
    """Full-width figures of every conv/linear call, each side in its planned group's units or fixed."""
    side = {(b.module, b.role): (planned[g.id], g.size) for g in graph.groups if g.id in planned
            for b in g.bindings if b.role in ("in", "out")}
    macs: dict[str, int] = {}
    for call, count in zip(graph.calls, graph.call_macs(model), strict=True):
        macs[call.module] = macs.get(call.module, 0) + count
    specs = []
    for name, count in macs.items():
        module = model.get_submodule(name)
        weight, grouped = module.weight, getattr(module, "groups", 1) > 1
        out_group, out_units = side.get((name, "out"), (None, weight.shape[0]))
        in_group, in_units = side.get((name, "in"), (None, weight.shape[1] * getattr(module, "groups", 1)))
        if grouped:  # its inputs are tied to its outputs group by group
            in_group, in_units = out_group, out_units
        specs.append(LayerSpec(name, in_units, out_units, weight.numel(), count, in_group, out_group, grouped))
    return specs


def _buffer(graph: ChannelGraph, planned: dict[int, str], node: str, live: LiveBuffer) -> ActivationBuffer:
    """An activation whose channels all lie in one planned group shrinks with it; any other stays."""
    group = graph.node_groups.get(node)
    units = graph.groups[group].size if group in planned else 0
    if not units or live.elements % units:
        return ActivationBuffer(live.elements, 1, None, live.first, live.last)
    return ActivationBuffer(live.elements, units, planned[group], live.first, live.last)
