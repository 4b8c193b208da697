"""Predict flash, RAM and MACs of a compressed model from full-width per-layer figures, fast.

The planner weighs thousands of candidate settings, so it cannot build each model. ``CostModel``
traces the model once and records, per conv/linear layer, its weights and MACs at full width and
which *channel group* sets its input and output widths; per activation buffer, its size, group and
lifetime (the profiler's live-tensor analysis). A candidate (``Choice``: keep ratio per group, weight
bits and sparsity per layer, one activation width) is then costed with integer arithmetic that
matches what ``analysis.profile`` reports for the physically shrunk model.

Channel groups: channels that must keep the same count (a conv's outputs, the BN/ReLU/pool after
it, everything added to it in a residual sum, a depthwise conv's both sides). The default derivation
below is conservative: any op that changes the channel count other than conv/linear (concatenation,
channel padding as in option-A ResNet shortcuts) or any unrecognised module fixes the channels it
touches, as do the model input and output. A pruning stage with a full channel graph can pass its
own grouping instead (``CostModel(layers, buffers, ...)``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..analysis.activations import live_buffers
from ..analysis.cost import layer_macs
from ..analysis.inputs import ExampleInput, model_device, one_image

FIXED = "<fixed>"  # label of channels no plan may change
_CHANNEL_PRESERVING = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SiLU,
    nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
)
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
    depthwise: bool = False

    def scaled(self, value: int, kept_in: int, kept_out: int) -> int:
        """``value`` (weights or MACs) with kept input/output channels; exact for ungrouped layers."""
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
    """

    bias_bits: int = 32
    scale_bytes: int = 4
    layer_bytes: int = 64
    fixed_bytes: int = 1024
    index_bits: int = 4

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
                 scratch_bytes: int = 0) -> None:
        self.layers = layers
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
        gm, live = live_buffers(model, one_image(example_input, model_device(model)))
        labels = _ChannelLabels(gm)
        layers = labels.layers()
        groups = labels.group_channels(layers)
        nodes = list(gm.graph.nodes)
        buffers = [labels.buffer(nodes[b.first], b.elements, b.first, b.last, groups)
                   for b in live]
        layer_names = set(labels.layer_names)
        extra = sum(_extra_param_bytes(m) for n, m in model.named_modules() if n not in layer_names)
        return cls(layers, buffers, groups, len(nodes), flash, extra, scratch_bytes)

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
        """Flash, RAM (activation peak + scratch), MACs and conv/linear weight count of ``choice``.

        ``latency``: an object with ``predict_ms(macs)`` (``LatencyModel``) to add a latency figure.
        """
        self.check(choice)
        flash, macs, weights = self.flash.fixed_bytes + self.extra_flash_bytes, 0, 0
        for layer in self.layers:
            kin, kout = self.layer_io(choice, layer)
            bits, sparsity = choice.bits.get(layer.name, 32), choice.sparsity.get(layer.name, 0.0)
            flash += self.layer_flash(layer, kin, kout, bits, sparsity)
            macs += layer.scaled(layer.macs, kin, kout)
            weights += layer.scaled(layer.weights, kin, kout)
        ram = max(self.ram_profile(choice), default=0) + self.scratch_bytes
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
                "extra_flash_bytes": self.extra_flash_bytes, "scratch_bytes": self.scratch_bytes}


def _extra_param_bytes(module: nn.Module) -> int:
    """fp32 bytes of parameters owned by modules that are neither conv/linear nor folded BN."""
    if isinstance(module, _FOLDED):
        return 0
    return sum(p.numel() * 4 for p in module.parameters(recurse=False))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {FIXED: FIXED}

    def add(self, item: str) -> str:
        self.parent.setdefault(item, item)
        return item

    def find(self, item: str) -> str:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, *items: str) -> str:
        roots = {self.find(i) for i in items}
        root = FIXED if FIXED in roots else min(roots, key=list(self.parent).index)
        for r in roots:
            self.parent[r] = root
        return root


_ELEMENTWISE = {operator.add, operator.mul, operator.sub, operator.iadd, operator.imul, torch.add, torch.mul,
                torch.sub, "add", "add_", "mul", "mul_", "sub", "sub_"}


class _ChannelLabels:
    """Label every fx node's output channels with a group (union-find), recording conv/linear layers."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.uf = _UnionFind()
        self.label: dict[fx.Node, str] = {}
        self.raw_layers: list[tuple[str, nn.Module, str, str, int, bool]] = []
        self.layer_names: list[str] = []
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            self._visit(node, modules)

    @staticmethod
    def _shape(node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def _inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if n in self.label]

    def _visit(self, node: fx.Node, modules: dict[str, nn.Module]) -> None:
        if node.op == "placeholder":
            self.label[node] = FIXED
        elif node.op == "output":
            self.uf.union(FIXED, *(self.label[n] for n in self._inputs(node)))
        elif node.op == "call_module":
            self._module(node, modules[str(node.target)])
        elif node.op in ("call_function", "call_method") and self._shape(node) is not None:
            self._function(node)

    def _module(self, node: fx.Node, module: nn.Module) -> None:
        inputs = self._inputs(node)
        source = self.label[inputs[0]] if inputs else FIXED
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            self.label[node] = self._layer(node, module, inputs[0], source)
        elif isinstance(module, _CHANNEL_PRESERVING):
            self.label[node] = source
        else:
            self.uf.union(FIXED, *(self.label[n] for n in inputs))
            self.label[node] = FIXED

    def _layer(self, node: fx.Node, module: nn.Module, source_node: fx.Node, source: str) -> str:
        """Record a conv/linear call and return the label of its output channels."""
        name = str(node.target)
        if name in self.layer_names:
            raise ValueError(f"layer {name!r} runs more than once (shared weights); the cost model needs "
                             "one call per layer")
        in_shape, out_shape = self._shape(source_node), self._shape(node)
        macs = layer_macs(module, (torch.empty(in_shape, device="meta"),), torch.empty(out_shape, device="meta"))
        groups = getattr(module, "groups", 1)
        depthwise = groups > 1 and groups == module.in_channels == module.out_channels
        if depthwise:
            out = source
        elif groups > 1:  # grouped conv: widths must stay multiples of the group count; leave them
            source = out = self.uf.union(source, FIXED)
        else:
            out = self.uf.add(name)
        self.raw_layers.append((name, module, source, out, macs, depthwise))
        self.layer_names.append(name)
        return out

    def _function(self, node: fx.Node) -> None:
        inputs = [n for n in self._inputs(node) if self._shape(n) is not None]
        if not inputs:
            self.label[node] = FIXED
            return
        out_shape = self._shape(node)
        same = all(_channels(self._shape(n)) == _channels(out_shape) for n in inputs)
        if len(inputs) == 1 and _is_flatten(self._shape(inputs[0]), out_shape):
            self.label[node] = self.label[inputs[0]]
        elif same and (len(inputs) == 1 or node.target in _ELEMENTWISE):
            self.label[node] = self.uf.union(*(self.label[n] for n in inputs))
        else:
            self.uf.union(FIXED, *(self.label[n] for n in inputs))
            self.label[node] = FIXED

    def group_of(self, label: str) -> str | None:
        root = self.uf.find(label)
        return None if root == FIXED else root

    def layers(self) -> list[LayerSpec]:
        out = []
        for name, module, src, dst, macs, depthwise in self.raw_layers:
            weight = module.weight
            in_c = weight.shape[1] * getattr(module, "groups", 1)
            out_c = weight.shape[0]
            in_group, out_group = self.group_of(src), self.group_of(dst)
            out.append(LayerSpec(name, in_c, out_c, weight.numel(), macs, in_group, out_group, depthwise))
        return self._resolve_flatten(out)

    def _resolve_flatten(self, layers: list[LayerSpec]) -> list[LayerSpec]:
        """A linear layer after a flatten sees C*H*W features: count its input in channels of C."""
        by_name = {layer.name: layer for layer in layers}
        resolved = []
        for layer in layers:
            if layer.in_group is not None and not layer.depthwise:
                channels = by_name[layer.in_group].out_channels
                if layer.in_channels % channels:
                    raise ValueError(f"layer {layer.name}: {layer.in_channels} inputs do not split into "
                                     f"{channels} channels of group {layer.in_group}")
                layer = LayerSpec(layer.name, channels, layer.out_channels, layer.weights, layer.macs,
                                  layer.in_group, layer.out_group)
            resolved.append(layer)
        return resolved

    def group_channels(self, layers: list[LayerSpec]) -> dict[str, int]:
        return {layer.out_group: layer.out_channels for layer in layers
                if layer.out_group is not None and layer.out_group == layer.name}

    def buffer(self, node: fx.Node, elements: int, first: int, last: int, groups: Mapping[str, int]
               ) -> ActivationBuffer:
        label = self.label.get(node, FIXED)
        group = self.group_of(label) if label != FIXED else None
        channels = groups.get(group, 0) if group else 0
        if group is None or not channels or elements % channels:
            return ActivationBuffer(elements, 1, None, first, last)
        return ActivationBuffer(elements, channels, group, first, last)


def _is_flatten(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> bool:
    """(N, C, ...) -> (N, C*...): channels stay proportional to the features."""
    return (before is not None and after is not None and len(before) > 2 and len(after) == 2
            and after[1] == math.prod(before[1:]))


def _channels(shape: tuple[int, ...] | None) -> int | None:
    return shape[1] if shape is not None and len(shape) >= 2 else None
