"""Turn an example input (tensor or shape) into the one-image batch every analysis runs on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

ExampleInput = torch.Tensor | tuple[int, ...]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for parameter-free models)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def one_image(example_input: ExampleInput, device: torch.device | None = None) -> torch.Tensor:
    """A batch-1 float tensor: the first image of a batch, or a seeded random image of a given shape.

    Costs are quoted per image, so a larger example batch is cut to its first sample; a shape may be
    (C, H, W) or (N, C, H, W). The global RNG is left untouched.
    """
    if isinstance(example_input, torch.Tensor):
        x = example_input[:1]
        return x.to(device) if device is not None else x
    shape = tuple(int(d) for d in example_input)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"input shape must be (C, H, W) or (N, C, H, W), got {tuple(example_input)}")
    gen = torch.Generator().manual_seed(0)
    return torch.randn((1, *shape), generator=gen).to(device or "cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode and no autograd, then restore every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in flags:
            module.training = training
