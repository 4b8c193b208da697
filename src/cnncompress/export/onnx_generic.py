"""Export any single fx node in float: torch.onnx (dynamo) on a one-op module, spliced into a larger graph.

This is the integer exporter's fallback for ops without a hand-written emitter, so a model that
torch.fx traces always exports. The op is called with its traced arguments (sizes and constants
baked in, the batch axis of every tensor input left dynamic); the exported nodes, initializers and
local functions are renamed under the node's name before they join the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import onnx
import torch
from torch import fx, nn

from ..quant.ops import tensor_inputs
from .onnx_fp32 import OPSET, _quiet

if TYPE_CHECKING:
    from .qdq_ops import Builder


class _OneOp(nn.Module):
    """Calls one fx node's target with its tensor inputs replaced by this module's arguments."""

    def __init__(self, node: fx.Node, module: nn.Module | None, traced: dict[fx.Node, Any]) -> None:
        super().__init__()
        self.node, self.op = node, module
        self.tensors = tensor_inputs(node)
        self.traced = traced

    def forward(self, *tensors: torch.Tensor) -> Any:
        given = dict(zip(self.tensors, tensors, strict=True))
        args, kwargs = fx.node.map_arg((self.node.args, self.node.kwargs), lambda n: given.get(n, self.traced[n]))
        if self.op is not None:
            return self.op(*args, **kwargs)
        if self.node.op == "call_method":
            return getattr(args[0], self.node.target)(*args[1:], **kwargs)
        return self.node.target(*args, **kwargs)


def _batch_of_two(t: torch.Tensor) -> torch.Tensor:
    """A size-2 batch: torch.export would specialise a batch axis of size 1 to a constant."""
    return torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t


def node_as_onnx(node: fx.Node, module: nn.Module | None, traced: dict[fx.Node, Any]) -> onnx.ModelProto:
    """The ONNX model of ``node`` alone: one input per tensor input, one output per result."""
    examples = tuple(_batch_of_two(traced[n]) for n in tensor_inputs(node))
    batch = torch.export.Dim("batch")
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(_OneOp(node, module, traced).eval(), examples, dynamo=True,
                                    dynamic_shapes=(tuple({0: batch} for _ in examples),), opset_version=OPSET,
                                    external_data=False, verbose=False)
    return program.model_proto


def _renamed(names: list[str], mapping: dict[str, str]) -> list[str]:
    return [mapping.get(n, n) for n in names]


def splice_node_export(b: Builder, node: fx.Node, module: nn.Module | None, traced: dict[fx.Node, Any],
                       inputs: list[str]) -> list[str]:
    """Add ``node`` (exported by torch.onnx) to ``b``, reading the float tensors ``inputs``; its output names."""
    try:
        model = node_as_onnx(node, module, traced)
    except Exception as exc:  # torch.export raises many types for ops it cannot capture
        raise ValueError(f"cannot export {node.op} {node.target} ({node.name}): torch.onnx failed on it alone "
                         f"({type(exc).__name__}: {exc})") from exc
    graph = model.graph
    mapping = dict(zip([i.name for i in graph.input], inputs, strict=True))
    for init in graph.initializer:
        mapping[init.name] = b.fresh(f"{node.name}/{init.name}")
        renamed = onnx.TensorProto()
        renamed.CopyFrom(init)
        renamed.name = mapping[init.name]
        b.initializers.append(renamed)
    for inner in graph.node:
        for out in inner.output:
            if out:
                mapping[out] = b.fresh(f"{node.name}/{out}")
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.name = b.fresh(f"{node.name}/{inner.name or inner.op_type}")
        copy.input[:] = _renamed(list(inner.input), mapping)
        copy.output[:] = _renamed(list(inner.output), mapping)
        b.nodes.append(copy)
    known = {f.name for f in b.functions}
    b.functions += [f for f in model.functions if f.name not in known]
    for opset in model.opset_import:
        b.opsets[opset.domain] = max(b.opsets.get(opset.domain, 0), opset.version)
    return [mapping[o.name] for o in graph.output]
