"""Peak activation memory of one inference: the SRAM an MCU-style runtime must hold at once.

The model is traced with torch.fx and run node by node (``ShapeProp``) in topological order.
Aliasing is read off the real tensors rather than guessed from op names: an output that shares
storage with an earlier value (view, reshape, flatten, getitem, in-place ReLU, ``+=``, eval
dropout) joins that value's buffer instead of allocating a new one. A buffer is live from the
step that creates it until the last step that reads it or any of its aliases; the peak is the
largest sum of live buffer sizes over all steps, the input image included. Parameters and
module buffers are weights, not activations, and are never counted.

``fused=True`` counts the deployed integer graph instead of PyTorch's (the planner's RAM model and
the measurement of a deployed model): a BatchNorm that directly and solely follows a conv is folded
into it, and a ReLU/ReLU6 (or clamp to [0, 6]) directly and solely following an integer op (conv,
linear, add, concat, average pooling, ...; a BatchNorm counts as one, folded or run as a depthwise
conv) or another activation is fused into it, as quantization and the C export do. Such a node
writes its producer's buffer instead of allocating one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp

from ..graph.trace import GraphTraceError, trace_model
from .inputs import eval_mode

#: The model could not be traced or replayed by torch.fx, so its activation peak is unknown.
ActivationTraceError = GraphTraceError


@dataclass
class ActivationPeak:
    """Peak live activation bytes and the graph node (execution step) where it occurs."""

    peak_bytes: int
    peak_node: str
    steps: int


@dataclass
class LiveBuffer:
    """One activation storage: its size in elements and the first/last graph step it is live."""

    elements: int
    first: int
    last: int


class _StorageProp(ShapeProp):
    """ShapeProp that also records which storages each node's output occupies.

    Values are kept alive to the end (no garbage collection) so a freed address can never be reused
    by a later tensor and mistaken for an alias.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.garbage_collect_values = False
        self.storages: dict[fx.Node, list[tuple[int, int]]] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            reason = exc.__cause__ or exc
            raise ActivationTraceError(f"running traced node {n.format_node()} failed: {reason}") from exc
        found: list[tuple[int, int]] = []

        def collect(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.numel() > 0:
                storage = value.untyped_storage()
                found.append((storage.data_ptr(), storage.nbytes() // value.element_size()))
            return value

        map_aggregate(result, collect)
        self.storages[n] = found
        return result


def fused_nodes(gm: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """Nodes the deployed integer graph folds or fuses into the op before them: node -> that op's node.

    The rules of quantization (``quant.graph.fold_batchnorm``, activations fused into an integer op) and
    of the C export's lowering; see the module docstring.
    """
    from ..quant.ops import Role, op_kind, role  # the quantizer's op table (imported late: quant uses analysis)

    modules = dict(gm.named_modules())
    fused: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or len(source.users) != 1:
            continue
        kind, source_kind = op_kind(node, modules), op_kind(source, modules)
        if kind == "bn" and source_kind == "conv":
            fused[node] = source
        elif kind in ("relu", "relu6") and (source_kind in ("bn", "relu", "relu6")
                                            or role(source, modules) is Role.INTEGER):
            fused[node] = source  # a clamp of the integer op's output (or of the clamp before it)
    return fused


def _buffers(gm: fx.GraphModule, storages: dict[fx.Node, list[tuple[int, int]]],
             fused: dict[fx.Node, fx.Node] | None = None) -> list[LiveBuffer]:
    """Group node outputs into buffers by storage and extend each buffer's life to its last reader.

    A node in ``fused`` writes the buffer of the node it maps to instead of a new one.
    """
    weights = {t.untyped_storage().data_ptr() for t in (*gm.parameters(), *gm.buffers())}
    fused = fused or {}
    by_ptr: dict[int, LiveBuffer] = {}
    for step, node in enumerate(gm.graph.nodes):
        home = [by_ptr[p] for p, _ in storages.get(fused[node], []) if p in by_ptr] if node in fused else []
        for ptr, elements in storages.get(node, []):
            if ptr not in weights and ptr not in by_ptr:
                by_ptr[ptr] = home[0] if home else LiveBuffer(elements, step, step)
        for source in node.all_input_nodes:
            for ptr, _ in storages.get(source, []):
                if ptr in by_ptr:
                    by_ptr[ptr].last = max(by_ptr[ptr].last, step)
    return list({id(b): b for b in by_ptr.values()}.values())  # one entry per buffer, in creation order


def live_buffers(model: nn.Module, example: torch.Tensor, fused: bool = False
                 ) -> tuple[fx.GraphModule, list[LiveBuffer]]:
    """Trace ``model`` and run ``example`` through it: the graph and its activation buffers' lifetimes.

    Node ``i`` of ``graph.nodes`` is step ``i``; the profiler and the planner's cost model share this.
    ``fused``: as the deployed integer graph runs it (BatchNorm folded, activations fused; module docstring).
    """
    with eval_mode(model):
        gm = trace_model(model)
        prop = _StorageProp(gm)
        prop.propagate(example)
    return gm, _buffers(gm, prop.storages, fused_nodes(gm) if fused else None)


def peak_activation(model: nn.Module, example: torch.Tensor, act_bits: int = 32, fused: bool = False
                    ) -> ActivationPeak:
    """Largest total of simultaneously live activations (bytes at ``act_bits``) for input ``example``.

    ``fused``: of the deployed integer graph (BatchNorm folded, activations fused; module docstring).
    """
    gm, buffers = live_buffers(model, example, fused)
    nodes = list(gm.graph.nodes)
    best_bytes, best_step = 0, 0
    for step in range(len(nodes)):
        live = sum(math.ceil(b.elements * act_bits / 8) for b in buffers if b.first <= step <= b.last)
        if live > best_bytes:
            best_bytes, best_step = live, step
    return ActivationPeak(best_bytes, nodes[best_step].name, len(nodes))
