"""Rewrite a float model (torch.fx) into its quantization-simulating twin.

The rewrite places activation quantizers exactly where an integer runtime holds integer tensors, as
the role table in :mod:`.ops` says: the model input, the output of every integer op (after a directly
following ReLU/ReLU6, which the runtime fuses), and any other tensor an integer op reads. Pure data
movement (slicing, zero padding, reshapes, splits, max pooling, nearest upsampling) keeps a tensor on
its grid, so it needs no quantizer of its own; every other op is a float island whose output is
quantized only where an integer op reads it. BatchNorm is folded into the preceding conv first, as
every deployment does. The export walks this same graph, so simulated == deployed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import fx, nn

from .core import QUANT_LAYERS, FakeQuantize, Mode, QConv2d, QLinear
from .ops import Role, op_kind, role, tensor_inputs
from .spec import activation_spec, weight_spec


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace a copy of ``model`` with a clear error for untraceable code."""
    try:
        return fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as exc:  # fx raises TraceError, TypeError, ... for data-dependent control flow
        raise ValueError(f"cannot quantize {type(model).__name__}: torch.fx cannot trace it ({exc}); "
                         "quantization needs a model without data-dependent Python control flow") from exc


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``conv`` becomes ``bn(conv(x))`` with BN's running statistics (exact in eval mode)."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm of width {bn.num_features} follows a conv of {conv.out_channels} channels")
    mean = bn.running_mean if bn.track_running_stats else torch.zeros_like(conv.weight[:, 0, 0, 0])
    var = bn.running_var if bn.track_running_stats else torch.ones_like(mean)
    gamma = bn.weight if bn.affine else torch.ones_like(mean)
    beta = bn.bias if bn.affine else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - mean) * factor + beta)


def fold_batchnorm(gm: fx.GraphModule, use_stats: bool = True) -> list[str]:
    """Fold every BatchNorm2d that directly and solely follows a Conv2d; return the folded BN names.

    ``use_stats=False`` only removes the BN and gives the conv a bias (used when a checkpoint's folded
    weights are about to be loaded over it).
    """
    modules = dict(gm.named_modules())
    folded = []
    for node in list(gm.graph.nodes):
        if op_kind(node, modules) != "bn":
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and op_kind(src, modules) == "conv" and len(src.users) == 1):
            continue
        conv = modules[src.target]
        if use_stats:
            fold_bn_into_conv(conv, modules[node.target])
        elif conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        set_submodule(gm, node.target, nn.Identity())
        folded.append(node.target)
    gm.graph.lint()
    gm.recompile()
    return folded


def data_source(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """Walk back through data-movement ops to the node whose values (and grid) ``node`` carries."""
    while role(node, modules) is Role.MOVEMENT:
        node = node.args[0]
    return node


def _fused_end(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    while len(node.users) == 1 and role(next(iter(node.users)), modules) is Role.ACTIVATION:
        node = next(iter(node.users))
    return node


def quant_points(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes whose output gets an activation quantizer, in graph order."""
    modules = dict(gm.named_modules())
    points: dict[fx.Node, None] = {}
    for node in gm.graph.nodes:
        if role(node, modules) in (Role.SOURCE, Role.INTEGER):
            end = _fused_end(node, modules)
            if any(user.op != "output" for user in end.users):
                points[end] = None
    for node in gm.graph.nodes:
        if role(node, modules) is Role.INTEGER:
            for arg in tensor_inputs(node):
                points.setdefault(data_source(arg, modules), None)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(points, key=order.__getitem__)


def _replace_layers(gm: fx.GraphModule, weight_bits: int, per_channel: bool, layer_bits: dict[str, int]) -> None:
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or op_kind(node, modules) not in ("conv", "linear"):
            continue
        module = modules[node.target]
        if isinstance(module, QUANT_LAYERS):
            raise ValueError(f"{node.target} is already quantized")
        spec = weight_spec(layer_bits.get(node.target, weight_bits), per_channel)
        cls = QConv2d if isinstance(module, nn.Conv2d) else QLinear
        set_submodule(gm, node.target, cls.from_float(module, spec))


def _insert_quantizers(gm: fx.GraphModule, act_bits: int) -> None:
    for point in quant_points(gm):
        name = f"{point.name}_quant"
        gm.add_submodule(name, FakeQuantize(activation_spec(act_bits)))
        with gm.graph.inserting_after(point):
            q = gm.graph.call_module(name, (point,))
        point.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)


def _widen_inputs(gm: fx.GraphModule, layer_input_bits: dict[str, int]) -> None:
    """Give the quantizer feeding each named layer its bits (the most any of its readers asks for)."""
    modules = dict(gm.named_modules())
    wanted: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in layer_input_bits:
            quantizer = data_source(node.args[0], modules).target
            wanted[quantizer] = max(wanted.get(quantizer, 0), layer_input_bits[node.target])
    for quantizer, bits in wanted.items():
        setattr(gm, quantizer, FakeQuantize(activation_spec(bits)))


def _wire_input_scales(gm: fx.GraphModule) -> None:
    """Give each quantized layer its input quantizer's scale (for the int32 bias)."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if op_kind(node, modules) not in ("conv", "linear"):
            continue
        src = data_source(node.args[0], modules)
        if op_kind(src, modules) != "quant":
            raise ValueError(f"internal error: input of {node.target} is not quantized")
        with gm.graph.inserting_before(node):
            scale = gm.graph.get_attr(f"{src.target}.scale")
        node.args = (node.args[0], scale)


def insert_quantizers(gm: fx.GraphModule, weight_bits: int, act_bits: int, per_channel: bool,
                      layer_bits: dict[str, int], layer_input_bits: dict[str, int] | None = None) -> fx.GraphModule:
    """Swap conv/linear for quantized layers and insert activation quantizers (all in float mode)."""
    modules = dict(gm.named_modules())
    layers = {n.target for n in gm.graph.nodes if op_kind(n, modules) in ("conv", "linear")}
    for option, names in (("layer_bits", layer_bits), ("layer_input_bits", layer_input_bits or {})):
        unknown = sorted(set(names) - layers)
        if unknown:
            raise ValueError(f"{option} names no conv/linear layer: {unknown}; layers: {sorted(layers)}")
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer to quantize")
    _replace_layers(gm, weight_bits, per_channel, layer_bits)
    _insert_quantizers(gm, act_bits)
    _widen_inputs(gm, layer_input_bits or {})
    _wire_input_scales(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def layer_input_scales(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Each quantized layer's input scale (the quantizer scale wired into its call)."""
    scales = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), QUANT_LAYERS):
            quantizer = node.args[1].target.rpartition(".")[0]
            scales[node.target] = gm.get_submodule(quantizer).scale
    return scales


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QConv2d | QLinear]]:
    """(name, layer) of every quantized conv/linear."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS))


def act_quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantize]]:
    """(name, quantizer) of every activation quantizer (weight quantizers excluded)."""
    return ((n, m) for n, m in model.named_modules()
            if isinstance(m, FakeQuantize) and not n.endswith("weight_quant"))


def check_quantized(qmodel: nn.Module, exporter: str) -> None:
    """Exporters read codes off calibrated quantizers; refuse a float model or a half-calibrated one."""
    if not hasattr(qmodel, "quant_config") or not isinstance(qmodel, fx.GraphModule):
        raise ValueError(f"{exporter} needs a model returned by cnncompress.quant.quantize or qat")
    modes = {q.mode for _, q in act_quantizers(qmodel)} | {l.weight_quant.mode for _, l in quant_layers(qmodel)}
    if modes != {"quant"}:
        raise ValueError(f"{exporter} needs every quantizer calibrated and on; found modes {sorted(modes)}")


def set_mode(model: nn.Module, weights: Mode, acts: Mode) -> None:
    """Switch weight and activation quantizers; the int32 bias is simulated only when both quantize."""
    for _, layer in quant_layers(model):
        layer.weight_quant.mode = weights
        layer.quantize_bias = weights == "quant" and acts == "quant"
    for _, q in act_quantizers(model):
        q.mode = acts
