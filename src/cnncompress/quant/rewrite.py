"""Rewrites before quantization: each op whose integer form is another op becomes that op in the graph.

A BatchNorm with no conv to fold into is a per-channel affine map, i.e. a depthwise 1x1 conv (which
the runtime runs as an integer kernel with per-channel weights); SiLU is ``x * sigmoid(x)`` (integer
sigmoid and integer mul); a spatial mean is global average pooling. After the rewrite the simulation
and every export see only the integer form, so they agree by construction.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .graph import set_submodule
from .ops import arg, op_kind


@torch.no_grad()
def batchnorm_as_conv(bn: nn.BatchNorm2d) -> nn.Conv2d:
    """The depthwise 1x1 conv computing ``bn`` in eval mode (exact)."""
    mean = bn.running_mean if bn.track_running_stats else torch.zeros(bn.num_features)
    var = bn.running_var if bn.track_running_stats else torch.ones(bn.num_features)
    gamma = bn.weight if bn.affine else torch.ones_like(mean)
    beta = bn.bias if bn.affine else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + bn.eps)
    conv = nn.Conv2d(bn.num_features, bn.num_features, 1, groups=bn.num_features, device=mean.device)
    conv.weight.copy_(factor.reshape(-1, 1, 1, 1))
    conv.bias.copy_(beta - mean * factor)
    return conv


def _batchnorm(gm: fx.GraphModule, node: fx.Node) -> None:
    set_submodule(gm, node.target, batchnorm_as_conv(gm.get_submodule(node.target)))


def _silu(gm: fx.GraphModule, node: fx.Node) -> None:
    x = node.args[0]
    with gm.graph.inserting_before(node):
        gate = gm.graph.call_function(torch.sigmoid, (x,))
        product = gm.graph.call_function(operator.mul, (x, gate))
    _replace(gm, node, product)


def _mean(gm: fx.GraphModule, node: fx.Node) -> None:
    with gm.graph.inserting_before(node):
        pooled = gm.graph.call_function(F.adaptive_avg_pool2d, (node.args[0], 1))
        if not arg(node, 2, "keepdim", False):
            pooled = gm.graph.call_function(torch.flatten, (pooled, 1))
    _replace(gm, node, pooled)


def _replace(gm: fx.GraphModule, node: fx.Node, new: fx.Node) -> None:
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    if node.op == "call_module":
        set_submodule(gm, node.target, nn.Identity())


REWRITES: dict[str, Callable[[fx.GraphModule, fx.Node], None]] = {
    "bn": _batchnorm, "silu": _silu, "mean": _mean,
}


def rewrite_for_integers(gm: fx.GraphModule) -> list[str]:
    """Apply :data:`REWRITES` to every node they cover (after BN folding); return the rewritten node names."""
    modules = dict(gm.named_modules())
    done = []
    for node in list(gm.graph.nodes):
        kind = op_kind(node, modules)
        if kind in REWRITES:
            REWRITES[kind](gm, node)
            done.append(node.name)
    gm.graph.lint()
    gm.recompile()
    return done
