"""The channel dependency graph: which channels of which layers must be removed together.

Every channel of every traced tensor is an *element*. Operations tie elements together: an add ties
channel i of each operand to channel i of the sum, ``cat`` ties input channels to offset output
channels, flatten ties channel c to the H*W features it becomes, a grouped conv ties its input group
k to its output group k. What each operation does is one entry in the handler table of
:mod:`cnncompress.graph.ops`; this module is the small core the handlers share: a union-find over
elements, parameter-axis bindings and fixed elements with their reasons. The connected components
are the prunable *channels*; channels that touch the same parameter axes form a
:class:`ChannelGroup`. Elements the graph cannot rewrite safely (model inputs and outputs, unknown
operations, constants in forward code) are *fixed*, and every channel touching one is kept, with the
reason recorded per kept set (:attr:`ChannelGraph.kept`).

A node's elements enumerate the channel dimensions ``span`` of its output (one dimension, 1 by
default; two after a view splits channels for a shuffle; the last after a channels-last permute).

A :class:`Binding` says which parameter axis an element indexes: ``out``/``in`` (conv filters or
linear rows / their input columns; a grouped conv binds only ``out``: its groups are pruned whole),
``bn`` (BatchNorm), ``affine`` (per-channel parameters of GroupNorm, LayerNorm, PReLU), ``pad``
(output positions of an option-A :class:`~cnncompress.models.PadShortcut`).
"""

from __future__ import annotations

import fnmatch
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..analysis.inputs import ExampleInput
from .ops import handler_for
from .trace import node_shape, trace_with_shapes


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
        """Modules whose filters produce these channels (``out`` roles), in graph order."""
        return list(dict.fromkeys(b.module for b in self.bindings if b.role == "out"))

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


@dataclass(frozen=True)
class LayerCall:
    """One call of a conv/linear module: its output shape at full width (for exact MAC counts)."""

    module: str
    out_shape: tuple[int, ...]
    channel_dim: int


@dataclass
class ChannelGraph:
    """Prunable channel groups of a model, why the other channels are kept, and its MACs by call."""

    groups: list[ChannelGroup]
    bindings: list[Binding]
    fixed: dict[str, list[str]]  # reason -> nodes it fixed
    module_types: dict[str, str]
    kept: list[dict[str, Any]] = field(default_factory=list)  # kept channel sets: members and reasons
    calls: list[LayerCall] = field(default_factory=list)
    other_macs: int = 0  # MACs of operations outside conv/linear calls (their channels are fixed)
    node_groups: dict[str, int] = field(default_factory=dict)  # node -> the one group all its channels are in

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups],
                "prunable_channels": sum(g.size for g in self.groups),
                "kept_because": {reason: nodes for reason, nodes in self.fixed.items()},
                "kept": self.kept}

    def describe(self) -> str:
        parts = [g.describe() for g in self.groups]
        parts += [f"kept: {reason} ({', '.join(nodes[:4])}{' ...' if len(nodes) > 4 else ''})"
                  for reason, nodes in self.fixed.items()]
        return "\n".join(parts)

    def macs(self, model: nn.Module) -> int:
        """MACs of one image through ``model``: this graph's model or a copy shrunk along it."""
        return self.other_macs + sum(self.call_macs(model))

    def call_macs(self, model: nn.Module) -> list[int]:
        """MACs of each conv/linear call, counted on ``model``'s (possibly shrunk) modules."""
        from ..analysis.cost import layer_macs  # the profiler's rule; analysis imports this package

        counts = []
        for call in self.calls:
            module = model.get_submodule(call.module)
            shape = list(call.out_shape)
            shape[call.channel_dim] = module.weight.shape[0]
            counts.append(layer_macs(module, (), torch.empty(shape, device="meta")))
        return counts


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

    def roots(self) -> list[int]:
        """The root of every element (parents point to smaller indices, so one forward pass suffices)."""
        parent = self.parent
        for i, p in enumerate(parent):
            parent[i] = parent[p]
        return parent


class Builder:
    """Walks the traced graph once, dispatching every node to its handler in :mod:`.ops`.

    Handlers use the small vocabulary below: elements of a node (``alloc``, ``has``, ``span``),
    ties (``link``, ``tie``, ``lockstep``), parameter axes (``bind``) and ``fix`` with a reason.
    """

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.modules = dict(model.named_modules())
        self.node_by_name = {n.name: n for n in graph.nodes}
        self.uf = _UnionFind()
        self.offset: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.span: dict[str, tuple[int, int]] = {}
        self.bindings: dict[tuple[str, str], Binding] = {}
        self.fixed: dict[int, str] = {}  # element -> the first reason it was fixed for
        self.reasons: dict[str, list[str]] = defaultdict(list)
        self.splits: dict[str, tuple[fx.Node, list[int]] | None] = {}  # split node -> (source, offsets)
        self.calls: list[LayerCall] = []

    # -- elements --------------------------------------------------------------------------------
    def alloc(self, node: fx.Node, span: tuple[int, int] = (1, 2)) -> None:
        """Give ``node`` one element per entry of its output dimensions ``span`` (row-major)."""
        if self.span.get(node.name) == span:
            return
        n = math.prod(node_shape(node)[span[0]:span[1]])
        self.offset[node.name] = self.uf.extend(n)
        self.size[node.name] = n
        self.span[node.name] = span

    def has(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node.name in self.offset

    def same(self, a: Any, b: fx.Node) -> bool:
        """Both carry channels on the same dimensions, equally many."""
        return (self.has(a) and self.has(b) and self.span[a.name] == self.span[b.name]
                and self.size[a.name] == self.size[b.name] and len(node_shape(a)) == len(node_shape(b)))

    def carries(self, src: Any, node: fx.Node) -> bool:
        """``node`` has ``src``'s channel dims, equally sized (so channel i may stay channel i)."""
        if not (self.has(src) and node_shape(node) is not None):
            return False
        (s, e), a, b = self.span[src.name], node_shape(src), node_shape(node)
        return len(a) == len(b) and a[s:e] == b[s:e]

    def link(self, a: fx.Node, b: fx.Node, a_start: int = 0, b_start: int = 0, n: int | None = None) -> None:
        """Tie element ``a_start + i`` of ``a`` to ``b_start + i`` of ``b`` for ``n`` elements."""
        n = self.size[a.name] - a_start if n is None else n
        oa, ob = self.offset[a.name] + a_start, self.offset[b.name] + b_start
        parent, find = self.uf.parent, self.uf.find
        for i in range(n):  # union-find's union, inlined: this loop is most of the graph's own time
            ra, rb = find(oa + i), find(ob + i)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    def tie(self, node: fx.Node, indices: Iterable[int], other: fx.Node | None = None,
            other_indices: Iterable[int] = ()) -> None:
        """Tie ``indices`` of ``node`` (and ``other_indices`` of ``other``) into one channel."""
        elements = [self.offset[node.name] + i for i in indices]
        if other is not None:
            elements += [self.offset[other.name] + i for i in other_indices]
        for e in elements[1:]:
            self.uf.union(elements[0], e)

    def lockstep(self, node: fx.Node, parts: int) -> None:
        """Tie channel i of each of ``parts`` equal slices of ``node``'s channels together."""
        width = self.size[node.name] // parts
        for k in range(1, parts):
            self.link(node, node, 0, k * width, width)

    def fix(self, reason: str, *nodes: Any) -> None:
        for node in nodes:
            if self.has(node):
                start = self.offset[node.name]
                for e in range(start, start + self.size[node.name]):
                    self.fixed.setdefault(e, reason)
                self.reasons[reason].append(node.name)

    def fix_all(self, node: fx.Node, reason: str) -> None:
        self.fix(reason, node, *self.tensor_inputs(node))

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if self.has(n)]

    def bind(self, module: str, role: str, node: fx.Node) -> None:
        key = (module, role)
        if key in self.bindings:  # a module called twice: both calls must keep the same channels
            self.link(self.node_by_name[self.bindings[key].node], node)
        else:
            self.bindings[key] = Binding(module, role, node.name, self.size[node.name])

    def record_call(self, module: str, node: fx.Node, channel_dim: int) -> None:
        self.calls.append(LayerCall(module, node_shape(node), channel_dim))

    # -- walk ------------------------------------------------------------------------------------
    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            shape = node_shape(node)
            if shape is not None and len(shape) >= 2:
                self.alloc(node)
            module = self.modules[node.target] if node.op == "call_module" else None
            handler_for(node, module)(self, node, module)


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
    modules = dict(model.named_modules())

    def opaque(node: fx.Node) -> bool:  # operations whose MACs the graph's layer calls do not count
        module = modules.get(node.target) if node.op == "call_module" else None
        return node.op in ("call_module", "call_function", "call_method") and handler_for(node, module).opaque

    graph = trace_with_shapes(model, example_input, leaf_modules, measure=opaque)
    builder = Builder(model, graph)
    builder.run(graph)
    bindings = list(builder.bindings.values())
    for b in bindings:
        if b.role != "in" and _matches(b.module, exclude):
            builder.fix(f"excluded by the user ({b.module})", builder.node_by_name[b.node])
    groups, kept, node_groups = _groups(builder, bindings)
    types = {n: type(m).__name__ for n, m in modules.items()}
    other = sum(n.meta.get("macs", 0) for n in graph.nodes)
    return ChannelGraph(groups, bindings, dict(builder.reasons), types, kept, builder.calls, other, node_groups)


def _groups(builder: Builder, bindings: list[Binding]
            ) -> tuple[list[ChannelGroup], list[dict[str, Any]], dict[str, int]]:
    """Prunable groups, the kept channel sets with the reasons that fixed them, and the nodes whose
    channels all lie in one group (their activations shrink with it)."""
    roots = builder.uf.roots()
    fixed_reasons: dict[int, set[str]] = defaultdict(set)
    for e, reason in builder.fixed.items():
        fixed_reasons[roots[e]].add(reason)
    members: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for k, b in enumerate(bindings):
        start = builder.offset[b.node]
        for i, root in enumerate(roots[start:start + b.size]):
            members[root][k].append(i)
    by_signature: dict[tuple[int, ...], list[int]] = defaultdict(list)
    kept: dict[tuple[int, ...], set[str]] = defaultdict(set)
    for root, per_binding in members.items():
        signature = tuple(sorted(per_binding))
        if root in fixed_reasons:
            kept[signature] |= fixed_reasons[root]
        elif any(bindings[k].role != "pad" for k in per_binding):
            by_signature[signature].append(root)
    groups, group_of_root = [], {}
    for signature, group_roots in sorted(by_signature.items()):
        group_roots.sort(key=lambda r: members[r][signature[0]][0])
        index = [[members[r][k] for r in group_roots] for k in signature]
        group_of_root.update(dict.fromkeys(group_roots, len(groups)))
        groups.append(ChannelGroup(len(groups), [bindings[k] for k in signature], index))
    kept_sets = [{"members": [f"{bindings[k].module}.{bindings[k].role}" for k in signature],
                  "reasons": sorted(reasons)} for signature, reasons in sorted(kept.items())]
    node_groups = {}
    for name, start in builder.offset.items():
        owners = {group_of_root.get(r) for r in roots[start:start + builder.size[name]]}
        if len(owners) == 1 and None not in owners:
            node_groups[name] = owners.pop()
    return groups, kept_sets, node_groups
