"""Integer ONNX export in QDQ form, built node by node from the quantized model's own fx graph.

Every activation quantizer becomes ``QuantizeLinear`` with cnncompress's scale and zero point (the
runtime never re-calibrates), weights are stored as int8 codes (restricted to their b-bit range) with
per-channel ``DequantizeLinear``, biases as int32 at scale ``s_in * s_w``. onnxruntime fuses
``DQ -> Conv/Gemm/Add/GlobalAveragePool -> Q`` into integer kernels; data movement (slice, pad,
flatten, max pool) runs directly on the integer tensors. Because the graph is walked op for op,
what runs is exactly what was simulated, up to the runtime's float rounding of requantization.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..analysis.inputs import ExampleInput, eval_mode, one_image
from ..data import ImageSet
from ..quant.core import INT32_MAX, INT32_MIN, FakeQuantize, QConv2d, QLinear
from ..quant.graph import act_quantizers, op_kind, quant_layers, tensor_inputs
from ..utils import atomic_path, check_finite
from .onnx_fp32 import INPUT_NAME, OPSET, OUTPUT_NAME

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class _Value:
    """An ONNX tensor: float, or integer codes with their scale and zero point."""

    name: str
    scale: float | None = None
    zero_point: int = 0
    signed: bool = False

    @property
    def quantized(self) -> bool:
        return self.scale is not None


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: set[str] = set()
        self.dequantized: dict[str, str] = {}

    def _fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.names:
            i += 1
            name = f"{hint}_{i}"
        self.names.add(name)
        return name

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self._fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self._fresh(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._fresh(f"{hint}_{op_type}"), **attrs))
        return out

    def as_float(self, value: _Value) -> str:
        """The float view of a value (one shared DequantizeLinear per integer tensor)."""
        if not value.quantized:
            return value.name
        if value.name not in self.dequantized:
            dtype = np.int8 if value.signed else np.uint8
            scale = self.const(np.float32(value.scale), f"{value.name}_scale")
            zp = self.const(np.array(value.zero_point, dtype=dtype), f"{value.name}_zp")
            self.dequantized[value.name] = self.op("DequantizeLinear", [value.name, scale, zp], f"{value.name}_dq")
        return self.dequantized[value.name]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _quantize_act(b: _Builder, q: FakeQuantize, x: _Value, hint: str) -> _Value:
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
    return _Value(out, scale, zero_point, spec.signed)


def _layer_params(b: _Builder, layer: QConv2d | QLinear, x: _Value, hint: str) -> list[str]:
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


def _conv(b: _Builder, layer: QConv2d, x: _Value, hint: str) -> _Value:
    if isinstance(layer.padding, str):
        raise ValueError(f"{hint}: string padding {layer.padding!r} is not supported; give explicit padding")
    ph, pw = layer.padding
    out = b.op("Conv", _layer_params(b, layer, x, hint), hint, kernel_shape=list(layer.kernel_size),
               strides=list(layer.stride), pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.groups)
    return _Value(out)


def _linear(b: _Builder, layer: QLinear, x: _Value, hint: str, rank: int) -> _Value:
    if rank != 2:
        raise ValueError(f"{hint}: Linear on a rank-{rank} tensor; flatten to (N, features) first")
    return _Value(b.op("Gemm", _layer_params(b, layer, x, hint), hint, transB=1))


def _slice(b: _Builder, node: fx.Node, x: _Value) -> _Value:
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    starts, ends, axes, steps = [], [], [], []
    for axis, s in enumerate(index):
        if s == slice(None):
            continue
        if s.step is not None and s.step < 1:
            raise ValueError(f"{node.name}: only positive slice steps can be exported")
        starts.append(s.start or 0)
        ends.append(INT64_MAX if s.stop is None else s.stop)
        axes.append(axis)
        steps.append(s.step or 1)
    if not axes:
        return x
    consts = [b.const(np.array(v, np.int64), f"{node.name}_{k}")
              for k, v in zip(("starts", "ends", "axes", "steps"), (starts, ends, axes, steps), strict=True)]
    return _Value(b.op("Slice", [x.name, *consts], node.name), x.scale, x.zero_point, x.signed)


def _pad(b: _Builder, node: fx.Node, x: _Value, rank: int) -> _Value:
    amounts = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(amounts) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = amounts[2 * i], amounts[2 * i + 1]
    if min(begins + ends) < 0:
        raise ValueError(f"{node.name}: negative padding (cropping) is not supported")
    fill = np.array(x.zero_point, np.int8 if x.signed else np.uint8) if x.quantized else np.float32(0)
    pads = b.const(np.array(begins + ends, np.int64), f"{node.name}_pads")
    out = b.op("Pad", [x.name, pads, b.const(fill, f"{node.name}_value")], node.name, mode="constant")
    return _Value(out, x.scale, x.zero_point, x.signed)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _pool_args(node: fx.Node, module: nn.Module | None) -> dict:
    if module is not None:
        k, s, p, d, ceil = module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode
    else:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        given = dict(zip(names, node.args[1:], strict=False)) | {k: v for k, v in node.kwargs.items() if k in names}
        k = given["kernel_size"]
        s, p, d, ceil = given.get("stride") or k, given.get("padding", 0), given.get("dilation", 1), \
            given.get("ceil_mode", False)
    pads = _pair(p)
    return {"kernel_shape": _pair(k), "strides": _pair(s), "pads": pads + pads, "dilations": _pair(d),
            "ceil_mode": int(ceil)}


def _flatten(b: _Builder, node: fx.Node, module: nn.Module | None, x: _Value, rank: int) -> _Value:
    if module is not None:
        start, end = module.start_dim, module.end_dim
    else:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    if end not in (-1, rank - 1):
        raise ValueError(f"{node.name}: only flattening to the last dimension can be exported")
    return _Value(b.op("Flatten", [x.name], node.name, axis=int(start)), x.scale, x.zero_point, x.signed)


def _rank(node: fx.Node) -> int:
    return len(node.meta["tensor_meta"].shape)


def _emit(b: _Builder, node: fx.Node, modules: dict[str, nn.Module], values: dict[fx.Node, _Value]) -> _Value:
    """ONNX nodes for one fx node."""
    kind = op_kind(node, modules)
    module = modules.get(node.target) if node.op == "call_module" else None
    args = [values[a] for a in tensor_inputs(node)] if kind != "input" else []
    if kind == "quant":
        return _quantize_act(b, module, args[0], node.name)
    if kind == "conv":
        return _conv(b, module, args[0], node.target.replace(".", "_"))
    if kind == "linear":
        return _linear(b, module, args[0], node.target.replace(".", "_"), _rank(node.args[0]))
    if kind in ("relu", "relu6"):
        inputs = [b.as_float(args[0])]
        if kind == "relu6":
            inputs += [b.const(np.float32(0), f"{node.name}_min"), b.const(np.float32(6), f"{node.name}_max")]
        return _Value(b.op("Relu" if kind == "relu" else "Clip", inputs, node.name))
    if kind == "add":
        return _Value(b.op("Add", [b.as_float(a) for a in args], node.name))
    if kind == "cat":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return _Value(b.op("Concat", [b.as_float(a) for a in args], node.name, axis=int(dim)))
    if kind == "gap":
        return _Value(b.op("GlobalAveragePool", [b.as_float(args[0])], node.name))
    if kind == "avgpool":
        attrs = _pool_args(node, module)
        attrs.pop("dilations")
        attrs["count_include_pad"] = int(module.count_include_pad)
        return _Value(b.op("AveragePool", [b.as_float(args[0])], node.name, **attrs))
    if kind == "maxpool":
        x = args[0]
        return _Value(b.op("MaxPool", [x.name], node.name, **_pool_args(node, module)), x.scale, x.zero_point,
                      x.signed)
    if kind == "slice":
        return _slice(b, node, args[0])
    if kind == "pad":
        return _pad(b, node, args[0], _rank(node))
    if kind == "flatten":
        return _flatten(b, node, module, args[0], _rank(node.args[0]))
    if kind == "identity":
        return args[0]
    raise ValueError(f"cannot export {node.op} {node.target} ({node.name}) to integer ONNX; supported: conv, "
                     "linear, relu, relu6, add, cat, slicing, zero padding, flatten, max/avg/global pooling")


def _check_quantized(qmodel: nn.Module) -> None:
    if not hasattr(qmodel, "quant_config") or not isinstance(qmodel, fx.GraphModule):
        raise ValueError("export_onnx needs a model returned by cnncompress.quant.quantize or qat")
    modes = {q.mode for _, q in act_quantizers(qmodel)} | {l.weight_quant.mode for _, l in quant_layers(qmodel)}
    if modes != {"quant"}:
        raise ValueError(f"export_onnx needs every quantizer calibrated and on; found modes {sorted(modes)}")


def _build_graph(qmodel: fx.GraphModule, example: torch.Tensor) -> onnx.GraphProto:
    with eval_mode(qmodel):
        ShapeProp(qmodel).propagate(example)
    modules = dict(qmodel.named_modules())
    b = _Builder()
    values: dict[fx.Node, _Value] = {}
    placeholders = [n for n in qmodel.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"export_onnx supports one input tensor, the model takes {len(placeholders)}")
    values[placeholders[0]] = _Value(INPUT_NAME)
    b.names.add(INPUT_NAME)
    result = None
    for node in qmodel.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            result = node.args[0]
            break
        values[node] = _emit(b, node, modules, values)
    if not isinstance(result, fx.Node):
        raise ValueError("export_onnx supports models returning one tensor")
    b.nodes.append(helper.make_node("Identity", [b.as_float(values[result])], [OUTPUT_NAME], name="logits_out"))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *example.shape[1:]])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                             ["batch", *result.meta["tensor_meta"].shape[1:]])]
    return helper.make_graph(b.nodes, "cnncompress_qdq", inputs, outputs, b.initializers)


def export_onnx(qmodel: fx.GraphModule, path: str | os.PathLike, example_input: ExampleInput) -> Path:
    """Write ``qmodel`` as a self-contained QDQ ONNX file (checked by ``onnx.checker``), atomically."""
    check_finite(qmodel, "export")
    _check_quantized(qmodel)
    example = one_image(example_input, next(qmodel.parameters()).device)
    model = helper.make_model(_build_graph(qmodel, example), producer_name="cnncompress",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(model, tmp)
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
    return path


def weight_storage_bytes(qmodel: nn.Module) -> dict[str, int]:
    """Bytes of the quantized weights: packed at their bit widths, and as stored in the ONNX file (int8).

    Biases count as int32 and scales as float32 in both; the ONNX figure is what the file carries.
    """
    packed = int8 = 0
    for _, layer in quant_layers(qmodel):
        n, bits = layer.weight.numel(), layer.weight_quant.spec.bits
        extra = 4 * layer.weight_quant.scale.numel() + (4 * layer.bias.numel() if layer.bias is not None else 0)
        packed += math.ceil(n * bits / 8) + extra
        int8 += n + extra
    return {"packed": packed, "onnx_int8": int8}


class OnnxRuntimeModule(nn.Module):
    """An ONNX file run by onnxruntime (CPU) behind the ``nn.Module`` call, so ``train.evaluate`` works."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


@dataclass(frozen=True)
class Agreement:
    """Top-1 accuracy (percent) of two models on the same images and how often their top-1 agree."""

    top1_a: float
    top1_b: float
    agreement: float
    n: int


def compare_top1(a: nn.Module, b: nn.Module, data: ImageSet, batch_size: int = 256) -> Agreement:
    """One pass over ``data`` through both models in eval mode (e.g. simulated vs onnxruntime)."""
    correct_a = correct_b = same = n = 0
    with eval_mode(a), eval_mode(b):
        for x, y in data.batches(batch_size):
            pa, pb = a(x).argmax(1).cpu(), b(x).argmax(1).cpu()
            correct_a += int((pa == y).sum())
            correct_b += int((pb == y).sum())
            same += int((pa == pb).sum())
            n += len(y)
    if n == 0:
        raise ValueError("compare_top1 needs at least one image")
    return Agreement(100 * correct_a / n, 100 * correct_b / n, 100 * same / n, n)
