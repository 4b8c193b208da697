"""Physically removing channels: one shrink function per module type, keyed in :data:`SHRINK`.

A shrink function gets the module and, per binding role it plays in the channel graph
(:mod:`cnncompress.graph.channels`), the axis indices to keep; it slices the parameters and updates
the module's size attributes. It returns the non-tensor attributes a checkpoint must record to
rebuild the module (option-A pad widths), or None. Supporting a new prunable module type is one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..models.resnet_cifar import PadShortcut


class Axis(NamedTuple):
    """The indices kept on one parameter axis, and the axis size before pruning."""

    keep: torch.Tensor
    size: int


Kept = dict[str, Axis]  # binding role -> its axis


def slice_params(module: nn.Module, names: Sequence[str], index: torch.Tensor, dim: int) -> None:
    """Keep ``index`` along ``dim`` of each named parameter or buffer (absent ones are skipped)."""
    for name in names:
        tensor = getattr(module, name, None)
        if tensor is None:
            continue
        sliced = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            setattr(module, name, sliced)


def shrink_conv(module: nn.Conv2d, kept: Kept) -> None:
    """Filters (``out``) and input columns (``in``); a grouped conv loses whole groups with its filters."""
    if "out" in kept:
        per_group = module.out_channels // module.groups
        slice_params(module, ("weight", "bias"), kept["out"].keep, 0)
        if module.groups > 1:
            module.groups = len(kept["out"].keep) // per_group
    if "in" in kept:
        slice_params(module, ("weight",), kept["in"].keep, 1)
    module.out_channels = module.weight.shape[0]
    module.in_channels = module.weight.shape[1] * module.groups


def shrink_linear(module: nn.Linear, kept: Kept) -> None:
    if "out" in kept:
        slice_params(module, ("weight", "bias"), kept["out"].keep, 0)
    if "in" in kept:
        slice_params(module, ("weight",), kept["in"].keep, 1)
    module.out_features, module.in_features = module.weight.shape


def shrink_batchnorm(module: nn.modules.batchnorm._BatchNorm, kept: Kept) -> None:
    slice_params(module, ("weight", "bias", "running_mean", "running_var"), kept["bn"].keep, 0)
    module.num_features = len(kept["bn"].keep)


def shrink_groupnorm(module: nn.GroupNorm, kept: Kept) -> None:
    """Whole groups go (the graph ties each group's channels), so the group width stays."""
    per_group = module.num_channels // module.num_groups
    slice_params(module, ("weight", "bias"), kept["affine"].keep, 0)
    module.num_channels = len(kept["affine"].keep)
    module.num_groups = module.num_channels // per_group


def shrink_layernorm(module: nn.LayerNorm, kept: Kept) -> None:
    slice_params(module, ("weight", "bias"), kept["affine"].keep, 0)
    module.normalized_shape = (len(kept["affine"].keep),)


def shrink_prelu(module: nn.PReLU, kept: Kept) -> None:
    slice_params(module, ("weight",), kept["affine"].keep, 0)
    module.num_parameters = len(kept["affine"].keep)


def shrink_pad(module: PadShortcut, kept: Kept) -> dict[str, int]:
    """Output positions [pad_before, width - pad_after) carry the input channels; count the kept pads."""
    keep, width = kept["pad"]
    end = width - module.pad_after
    module.pad_before, module.pad_after = int((keep < module.pad_before).sum()), int((keep >= end).sum())
    return {"pad_before": module.pad_before, "pad_after": module.pad_after}


#: Module type -> shrink function (looked up along the type's MRO).
SHRINK: dict[type[nn.Module], Callable[[nn.Module, Kept], dict[str, int] | None]] = {
    nn.Conv1d: shrink_conv, nn.Conv2d: shrink_conv, nn.Conv3d: shrink_conv, nn.Linear: shrink_linear,
    nn.modules.batchnorm._BatchNorm: shrink_batchnorm, nn.GroupNorm: shrink_groupnorm,
    nn.LayerNorm: shrink_layernorm, nn.PReLU: shrink_prelu, PadShortcut: shrink_pad,
}


def shrink(module: nn.Module, kept: Kept) -> dict[str, int] | None:
    """Shrink ``module`` to ``kept`` indices per role; the changed non-tensor attributes, if any."""
    entry = next((SHRINK[base] for base in type(module).__mro__ if base in SHRINK), None)
    if entry is None:
        raise TypeError(f"no shrink function for {type(module).__name__}: add one to prune.shrink.SHRINK")
    return entry(module, kept)
