"""The integer ONNX backend's table of op handlers: kind -> emitter, and how onnxruntime runs the result.

Each emitter writes the ONNX nodes of one fx node and returns its value: integer codes with their
grid, or a float tensor. ``Runs`` tells what onnxruntime makes of the emitted nodes: KERNEL ops fuse
with the DequantizeLinear/QuantizeLinear around them into integer kernels (QLinearConv, QLinearMul,
QLinearSigmoid, ...), MOVEMENT ops run directly on integer tensors, FUSED activations disappear into
the integer op before them, FLOAT ops compute in float. A kind missing here is exported by
:func:`~cnncompress.export.onnx_generic.export_node` (torch.onnx on that one node), so export never
fails on a traceable model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import fx, nn

from ..quant.core import INT32_MAX, INT32_MIN, FakeQuantize, QConv2d, QLinear
from ..quant.ops import arg, tensor_inputs
from .onnx_generic import splice_node_export

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Value:
    """An ONNX tensor: float, or integer codes with their scale and zero point."""

    name: str
    scale: float | None = None
    zero_point: int = 0
    signed: bool = False

    @property
    def quantized(self) -> bool:
        return self.scale is not None


class Builder:
    """The ONNX graph under construction: nodes, initializers, unique names, shared dequantizations."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.opsets: dict[str, int] = {}
        self.names: set[str] = set()
        self.dequantized: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.names:
            i += 1
            name = f"{hint}_{i}"
        self.names.add(name)
        return name

    def const(self, array: Any, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ops(self, op_type: str, inputs: list[str], hint: str, outputs: int, **attrs) -> list[str]:
        names = [self.fresh(hint if outputs == 1 else f"{hint}_{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(f"{hint}_{op_type}"), **attrs))
        return names

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        return self.ops(op_type, inputs, hint, 1, **attrs)[0]

    def as_float(self, value: Value) -> str:
        """The float view of a value (one shared DequantizeLinear per integer tensor)."""
        if not value.quantized:
            return value.name
        if value.name not in self.dequantized:
            dtype = np.int8 if value.signed else np.uint8
            scale = self.const(np.float32(value.scale), f"{value.name}_scale")
            zp = self.const(np.array(value.zero_point, dtype=dtype), f"{value.name}_zp")
            self.dequantized[value.name] = self.op("DequantizeLinear", [value.name, scale, zp], f"{value.name}_dq")
        return self.dequantized[value.name]


Emitted = Value | tuple[Value, ...]


@dataclass
class Emission:
    """The walk's state: what each fx node became, its traced result, and nodes exported generically."""

    b: Builder
    modules: dict[str, nn.Module]
    traced: dict[fx.Node, Any]
    values: dict[fx.Node, Emitted] = field(default_factory=dict)
    generic: list[fx.Node] = field(default_factory=list)  # exported through torch.onnx, in float

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules[node.target] if node.op == "call_module" else None

    def inputs(self, node: fx.Node) -> list[Value]:
        """The values of the node's tensor inputs, the parts of split outputs one by one."""
        values = [self.values[a] for a in tensor_inputs(node)]
        return [part for v in values for part in (v if isinstance(v, tuple) else (v,))]

    def x(self, node: fx.Node) -> Value:
        return self.inputs(node)[0]

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(self.traced[node].shape)

    def concrete(self, value: Any) -> Any:
        """A call argument with every fx node replaced by its traced result."""
        return fx.node.map_arg(value, self.traced.__getitem__)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _moved(x: Value, name: str) -> Value:
    return replace(x, name=name)


def export_generic(e: Emission, node: fx.Node) -> Emitted:
    """Any op, in float: torch.onnx exports the node alone and its ONNX nodes are spliced in."""
    names = splice_node_export(e.b, node, e.module(node), e.traced, [e.b.as_float(v) for v in e.inputs(node)])
    e.generic.append(node)
    values = tuple(Value(name) for name in names)
    return values if isinstance(e.traced[node], (tuple, list)) else values[0]


def _target_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else node.target.__name__


def _quantize_act(e: Emission, node: fx.Node) -> Value:
    q: FakeQuantize = e.module(node)
    b, x, hint = e.b, e.x(node), node.name
    spec = q.spec
    dtype = np.int8 if spec.signed else np.uint8
    scale = float(q.scale.detach().reshape(-1)[0])
    zero_point = int(q.zero_point.reshape(-1)[0])
    out = b.op("QuantizeLinear", [b.as_float(x), b.const(np.float32(scale), f"{hint}_scale"),
                                  b.const(np.array(zero_point, dtype=dtype), f"{hint}_zp")], hint)
    info = np.iinfo(dtype)
    if (spec.qmin, spec.qmax) != (info.min, info.max):  # fewer than 8 bits: saturate to the b-bit range
        out = b.op("Clip", [out, b.const(np.array(spec.qmin, dtype=dtype), f"{hint}_qmin"),
                            b.const(np.array(spec.qmax, dtype=dtype), f"{hint}_qmax")], f"{hint}_clip")
    return Value(out, scale, zero_point, spec.signed)


def _layer_params(b: Builder, layer: QConv2d | QLinear, x: Value, hint: str) -> list[str]:
    """Dequantized int8 weight and int32 bias inputs of a conv/gemm."""
    if not x.quantized:
        raise ValueError(f"internal error: {hint} input is not quantized")
    wq = layer.weight_quant
    axis_kw = {"axis": 0} if wq.spec.per_channel else {}
    w_scale = _np(wq.scale).astype(np.float32)
    w_scale = w_scale if wq.spec.per_channel else w_scale.reshape(())
    codes = _np(wq.codes(layer.weight)).astype(np.int8)
    weight = b.op("DequantizeLinear", [b.const(codes, f"{hint}_w"), b.const(w_scale, f"{hint}_w_scale"),
                                       b.const(np.zeros(w_scale.shape, np.int8), f"{hint}_w_zp")],
                  f"{hint}_w_dq", **axis_kw)
    inputs = [b.as_float(x), weight]
    if layer.bias is not None:
        bias_scale = layer.bias_scale(torch.tensor([x.scale]))
        bias_codes = torch.clamp(torch.round(layer.bias.detach() / bias_scale), INT32_MIN, INT32_MAX)
        inputs.append(b.op("DequantizeLinear", [
            b.const(_np(bias_codes).astype(np.int32), f"{hint}_b"),
            b.const(_np(bias_scale).astype(np.float32), f"{hint}_b_scale"),
            b.const(np.zeros(bias_codes.shape, np.int32), f"{hint}_b_zp")], f"{hint}_b_dq", axis=0))
    return inputs


def _conv_pads(layer: nn.Conv2d) -> list[int]:
    """ONNX pads (begin..., end...); ``padding="same"`` puts the odd extra row/column at the end, as torch."""
    if layer.padding == "valid":
        return [0, 0, 0, 0]
    if layer.padding == "same":
        totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
        return [t // 2 for t in totals] + [t - t // 2 for t in totals]
    return list(layer.padding) * 2


def _conv(e: Emission, node: fx.Node) -> Value:
    layer: QConv2d = e.module(node)
    hint = node.target.replace(".", "_")
    out = e.b.op("Conv", _layer_params(e.b, layer, e.x(node), hint), hint, kernel_shape=list(layer.kernel_size),
                 strides=list(layer.stride), pads=_conv_pads(layer), dilations=list(layer.dilation),
                 group=layer.groups)
    return Value(out)


def _linear(e: Emission, node: fx.Node) -> Value:
    layer: QLinear = e.module(node)
    hint = node.target.replace(".", "_")
    x, weight, *bias = _layer_params(e.b, layer, e.x(node), hint)
    if len(e.shape(node)) == 2:
        return Value(e.b.op("Gemm", [x, weight, *bias], hint, transB=1))
    # over the last axis of a rank > 2 tensor: an integer MatMul (float result), then the bias
    out = e.b.op("MatMul", [x, e.b.op("Transpose", [weight], f"{hint}_wt", perm=[1, 0])], hint)
    return Value(e.b.op("Add", [out, *bias], f"{hint}_bias") if bias else out)


def _float_op(op_type: str, **attrs) -> Callable[[Emission, fx.Node], Value]:
    """An elementwise ONNX op on the float views of the node's tensor inputs."""
    def emit(e: Emission, node: fx.Node) -> Value:
        return Value(e.b.op(op_type, [e.b.as_float(v) for v in e.inputs(node)], node.name, **attrs))
    return emit


def _relu6(e: Emission, node: fx.Node) -> Value:
    bounds = [e.b.const(np.float32(v), f"{node.name}_{k}") for k, v in (("min", 0), ("max", 6))]
    return Value(e.b.op("Clip", [e.b.as_float(e.x(node)), *bounds], node.name))


def _leakyrelu(e: Emission, node: fx.Node) -> Value:
    module = e.module(node)
    slope = module.negative_slope if module is not None else arg(node, 1, "negative_slope", 0.01)
    return Value(e.b.op("LeakyRelu", [e.b.as_float(e.x(node))], node.name, alpha=float(slope)))


_ARITH_OPS = {"add": "Add", "iadd": "Add", "sub": "Sub", "isub": "Sub", "mul": "Mul", "imul": "Mul",
              "truediv": "Div", "itruediv": "Div", "div": "Div"}


def _gelu(e: Emission, node: fx.Node) -> Value:
    """``x * (1 + erf(x / sqrt(2))) / 2`` (ONNX has no Gelu before opset 20)."""
    b, x = e.b, e.b.as_float(e.x(node))
    erf = b.op("Erf", [b.op("Div", [x, b.const(np.float32(np.sqrt(2)), f"{node.name}_sqrt2")], f"{node.name}_s")],
               f"{node.name}_erf")
    half = b.op("Mul", [x, b.const(np.float32(0.5), f"{node.name}_half")], f"{node.name}_h")
    return Value(b.op("Mul", [half, b.op("Add", [erf, b.const(np.float32(1), f"{node.name}_one")],
                                         f"{node.name}_p")], node.name))


def _arith(e: Emission, node: fx.Node) -> Value:
    """Add/Sub/Mul/Div with a constant (a number, a buffer, a traced size) or of two float tensors."""
    name = _target_name(node)
    tensors = set(tensor_inputs(node))
    operands = [e.b.as_float(e.values[a]) if a in tensors
                else e.b.const(np.asarray(_np(torch.as_tensor(e.concrete(a))), np.float32), f"{node.name}_c")
                for a in node.args]
    return Value(e.b.op(_ARITH_OPS[name], operands, node.name))


def _cat(e: Emission, node: fx.Node) -> Value:
    dim = arg(node, 1, "dim", 0)
    return Value(e.b.op("Concat", [e.b.as_float(v) for v in e.inputs(node)], node.name, axis=int(dim)))


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def pool_attributes(node: fx.Node, module: nn.Module | None) -> dict:
    """ONNX attributes of a max/avg pooling node (module or functional form)."""
    if module is not None:
        k, s, p, ceil = module.kernel_size, module.stride, module.padding, module.ceil_mode
        d = getattr(module, "dilation", 1)
    else:
        k = arg(node, 1, "kernel_size")
        s, p = arg(node, 2, "stride") or k, arg(node, 3, "padding", 0)
        if node.target is F.max_pool2d:
            d, ceil = arg(node, 4, "dilation", 1), arg(node, 5, "ceil_mode", False)
        else:
            d, ceil = 1, arg(node, 4, "ceil_mode", False)
    pads = _pair(p)
    return {"kernel_shape": _pair(k), "strides": _pair(s), "pads": pads + pads, "dilations": _pair(d),
            "ceil_mode": int(ceil)}


def _maxpool(e: Emission, node: fx.Node) -> Value:
    x = e.x(node)
    return _moved(x, e.b.op("MaxPool", [x.name], node.name, **pool_attributes(node, e.module(node))))


def _avgpool(e: Emission, node: fx.Node) -> Value:
    module = e.module(node)
    attrs = pool_attributes(node, module)
    attrs.pop("dilations")
    include_pad = module.count_include_pad if module is not None else arg(node, 5, "count_include_pad", True)
    return Value(e.b.op("AveragePool", [e.b.as_float(e.x(node))], node.name, count_include_pad=int(include_pad),
                        **attrs))


def _adaptive_avgpool(e: Emission, node: fx.Node) -> Emitted:
    """Adaptive average pooling that tiles the input evenly is a plain average pooling."""
    (height, width), (out_h, out_w) = e.shape(tensor_inputs(node)[0])[-2:], e.shape(node)[-2:]
    if height % out_h or width % out_w:
        return export_generic(e, node)
    kernel = [height // out_h, width // out_w]
    return Value(e.b.op("AveragePool", [e.b.as_float(e.x(node))], node.name, kernel_shape=kernel, strides=kernel))


def _slice(e: Emission, node: fx.Node) -> Value:
    x = e.x(node)
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    starts, ends, axes, steps = [], [], [], []
    for axis, s in enumerate(index):
        if s == slice(None):
            continue
        starts.append(s.start or 0)
        ends.append(INT64_MAX if s.stop is None else s.stop)
        axes.append(axis)
        steps.append(s.step or 1)
    if not axes:
        return x
    consts = [e.b.const(np.array(v, np.int64), f"{node.name}_{k}")
              for k, v in zip(("starts", "ends", "axes", "steps"), (starts, ends, axes, steps), strict=True)]
    return _moved(x, e.b.op("Slice", [x.name, *consts], node.name))


def _pad(e: Emission, node: fx.Node) -> Value:
    x, rank = e.x(node), len(e.shape(node))
    amounts = list(arg(node, 1, "pad"))
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(amounts) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = amounts[2 * i], amounts[2 * i + 1]
    if min(begins + ends) < 0:  # cropping
        return export_generic(e, node)
    fill = np.array(x.zero_point, np.int8 if x.signed else np.uint8) if x.quantized else np.float32(0)
    pads = e.b.const(np.array(begins + ends, np.int64), f"{node.name}_pads")
    return _moved(x, e.b.op("Pad", [x.name, pads, e.b.const(fill, f"{node.name}_value")], node.name,
                             mode="constant"))


def _reshape(e: Emission, node: fx.Node) -> Value:
    """Any reshape (view, flatten, squeeze, ...) to its traced shape, the batch axis left free."""
    x = e.x(node)
    shape = e.b.const(np.array([-1, *e.shape(node)[1:]], np.int64), f"{node.name}_shape")
    return _moved(x, e.b.op("Reshape", [x.name, shape], node.name))


def _transpose(e: Emission, node: fx.Node) -> Value:
    x, rank = e.x(node), len(e.shape(node))
    dims = e.concrete(list(node.args[1:]) or list(node.kwargs.values()))
    if _target_name(node) == "transpose":
        perm = list(range(rank))
        a, c = (d % rank for d in dims)
        perm[a], perm[c] = perm[c], perm[a]
    else:
        perm = [d % rank for d in (dims[0] if isinstance(dims[0], (list, tuple)) else dims)]
    return _moved(x, e.b.op("Transpose", [x.name], node.name, perm=perm))


def _split(e: Emission, node: fx.Node) -> tuple[Value, ...]:
    x, rank = e.x(node), len(e.shape(tensor_inputs(node)[0]))
    axis = arg(node, 2, "dim", 0) % rank
    sizes = [part.shape[axis] for part in e.traced[node]]
    outs = e.b.ops("Split", [x.name, e.b.const(np.array(sizes, np.int64), f"{node.name}_sizes")], node.name,
                   len(sizes), axis=axis)
    return tuple(_moved(x, out) for out in outs)


def _item(e: Emission, node: fx.Node) -> Value:
    return e.values[node.args[0]][node.args[1]]


def _identity(e: Emission, node: fx.Node) -> Value:
    return e.x(node)


def _resize_settings(e: Emission, node: fx.Node) -> tuple[Any, str, bool, bool]:
    """(scale factor or None, mode, align_corners, recompute scale) of an upsampling node."""
    module = e.module(node)
    if module is not None:
        return module.scale_factor, module.mode, bool(module.align_corners), bool(module.recompute_scale_factor)
    return (e.concrete(arg(node, 2, "scale_factor")), arg(node, 3, "mode", "nearest"),
            bool(arg(node, 4, "align_corners")), bool(arg(node, 5, "recompute_scale_factor")))


def _resize(e: Emission, node: fx.Node) -> Value:
    """Upsampling as torch computes it: from the scale factor when given, else from the output size."""
    x = e.x(node)
    scale, mode, align_corners, recompute = _resize_settings(e, node)
    if scale is not None and not recompute:
        scales = np.concatenate([[1, 1], np.broadcast_to(np.asarray(scale), (2,))]).astype(np.float32)
        sizing, axes = ["", e.b.const(scales, f"{node.name}_scales")], {}
    else:
        sizing = ["", "", e.b.const(np.array(e.shape(node)[-2:], np.int64), f"{node.name}_sizes")]
        axes = {"axes": [2, 3]}  # the batch axis stays free
    if mode == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        return _moved(x, e.b.op("Resize", [x.name, *sizing], node.name, **axes, **attrs))
    transform = "align_corners" if align_corners else "pytorch_half_pixel"
    return Value(e.b.op("Resize", [e.b.as_float(x), *sizing], node.name, **axes, mode="linear",
                        coordinate_transformation_mode=transform))


def _groupnorm(e: Emission, node: fx.Node) -> Value:
    """GroupNorm as InstanceNormalization over (N, groups, rest), then the per-channel affine map."""
    gn: nn.GroupNorm = e.module(node)
    shape = e.shape(node)
    groups = e.b.op("Reshape", [e.b.as_float(e.x(node)), e.b.const(np.array([0, gn.num_groups, -1], np.int64),
                                                                        f"{node.name}_grouped")], f"{node.name}_g")
    ones, zeros = np.ones(gn.num_groups, np.float32), np.zeros(gn.num_groups, np.float32)
    normed = e.b.op("InstanceNormalization", [groups, e.b.const(ones, f"{node.name}_one"),
                                              e.b.const(zeros, f"{node.name}_zero")], f"{node.name}_n",
                    epsilon=float(gn.eps))
    out = e.b.op("Reshape", [normed, e.b.const(np.array([-1, *shape[1:]], np.int64), f"{node.name}_shape")],
                 f"{node.name}_r")
    per_channel = [-1] + [1] * (len(shape) - 2)
    for name, op_type in (("weight", "Mul"), ("bias", "Add")):
        param = getattr(gn, name)
        if param is not None:
            const = e.b.const(_np(param).astype(np.float32).reshape(per_channel), f"{node.name}_{name}")
            out = e.b.op(op_type, [out, const], f"{node.name}_{name}_out")
    return Value(out)


def _layernorm(e: Emission, node: fx.Node) -> Value:
    ln: nn.LayerNorm = e.module(node)
    shape = list(ln.normalized_shape)
    scale = _np(ln.weight) if ln.weight is not None else np.ones(shape)
    inputs = [e.b.as_float(e.x(node)), e.b.const(scale.astype(np.float32), f"{node.name}_weight")]
    if ln.bias is not None:
        inputs.append(e.b.const(_np(ln.bias).astype(np.float32), f"{node.name}_bias"))
    return Value(e.b.op("LayerNormalization", inputs, node.name, axis=-len(shape), epsilon=float(ln.eps)))


class Runs(Enum):
    """How onnxruntime runs what an emitter wrote (see the module docstring)."""

    KERNEL = "kernel"
    MOVEMENT = "movement"
    FUSED = "fused"
    FLOAT = "float"
    NOTHING = "nothing"


@dataclass(frozen=True)
class OnnxOp:
    """One kind's emitter; ``float_output``: the integer kernel may also leave its result in float (QGemm)."""

    emit: Callable[[Emission, fx.Node], Emitted]
    runs: Runs
    float_output: bool = False


EMITTERS: dict[str, OnnxOp] = {
    "input": OnnxOp(lambda e, node: e.values[node], Runs.NOTHING),
    "quant": OnnxOp(_quantize_act, Runs.NOTHING),
    "identity": OnnxOp(_identity, Runs.NOTHING),
    "item": OnnxOp(_item, Runs.NOTHING),
    "conv": OnnxOp(_conv, Runs.KERNEL),
    "linear": OnnxOp(_linear, Runs.KERNEL, float_output=True),
    "add": OnnxOp(_float_op("Add"), Runs.KERNEL),
    "mul": OnnxOp(_float_op("Mul"), Runs.KERNEL),
    "cat": OnnxOp(_cat, Runs.KERNEL),
    "sigmoid": OnnxOp(_float_op("Sigmoid"), Runs.KERNEL),
    "leakyrelu": OnnxOp(_leakyrelu, Runs.KERNEL),
    "gap": OnnxOp(_float_op("GlobalAveragePool"), Runs.KERNEL),
    "avgpool": OnnxOp(_avgpool, Runs.KERNEL),
    "adaptive_avgpool": OnnxOp(_adaptive_avgpool, Runs.KERNEL),
    "relu": OnnxOp(_float_op("Relu"), Runs.FUSED),
    "relu6": OnnxOp(_relu6, Runs.FUSED),
    "maxpool": OnnxOp(_maxpool, Runs.MOVEMENT),
    "slice": OnnxOp(_slice, Runs.MOVEMENT),
    "pad": OnnxOp(_pad, Runs.MOVEMENT),
    "flatten": OnnxOp(_reshape, Runs.MOVEMENT),
    "reshape": OnnxOp(_reshape, Runs.MOVEMENT),
    "transpose": OnnxOp(_transpose, Runs.MOVEMENT),
    "split": OnnxOp(_split, Runs.MOVEMENT),
    "resize_nearest": OnnxOp(_resize, Runs.MOVEMENT),
    "resize_linear": OnnxOp(_resize, Runs.FLOAT),
    "hardsigmoid": OnnxOp(_float_op("HardSigmoid", alpha=1 / 6, beta=0.5), Runs.FLOAT),
    "hardswish": OnnxOp(_float_op("HardSwish"), Runs.FLOAT),
    "tanh": OnnxOp(_float_op("Tanh"), Runs.FLOAT),
    "gelu": OnnxOp(_gelu, Runs.FLOAT),
    "arith": OnnxOp(_arith, Runs.FLOAT),
    "groupnorm": OnnxOp(_groupnorm, Runs.FLOAT),
    "layernorm": OnnxOp(_layernorm, Runs.FLOAT),
}
