"""Model zoo, user factories and checkpoint I/O."""

from .blocks import DropPath, SqueezeExcite
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
from .densenet import DenseNetCifar
from .efficientnet import EfficientNetB0
from .lenet import DigitsCNN, LeNet5, LeNet300
from .mobilenetv2 import MobileNetV2
from .mobilenetv3 import MobileNetV3Small
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
from .regnet import RegNetCifar
from .resnet_cifar import BasicBlock, CifarResNet, PadShortcut
from .resnet_gn import ResNetGN
from .shufflenetv2 import ChannelShuffle, ShuffleNetV2
from .vgg import VGG

__all__ = [
    "MAX_FILE_PARAMS", "MODULE_ATTRS_KEY", "ZOO_PARAMS", "BasicBlock", "ChannelShuffle", "CheckpointError",
    "CifarResNet", "DenseNetCifar", "DigitsCNN", "DropPath", "EfficientNetB0", "LeNet300", "LeNet5", "MobileNetV2",
    "MobileNetV3Small", "ModelSpec", "ModelSpecError", "ModuleAttrs", "PadShortcut", "RegNetCifar", "ResNetGN",
    "ShuffleNetV2", "SqueezeExcite", "UntrustedFactoryError", "VGG", "adopt_shapes", "apply_module_attrs",
    "build_model", "default_dataset", "default_input_shape", "is_zoo_model", "load_model", "load_weights",
    "model_names", "read_checkpoint", "rebuild", "register_model", "resolve_factory", "save_checkpoint",
    "structural_attrs",
]
