"""Static cost profile of a CNN: parameters, non-zeros, MACs, weight storage and activation memory.

Figures are per ONE input image. MACs are the multiply-accumulates of convolution and linear layers
(bias additions, BN, activations and pooling are not counted), attributed per module with forward
hooks so each layer's share is visible; layers called several times accumulate their MACs. Conv and
matmul calls outside such modules (``F.conv2d``, ``torch.matmul`` in a custom ``forward``) are found
by torch's FLOP counter on the same pass and reported as ``functional_macs``, part of the total.

Weight storage rule (``weight_bits``):

* an ``int`` applies to every weight tensor with two or more dimensions (conv kernels, linear
  matrices); one-dimensional parameters (biases, BN/LayerNorm affine terms) stay at 32 bits;
* a ``dict`` maps a module name to the bit width of that module's multi-dimensional weights, or a
  full parameter name (``"fc.bias"``) to that one tensor's width, which is how biases/BN get a width;
  anything not named stays at 32 bits. Unknown names raise ``ValueError`` so typos cannot hide.

Each tensor is packed at its width and rounded up to whole bytes. Module buffers (BN running
statistics) are not weights to ship: BN folds into the preceding conv at export.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .activations import peak_activation
from .inputs import ExampleInput, eval_mode, model_device, one_image

WeightBits = int | dict[str, int]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class LayerCost:
    """Cost of one module (a leaf that ran, or any module owning parameters)."""

    name: str
    type: str
    params: int
    nonzero_params: int
    macs: int
    weight_bytes: int
    output_shape: tuple[int, ...]
    output_bytes: int


@dataclass
class CostReport:
    """Whole-model totals plus the per-layer breakdown; ``peak_activation_node`` is where RAM peaks."""

    params: int
    nonzero_params: int
    macs: int
    weight_bytes: int
    peak_activation_bytes: int
    layers: list[LayerCost]
    input_shape: tuple[int, ...]
    weight_bits: WeightBits
    act_bits: int
    peak_activation_node: str = ""
    functional_macs: int = 0  # in ``macs``, but from calls outside conv/linear modules

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def table(self) -> str:
        """Per-layer table with a totals row and the activation peak."""
        header = ("layer", "type", "params", "nonzero", "MACs", "weight B", "output", "out B")
        rows = [
            (l.name or "<root>", l.type, f"{l.params:,}", f"{l.nonzero_params:,}", f"{l.macs:,}",
             f"{l.weight_bytes:,}", "x".join(map(str, l.output_shape)) or "-", f"{l.output_bytes:,}")
            for l in self.layers
        ]
        rows.append(("TOTAL", "", f"{self.params:,}", f"{self.nonzero_params:,}", f"{self.macs:,}",
                     f"{self.weight_bytes:,}", "", ""))
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

        def fmt(row: tuple[str, ...]) -> str:
            cells = zip(row, widths, strict=True)
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))

        rule = "-" * len(fmt(header))
        lines = [fmt(header), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1])]
        if self.functional_macs:
            lines.append(f"TOTAL includes {self.functional_macs:,} MACs of functional conv/matmul calls")
        lines.append(f"peak activation: {self.peak_activation_bytes:,} B at node "
                     f"'{self.peak_activation_node}' (input {tuple(self.input_shape)}, weights "
                     f"{self.weight_bits} bit, activations {self.act_bits} bit)")
        return "\n".join(lines)


@dataclass
class _Trace:
    """What the forward hooks saw for one module."""

    macs: int = 0
    output_shape: tuple[int, ...] = ()
    output_elements: int = 0
    order: int = -1


def _kernel_volume(module: nn.Module) -> int:
    return math.prod(module.kernel_size)


def layer_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    """MACs of one call of a conv/linear module on a batch-1 input; zero for any other module."""
    if isinstance(module, _CONV_T):
        return inputs[0].numel() * (module.out_channels // module.groups) * _kernel_volume(module)
    if isinstance(module, _CONV):
        return output.numel() * (module.in_channels // module.groups) * _kernel_volume(module)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _tracked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules and modules owning parameters directly."""
    return {
        name: m for name, m in model.named_modules()
        if next(m.children(), None) is None or next(m.parameters(recurse=False), None) is not None
    }


def _run_hooks(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, _Trace], int]:
    """One forward pass recording MACs and output shapes of every tracked module, and the MACs of
    conv/matmul calls outside conv/linear modules (torch's FLOP counter total minus the modules')."""
    tracked = _tracked_modules(model)
    traces = {name: _Trace() for name in tracked}
    calls = itertools.count()

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            t = traces[name]
            t.macs += layer_macs(module, inputs, output)
            if t.order < 0:
                outs = _tensors(output)
                t.order = next(calls)
                t.output_shape = tuple(outs[0].shape) if outs else ()
                t.output_elements = sum(o.numel() for o in outs)
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in tracked.items()]
    try:
        with eval_mode(model), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        for h in handles:
            h.remove()
    return traces, max(0, counter.get_total_flops() // 2 - sum(t.macs for t in traces.values()))


def count_macs(model: nn.Module, example_input: ExampleInput) -> int:
    """Total conv + linear multiply-accumulates for one image, functional calls included."""
    example = one_image(example_input, model_device(model))
    traces, functional = _run_hooks(model, example)
    return sum(t.macs for t in traces.values()) + functional


def _check_bits(model: nn.Module, weight_bits: WeightBits) -> None:
    if isinstance(weight_bits, int):
        widths, unknown = [weight_bits], []
    else:
        known = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
        widths, unknown = list(weight_bits.values()), sorted(set(weight_bits) - known)
    if unknown:
        raise ValueError(f"weight_bits names no module or parameter of the model: {unknown}")
    if any(not isinstance(b, int) or b < 1 for b in widths):
        raise ValueError(f"bit widths must be positive integers, got {weight_bits}")


def param_bits(module_name: str, param_name: str, param: torch.Tensor, weight_bits: WeightBits) -> int:
    """Storage width of one parameter under the rule in the module docstring."""
    if isinstance(weight_bits, int):
        return weight_bits if param.dim() >= 2 else 32
    full = f"{module_name}.{param_name}" if module_name else param_name
    if full in weight_bits:
        return weight_bits[full]
    if param.dim() >= 2 and module_name in weight_bits:
        return weight_bits[module_name]
    return 32


def _packed_bytes(elements: int, bits: int) -> int:
    """Bytes for ``elements`` values packed at ``bits`` each, rounded up to a whole byte."""
    return (elements * bits + 7) // 8


def _own_params(module_name: str, module: nn.Module, weight_bits: WeightBits) -> tuple[int, int, int]:
    """(params, nonzero, packed bytes) of the parameters a module owns directly."""
    params = nonzero = nbytes = 0
    for pname, p in module.named_parameters(recurse=False):
        params += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
        nbytes += _packed_bytes(p.numel(), param_bits(module_name, pname, p, weight_bits))
    return params, nonzero, nbytes


def _layer_costs(model: nn.Module, traces: dict[str, _Trace], weight_bits: WeightBits, act_bits: int
                 ) -> list[LayerCost]:
    modules = dict(model.named_modules())
    ran_last = len(traces)
    ordered = sorted(traces, key=lambda n: traces[n].order if traces[n].order >= 0 else ran_last)
    layers = []
    for name in ordered:
        t = traces[name]
        params, nonzero, nbytes = _own_params(name, modules[name], weight_bits)
        layers.append(LayerCost(name, type(modules[name]).__name__, params, nonzero, t.macs, nbytes,
                                t.output_shape, _packed_bytes(t.output_elements, act_bits)))
    return layers


def _unique_params(model: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """(module name, parameter name, tensor) for every parameter, shared tensors counted once."""
    seen: set[int] = set()
    out = []
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                out.append((mname, pname, p))
    return out


def profile(model: nn.Module, example_input: ExampleInput, weight_bits: WeightBits = 32,
            act_bits: int = 32, fused: bool = False) -> CostReport:
    """Cost report of ``model`` for one image shaped like ``example_input`` (tensor or (C,H,W)/(N,C,H,W)).

    ``fused``: the activation peak of the deployed integer graph (BatchNorm folded, activations fused into
    the op before them; :mod:`.activations`) rather than of the PyTorch graph.
    """
    _check_bits(model, weight_bits)
    if act_bits < 1:
        raise ValueError(f"act_bits must be a positive integer, got {act_bits}")
    example = one_image(example_input, model_device(model))
    traces, functional = _run_hooks(model, example)
    peak = peak_activation(model, example, act_bits, fused)
    unique = _unique_params(model)
    return CostReport(
        params=sum(p.numel() for _, _, p in unique),
        nonzero_params=sum(int(torch.count_nonzero(p.detach())) for _, _, p in unique),
        macs=sum(t.macs for t in traces.values()) + functional,
        weight_bytes=sum(_packed_bytes(p.numel(), param_bits(m, n, p, weight_bits)) for m, n, p in unique),
        peak_activation_bytes=peak.peak_bytes,
        layers=_layer_costs(model, traces, weight_bits, act_bits),
        input_shape=tuple(example.shape),
        weight_bits=weight_bits,
        act_bits=act_bits,
        peak_activation_node=peak.peak_node,
        functional_macs=functional,
    )
