"""The C backend's op table: for each fx op kind, how it lowers to the integer IR, how the numpy
reference runs it, and which C kernel call it becomes. Adding an op is one handler and one entry
in :data:`HANDLERS`.

Float-valued ops (conv, linear, add, concat, average pooling) lower to a :class:`Pending`
result; the activation quantizer that follows (with any ReLU/ReLU6 fused in between as clamps)
gives it an output grid, and only then does the handler ``build`` its op. Data movement (slice,
zero pad, max pool, flatten) keeps its input's grid. Requantization follows TFLite Micro: per
output channel ``(s_in * s_w[c]) / s_out`` as a Q31 multiplier and shift (``fixedpoint``); an add
scales both inputs up by ``2^20`` before summing them, as TFLite's ADD does.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import fx, nn

from ...quant.core import INT32_MAX, INT32_MIN
from ...quant.graph import tensor_inputs
from ..qdq_ops import pool_attributes
from .fixedpoint import quantize_multiplier, quantize_multipliers, requantize
from .ir import Grid, Op, Shape, Tensor

if TYPE_CHECKING:
    from .codegen import CSource
    from .lower import Lowering

INPUT_SHIFT = 20  # TFLite's left shift of the inputs of an add
STORAGE_BITS = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}  # weight bits -> packed width the kernels unpack


@dataclass
class Pending:
    """A float-valued result waiting for its output grid (the next quantizer) and fused clamps."""

    handler: OpHandler
    node: fx.Node
    inputs: list[Tensor]
    shape: Shape
    relu: bool = False
    relu6: bool = False


class UnsupportedOp(ValueError):
    """The graph holds an op the C backend cannot express (raised before any file is written)."""


class OpHandler:
    """Lowering, numpy reference and C emission of one kind of op.

    Every handler lowers; only handlers whose ops reach the IR ``build``, ``run`` and ``emit``.
    """

    def lower(self, ctx: Lowering, node: fx.Node) -> Tensor | Pending:
        raise NotImplementedError

    def build(self, ctx: Lowering, pending: Pending, out: Tensor, clamp: tuple[int, int]) -> Op | None:
        """The op computing ``pending`` onto ``out``'s grid, clamped to ``clamp`` (fused activations)."""
        raise NotImplementedError

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def emit(self, op: Op, src: CSource) -> list[str]:
        raise NotImplementedError


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _max_deviation(grid: Grid) -> int:
    """Largest ``|code - zero_point|`` a tensor on ``grid`` can hold."""
    return max(grid.zero_point - grid.qmin, grid.qmax - grid.zero_point)


def _requant(x: np.ndarray, attrs: dict[str, Any], multiplier: Any, shift: Any) -> np.ndarray:
    """Scaled accumulators to output codes: requantize, add the output zero point, clamp."""
    out = requantize(x, multiplier, shift) + attrs["output_offset"]
    return np.clip(out, attrs["act_min"], attrs["act_max"])


def _output_attrs(out: Tensor, clamp: tuple[int, int]) -> dict[str, int]:
    return {"output_offset": out.grid.zero_point, "act_min": clamp[0], "act_max": clamp[1]}


def _shape_fields(shape: Shape) -> str:
    return "{" + ", ".join(str(v) for v in shape) + "}"


class Conv(OpHandler):
    """conv2d of any stride, padding, dilation and groups (depthwise included); linear as a 1x1 conv."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Pending:
        return Pending(self, node, [ctx.tensor_arg(node)], ctx.shape(node))

    def build(self, ctx: Lowering, pending: Pending, out: Tensor, clamp: tuple[int, int]) -> Op:
        layer, x = ctx.modules[pending.node.target], pending.inputs[0]
        codes = layer.weight_quant.codes(layer.weight.detach()).cpu().numpy().astype(np.int8)
        if isinstance(layer, nn.Linear):
            if x.size != layer.in_features:
                raise UnsupportedOp(f"{pending.node.name}: linear layer reads {x.size} values, expects "
                                    f"{layer.in_features}")
            geometry = {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
            codes = codes.reshape(*codes.shape, 1, 1)
        else:
            geometry = self._geometry(pending.node, layer)
        w_scale = layer.weight_quant.scale.detach().cpu().double().expand(codes.shape[0]).numpy()
        real = x.grid.scale * w_scale / out.grid.scale
        multiplier, shift = quantize_multipliers(real)
        consts = {"weights": codes, "multiplier": multiplier, "shift": shift}
        if layer.bias is not None:
            consts["bias"] = self._bias_codes(layer, x.grid.scale)
        self._check_accumulator(pending.node, consts, x.grid)
        bits = layer.weight_quant.spec.bits
        attrs = {"in_shape": x.shape, "out_shape": out.shape, **geometry, "input_offset": x.grid.zero_point,
                 "weight_bits": bits, "storage_bits": STORAGE_BITS[bits], **_output_attrs(out, clamp)}
        return Op(self, pending.node.name, [x.name], out.name, attrs, consts)

    @staticmethod
    def _geometry(node: fx.Node, layer: nn.Conv2d) -> dict[str, Any]:
        if isinstance(layer.padding, str):
            raise UnsupportedOp(f"{node.name}: string padding {layer.padding!r} is not supported; give numbers")
        return {"kernel": _pair(layer.kernel_size), "stride": _pair(layer.stride), "padding": _pair(layer.padding),
                "dilation": _pair(layer.dilation), "groups": int(layer.groups)}

    @staticmethod
    def _bias_codes(layer: nn.Module, in_scale: float) -> np.ndarray:
        """The int32 bias at scale ``s_in * s_w`` exactly as the simulation rounds it."""
        scale = layer.bias_scale(torch.tensor([in_scale]))
        codes = torch.clamp(torch.round(layer.bias.detach().cpu() / scale.cpu()), INT32_MIN, INT32_MAX)
        return codes.numpy().astype(np.int64)

    @staticmethod
    def _check_accumulator(node: fx.Node, consts: dict[str, np.ndarray], grid: Grid) -> None:
        weights = np.abs(consts["weights"].astype(np.int64)).reshape(len(consts["weights"]), -1).sum(1)
        bound = weights * _max_deviation(grid) + np.abs(consts.get("bias", 0))
        if bound.max() > INT32_MAX:
            raise UnsupportedOp(f"{node.name}: its int32 accumulator could overflow (bound {int(bound.max())})")

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        a = op.attrs
        x = inputs[0].reshape(len(inputs[0]), *a["in_shape"]) - a["input_offset"]
        (ph, pw), (dh, dw), (sh, sw) = a["padding"], a["dilation"], a["stride"]
        kh, kw = a["kernel"]
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # zero after removing the offset: exact padding
        windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        oc, oh, ow = a["out_shape"]
        windows = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]
        w = op.consts["weights"].astype(np.float64)  # float64 sums of these integers are exact (< 2^53)
        cin, cout = w.shape[1], oc // a["groups"]
        acc = np.concatenate([np.einsum("ncyxij,ocij->noyx", windows[:, g * cin:(g + 1) * cin],
                                        w[g * cout:(g + 1) * cout], optimize=True)
                              for g in range(a["groups"])], axis=1).astype(np.int64)
        if "bias" in op.consts:
            acc = acc + op.consts["bias"][:, None, None]
        return _requant(acc, a, op.consts["multiplier"][:, None, None], op.consts["shift"][:, None, None])

    def emit(self, op: Op, src: CSource) -> list[str]:
        a, c = op.attrs, op.consts
        fields = {
            "in": _shape_fields(a["in_shape"]), "out": _shape_fields(a["out_shape"]),
            "kernel_h": a["kernel"][0], "kernel_w": a["kernel"][1], "stride_h": a["stride"][0],
            "stride_w": a["stride"][1], "pad_h": a["padding"][0], "pad_w": a["padding"][1],
            "dilation_h": a["dilation"][0], "dilation_w": a["dilation"][1], "groups": a["groups"],
            "weight_bits": a["storage_bits"],
            "weights": src.array(op, "weights", "uint8_t", pack_weights(c["weights"], a["storage_bits"])),
            "bias": src.array(op, "bias", "int32_t", c["bias"]) if "bias" in c else "NULL",
            "multiplier": src.array(op, "multiplier", "int32_t", c["multiplier"]),
            "shift": src.array(op, "shift", "int32_t", c["shift"]),
            "input_offset": a["input_offset"], "output_offset": a["output_offset"],
            "act_min": a["act_min"], "act_max": a["act_max"]}
        params = src.struct(op, "cnnc_conv_params", fields)
        return [f"cnnc_conv2d(&{params}, {src.ptr(op.inputs[0])}, {src.ptr(op.output)});"]


def pack_weights(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes as two's complement, ``8 // bits`` per byte, lowest bits first (the kernels' layout)."""
    flat = codes.reshape(-1).astype(np.int64) & ((1 << bits) - 1)
    per_byte = 8 // bits
    flat = np.pad(flat, (0, -len(flat) % per_byte)).reshape(-1, per_byte)
    return (flat << (bits * np.arange(per_byte))).sum(1).astype(np.uint8)


class Add(OpHandler):
    """Residual add of two int8 tensors on different grids, requantized as in TFLite's ADD."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Pending:
        a, b = ctx.tensor_arg(node, 0), ctx.tensor_arg(node, 1)
        if a.shape != b.shape:
            raise UnsupportedOp(f"{node.name}: add of shapes {a.shape} and {b.shape} (broadcasting) is not supported")
        return Pending(self, node, [a, b], ctx.shape(node))

    def build(self, ctx: Lowering, pending: Pending, out: Tensor, clamp: tuple[int, int]) -> Op:
        a, b = pending.inputs
        twice_max = 2 * max(a.grid.scale, b.grid.scale)
        attrs: dict[str, Any] = {"size": out.size, "left_shift": INPUT_SHIFT, **_output_attrs(out, clamp)}
        for key, t in (("a", a), ("b", b)):
            attrs[f"{key}_offset"] = t.grid.zero_point
            attrs[f"{key}_multiplier"], attrs[f"{key}_shift"] = quantize_multiplier(t.grid.scale / twice_max)
        attrs["out_multiplier"], attrs["out_shift"] = quantize_multiplier(
            twice_max / (2**INPUT_SHIFT * out.grid.scale))
        return Op(self, pending.node.name, [a.name, b.name], out.name, attrs)

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        a = op.attrs
        total = sum(requantize((x - a[f"{k}_offset"]) << a["left_shift"], a[f"{k}_multiplier"], a[f"{k}_shift"])
                    for k, x in zip("ab", inputs, strict=True))
        return _requant(total, a, a["out_multiplier"], a["out_shift"])

    def emit(self, op: Op, src: CSource) -> list[str]:
        keys = ("size", "left_shift", "a_offset", "a_multiplier", "a_shift", "b_offset", "b_multiplier", "b_shift",
                "out_multiplier", "out_shift", "output_offset", "act_min", "act_max")
        params = src.struct(op, "cnnc_add_params", {k: op.attrs[k] for k in keys})
        a, b = (src.ptr(name) for name in op.inputs)
        return [f"cnnc_add(&{params}, {a}, {b}, {src.ptr(op.output)});"]


def requant_attrs(x: Tensor, out: Tensor, clamp: tuple[int, int]) -> dict[str, int]:
    """Parameters of a requantizing copy of ``x`` onto ``out``'s grid."""
    multiplier, shift = quantize_multiplier(x.grid.scale / out.grid.scale)
    return {"size": x.size, "input_offset": x.grid.zero_point, "multiplier": multiplier, "shift": shift,
            **_output_attrs(out, clamp)}


def run_requant(x: np.ndarray, attrs: dict[str, int]) -> np.ndarray:
    return _requant(x - attrs["input_offset"], attrs, attrs["multiplier"], attrs["shift"])


def emit_requant(src: CSource, op: Op, attrs: dict[str, int], source: str, target: str, part: str = "") -> str:
    keys = ("size", "input_offset", "multiplier", "shift", "output_offset", "act_min", "act_max")
    params = src.struct(op, "cnnc_requant_params", {k: attrs[k] for k in keys}, part)
    return f"cnnc_requant(&{params}, {source}, {target});"


class Concat(OpHandler):
    """Channel concat: each input requantized onto the output grid into its channel block."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Pending:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim not in (1, -3) and not (dim == -1 and len(node.meta["tensor_meta"].shape) == 2):
            raise UnsupportedOp(f"{node.name}: concat along dim {dim}; only channels (dim 1) are supported")
        inputs = [ctx.tensor_arg(node, i) for i in range(len(tensor_inputs(node)))]
        return Pending(self, node, inputs, ctx.shape(node))

    def build(self, ctx: Lowering, pending: Pending, out: Tensor, clamp: tuple[int, int]) -> Op:
        parts = [requant_attrs(x, out, clamp) for x in pending.inputs]
        return Op(self, pending.node.name, [x.name for x in pending.inputs], out.name, {"parts": parts})

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        n = len(inputs[0])
        return np.concatenate([run_requant(x.reshape(n, -1), a) for x, a in zip(inputs, op.attrs["parts"],
                                                                                strict=True)], axis=1)

    def emit(self, op: Op, src: CSource) -> list[str]:
        lines, offset = [], 0
        for i, (name, attrs) in enumerate(zip(op.inputs, op.attrs["parts"], strict=True)):
            lines.append(emit_requant(src, op, attrs, src.ptr(name), f"{src.ptr(op.output)} + {offset}", f"_{i}"))
            offset += attrs["size"]
        return lines


class Requant(OpHandler):
    """An integer tensor moved onto another grid: a quantizer after data movement, or a ReLU on codes."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Tensor | Pending:
        source = ctx.value(node.args[0])
        if isinstance(source, Pending):
            return source
        return Pending(self, node, [source], source.shape)

    def build(self, ctx: Lowering, pending: Pending, out: Tensor, clamp: tuple[int, int]) -> Op:
        x = pending.inputs[0]
        return Op(self, pending.node.name, [x.name], out.name, requant_attrs(x, out, clamp))

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        return run_requant(inputs[0], op.attrs)

    def emit(self, op: Op, src: CSource) -> list[str]:
        return [emit_requant(src, op, op.attrs, src.ptr(op.inputs[0]), src.ptr(op.output))]


class Activation(OpHandler):
    """ReLU / ReLU6: a clamp fused into the op that produces the value (or a requantizing copy)."""

    def __init__(self, six: bool) -> None:
        self.six = six

    def lower(self, ctx: Lowering, node: fx.Node) -> Pending:
        pending = HANDLERS["requant"].lower(ctx, node)
        return replace(pending, relu=True, relu6=pending.relu6 or self.six)


def _pool_geometry(node: fx.Node, module: nn.Module | None, x: Tensor, out_shape: Shape) -> dict[str, Any]:
    args = pool_attributes(node, module)
    if args["dilations"] != [1, 1]:
        raise UnsupportedOp(f"{node.name}: dilated pooling is not supported")
    return {"in_shape": x.shape, "out_shape": out_shape, "kernel": tuple(args["kernel_shape"]),
            "stride": tuple(args["strides"]), "padding": tuple(args["pads"][:2])}


def _windows(x: np.ndarray, a: dict[str, Any], fill: int) -> np.ndarray:
    """Pooling windows ``(N, C, OH, OW, KH, KW)`` of ``x`` padded with ``fill``."""
    (ph, pw), (kh, kw), (sh, sw) = a["padding"], a["kernel"], a["stride"]
    _, oh, ow = a["out_shape"]
    x = x.reshape(len(x), *a["in_shape"])
    extra_h = max(0, (oh - 1) * sh + kh - (x.shape[2] + 2 * ph))  # ceil_mode's partial last window
    extra_w = max(0, (ow - 1) * sw + kw - (x.shape[3] + 2 * pw))
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=fill)
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]


def _geometry_fields(a: dict[str, Any]) -> dict[str, Any]:
    return {"in": _shape_fields(a["in_shape"]), "out": _shape_fields(a["out_shape"]), "kernel_h": a["kernel"][0],
            "kernel_w": a["kernel"][1], "stride_h": a["stride"][0], "stride_w": a["stride"][1],
            "pad_h": a["padding"][0], "pad_w": a["padding"][1]}


class MaxPool(OpHandler):
    """Max pooling on the codes (the grid is monotone, so it commutes with dequantization)."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Tensor:
        x = ctx.tensor_arg(node)
        module = ctx.modules.get(node.target) if node.op == "call_module" else None
        out = Tensor(node.name, ctx.shape(node), x.grid)
        return ctx.add_op(Op(self, node.name, [x.name], out.name, _pool_geometry(node, module, x, out.shape)), out)

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        return _windows(inputs[0], op.attrs, np.iinfo(np.int64).min).max(axis=(4, 5))

    def emit(self, op: Op, src: CSource) -> list[str]:
        params = src.struct(op, "cnnc_pool_params", _geometry_fields(op.attrs))
        return [f"cnnc_maxpool(&{params}, {src.ptr(op.inputs[0])}, {src.ptr(op.output)});"]


class AvgPool(OpHandler):
    """Average pooling with a constant divisor (padding counted as zeros), and global average pooling."""

    def __init__(self, global_pool: bool) -> None:
        self.global_pool = global_pool

    def lower(self, ctx: Lowering, node: fx.Node) -> Pending:
        return Pending(self, node, [ctx.tensor_arg(node)], ctx.shape(node))

    def _geometry(self, ctx: Lowering, node: fx.Node, x: Tensor, out_shape: Shape) -> dict[str, Any]:
        if self.global_pool:
            return {"in_shape": x.shape, "out_shape": out_shape, "kernel": x.shape[1:], "stride": (1, 1),
                    "padding": (0, 0), "divisor": x.shape[1] * x.shape[2]}
        module = ctx.modules.get(node.target) if node.op == "call_module" else None
        if module is None:
            raise UnsupportedOp(f"{node.name}: functional avg_pool2d is not supported; use nn.AvgPool2d")
        (kh, kw), (ph, pw) = _pair(module.kernel_size), _pair(module.padding)
        sh, sw = _pair(module.stride or module.kernel_size)
        geometry = {"in_shape": x.shape, "out_shape": out_shape, "kernel": (kh, kw), "stride": (sh, sw),
                    "padding": (ph, pw)}
        partial = ((out_shape[1] - 1) * sh + kh > x.shape[1] + 2 * ph
                   or (out_shape[2] - 1) * sw + kw > x.shape[2] + 2 * pw)
        if partial or (not module.count_include_pad and (ph or pw)):
            raise UnsupportedOp(f"{node.name}: average pooling whose divisor varies by window (ceil_mode partial "
                                "windows, or padding without count_include_pad) is not supported")
        return {**geometry, "divisor": module.divisor_override or kh * kw}

    def build(self, ctx: Lowering, pending: Pending, out: Tensor, clamp: tuple[int, int]) -> Op:
        x = pending.inputs[0]
        a = self._geometry(ctx, pending.node, x, out.shape)
        a["multiplier"], a["shift"] = quantize_multiplier(x.grid.scale / (a["divisor"] * out.grid.scale))
        a.update(input_offset=x.grid.zero_point, **_output_attrs(out, clamp))
        return Op(self, pending.node.name, [x.name], out.name, a)

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        a = op.attrs
        sums = _windows(inputs[0] - a["input_offset"], a, 0).sum(axis=(4, 5))
        return _requant(sums, a, a["multiplier"], a["shift"])

    def emit(self, op: Op, src: CSource) -> list[str]:
        a = op.attrs
        geometry = ", ".join(f".{k} = {v}" for k, v in _geometry_fields(a).items())
        fields = {"geometry": "{" + geometry + "}",
                  **{k: a[k] for k in ("input_offset", "multiplier", "shift", "output_offset", "act_min",
                                       "act_max")}}
        params = src.struct(op, "cnnc_avgpool_params", fields)
        return [f"cnnc_avgpool(&{params}, {src.ptr(op.inputs[0])}, {src.ptr(op.output)});"]


def _fx_shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


class Window(OpHandler):
    """Strided slice then zero padding (the fill is the zero point) over C, H, W: the option-A shortcut
    ``x[:, :, ::2, ::2]`` + channel pad is one op; a slice or a pad alone is the same op."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Tensor:
        x = ctx.tensor_arg(node)
        rank = len(_fx_shape(node.args[0]))
        if self._is_slice(node):
            return self._slice(ctx, node, x, rank)
        return self._pad(ctx, node, x, rank)

    @staticmethod
    def _is_slice(node: fx.Node) -> bool:
        return node.target is operator.getitem

    @staticmethod
    def _dims(rank: int) -> list[int]:
        """The IR's (C, H, W) axis of each non-batch dimension of a rank-2 or rank-4 tensor."""
        return [0] if rank == 2 else [0, 1, 2]

    def _slice(self, ctx: Lowering, node: fx.Node, x: Tensor, rank: int) -> Tensor:
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if index and index[0] != slice(None):
            raise UnsupportedOp(f"{node.name}: slicing the batch dimension is not supported")
        start, step = [0, 0, 0], [1, 1, 1]
        for axis, s in zip(self._dims(rank), index[1:], strict=False):
            if s.step is not None and s.step < 1:
                raise UnsupportedOp(f"{node.name}: only positive slice steps are supported")
            start[axis], _, step[axis] = s.indices(x.shape[axis])
        out = Tensor(node.name, ctx.shape(node), x.grid)
        attrs = {"in_shape": x.shape, "out_shape": out.shape, "start": tuple(start), "step": tuple(step),
                 "extent": out.shape, "pad_before": (0, 0, 0), "fill": x.grid.zero_point}
        return ctx.add_op(Op(self, node.name, [x.name], out.name, attrs), out)

    def _pad(self, ctx: Lowering, node: fx.Node, x: Tensor, rank: int) -> Tensor:
        amounts = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        before = [0, 0, 0]
        for i, axis in enumerate(reversed(self._dims(rank))):
            if 2 * i < len(amounts):
                before[axis] = amounts[2 * i]
        if len(amounts) > 2 * len(self._dims(rank)) and any(amounts[2 * len(self._dims(rank)):]):
            raise UnsupportedOp(f"{node.name}: padding the batch dimension is not supported")
        if min(amounts) < 0:
            raise UnsupportedOp(f"{node.name}: negative padding (cropping) is not supported")
        out = Tensor(node.name, ctx.shape(node), x.grid)
        source = node.args[0]
        merged = ctx.producer(x.name) if len(source.users) == 1 else None
        if (merged is not None and merged.handler is self and merged.name == source.name
                and merged.attrs["pad_before"] == (0, 0, 0)):
            merged.attrs.update(out_shape=out.shape, pad_before=tuple(before))
            return ctx.retarget(merged, out)
        attrs = {"in_shape": x.shape, "out_shape": out.shape, "start": (0, 0, 0), "step": (1, 1, 1),
                 "extent": x.shape, "pad_before": tuple(before), "fill": x.grid.zero_point}
        return ctx.add_op(Op(self, node.name, [x.name], out.name, attrs), out)

    def run(self, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
        a = op.attrs
        x = inputs[0].reshape(len(inputs[0]), *a["in_shape"])
        index = tuple(slice(s, s + e * t, t) for s, e, t in zip(a["start"], a["extent"], a["step"], strict=True))
        x = x[(slice(None), *index)]
        after = [o - e - b for o, e, b in zip(a["out_shape"], a["extent"], a["pad_before"], strict=True)]
        return np.pad(x, [(0, 0), *zip(a["pad_before"], after, strict=True)], constant_values=a["fill"])

    def emit(self, op: Op, src: CSource) -> list[str]:
        a = op.attrs
        fields = {"in": _shape_fields(a["in_shape"]), "out": _shape_fields(a["out_shape"]),
                  **{k: _shape_fields(a[k]) for k in ("start", "step", "extent", "pad_before")}, "fill": a["fill"]}
        params = src.struct(op, "cnnc_window_params", fields)
        return [f"cnnc_window(&{params}, {src.ptr(op.inputs[0])}, {src.ptr(op.output)});"]


class Flatten(OpHandler):
    """CHW is already the flattened order: the same buffer, seen as ``(F, 1, 1)``."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Tensor | Pending:
        module = ctx.modules.get(node.target) if node.op == "call_module" else None
        if module is not None:
            start, end = module.start_dim, module.end_dim
        else:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        if start != 1 or end not in (-1, len(_fx_shape(node.args[0])) - 1):
            raise UnsupportedOp(f"{node.name}: only flatten(start_dim=1) is supported")
        return replace(ctx.value(node.args[0]), shape=ctx.shape(node))


class Identity(OpHandler):
    def lower(self, ctx: Lowering, node: fx.Node) -> Tensor | Pending:
        return ctx.value(node.args[0])


class Input(OpHandler):
    """The model input: float until its quantizer, whose grid the caller's int8 codes are on."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Pending:
        return Pending(self, node, [], ctx.shape(node))

    def build(self, ctx: Lowering, pending: Pending, out: Tensor, clamp: tuple[int, int]) -> None:
        ctx.set_input(out)


class Quantize(OpHandler):
    """An activation quantizer: gives a pending float result its grid, or moves codes onto a new grid."""

    def lower(self, ctx: Lowering, node: fx.Node) -> Tensor:
        return ctx.materialize(HANDLERS["requant"].lower(ctx, node), ctx.quantizer_grid(node), node.name)


_CONV, _WINDOW = Conv(), Window()
HANDLERS: dict[str, OpHandler] = {
    "conv": _CONV, "linear": _CONV, "add": Add(), "cat": Concat(), "maxpool": MaxPool(),
    "avgpool": AvgPool(global_pool=False), "gap": AvgPool(global_pool=True), "slice": _WINDOW, "pad": _WINDOW,
    "flatten": Flatten(), "identity": Identity(), "relu": Activation(six=False), "relu6": Activation(six=True),
    "quant": Quantize(), "requant": Requant(), "input": Input(),
}


def relu6_code(grid: Grid) -> int:
    """The code of 6.0 on ``grid``, rounded half to even in float32 as the simulation does."""
    return grid.zero_point + int(np.round(np.float32(6.0) / np.float32(grid.scale)))


def clamp_range(pending: Pending, grid: Grid) -> tuple[int, int]:
    """Output code range after the fused ReLU/ReLU6 (exact: rounding is monotone)."""
    low, high = grid.qmin, grid.qmax
    if pending.relu:
        low = max(low, grid.zero_point)
    if pending.relu6:
        high = min(high, relu6_code(grid))
    return low, high
