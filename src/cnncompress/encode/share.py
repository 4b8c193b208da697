"""Weight sharing (Deep Compression, sec. 3): per-layer k-means codebooks and centroid fine-tuning.

A shared layer stores ``weight_centroids`` (a trainable Parameter of 2^b values) and ``weight_codes``
(a buffer: the cluster of each weight, -1 for a pruned weight). A forward pre-hook rebuilds the
weight as ``[0, centroids...][codes + 1]``, so autograd sums the gradients of every weight in a
cluster into its centroid and pruned weights stay an exact, untrainable zero. Fine-tuning is plain
``cnncompress.train.fit``; :func:`finalize_sharing` writes the shared values back as ordinary weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..prune.unstructured import make_permanent, prunable_layers
from ..utils import per_layer

CENTROIDS = "weight_centroids"
CODES = "weight_codes"
Bits = int | Mapping[str, int]


@dataclass
class SharedLayer:
    name: str
    bits: int
    clusters: int  # non-empty clusters
    nonzero: int


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars with linear initialisation over [min, max]: (centroids, assignment).

    Linear init keeps centroids at the rare large weights that matter most (Han et al. found it best).
    Empty clusters keep their previous centroid; iteration stops once assignments are stable.
    """
    values = values.reshape(-1).double()
    if values.numel() == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    centroids = torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    assignment = None
    for _ in range(iterations):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        new = torch.searchsorted(bounds, values)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        counts = torch.bincount(assignment, minlength=k).double()
        sums = torch.bincount(assignment, weights=values, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids.float(), assignment


def _rebuild_weight(module: nn.Module, _args: Any = None) -> None:
    """Forward pre-hook: weight = [0, centroids][codes + 1] (differentiable in the centroids)."""
    centroids = getattr(module, CENTROIDS)
    table = torch.cat([centroids.new_zeros(1), centroids])
    module.weight = table[getattr(module, CODES).long() + 1]


def _layer_bits(layers: Mapping[str, nn.Module], bits: Bits) -> dict[str, int]:
    return per_layer(layers, bits, "shareable", int, lambda b: 1 <= b <= 8, "1..8 bits")


def share_weights(model: nn.Module, bits: Bits, exclude: Iterable[str] = ()) -> tuple[nn.Module, list[SharedLayer]]:
    """Cluster each layer's non-zero weights into 2^bits shared values (in place).

    Pruning masks are made permanent first: the zeros become the reserved code -1, outside k-means.
    """
    make_permanent(model)
    layers = prunable_layers(model, exclude)
    records = []
    for name, b in _layer_bits(layers, bits).items():
        module = layers[name]
        weight = module.weight.detach()
        nonzero = weight != 0
        centroids, assignment = kmeans_1d(weight[nonzero], 2**b)
        codes = torch.full(weight.shape, -1, dtype=torch.int16, device=weight.device)
        codes[nonzero] = assignment.to(torch.int16).to(weight.device)
        del module._parameters["weight"]
        module.register_parameter(CENTROIDS, nn.Parameter(centroids.to(weight.device, weight.dtype)))
        module.register_buffer(CODES, codes)
        module.register_forward_pre_hook(_rebuild_weight)
        _rebuild_weight(module)
        records.append(SharedLayer(name, b, int(torch.unique(assignment).numel()), int(nonzero.sum())))
    return model, records


def finalize_sharing(model: nn.Module, codebook_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Turn shared layers back into plain layers whose weights hold only codebook values.

    ``codebook_dtype=torch.float16`` first rounds the centroids to half precision, halving the stored
    codebooks (the model then computes with exactly those rounded values).
    """
    for module in model.modules():
        if not hasattr(module, CODES):
            continue
        with torch.no_grad():
            centroids = getattr(module, CENTROIDS).to(codebook_dtype).float()
            table = torch.cat([centroids.new_zeros(1), centroids])
            weight = table[getattr(module, CODES).long() + 1]
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _rebuild_weight:
                del module._forward_pre_hooks[key]
        del module._parameters[CENTROIDS]
        del module._buffers[CODES]
        if "weight" in module.__dict__:
            del module.__dict__["weight"]
        module.weight = nn.Parameter(weight)
    return model


def round_vectors(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Round every floating 0-D/1-D parameter and buffer (biases, BatchNorm) to ``dtype`` precision.

    The container then stores them in 2 bytes instead of 4. It is lossy: evaluate afterwards.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() and tensor.dim() <= 1:
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))
    return model
