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
    MAX_FILE_PARAMS,
    ZOO_PARAMS,
    ModelSpec,
    ModelSpecError,
    UntrustedFactoryError,
    build_model,
    default_dataset,
    default_input_shape,
    is_zoo_model,
    model_names,
    rebuild,
    register_model,
    resolve_factory,
)
from .resnet_cifar import BasicBlock, CifarResNet, PadShortcut
from .vgg import VGG

__all__ = [
    "MAX_FILE_PARAMS", "MODULE_ATTRS_KEY", "ZOO_PARAMS", "BasicBlock", "CheckpointError", "CifarResNet", "DigitsCNN",
    "LeNet300", "LeNet5", "MobileNetV2", "ModelSpec", "ModelSpecError", "ModuleAttrs", "PadShortcut",
    "UntrustedFactoryError", "VGG", "adopt_shapes", "apply_module_attrs", "build_model", "default_dataset",
    "default_input_shape", "is_zoo_model", "load_model", "load_weights", "model_names", "read_checkpoint", "rebuild",
    "register_model", "resolve_factory", "save_checkpoint", "structural_attrs",
]
