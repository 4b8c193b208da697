"""Integer ONNX export in QDQ form, built node by node from the quantized model's own fx graph.

Every activation quantizer becomes ``QuantizeLinear`` with cnncompress's scale and zero point (the
runtime never re-calibrates), weights are stored as int8 codes (restricted to their b-bit range) with
per-channel ``DequantizeLinear``, biases as int32 at scale ``s_in * s_w``. Each fx node is written by
its kind's emitter in :data:`~cnncompress.export.qdq_ops.EMITTERS`: onnxruntime fuses
``DQ -> Conv/Gemm/Add/Mul/Concat/Sigmoid/pooling -> Q`` into integer kernels, data movement runs
directly on the integer tensors, and any other op is a float island between DQ and Q (exported by
torch.onnx when no emitter is written for it), so every traceable model exports. Because the graph
is walked op for op, what runs is exactly what was simulated, up to the runtime's float rounding of
requantization. :class:`ExportReport` says which nodes run in float and the share of MACs that run
as integer kernels; :func:`export_plan` gives it for a float model before any stage runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from ..analysis.inputs import ExampleInput, eval_mode, one_image
from ..data import ImageSet
from ..quant.graph import check_quantized, quant_layers, set_mode, tensor_inputs
from ..quant.ops import op_kind
from ..quant.ptq import QuantConfig, prepare
from ..utils import atomic_path, check_finite
from .onnx_fp32 import INPUT_NAME, OPSET, OUTPUT_NAME
from .qdq_ops import EMITTERS, Builder, Emission, OnnxOp, Runs, Value, export_generic

_GENERIC = OnnxOp(export_generic, Runs.FLOAT)
_NO_TENSOR = ("attr", "shape")


@dataclass(frozen=True)
class NodeRun:
    """How onnxruntime runs one fx node of the quantized model."""

    name: str
    kind: str
    integer: bool  # an integer kernel, or data movement on integer tensors
    macs: int  # per image
    generic: bool = False  # exported by torch.onnx (no hand-written emitter)


@dataclass(frozen=True)
class ExportReport:
    """What the integer ONNX graph runs in float, and the share of MACs its integer kernels take."""

    nodes: tuple[NodeRun, ...]
    path: Path | None = None

    @property
    def float_nodes(self) -> list[str]:
        return [n.name for n in self.nodes if not n.integer]

    @property
    def generic_nodes(self) -> list[str]:
        return [n.name for n in self.nodes if n.generic]

    @property
    def integer_mac_share(self) -> float:
        total = sum(n.macs for n in self.nodes)
        return sum(n.macs for n in self.nodes if n.integer) / total if total else 1.0

    def describe(self) -> str:
        floats = ", ".join(f"{n.name} ({n.kind})" for n in self.nodes if not n.integer) or "none"
        return f"{100 * self.integer_mac_share:.1f}% of MACs in integer kernels; float nodes: {floats}"

    def to_dict(self) -> dict[str, Any]:
        return {"integer_mac_share": self.integer_mac_share, "float_nodes": self.float_nodes,
                "generic_nodes": self.generic_nodes, "path": str(self.path) if self.path else None}


class _Trace(ShapeProp):
    """Shape propagation that keeps every node's result and the MACs it computes."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.results: dict[fx.Node, Any] = {}
        self.macs: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        with FlopCounterMode(display=False) as counter:
            result = super().run_node(n)
        self.results[n], self.macs[n] = result, counter.get_total_flops() // 2
        return result


def _runs_integer(e: Emission, node: fx.Node, handler: OnnxOp, integer: set[fx.Node]) -> bool:
    """Whether onnxruntime runs ``node`` on integers, from the emitter's kind and the values around it."""
    if node in e.generic:
        return False
    sources = tensor_inputs(node)
    quantized = all(v.quantized for v in e.inputs(node))
    if handler.runs is Runs.MOVEMENT:
        return quantized
    if handler.runs is Runs.FUSED:  # into the kernel before it, or dropped before a quantizer on its range
        fused = sources[0] in integer and not e.values[sources[0]].quantized
        return fused or (quantized and _requantized(node, e.modules))
    if handler.runs is Runs.KERNEL:
        return quantized and (handler.float_output or _requantized(node, e.modules))
    return False


def _requantized(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the node's output (after fused activations) reaches only activation quantizers."""
    users = list(node.users)
    while len(users) == 1 and EMITTERS.get(op_kind(users[0], modules), _GENERIC).runs is Runs.FUSED:
        users = list(users[0].users)
    return bool(users) and all(op_kind(u, modules) == "quant" for u in users)


def _walk(qmodel: fx.GraphModule, example: torch.Tensor) -> tuple[Emission, list[NodeRun], fx.Node]:
    """Emit every node of ``qmodel`` into a fresh builder; how each computing node runs; the output node."""
    trace = _Trace(qmodel)
    with eval_mode(qmodel), torch.no_grad():
        trace.propagate(example)
    placeholders = [n for n in qmodel.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"export_onnx supports one input tensor, the model takes {len(placeholders)}")
    e = Emission(Builder(), dict(qmodel.named_modules()), trace.results)
    e.values[placeholders[0]] = Value(INPUT_NAME)
    e.b.names.add(INPUT_NAME)
    runs: list[NodeRun] = []
    integer: set[fx.Node] = set()
    for node in qmodel.graph.nodes:
        kind = op_kind(node, e.modules)
        if node.op == "output":
            return e, runs, node.args[0]
        if kind in _NO_TENSOR:
            continue
        handler = EMITTERS.get(kind, _GENERIC)
        e.values[node] = handler.emit(e, node)
        if handler.runs is not Runs.NOTHING:
            if _runs_integer(e, node, handler, integer):
                integer.add(node)
            runs.append(NodeRun(node.name, kind, node in integer, trace.macs[node], node in e.generic))
    raise ValueError("the model's graph has no output")


def _build_model(qmodel: fx.GraphModule, example: torch.Tensor) -> tuple[onnx.ModelProto, list[NodeRun]]:
    e, runs, result = _walk(qmodel, example)
    if not isinstance(result, fx.Node) or not isinstance(e.values[result], Value):
        raise ValueError("export_onnx supports models returning one tensor")
    b = e.b
    b.nodes.append(helper.make_node("Identity", [b.as_float(e.values[result])], [OUTPUT_NAME], name="logits_out"))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *example.shape[1:]])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", *e.shape(result)[1:]])]
    graph = helper.make_graph(b.nodes, "cnncompress_qdq", inputs, outputs, b.initializers)
    opsets = {**b.opsets, "": OPSET}
    model = helper.make_model(graph, producer_name="cnncompress", functions=b.functions,
                              opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = 9
    return model, runs


def export_onnx_report(qmodel: fx.GraphModule, path: str | os.PathLike, example_input: ExampleInput
                       ) -> ExportReport:
    """Write ``qmodel`` as a self-contained QDQ ONNX file (checked by ``onnx.checker``), atomically;
    report which nodes run in float."""
    check_finite(qmodel, "export")
    check_quantized(qmodel, "export_onnx")
    model, runs = _build_model(qmodel, one_image(example_input, next(qmodel.parameters()).device))
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(model, tmp)
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
    return ExportReport(tuple(runs), path)


def export_onnx(qmodel: fx.GraphModule, path: str | os.PathLike, example_input: ExampleInput) -> Path:
    """Write ``qmodel`` as a self-contained QDQ ONNX file (checked by ``onnx.checker``), atomically."""
    return export_onnx_report(qmodel, path, example_input).path


def export_plan(model: nn.Module, example_input: ExampleInput, config: QuantConfig | None = None
                ) -> ExportReport:
    """How ``model`` will quantize and export, found without calibration or training (fail early).

    Traces and prepares ``model`` as PTQ would (``config``: a ``QuantConfig``, default W8A8) and builds
    the integer graph in memory with uncalibrated grids; raises ``ValueError`` where tracing or export
    cannot handle a node, else reports which nodes will run in float.
    """
    check_finite(model, "export")
    qmodel = prepare(model, config or QuantConfig())
    set_mode(qmodel, "quant", "quant")
    model_proto, runs = _build_model(qmodel, one_image(example_input, next(model.parameters()).device))
    onnx.checker.check_model(model_proto, full_check=True)
    return ExportReport(tuple(runs))


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
