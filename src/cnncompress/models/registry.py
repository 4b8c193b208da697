"""Model registry and ``ModelSpec``: rebuild an architecture from a plain description, safely.

A spec names a registered zoo model (``resnet20``) or a user factory (``pkg.module:fn`` or
``path/to/file.py:fn``) plus constructor keyword arguments. Checkpoints and ``.cnnc`` files store the
spec, never a pickled module, so they load with ``torch.load(weights_only=True)``.

A spec read from a file is data: :meth:`ModelSpec.from_dict` marks it so, and building it rebuilds
only zoo models, with their keyword arguments checked against :data:`ZOO_PARAMS` and the parameter
count against :data:`MAX_FILE_PARAMS` before any weight is allocated. A name read from a file is
never imported or called; a user's own architecture is rebuilt only through a factory the *caller*
names (``spec=ModelSpec("mynet.py:build")`` in Python, ``--model mynet.py:build`` on the command line).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..utils import brief, import_callable
from .densenet import DenseNetCifar
from .efficientnet import EfficientNetB0
from .lenet import DigitsCNN, LeNet5, LeNet300
from .mobilenetv2 import MobileNetV2
from .mobilenetv3 import MobileNetV3Small
from .regnet import RegNetCifar
from .resnet_cifar import CifarResNet
from .resnet_gn import ResNetGN
from .shufflenetv2 import ShuffleNetV2
from .vgg import VGG

Factory = Callable[..., nn.Module]
#: checks one keyword argument of a zoo model and returns it in its Python type; raises ValueError
Check = Callable[[Any], Any]

#: a zoo model rebuilt from keyword arguments may hold at most this many parameters (400 MB in fp32)
MAX_FILE_PARAMS = 100_000_000
#: the longest factory reference a spec may carry
MAX_FACTORY_CHARS = 300
MAX_KWARGS = 16


class ModelSpecError(ValueError):
    """A spec that cannot be built: unknown keyword, a value of the wrong type or out of range."""


class UntrustedFactoryError(ModelSpecError):
    """A spec read from a file names a factory outside the zoo, which is never imported from a file."""


def integer(low: int, high: int, rule: Callable[[int], bool] | None = None, rule_text: str = "") -> Check:
    """A check for an ``int`` in ``[low, high]`` (bools refused) that also satisfies ``rule``."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {brief(value)}")
        if not low <= value <= high or (rule is not None and not rule(value)):
            raise ValueError(f"expected an integer in [{low}, {high}]{rule_text}, got {value}")
        return value

    return check


def number(low: float, high: float) -> Check:
    """A check for a real number in ``[low, high]``."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {brief(value)}")
        if not low <= value <= high:  # NaN fails this too
            raise ValueError(f"expected a number in [{low}, {high}], got {value}")
        return float(value)

    return check


def vgg_layers(value: Any) -> tuple[int | str, ...]:
    """VGG's layer list: at most 32 entries, each a width in [1, 2048] or "M" (max-pool)."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= 32:
        raise ValueError(f"expected a list of 1 to 32 widths or 'M', got {brief(value)}")
    width = integer(1, 2048)
    return tuple(item if item == "M" else width(item) for item in value)


CLASSES = integer(1, 10_000)
CHANNELS = integer(1, 64)

#: name -> (factory, default input shape C,H,W, default dataset)
_REGISTRY: dict[str, tuple[Factory, tuple[int, int, int], str]] = {}
#: name -> the keyword arguments a file may pass to that zoo model, each with its check
ZOO_PARAMS: dict[str, dict[str, Check]] = {}


def register_model(name: str, input_shape: tuple[int, int, int], dataset: str,
                   params: dict[str, Check] | None = None) -> Callable[[Factory], Factory]:
    """Decorator adding a factory to the zoo under ``name``; ``params`` are its checked keyword arguments."""

    def add(factory: Factory) -> Factory:
        _REGISTRY[name] = (factory, input_shape, dataset)
        ZOO_PARAMS[name] = dict(params or {})
        return factory

    return add


_RESNET_DEPTH = integer(8, 1202, lambda d: (d - 2) % 6 == 0, " of the form 6n+2")
for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", (3, 32, 32), "cifar10",
                   {"depth": _RESNET_DEPTH, "num_classes": CLASSES, "in_channels": CHANNELS})(
        lambda depth=_depth, **kw: CifarResNet(depth=depth, **kw))
register_model("lenet300", (1, 28, 28), "mnist", {"num_classes": CLASSES, "in_features": integer(1, 65_536)})(
    LeNet300)
register_model("lenet5", (1, 28, 28), "mnist", {"num_classes": CLASSES, "in_channels": CHANNELS})(LeNet5)
register_model("digits_cnn", (1, 8, 8), "digits",
               {"num_classes": CLASSES, "in_channels": CHANNELS, "width": integer(1, 1024)})(DigitsCNN)
register_model("vgg16_bn", (3, 32, 32), "cifar10",
               {"cfg": vgg_layers, "num_classes": CLASSES, "in_channels": CHANNELS})(VGG)
register_model("mobilenetv2", (3, 32, 32), "cifar10",
               {"num_classes": CLASSES, "width_mult": number(0.1, 4.0), "in_channels": CHANNELS})(MobileNetV2)
# the ranges below keep every model within MAX_FILE_PARAMS (tests/models/test_zoo_architectures.py)
register_model("mobilenetv3_small", (3, 32, 32), "cifar10",
               {"num_classes": CLASSES, "width_mult": number(0.1, 4.0), "in_channels": CHANNELS})(MobileNetV3Small)
register_model("efficientnet_b0", (3, 32, 32), "cifar10",
               {"num_classes": CLASSES, "width_mult": number(0.1, 2.0), "depth_mult": number(0.1, 3.0),
                "drop_path_rate": number(0.0, 0.5), "in_channels": CHANNELS})(EfficientNetB0)
register_model("shufflenetv2", (3, 32, 32), "cifar10",
               {"num_classes": CLASSES, "width_mult": number(0.1, 4.0), "in_channels": CHANNELS})(ShuffleNetV2)
register_model("densenet_cifar", (3, 32, 32), "cifar10",
               {"depth": integer(10, 190, lambda d: (d - 4) % 6 == 0, " of the form 6n+4"),
                "growth_rate": integer(1, 48), "num_classes": CLASSES, "in_channels": CHANNELS})(DenseNetCifar)
register_model("regnet_cifar", (3, 32, 32), "cifar10",
               {"num_classes": CLASSES, "width_mult": number(0.1, 4.0), "group_width": integer(1, 64),
                "in_channels": CHANNELS})(RegNetCifar)
register_model("resnet_gn", (3, 32, 32), "cifar10",
               {"depth": integer(8, 164, lambda d: (d - 2) % 6 == 0, " of the form 6n+2"), "num_classes": CLASSES,
                "num_groups": integer(1, 32), "width_mult": number(0.25, 4.0), "in_channels": CHANNELS})(ResNetGN)


def model_names() -> list[str]:
    """Names of the registered zoo models."""
    return sorted(_REGISTRY)


def is_zoo_model(name: str) -> bool:
    return name in _REGISTRY


def default_input_shape(name: str) -> tuple[int, int, int] | None:
    """The (C, H, W) a zoo model was designed for, or None for user factories."""
    entry = _REGISTRY.get(name)
    return entry[1] if entry else None


def default_dataset(name: str) -> str | None:
    """The dataset a zoo model is usually trained on, or None for user factories."""
    entry = _REGISTRY.get(name)
    return entry[2] if entry else None


def resolve_factory(ref: str) -> Factory:
    """The factory for a zoo name, ``pkg.module:fn`` or ``file.py:fn`` that the *caller* names.

    This imports code: never pass it a name read from a file (see :class:`ModelSpec`).
    """
    if ref in _REGISTRY:
        return _REGISTRY[ref][0]
    if ":" not in ref:
        raise ValueError(f"unknown model {ref!r}; zoo models: {', '.join(model_names())}; "
                         "or give a factory as 'package.module:function' or 'path/to/file.py:function'")
    return import_callable(ref, "model")


def zoo_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for zoo model ``name``, each checked against :data:`ZOO_PARAMS`; raises ModelSpecError."""
    allowed = ZOO_PARAMS[name]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ModelSpecError(f"{name} takes no keyword argument {brief(unknown[0])}; it takes: "
                             f"{', '.join(sorted(allowed)) or 'none'}")
    checked = {}
    for key, value in kwargs.items():
        try:
            checked[key] = allowed[key](value)
        except ValueError as exc:
            raise ModelSpecError(f"{name} keyword argument {key!r}: {exc}") from exc
    return checked


def _zoo_param_count(factory: Factory, kwargs: dict[str, Any]) -> int:
    """Parameters the model would hold, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in factory(**kwargs).parameters())


@dataclass
class ModelSpec:
    """A plain, JSON-able description of how to construct a model.

    ``from_file`` marks a spec read from a file (set by :meth:`from_dict`): building it never imports
    the factory it names unless the caller passes one (see :meth:`build`).
    """

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    from_file: bool = field(default=False, compare=False, repr=False)

    def build(self, factory: Factory | str | None = None) -> nn.Module:
        """Construct the model; ``factory`` (the caller's, trusted) replaces the one this spec names.

        A zoo spec is built with checked keyword arguments; a spec read from a file that names any
        other factory is refused with :class:`UntrustedFactoryError` unless ``factory`` is given.
        """
        if isinstance(factory, str):
            return ModelSpec(factory, self.kwargs).build()
        if factory is not None:
            return _construct(factory, self.kwargs, getattr(factory, "__name__", "factory"))
        if self.factory in _REGISTRY:
            return self._build_zoo()
        if self.from_file:
            raise UntrustedFactoryError(untrusted_message(self.factory, "the file"))
        return _construct(resolve_factory(self.factory), self.kwargs, self.factory)

    def _build_zoo(self) -> nn.Module:
        kwargs = zoo_kwargs(self.factory, self.kwargs)
        factory = _REGISTRY[self.factory][0]
        if kwargs:
            count = _zoo_param_count(factory, kwargs)
            if count > MAX_FILE_PARAMS:
                raise ModelSpecError(f"{self.factory} with {brief(kwargs)} would hold {count:,} "
                                     f"parameters, over the limit of {MAX_FILE_PARAMS:,}")
        return _construct(factory, kwargs, self.factory)

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """The spec a file holds, marked as read from a file. Raises ModelSpecError on a malformed one."""
        if not isinstance(data, dict) or not isinstance(data.get("factory"), str):
            raise ModelSpecError(f"not a model spec: {brief(data)}")
        factory, kwargs = data["factory"], data.get("kwargs") or {}
        if not factory or len(factory) > MAX_FACTORY_CHARS:
            raise ModelSpecError(f"model spec factory must be 1 to {MAX_FACTORY_CHARS} characters, "
                                 f"got {len(factory)}")
        if not isinstance(kwargs, dict) or len(kwargs) > MAX_KWARGS or not all(isinstance(k, str) for k in kwargs):
            raise ModelSpecError(f"model spec kwargs must map at most {MAX_KWARGS} names to values, "
                                 f"got {brief(kwargs)}")
        return cls(factory, dict(kwargs), from_file=True)


def untrusted_message(name: str, source: str) -> str:
    """Why a file's factory is refused, and how the user allows it (``name`` is at most
    MAX_FACTORY_CHARS long, shown whole so that it can be copied)."""
    ref = repr(name)
    return (f"{source} names the model factory {ref}, which is not a zoo model; cnncompress never imports "
            f"or calls a name read from a file. If you trust that code, name the factory yourself: "
            f"--model {ref} on the command line, or spec=ModelSpec({ref}) in Python")


def _construct(factory: Factory, kwargs: dict[str, Any], label: str) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelSpecError(f"cannot build {label} with {brief(kwargs)}: {exc} "
                             f"(signature {_signature(factory)})") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory {label!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _signature(factory: Factory) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "unknown"


def rebuild(stored: ModelSpec | None, given: ModelSpec | None, source: str) -> tuple[nn.Module, ModelSpec]:
    """Build the architecture a file describes: ``(model, spec)`` with the spec to record from now on.

    ``stored`` is the file's spec (data), ``given`` the caller's (trusted). A zoo spec in the file is
    built as stored; any other is built with the caller's factory and the file's keyword arguments.
    """
    if stored is None:
        if given is None:
            raise ModelSpecError(f"{source} holds no architecture: name the model (--model, or spec= in Python)")
        return given.build(), given
    if stored.factory in _REGISTRY:
        return stored.build(), stored
    if given is None or given.from_file:
        raise UntrustedFactoryError(untrusted_message(stored.factory, source))
    spec = ModelSpec(given.factory, dict(stored.kwargs))
    return spec.build(), spec


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model or user factory by reference (see :func:`resolve_factory`)."""
    return ModelSpec(name, kwargs).build()
