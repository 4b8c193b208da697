"""Quantizer placement on random op chains: integer ops read and write quantized tensors, nothing is
requantized twice, and onnxruntime computes what the simulation computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cnncompress.export import OnnxRuntimeModule, export_onnx
from cnncompress.quant import act_quantizers, quantize
from cnncompress.quant.graph import data_source, op_kind, tensor_inputs
from cnncompress.quant.ops import Role, role

WIDTH = 4
OPS = ("conv", "bn", "relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "silu", "tanh", "gelu", "add_skip",
       "mul_gate", "shuffle", "scale", "avgpool", "maxpool", "upsample", "chunk_cat", "groupnorm")


class Chain(nn.Module):
    """A stem conv, then ``ops`` in order on a (N, 4, 8, 8) tensor, then pooling and a classifier."""

    def __init__(self, ops: list[str]) -> None:
        super().__init__()
        self.ops = ops
        self.stem = nn.Conv2d(1, WIDTH, 3, padding=1)
        self.layers = nn.ModuleList(self._layer(op) for op in ops)
        self.fc = nn.Linear(WIDTH, 10)

    @staticmethod
    def _layer(op: str) -> nn.Module:
        layers = {"conv": lambda: nn.Conv2d(WIDTH, WIDTH, 3, padding=1), "bn": lambda: nn.BatchNorm2d(WIDTH),
                  "add_skip": lambda: nn.Conv2d(WIDTH, WIDTH, 1), "groupnorm": lambda: nn.GroupNorm(2, WIDTH),
                  "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid, "silu": nn.SiLU, "gelu": nn.GELU}
        return layers.get(op, nn.Identity)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for op, layer in zip(self.ops, self.layers, strict=True):
            x = self._apply(op, layer, x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    @staticmethod
    def _apply(op: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        functions = {
            "relu": F.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
            "add_skip": lambda t: t + layer(t), "mul_gate": lambda t: t * torch.sigmoid(F.adaptive_avg_pool2d(t, 1)),
            "shuffle": lambda t: t.view(t.size(0), 2, WIDTH // 2, 8, 8).transpose(1, 2).reshape(-1, WIDTH, 8, 8),
            "scale": lambda t: t * 0.5 + 1, "avgpool": lambda t: F.avg_pool2d(t, 3, 1, 1),
            "maxpool": lambda t: F.max_pool2d(t, 3, 1, 1),
            "upsample": lambda t: F.interpolate(F.avg_pool2d(t, 2), scale_factor=2),
            "chunk_cat": lambda t: torch.cat(t.chunk(2, 1)[::-1], 1),
        }
        return functions.get(op, layer)(x)


def _randomized(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


chains = st.lists(st.sampled_from(OPS), min_size=1, max_size=5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=chains)
def test_integer_ops_read_and_write_quantized_tensors_and_onnxruntime_agrees(ops, tmp_path_factory):
    torch.manual_seed(0)
    images = torch.rand(32, 1, 8, 8)
    qmodel = quantize(_randomized(Chain(ops)), images, calibration="minmax")
    modules = dict(qmodel.named_modules())
    for node in qmodel.graph.nodes:
        if role(node, modules) is Role.INTEGER:
            assert all(op_kind(data_source(a, modules), modules) == "quant" for a in tensor_inputs(node)), node
        if op_kind(node, modules) == "quant":  # placed on a computed value, never on a moved or quantized one
            assert op_kind(node.args[0], modules) != "quant" and role(node.args[0], modules) is not Role.MOVEMENT
    path = export_onnx(qmodel, tmp_path_factory.mktemp("chain") / "chain.onnx", (1, 8, 8))
    with torch.no_grad():
        sim, runtime = qmodel(images), OnnxRuntimeModule(path)(images)
    lsb = max(q.scale.item() for _, q in act_quantizers(qmodel))
    assert torch.allclose(runtime, sim, atol=4 * lsb), (ops, (runtime - sim).abs().max())
