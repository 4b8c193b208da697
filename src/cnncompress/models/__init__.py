"""Model zoo, user factories and checkpoint I/O."""

from .checkpoint import (
    MODULE_ATTRS_KEY,
    CheckpointError,
    ModuleAttrs,
    adopt_shapes,
    apply_module_attrs,
    load_model,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    structural_attrs,
)
from .lenet import DigitsCNN, LeNet5, LeNet300
from .mobilenetv2 import MobileNetV2
from .registry import (
    ModelSpec,
    build_model,
    default_dataset,
    default_input_shape,
    model_names,
    register_model,
    resolve_factory,
)
from .resnet_cifar import BasicBlock, CifarResNet, PadShortcut
from .vgg import VGG

__all__ = [
    "BasicBlock", "CheckpointError", "CifarResNet", "DigitsCNN", "LeNet300", "LeNet5", "MODULE_ATTRS_KEY",
    "MobileNetV2", "ModelSpec", "ModuleAttrs", "PadShortcut", "VGG", "adopt_shapes", "apply_module_attrs",
    "build_model", "default_dataset", "default_input_shape", "load_model", "load_weights", "model_names",
    "read_checkpoint", "register_model", "resolve_factory", "save_checkpoint", "structural_attrs",
]
