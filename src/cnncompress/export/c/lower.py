"""Lower a quantized model (the torch.fx graph ``quantize``/``qat`` return) to the integer IR.

The walk visits the graph once in order and dispatches every node to its handler in
:data:`~cnncompress.export.c.ops.HANDLERS`; an op without a handler is refused here, naming the
node, before anything is written. The model's logits leave its last layer in float (no quantizer
follows them), so the C output grid, symmetric int8, is calibrated on images the caller gives.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from ...analysis.inputs import ExampleInput, eval_mode, one_image
from ...quant.core import FakeQuantize
from ...quant.data import CalibrationData, calibration_batches
from ...quant.graph import check_quantized, op_kind, tensor_inputs
from .ir import Grid, Op, Program, Shape, Tensor
from .ops import HANDLERS, OpHandler, Pending, UnsupportedOp, clamp_range

SUPPORTED = ("conv (any stride/padding/dilation, depthwise, grouped), linear, add, cat (channels), relu, relu6, "
             "max/avg/global-average pooling, slicing, zero padding, flatten")


class Lowering:
    """The walk's state; handlers read values and shapes and append ops through it."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.modules = dict(gm.named_modules())
        self.values: dict[fx.Node, Tensor | Pending] = {}
        self.ops: list[Op] = []
        self.tensors: dict[str, Tensor] = {}
        self.input: Tensor | None = None

    def value(self, node: fx.Node) -> Tensor | Pending:
        return self.values[node]

    def tensor_arg(self, node: fx.Node, index: int = 0) -> Tensor:
        """The ``index``-th tensor input of ``node``, which must be on an integer grid."""
        source = tensor_inputs(node)[index]
        value = self.values[source]
        if not isinstance(value, Tensor):
            raise UnsupportedOp(f"{node.name} ({op_kind(node, self.modules)}) reads {source.name}, a float value "
                                "with no activation quantizer before it")
        return value

    def shape(self, node: fx.Node) -> Shape:
        """``node``'s output shape without the batch, as (C, H, W); a vector is (F, 1, 1)."""
        shape = tuple(node.meta["tensor_meta"].shape)
        if len(shape) == 4:
            return shape[1], shape[2], shape[3]
        if len(shape) == 2:
            return shape[1], 1, 1
        raise UnsupportedOp(f"{node.name}: rank-{len(shape)} tensors are not supported (only NCHW and NF)")

    def quantizer_grid(self, node: fx.Node) -> Grid:
        """The int8 grid of an activation quantizer (unsigned codes shifted by -128)."""
        q: FakeQuantize = self.modules[node.target]
        if q.scale.numel() != 1:
            raise UnsupportedOp(f"{node.name}: per-channel activation quantization is not supported")
        offset = 0 if q.spec.signed else -128
        return Grid(float(q.scale), int(q.zero_point) + offset, q.spec.qmin + offset, q.spec.qmax + offset)

    def add_op(self, op: Op, out: Tensor) -> Tensor:
        self.ops.append(op)
        self.tensors[out.name] = out
        return out

    def producer(self, name: str) -> Op | None:
        return next((op for op in reversed(self.ops) if op.output == name), None)

    def retarget(self, op: Op, out: Tensor) -> Tensor:
        """Make ``op`` write ``out`` instead of its former output (a fused follow-up op)."""
        del self.tensors[op.output]
        op.output = out.name
        self.tensors[out.name] = out
        return out

    def set_input(self, tensor: Tensor) -> None:
        if self.input is not None:
            raise UnsupportedOp("the model input is quantized twice")
        self.input = tensor
        self.tensors[tensor.name] = tensor

    def materialize(self, pending: Pending, grid: Grid, name: str) -> Tensor:
        """Build the op that computes ``pending`` onto ``grid`` (no op when it already is on it)."""
        clamp = clamp_range(pending, grid)
        if pending.handler is HANDLERS["requant"] and pending.inputs[0].grid == grid and clamp == (grid.qmin,
                                                                                                  grid.qmax):
            return pending.inputs[0]
        if pending.handler is HANDLERS["input"] and clamp != (grid.qmin, grid.qmax):
            raise UnsupportedOp(f"{pending.node.name}: an activation applied to the raw model input")
        out = Tensor(name, pending.shape, grid)
        op = pending.handler.build(self, pending, out, clamp)
        return out if op is None else self.add_op(op, out)


def handler_for(node: fx.Node, modules: dict) -> OpHandler:
    kind = op_kind(node, modules)
    handler = HANDLERS.get(kind)
    if handler is None:
        target = getattr(node.target, "__name__", node.target)
        raise UnsupportedOp(f"cannot export node {node.name} ({node.op} {target}, op {kind!r}) to C; "
                            f"the C backend supports {SUPPORTED}")
    return handler


@torch.no_grad()
def logits_grid(qmodel: fx.GraphModule, calibration: CalibrationData) -> Grid:
    """Symmetric int8 grid covering the simulated logits on the calibration images."""
    device = next(qmodel.parameters()).device
    with eval_mode(qmodel):
        peak = max(float(qmodel(x.to(device)).abs().max()) for x in calibration_batches(calibration))
    return Grid(max(peak, 1e-8) / 127, 0, -127, 127)


def lower(qmodel: fx.GraphModule, input_shape: ExampleInput, calibration: CalibrationData | None = None) -> Program:
    """The integer program computing ``qmodel`` on one image of ``input_shape``; refuses what C cannot run.

    ``calibration`` (images) fixes the output grid when the last layer's float output has no quantizer.
    """
    check_quantized(qmodel, "export_c")
    with eval_mode(qmodel):
        ShapeProp(qmodel).propagate(one_image(input_shape, next(qmodel.parameters()).device))
    ctx = Lowering(qmodel)
    placeholders = [n for n in qmodel.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOp(f"the C backend supports one input tensor, the model takes {len(placeholders)}")
    nodes = [n for n in qmodel.graph.nodes if n.op not in ("get_attr", "output")]
    handlers = {node: handler_for(node, ctx.modules) for node in nodes}  # refuse before lowering anything
    for node in nodes:
        ctx.values[node] = handlers[node].lower(ctx, node)
    result = next(n for n in qmodel.graph.nodes if n.op == "output").args[0]
    if not isinstance(result, fx.Node):
        raise UnsupportedOp("the C backend supports models returning one tensor")
    out = ctx.values[result]
    if isinstance(out, Pending):
        if calibration is None:
            raise ValueError("the model's logits have no quantizer: pass calibration images to fix their int8 grid")
        out = ctx.materialize(out, logits_grid(qmodel, calibration), result.name)
    if ctx.input is None or out.name == ctx.input.name:
        raise UnsupportedOp("the model computes nothing from a quantized input")
    return Program(ctx.tensors, ctx.ops, ctx.input.name, out.name)
