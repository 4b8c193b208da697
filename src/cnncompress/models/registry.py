"""Model registry and ``ModelSpec``: rebuild any architecture from a plain description.

A spec names a registered model (``resnet20``) or a user factory (``pkg.module:fn`` or
``path/to/file.py:fn``) plus constructor keyword arguments. Checkpoints store the spec, never a
pickled module, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .lenet import DigitsCNN, LeNet5, LeNet300
from .mobilenetv2 import MobileNetV2
from .resnet_cifar import CifarResNet
from .vgg import VGG

Factory = Callable[..., nn.Module]

#: name -> (factory, default input shape C,H,W, default dataset)
_REGISTRY: dict[str, tuple[Factory, tuple[int, int, int], str]] = {}


def register_model(name: str, input_shape: tuple[int, int, int], dataset: str) -> Callable[[Factory], Factory]:
    """Decorator adding a factory to the zoo under ``name``."""

    def add(factory: Factory) -> Factory:
        _REGISTRY[name] = (factory, input_shape, dataset)
        return factory

    return add


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", (3, 32, 32), "cifar10")(
        lambda depth=_depth, **kw: CifarResNet(depth=depth, **kw))
register_model("lenet300", (1, 28, 28), "mnist")(LeNet300)
register_model("lenet5", (1, 28, 28), "mnist")(LeNet5)
register_model("digits_cnn", (1, 8, 8), "digits")(DigitsCNN)
register_model("vgg16_bn", (3, 32, 32), "cifar10")(VGG)
register_model("mobilenetv2", (3, 32, 32), "cifar10")(MobileNetV2)


def model_names() -> list[str]:
    """Names of the registered zoo models."""
    return sorted(_REGISTRY)


def default_input_shape(name: str) -> tuple[int, int, int] | None:
    """The (C, H, W) a zoo model was designed for, or None for user factories."""
    entry = _REGISTRY.get(name)
    return entry[1] if entry else None


def default_dataset(name: str) -> str | None:
    """The dataset a zoo model is usually trained on, or None for user factories."""
    entry = _REGISTRY.get(name)
    return entry[2] if entry else None


def _load_file_factory(ref: str) -> Factory:
    path_text, _, attr = ref.rpartition(":")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist (from --model {ref!r})")
    module_name = f"cnncompress_user_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return _factory_attr(module, attr, ref)


def _factory_attr(module: Any, attr: str, ref: str) -> Factory:
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{ref!r}: {module.__name__} has no callable named {attr!r}")
    return factory


def resolve_factory(ref: str) -> Factory:
    """Return the factory for a zoo name, ``pkg.module:fn`` or ``file.py:fn``."""
    if ref in _REGISTRY:
        return _REGISTRY[ref][0]
    if ":" not in ref:
        raise ValueError(f"unknown model {ref!r}; zoo models: {', '.join(model_names())}; "
                         "or give a factory as 'package.module:function' or 'path/to/file.py:function'")
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py"):
        return _load_file_factory(ref)
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        raise ValueError(f"cannot import module {target!r} for model {ref!r}: {exc}") from exc
    return _factory_attr(module, attr, ref)


@dataclass
class ModelSpec:
    """A plain, JSON-able description of how to construct a model."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        factory = resolve_factory(self.factory)
        try:
            model = factory(**self.kwargs)
        except TypeError as exc:
            sig = _signature(factory)
            raise ValueError(f"cannot build {self.factory} with {self.kwargs}: {exc} (signature {sig})") from exc
        if not isinstance(model, nn.Module):
            raise TypeError(f"factory {self.factory!r} returned {type(model).__name__}, not an nn.Module")
        return model

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        if not isinstance(data, dict) or "factory" not in data:
            raise ValueError(f"not a model spec: {data!r}")
        return cls(str(data["factory"]), dict(data.get("kwargs") or {}))


def _signature(factory: Factory) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "unknown"


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model or user factory by reference (see :func:`resolve_factory`)."""
    return ModelSpec(name, kwargs).build()
