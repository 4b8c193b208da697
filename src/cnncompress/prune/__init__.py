"""Pruning: structured channel removal (``structured``) and unstructured weight masks (``unstructured``)."""

from .importance import FPGM, BNScale, Importance, Magnitude, Random, Taylor, bn_l1_penalty, get_importance
from .schedules import AGPSchedule, iterative_rounds
from .structured import (
    PruneRecord,
    StructuredPruner,
    TargetNotReached,
    prune_channels,
)
from .structured_alloc import AllocationRule
from .unstructured import (
    LayerSparsity,
    SparsityRecord,
    enforce_masks,
    lock_zeros,
    make_permanent,
    prunable_layers,
    prune_weights,
    sensitivity_sparsities,
    set_mask,
    sparsity_record,
)

__all__ = [
    "AGPSchedule", "AllocationRule", "BNScale", "FPGM", "Importance", "LayerSparsity", "Magnitude", "PruneRecord",
    "Random", "SparsityRecord", "StructuredPruner", "TargetNotReached", "Taylor", "bn_l1_penalty", "enforce_masks",
    "get_importance", "iterative_rounds", "lock_zeros", "make_permanent", "prunable_layers", "prune_channels",
    "prune_weights", "sensitivity_sparsities", "set_mask", "sparsity_record",
]
