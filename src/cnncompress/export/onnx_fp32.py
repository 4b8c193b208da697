"""Float32 ONNX export: one self-contained file with input ``input`` (NCHW, dynamic batch), output ``logits``.

Uses the torch.export-based (dynamo) exporter. The legacy TorchScript exporter is ~20x faster
(0.1 s vs 1.6-4 s for a ResNet-20-sized net, measured on torch 2.13 CPU) but is deprecated, warns
on every call and leaves Identity nodes behind; exports happen once per artifact, so the supported
path wins. Its console chatter (progress prints, torchvision-op registration warnings) is silenced.

Modules that offer ``export_equivalent(input)`` are exported as the module it returns: the option-A
shortcut's Slice and Pad would keep onnxruntime's blocked-layout (NCHWc) kernels out of every later
residual add, with a layout reorder around each conv (36 reorders and 18 unfused add+ReLU pairs in
ResNet-56); as a strided 1x1 conv the residual stream stays blocked (one reorder left in ResNet-56).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import torch
from torch import nn

from ..analysis.inputs import ExampleInput, eval_mode, model_device, one_image
from ..utils import atomic_path, check_finite

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's stdout prints, Python warnings and its (and onnxscript's) log records."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def runtime_form(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model``, or a copy with each module that has ``export_equivalent`` swapped for its equivalent.

    The equivalents are built from the inputs those modules see on ``example``; modules the forward
    pass does not reach are left as they are.
    """
    seen: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_: nn.Module, args: tuple) -> None:
            seen.setdefault(name, args[0])
        return hook

    hooks = [module.register_forward_pre_hook(record(name))
             for name, module in model.named_modules() if hasattr(module, "export_equivalent")]
    if not hooks:
        return model
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    form = copy.deepcopy(model)
    for name, x in seen.items():
        form.set_submodule(name, model.get_submodule(name).export_equivalent(x))
    return form


def export_onnx_fp32(model: nn.Module, path: str | os.PathLike, example_input: ExampleInput,
                     equivalents: bool = True) -> Path:
    """Export ``model`` (in eval mode) to ``path`` atomically after ``onnx.checker`` accepts it.

    ``equivalents=False`` exports modules as written, without their ``export_equivalent``.
    """
    check_finite(model, "export")
    path = Path(path)
    example = one_image(example_input, model_device(model))
    batch = torch.export.Dim("batch")
    with eval_mode(model), _quiet():
        program = torch.onnx.export(
            runtime_form(model, example) if equivalents else model, (example,), dynamo=True, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), opset_version=OPSET, external_data=False,
            verbose=False,
        )
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
    return path
