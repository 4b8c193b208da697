"""Every operator family exports to integer ONNX: integer kernels where onnxruntime has them, float islands
elsewhere, the report naming the float nodes, and onnxruntime agreeing with the simulation on digits."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from cnncompress import Budget, compress
from cnncompress.export import OnnxRuntimeModule, compare_top1, export_onnx_report, export_plan
from cnncompress.models import ModelSpec
from cnncompress.quant import quantize
from cnncompress.train import TrainConfig, fit
from opnets import OPNETS

# per model: kinds the report lists as float, float ONNX ops left after onnxruntime's optimisation,
# integer kernels that must appear
EXPECTED: dict[str, tuple[set[str], set[str], set[str]]] = {
    "se_sigmoid": (set(), set(), {"QLinearSigmoid", "QLinearMul", "QLinearGlobalAveragePool"}),
    "se_hardsigmoid": ({"hardsigmoid"}, {"HardSigmoid"}, {"QLinearMul"}),
    "swish": ({"hardswish", "arith", "relu6"}, {"HardSigmoid", "Mul", "Add", "Div"},
              {"QLinearSigmoid", "QLinearMul", "QLinearAdd"}),
    "densenet": (set(), set(), {"QLinearConcat"}),
    "shufflenet": (set(), set(), {"QLinearConcat"}),
    "upsample": ({"resize_linear"}, {"Resize"}, {"QLinearAdd", "QLinearConcat"}),
    "norms": ({"groupnorm", "layernorm", "relu", "other"},
              {"Reshape", "InstanceNormalization", "Mul", "Add", "LayerNormalization", "Elu"}, set()),
    "pools": (set(), set(), {"QLinearAveragePool", "QLinearGlobalAveragePool"}),
    "grouped": (set(), set(), {"QLinearAdd"}),
    "inception": (set(), set(), {"QLinearConcat", "MaxPool"}),
    "channels_last": ({"layernorm", "gelu"}, {"LayerNormalization", "Div", "Erf", "Mul", "Add"},
                      {"MatMulIntegerToFloat", "QLinearAdd"}),
    "split_sizes": (set(), set(), {"Split", "QLinearConcat"}),
}
FLOAT_SOURCES = {"DequantizeLinear"}
NOT_COMPUTE = {"DequantizeLinear", "QuantizeLinear", "Identity"}


def optimized_graph(path, tmp_path) -> onnx.GraphProto:
    """The graph onnxruntime actually runs (QDQ groups fused into integer kernels)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


def float_ops(graph: onnx.GraphProto) -> set[str]:
    """Op types computing on float tensors that come from a DequantizeLinear (the float islands)."""
    floating: set[str] = set()
    found = set()
    for node in graph.node:  # onnxruntime writes the graph in topological order
        if node.op_type in FLOAT_SOURCES or (node.op_type != "QuantizeLinear" and floating & set(node.input)):
            floating.update(node.output)
            found.add(node.op_type)
    return found - NOT_COMPUTE


@pytest.fixture(scope="module")
def calibration(digits_split):
    return digits_split[0].take(256, seed=1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_operator_family_exports_with_integer_kernels_and_agrees(name, digits_split, calibration, tmp_path):
    train, _, test = digits_split
    torch.manual_seed(0)
    model = OPNETS[name]()
    fit(model, train, TrainConfig(epochs=4, batch_size=32, lr=0.02, optimizer="adam", augment=False), progress=False)
    model.eval()
    plan = export_plan(model, (1, 8, 8))
    qmodel = quantize(model, calibration, calibration="minmax")
    report = export_onnx_report(qmodel, tmp_path / f"{name}.onnx", (1, 8, 8))

    float_kinds, island_ops, kernels = EXPECTED[name]
    assert {n.kind for n in report.nodes if not n.integer} == float_kinds
    assert plan.float_nodes == report.float_nodes  # known before any calibration
    assert {n.kind for n in report.nodes if n.generic} <= {"other"}  # torch.onnx only where no emitter exists
    assert report.integer_mac_share == 1.0
    graph = optimized_graph(report.path, tmp_path)
    assert float_ops(graph) == island_ops
    assert kernels <= {n.op_type for n in graph.node}
    result = compare_top1(qmodel, OnnxRuntimeModule(report.path), test)
    assert result.agreement >= 99.5, result
    assert result.top1_a > 20, result  # well above chance: agreement is measured on a model that learned


@pytest.mark.parametrize("name", sorted(set(OPNETS) - set(EXPECTED)))
def test_export_plan_handles_every_other_operator_family_before_calibration(name):
    report = export_plan(OPNETS[name]().eval(), (1, 8, 8))
    assert report.nodes and all(n.macs >= 0 for n in report.nodes)
    assert set(report.generic_nodes) <= set(report.float_nodes)


class DataDependent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) if x.sum() > 0 else x.flatten(1)[:, :4]


def test_compress_fails_before_the_first_stage_on_a_graph_export_cannot_take(digits_split, tmp_path):
    train, val, _ = digits_split
    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        compress(DataDependent(), Budget.from_mapping({"flash_bytes": "8KB"}), train, val,
                 spec=ModelSpec("digits_cnn"), output_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
