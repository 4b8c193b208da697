"""What each torch.fx node computes: the one op recognition table, and quantization's table of op roles.

Recognition maps a node to a short kind ("conv", "mul", "resize_nearest", ...) from its module type,
function or method name, with a per-kind argument check; a node no entry accepts is "other". Every
backend keys its own handler table by these kinds, so supporting a new op is one entry per table.

Quantization's table says where an integer runtime holds integer tensors (see :class:`Role`); a kind
it does not list runs as a float island between DequantizeLinear and QuantizeLinear.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .core import FakeQuantize, QConv2d, QLinear

Accepts = Callable[[fx.Node, "nn.Module | None", dict[str, nn.Module]], bool]


def _always(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return True


@dataclass(frozen=True)
class OpEntry:
    """One kind: the module types, functions and method names computing it, and the arguments it takes."""

    kind: str
    modules: tuple[type, ...] = ()
    functions: tuple[Callable, ...] = ()
    methods: tuple[str, ...] = ()
    accepts: Accepts = _always


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call argument given by position or keyword (positions count the input tensor as 0)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def is_shape_value(node: Any) -> bool:
    """Whether ``node`` computes shape metadata (``x.size()``, ``x.shape[1] // 2``), not a tensor."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] in ("shape", "ndim")
    sources = node.all_input_nodes
    return node.op == "call_function" and _is_arithmetic(node.target) and bool(sources) and all(
        is_shape_value(a) for a in sources)


def _is_arithmetic(target: Any) -> bool:
    return target in (operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
                      operator.truediv, operator.mod, builtins.int)


def _is_tensor_node(a: Any) -> bool:
    return isinstance(a, fx.Node) and a.op != "get_attr" and not is_shape_value(a)


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The tensor arguments of an op, in call order (the list for concat); constants and shapes excluded."""
    found: list[fx.Node] = []
    for a in (*node.args, *node.kwargs.values()):
        items = a if isinstance(a, (list, tuple)) else (a,)
        found += [item for item in items if _is_tensor_node(item)]
    return found


def _two_tensors(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return all(_is_tensor_node(a) for a in node.args[:2]) and len(node.args) == 2 and not node.kwargs


def _has_tensor(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    numbers = all(_is_tensor_node(a) or isinstance(a, (int, float, fx.Node)) for a in node.args)
    return len(node.args) == 2 and not node.kwargs and numbers and any(_is_tensor_node(a) for a in node.args)


def _zero_padded_conv(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return module.padding_mode == "zeros"


def _clamps_to_six(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    if module is not None:
        return (module.min_val, module.max_val) == (0.0, 6.0)
    return node.target is F.relu6 or (arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)) == (0.0, 6.0)


def _exact_gelu(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return (module.approximate if module is not None else arg(node, 1, "approximate", "none")) == "none"


def _output_size(node: fx.Node, module: nn.Module | None) -> Any:
    return module.output_size if module is not None else arg(node, 1, "output_size")


def _global_pool(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return _output_size(node, module) in (1, (1, 1), [1, 1])


def _fixed_pool(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    size = _output_size(node, module)
    return not _global_pool(node, module, modules) and None not in (size if isinstance(size, tuple) else (size,))


def _plain_avgpool(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return (module.divisor_override if module is not None else arg(node, 6, "divisor_override")) is None


def _no_indices(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return not (module.return_indices if module is not None else arg(node, 6, "return_indices", False))


def _spatial_mean(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    dims = arg(node, 1, "dim")
    return isinstance(dims, (tuple, list)) and sorted(dims) in ([2, 3], [-2, -1]) and arg(node, 3, "dtype") is None


def _picks_split_outputs(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    source = node.args[0]
    return isinstance(source, fx.Node) and isinstance(node.args[1], (int, slice)) and op_kind(
        source, modules) == "split"


def _slices_only(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    return _is_tensor_node(node.args[0]) and all(isinstance(i, slice) for i in index)


def _zero_fill(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return arg(node, 2, "mode", "constant") == "constant" and not arg(node, 3, "value")


def _shape_only(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return not any(isinstance(a, torch.dtype) for a in node.args[1:])


def _resize_mode(node: fx.Node, module: nn.Module | None) -> str:
    return module.mode if module is not None else arg(node, 3, "mode", "nearest")


def _nearest(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return _resize_mode(node, module) == "nearest" and not arg(node, 6, "antialias", False)


def _bilinear(node: fx.Node, module: nn.Module | None, modules: dict[str, nn.Module]) -> bool:
    return _resize_mode(node, module) == "bilinear" and not arg(node, 6, "antialias", False)


_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, operator.imul, torch.mul)
_ARITH = (*_ADD, *_MUL, operator.sub, operator.isub, torch.sub, operator.truediv, operator.itruediv, torch.div)
_UPSAMPLE = (nn.Upsample,)

OPS: tuple[OpEntry, ...] = (
    OpEntry("quant", (FakeQuantize,)),
    OpEntry("conv", (QConv2d, nn.Conv2d), accepts=_zero_padded_conv),
    OpEntry("linear", (QLinear, nn.Linear)),
    OpEntry("bn", (nn.BatchNorm2d,)),
    OpEntry("relu", (nn.ReLU,), (F.relu, torch.relu, torch.relu_), ("relu", "relu_")),
    OpEntry("relu6", (nn.Hardtanh,), (F.relu6, F.hardtanh), accepts=_clamps_to_six),
    OpEntry("sigmoid", (nn.Sigmoid,), (torch.sigmoid, F.sigmoid), ("sigmoid",)),
    OpEntry("hardsigmoid", (nn.Hardsigmoid,), (F.hardsigmoid,)),
    OpEntry("hardswish", (nn.Hardswish,), (F.hardswish,)),
    OpEntry("silu", (nn.SiLU,), (F.silu,)),
    OpEntry("leakyrelu", (nn.LeakyReLU,), (F.leaky_relu,)),
    OpEntry("tanh", (nn.Tanh,), (torch.tanh, F.tanh), ("tanh",)),
    OpEntry("gelu", (nn.GELU,), (F.gelu,), accepts=_exact_gelu),
    OpEntry("maxpool", (nn.MaxPool2d,), (F.max_pool2d,), accepts=_no_indices),
    OpEntry("avgpool", (nn.AvgPool2d,), (F.avg_pool2d,), accepts=_plain_avgpool),
    OpEntry("gap", (nn.AdaptiveAvgPool2d,), (F.adaptive_avg_pool2d,), accepts=_global_pool),
    OpEntry("adaptive_avgpool", (nn.AdaptiveAvgPool2d,), (F.adaptive_avg_pool2d,), accepts=_fixed_pool),
    OpEntry("mean", (), (torch.mean,), ("mean",), accepts=_spatial_mean),
    OpEntry("flatten", (nn.Flatten,), (torch.flatten,), ("flatten",)),
    OpEntry("reshape", (nn.Unflatten,), (torch.reshape, torch.squeeze, torch.unsqueeze),
            ("view", "reshape", "squeeze", "unsqueeze", "unflatten"), accepts=_shape_only),
    OpEntry("transpose", (), (torch.transpose, torch.permute), ("transpose", "permute")),
    OpEntry("split", (), (torch.chunk, torch.split), ("chunk", "split")),
    OpEntry("item", (), (operator.getitem,), accepts=_picks_split_outputs),
    OpEntry("slice", (), (operator.getitem,), accepts=_slices_only),
    OpEntry("cat", (), (torch.cat, torch.concat, torch.concatenate)),
    OpEntry("add", (), _ADD, ("add",), accepts=_two_tensors),
    OpEntry("mul", (), _MUL, ("mul",), accepts=_two_tensors),
    OpEntry("arith", (), _ARITH, ("add", "sub", "mul", "div"), accepts=_has_tensor),
    OpEntry("pad", (), (F.pad,), accepts=_zero_fill),
    OpEntry("resize_nearest", _UPSAMPLE, (F.interpolate,), accepts=_nearest),
    OpEntry("resize_linear", _UPSAMPLE, (F.interpolate,), accepts=_bilinear),
    OpEntry("groupnorm", (nn.GroupNorm,)),
    OpEntry("layernorm", (nn.LayerNorm,)),
    OpEntry("identity", (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout), (F.dropout, F.dropout2d),
            ("contiguous", "clone")),
)


def _index(key: Callable[[OpEntry], tuple]) -> dict[Any, list[OpEntry]]:
    table: dict[Any, list[OpEntry]] = {}
    for entry in OPS:
        for item in key(entry):
            table.setdefault(item, []).append(entry)
    return table


_BY_FUNCTION = _index(lambda e: e.functions)
_BY_METHOD = _index(lambda e: e.methods)


def _candidates(node: fx.Node, module: nn.Module | None) -> list[OpEntry]:
    if module is not None:
        return [e for e in OPS if isinstance(module, e.modules)]
    table = _BY_FUNCTION if node.op == "call_function" else _BY_METHOD
    return table.get(node.target, [])


def op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short name for what ``node`` computes ("conv", "add", "slice", ...; "other" if no entry takes it)."""
    if node.op in ("placeholder", "output", "get_attr"):
        return {"placeholder": "input", "output": "output", "get_attr": "attr"}[node.op]
    if is_shape_value(node):
        return "shape"
    module = modules[node.target] if node.op == "call_module" else None
    return next((e.kind for e in _candidates(node, module) if e.accepts(node, module, modules)), "other")


class Role(Enum):
    """Where an op sits in the integer program the runtime runs."""

    INTEGER = "integer"  # integer kernel: reads integer tensors, its output is requantized
    SOURCE = "source"  # the model input: quantized before anything reads it
    ACTIVATION = "activation"  # fused into the integer op it directly follows (else float)
    MOVEMENT = "movement"  # moves values without changing them: keeps its input's grid
    FLOAT = "float"  # a float island between DequantizeLinear and QuantizeLinear
    META = "meta"  # computes no activation (output, constants, quantizers, shape arithmetic)


ROLES: dict[str, Role] = {
    "input": Role.SOURCE,
    **dict.fromkeys(("conv", "linear", "add", "mul", "cat", "sigmoid", "leakyrelu", "avgpool", "gap",
                     "adaptive_avgpool"), Role.INTEGER),
    **dict.fromkeys(("relu", "relu6"), Role.ACTIVATION),
    **dict.fromkeys(("slice", "pad", "flatten", "maxpool", "identity", "reshape", "transpose", "split", "item",
                     "resize_nearest"), Role.MOVEMENT),
    **dict.fromkeys(("output", "attr", "quant", "shape"), Role.META),
}


def role(node: fx.Node, modules: dict[str, nn.Module]) -> Role:
    """The node's role in the integer program; kinds the table does not list are float islands."""
    return ROLES.get(op_kind(node, modules), Role.FLOAT)
