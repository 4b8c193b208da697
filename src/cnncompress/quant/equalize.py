"""Cross-layer equalization (Nagel et al. 2019, data-free quantization).

For ``conv2(relu(conv1(x)))`` ReLU is positively homogeneous, so dividing conv1's output channel i by
s_i and multiplying conv2's input channel i by s_i leaves the function unchanged. Choosing
``s_i = sqrt(r1_i / r2_i)`` equalizes the channel ranges of both weight tensors, which is what per-tensor
and low-bit grids need (depthwise convs otherwise have wildly different channel ranges). ReLU6 is not
homogeneous; the paper replaces it by ReLU, which ``relu6_to_relu`` does for equalized pairs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .graph import op_kind, set_submodule


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _pairs(gm: fx.GraphModule, relu6_to_relu: bool) -> list[tuple[fx.Node, list[fx.Node], fx.Node]]:
    """(first layer, activation nodes between, second layer) chains the equalization can scale."""
    modules = dict(gm.named_modules())
    allowed = {"relu", "relu6"} if relu6_to_relu else {"relu"}
    pairs = []
    for node in gm.graph.nodes:
        if op_kind(node, modules) not in ("conv", "linear"):
            continue
        acts, nxt = [], _single_user(node)
        if nxt is not None and op_kind(nxt, modules) in allowed:
            acts, nxt = [nxt], _single_user(nxt)
        if nxt is None or op_kind(nxt, modules) not in ("conv", "linear") or nxt.args[0] is not (acts or [node])[-1]:
            continue
        second = modules[nxt.target]
        if getattr(second, "groups", 1) == 1 or _depthwise(second):
            pairs.append((node, acts, nxt))
    return pairs


def _depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels \
        and layer.weight.shape[1] == 1


def _in_ranges(layer: nn.Module) -> torch.Tensor:
    """Max |w| per input channel of ``layer``."""
    w = layer.weight.detach().abs()
    if _depthwise(layer):
        return w.flatten(1).amax(1)
    return w.transpose(0, 1).flatten(1).amax(1)


def _scale_inputs(layer: nn.Module, s: torch.Tensor) -> None:
    shape = [-1] + [1] * (layer.weight.dim() - 1) if _depthwise(layer) else [1, -1] + [1] * (layer.weight.dim() - 2)
    layer.weight.mul_(s.reshape(shape))


def _scale_outputs(layer: nn.Module, s: torch.Tensor) -> None:
    layer.weight.div_(s.reshape([-1] + [1] * (layer.weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.div_(s)


@torch.no_grad()
def equalize(gm: fx.GraphModule, relu6_to_relu: bool = False, sweeps: int = 20, tol: float = 1e-3) -> int:
    """Equalize every conv/linear pair in place (until scales settle); return the number of pairs."""
    modules = dict(gm.named_modules())
    pairs = _pairs(gm, relu6_to_relu)
    for _, acts, _ in pairs:
        for act in acts:
            if op_kind(act, modules) == "relu6":
                if act.op == "call_module":
                    set_submodule(gm, act.target, nn.ReLU())
                else:
                    act.target, act.args, act.kwargs = F.relu, act.args[:1], {}
    for _ in range(sweeps):
        worst = 0.0
        for first, _, second in pairs:
            a, b = modules[first.target], modules[second.target]
            r1 = a.weight.detach().abs().flatten(1).amax(1)
            r2 = _in_ranges(b)
            s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp(min=1e-12)), torch.ones_like(r1))
            _scale_outputs(a, s)
            _scale_inputs(b, s)
            worst = max(worst, float((s - 1).abs().max()))
        if worst < tol:
            break
    gm.recompile()
    return len(pairs)
