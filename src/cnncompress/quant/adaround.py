"""AdaRound (Nagel et al. 2020): learn whether each weight rounds up or down, layer by layer.

Rounding to nearest is optimal per weight, not per layer output. AdaRound relaxes the up/down choice
to a rectified sigmoid ``h(V)`` and minimises the layer's output error on calibration inputs plus a
regulariser that anneals ``h`` to exactly 0 or 1. Inputs come from the partly quantized network
(earlier layers already rounded), so later layers compensate earlier rounding. Zero weights stay zero
(pruning survives).
"""

from __future__ import annotations

import torch
from torch import nn

from .core import QConv2d, QLinear, along_axis
from .data import run_batches
from .graph import quant_layers, set_mode

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _layer_inputs(qmodel: nn.Module, layer: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, args, out: captured.append(args[0].detach()))
    try:
        run_batches(qmodel, batches)
    finally:
        handle.remove()
    return torch.cat(captured)


def _round_layer(layer: QConv2d | QLinear, inputs: torch.Tensor, iters: int, lr: float, reg: float,
                 batch_size: int, generator: torch.Generator) -> None:
    q = layer.weight_quant
    w = layer.weight.detach()
    scale = along_axis(q.scale, w, q.axis)
    floor = torch.floor(w / scale)
    rest = (w / scale - floor).clamp(0.01, 0.99)
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
    keep = (w != 0).float()
    optimizer = torch.optim.Adam([v], lr=lr)
    with torch.no_grad():
        target = layer.linear_op(inputs, w, layer.bias)
    warmup = int(0.2 * iters)
    for step in range(iters):
        idx = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
        soft = torch.clamp(floor + _rectified_sigmoid(v), q.spec.qmin, q.spec.qmax) * scale * keep
        out = layer.linear_op(inputs[idx], soft, layer.bias)
        loss = (out - target[idx]).pow(2).sum(1).mean()
        if step >= warmup:
            beta = 20 + (2 - 20) * (step - warmup) / max(iters - warmup, 1)
            loss = loss + reg * (1 - (2 * _rectified_sigmoid(v) - 1).abs().pow(beta)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        codes = torch.clamp(floor + (_rectified_sigmoid(v) >= 0.5).float(), q.spec.qmin, q.spec.qmax)
        layer.weight.copy_(codes * scale * keep)


def adaround_weights(qmodel: nn.Module, batches: list[torch.Tensor], iters: int = 1000, lr: float = 3e-3,
                     reg: float = 0.01, batch_size: int = 32, max_bits: int = 7, seed: int = 0) -> list[str]:
    """Learn the rounding of every layer with at most ``max_bits`` weight bits; return their names.

    Weight grids must already be set (``calibrate_weights``); afterwards each weight sits exactly on
    its grid, so the later fake quantization reproduces the learned codes.
    """
    generator = torch.Generator().manual_seed(seed)
    set_mode(qmodel, "quant", "float")
    done = []
    for name, layer in quant_layers(qmodel):
        if layer.weight_quant.spec.bits > max_bits:
            continue
        inputs = _layer_inputs(qmodel, layer, batches)
        _round_layer(layer, inputs, iters, lr, reg, batch_size, generator)
        done.append(name)
    return done
