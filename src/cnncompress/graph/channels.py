"""The channel dependency graph: which channels of which layers must be removed together.

Every channel of every traced tensor is an *element*. Operations tie elements together: an add ties
channel i of each operand to channel i of the sum, ``cat`` ties input channels to offset output
channels, flatten ties channel c to the H*W features it becomes, a depthwise conv ties its input and
output channel. The connected components (a union-find over elements) are the prunable *channels*;
channels that touch the same parameter axes form a :class:`ChannelGroup`. Elements the graph cannot
rewrite safely (model inputs and outputs, unknown operations, constants in forward code) are
*fixed*, and every channel touching one is kept, with the reason recorded.

A :class:`Binding` says which parameter axis an element indexes: ``out``/``in`` (conv filters or
linear rows / their input columns), ``gin`` (input channels of a grouped conv: channel i is weight
column i % (in/groups); its groups are pruned in lockstep so they stay equal), ``dw`` (a depthwise
conv, in == out), ``bn`` (BatchNorm), ``pad`` (output positions of an option-A
:class:`~cnncompress.models.PadShortcut`).
"""

from __future__ import annotations

import fnmatch
import math
import operator
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..analysis.inputs import ExampleInput
from ..models.resnet_cifar import PadShortcut
from .trace import node_shape, trace_with_shapes, tuple_shapes

_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
                operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
                torch.maximum, torch.minimum, torch.where}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum"}
_PRESERVING = {torch.relu, torch.sigmoid, torch.tanh, torch.clamp, F.relu, F.relu6, F.hardtanh, F.sigmoid,
               F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.dropout, F.max_pool2d,
               F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, torch.abs}
_PRESERVING_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_",
                       "contiguous", "clone", "detach", "abs", "float", "to"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_PRESERVING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                       nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d,
                       nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                       nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)
_NON_TENSOR_METHODS = {"size", "dim", "numel"}


@dataclass(frozen=True)
class Binding:
    """Parameter axis ``role`` of module ``module`` is indexed by the channels of traced node ``node``."""

    module: str
    role: str
    node: str
    size: int


@dataclass
class ChannelGroup:
    """Channels touching the same parameter axes; ``index[b][c]``: binding b's axis indices of channel c."""

    id: int
    bindings: list[Binding]
    index: list[list[list[int]]] = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.index[0])

    @property
    def modules(self) -> list[str]:
        """Modules whose filters produce these channels (``out``/``dw`` roles), in graph order."""
        return list(dict.fromkeys(b.module for b in self.bindings if b.role in ("out", "dw")))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "channels": self.size, "members": [
            {"module": b.module, "role": b.role, "axis_size": b.size,
             "indices": _ranges(sorted(i for cls in self.index[k] for i in cls))}
            for k, b in enumerate(self.bindings)]}

    def describe(self) -> str:
        return format_group(self.to_dict())


def format_group(group: dict[str, Any]) -> str:
    """Human-readable lines of a :meth:`ChannelGroup.to_dict` (one line per coupled parameter axis)."""
    lines = [f"group {group['id']}: {group['channels']} channels"]
    for m in group["members"]:
        lines.append(f"  {m['module']}.{m['role']} [{m['indices']}] of {m['axis_size']}")
    return "\n".join(lines)


@dataclass
class ChannelGraph:
    """Prunable channel groups of a model, plus why the other channels are kept."""

    groups: list[ChannelGroup]
    bindings: list[Binding]
    fixed: dict[str, list[str]]  # reason -> nodes it fixed
    module_types: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups],
                "prunable_channels": sum(g.size for g in self.groups),
                "kept_because": {reason: nodes for reason, nodes in self.fixed.items()}}

    def describe(self) -> str:
        parts = [g.describe() for g in self.groups]
        parts += [f"kept: {reason} ({', '.join(nodes[:4])}{' ...' if len(nodes) > 4 else ''})"
                  for reason, nodes in self.fixed.items()]
        return "\n".join(parts)


def _ranges(indices: list[int]) -> str:
    """Compact "0-7,12,14-15" text of sorted indices."""
    out: list[str] = []
    start = prev = None
    for i in [*indices, None]:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ",".join(out)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def extend(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Builder:
    """Walks the traced graph once, tying elements and recording bindings and fixed elements."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.modules = dict(gm.named_modules())
        self.node_by_name = {n.name: n for n in gm.graph.nodes}
        self.uf = _UnionFind()
        self.offset: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.bindings: dict[tuple[str, str], Binding] = {}
        self.fixed: set[int] = set()
        self.reasons: dict[str, list[str]] = defaultdict(list)
        self.splits: dict[str, tuple[fx.Node, list[int]] | None] = {}  # split node -> (source, offsets)

    # -- element helpers -------------------------------------------------------------------------
    def has(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node.name in self.offset

    def link(self, a: fx.Node, b: fx.Node, a_start: int = 0, b_start: int = 0, n: int | None = None) -> None:
        n = self.size[a.name] - a_start if n is None else n
        oa, ob = self.offset[a.name] + a_start, self.offset[b.name] + b_start
        for i in range(n):
            self.uf.union(oa + i, ob + i)

    def fix(self, reason: str, *nodes: Any) -> None:
        for node in nodes:
            if self.has(node):
                start = self.offset[node.name]
                self.fixed.update(range(start, start + self.size[node.name]))
                self.reasons[reason].append(node.name)

    def fix_all(self, node: fx.Node, reason: str) -> None:
        self.fix(reason, node, *self.tensor_inputs(node))

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if self.has(n) else None)
        return found

    def bind(self, module: str, role: str, node: fx.Node) -> None:
        key = (module, role)
        if key in self.bindings:  # a module called twice: both calls must keep the same channels
            self.link(self.node_by_name[self.bindings[key].node], node)
        else:
            self.bindings[key] = Binding(module, role, node.name, self.size[node.name])

    def same(self, a: fx.Node, b: fx.Node) -> bool:
        sa, sb = node_shape(a), node_shape(b)
        return sa is not None and sb is not None and len(sa) == len(sb) and sa[1] == sb[1]

    def preserve(self, node: fx.Node, source: Any) -> None:
        if self.has(source) and self.same(source, node):
            self.link(source, node)
        else:
            self.fix_all(node, f"{_op_name(node)} changes the channel count in a way the graph cannot follow")

    # -- walk ------------------------------------------------------------------------------------
    def run(self, gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            shape = node_shape(node)
            if shape is not None and len(shape) >= 2:
                self.offset[node.name] = self.uf.extend(shape[1])
                self.size[node.name] = shape[1]
            if node.op == "placeholder":
                self.fix("model input", node)
            elif node.op == "output":
                self.fix("model output", *self.tensor_inputs(node))
            elif node.op == "get_attr":
                self.fix("a parameter or buffer used directly in forward code", node)
            elif node.op == "call_module":
                self.module_node(node)
            elif node.op in ("call_function", "call_method"):
                self.function_node(node)

    def module_node(self, node: fx.Node) -> None:
        m, name = self.modules[node.target], str(node.target)
        src = node.args[0] if node.args else None
        if not self.has(src) or not self.has(node):
            self.fix_all(node, f"module {name} ({type(m).__name__}) has no channel-shaped input/output")
        elif isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            self.conv(node, m, name, src)
        elif isinstance(m, nn.Linear) and len(node_shape(src)) == 2:
            self.bind(name, "in", src)
            self.bind(name, "out", node)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and self.same(src, node):
            self.link(src, node)
            self.bind(name, "bn", node)
        elif isinstance(m, PadShortcut):
            self.link(src, node, 0, m.pad_before)
            self.bind(name, "pad", node)
        elif isinstance(m, nn.Flatten) and m.end_dim == -1 and m.start_dim == 1:
            self.flatten(node, src)
        elif isinstance(m, _PRESERVING_MODULES):
            self.preserve(node, src)
        else:
            self.fix_all(node, f"module {name} ({type(m).__name__}) is opaque to the channel graph")

    def conv(self, node: fx.Node, m: nn.Module, name: str, src: fx.Node) -> None:
        if m.groups == 1:
            self.bind(name, "in", src)
            self.bind(name, "out", node)
        elif m.groups == m.in_channels == m.out_channels:
            self.link(src, node)
            self.bind(name, "dw", node)
        else:  # grouped: every group must keep the same positions, so tie channel j of all groups together
            self.lockstep(src, m.groups)
            self.lockstep(node, m.groups)
            self.bind(name, "gin", src)
            self.bind(name, "out", node)

    def lockstep(self, node: fx.Node, parts: int) -> None:
        """Tie channel i of each of ``parts`` equal slices of ``node``'s channels together."""
        width = self.size[node.name] // parts
        for k in range(1, parts):
            self.link(node, node, 0, k * width, width)

    def flatten(self, node: fx.Node, src: fx.Node) -> None:
        shape, out = node_shape(src), node_shape(node)
        per = math.prod(shape[2:])
        if len(out) != 2 or out[1] != shape[1] * per:
            self.fix_all(node, f"{_op_name(node)} reshapes channels in a way the graph does not model")
            return
        o_src, o_out = self.offset[src.name], self.offset[node.name]
        for f in range(out[1]):
            self.uf.union(o_out + f, o_src + f // per)

    def function_node(self, node: fx.Node) -> None:
        target = node.target
        method = target if node.op == "call_method" else None
        src = node.args[0] if node.args else None
        if method in _NON_TENSOR_METHODS or target is getattr:
            return
        if target in (torch.split, torch.chunk) or method in ("split", "chunk"):
            self.split(node, src, chunk=target is torch.chunk or method == "chunk")
        elif target is operator.getitem:
            self.getitem(node, src)
        elif not self.has(node):
            self.fix_all(node, f"{_op_name(node)} returns channels the graph cannot follow")
        elif target in _ELEMENTWISE or method in _ELEMENTWISE_METHODS:
            self.elementwise(node)
        elif target in _PRESERVING or method in _PRESERVING_METHODS:
            self.preserve(node, src)
        elif target in (torch.cat, torch.concat):
            self.cat(node)
        elif target is torch.flatten or method == "flatten":
            self.flatten_call(node, src)
        elif method in ("view", "reshape") or target is torch.reshape:
            self.view(node, src)
        elif method in _REDUCE_METHODS or target in (torch.mean, torch.sum):
            self.reduce(node, src)
        elif target is F.pad:
            self.pad(node, src)
        else:
            self.fix_all(node, f"{_op_name(node)} is not understood by the channel graph")

    def elementwise(self, node: fx.Node) -> None:
        out = node_shape(node)
        for arg in self.tensor_inputs(node):
            shape = node_shape(arg)
            if len(shape) == len(out) and shape[1] == out[1]:
                self.link(arg, node)
            elif not (len(shape) == len(out) and shape[1] == 1):
                self.fix_all(node, f"{_op_name(node)} broadcasts over channels in an unsupported way")

    def cat(self, node: fx.Node) -> None:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ndim = len(node_shape(node))
        if not all(self.has(p) for p in parts):
            self.fix_all(node, "torch.cat of tensors the graph cannot follow")
        elif dim % ndim == 1:
            start = 0
            for part in parts:
                self.link(part, node, 0, start)
                start += self.size[part.name]
        else:
            for part in parts:
                self.preserve(node, part)

    def split(self, node: fx.Node, src: Any, chunk: bool) -> None:
        args = list(node.args[1:])
        size_arg = args[0] if args else node.kwargs.get("split_size_or_sections", node.kwargs.get("chunks"))
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        shapes = tuple_shapes(node)
        if not self.has(src) or shapes is None:
            self.splits[node.name] = None
            return
        ndim = len(node_shape(src))
        if dim % ndim != 1:
            self.splits[node.name] = (src, [0] * len(shapes))  # channels pass through every part unchanged
            return
        sizes = [s[1] for s in shapes]
        # Pieces cut by a count the code computes (chunk(k), split(x.size(1) // k)) stay valid after
        # pruning if every piece loses the same positions: tie channel i of each piece together.
        if (chunk or isinstance(size_arg, fx.Node)) and len(set(sizes)) == 1:
            self.lockstep(src, len(sizes))
            self.splits[node.name] = (src, [k * sizes[0] for k in range(len(sizes))])
        else:
            self.splits[node.name] = None
            self.fix(f"{_op_name(node)} at {node.name} has constant sizes in forward code", src)

    def getitem(self, node: fx.Node, src: Any) -> None:
        if isinstance(src, fx.Node) and src.name in self.splits:
            split = self.splits[src.name]
            if split is None:
                self.fix("a piece of a split with constant sizes", node)
            elif self.has(node):
                self.link(node, split[0], 0, split[1][node.args[1]])
            return
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        channels_whole = index[0] == slice(None) and (len(index) < 2 or index[1] in (slice(None), Ellipsis))
        if self.has(node) and self.has(src) and channels_whole:
            self.preserve(node, src)
        else:
            self.fix_all(node, f"indexing {index} selects channels by constants in forward code")

    def flatten_call(self, node: fx.Node, src: Any) -> None:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if start == 1 and self.has(src):
            self.flatten(node, src)
        else:
            self.fix_all(node, f"{_op_name(node)} with start_dim={start} mixes the batch and channel axes")

    def view(self, node: fx.Node, src: Any) -> None:
        shape_args = node.args[1:]
        if len(shape_args) == 1 and isinstance(shape_args[0], tuple | list):
            shape_args = tuple(shape_args[0])
        literal = len(shape_args) > 1 and isinstance(shape_args[1], int) and shape_args[1] != -1
        shape, out = node_shape(src), node_shape(node)
        if not self.has(src) or literal:
            self.fix_all(node, f"{_op_name(node)} at {node.name} hard-codes a channel count")
        elif out[:2] == shape[:2]:
            self.link(src, node)
        else:
            self.flatten(node, src)

    def reduce(self, node: fx.Node, src: Any) -> None:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dims if isinstance(dims, tuple | list) else (dims,)
        ndim = len(node_shape(src)) if self.has(src) else 0
        if dims[0] is not None and ndim and all(isinstance(d, int) and d % ndim > 1 for d in dims):
            self.link(src, node)  # (N, C, H, W) -> (N, C[, 1, 1]): channel c stays channel c
        else:
            self.fix_all(node, f"{_op_name(node)} reduces over the channel axis")

    def pad(self, node: fx.Node, src: Any) -> None:
        pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        ndim = len(node_shape(src)) if self.has(src) else 0
        if ndim and len(pads) <= 2 * (ndim - 2):
            self.preserve(node, src)
        else:
            self.fix_all(node, "F.pad on the channel axis has constant sizes in forward code "
                               "(use a PadShortcut module)")


def _op_name(node: fx.Node) -> str:
    target = node.target
    return f".{target}()" if node.op == "call_method" else getattr(target, "__name__", str(target))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build_channel_graph(model: nn.Module, example_input: ExampleInput, leaf_modules: Iterable = (),
                        exclude: Iterable[str] = ()) -> ChannelGraph:
    """Trace ``model`` and group its channels.

    ``exclude`` names modules (or fnmatch patterns) whose own output channels must stay; their input
    channels still shrink when the layer feeding them is pruned.
    """
    exclude = list(exclude)
    names = [n for n, _ in model.named_modules()]
    unused = [p for p in exclude if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused:
        raise ValueError(f"exclude names no module of the model: {unused}")
    gm = trace_with_shapes(model, example_input, leaf_modules)
    builder = _Builder(gm)
    builder.run(gm)
    bindings = list(builder.bindings.values())
    for b in bindings:
        if b.role != "in" and _matches(b.module, exclude):
            builder.fix(f"excluded by the user ({b.module})", builder.node_by_name[b.node])
    groups = _groups(builder, bindings)
    types = {n: type(m).__name__ for n, m in model.named_modules()}
    return ChannelGraph(groups, bindings, dict(builder.reasons), types)


def _groups(builder: _Builder, bindings: list[Binding]) -> list[ChannelGroup]:
    uf = builder.uf
    fixed_roots = {uf.find(e) for e in builder.fixed}
    members: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for k, b in enumerate(bindings):
        start = builder.offset[b.node]
        for i in range(b.size):
            root = uf.find(start + i)
            if root not in fixed_roots:
                members[root][k].append(i)
    by_signature: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for root, per_binding in members.items():
        if any(bindings[k].role != "pad" for k in per_binding):
            by_signature[tuple(sorted(per_binding))].append(root)
    groups = []
    for signature, roots in sorted(by_signature.items()):
        roots.sort(key=lambda r: members[r][signature[0]][0])
        index = [[members[r][k] for r in roots] for k in signature]
        groups.append(ChannelGroup(len(groups), [bindings[k] for k in signature], index))
    return groups
