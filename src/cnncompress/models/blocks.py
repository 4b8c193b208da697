"""Building blocks shared by the zoo's CIFAR-sized mobile and residual networks.

Every activation, gate and pooling step is a module attribute rather than a functional call, so a
torch.fx graph names it (``features.3.block.se.gate``) and each backend sees one node per operator.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

#: builds an activation module (``nn.ReLU``, ``nn.Hardswish``, ``nn.SiLU`` ...)
Activation = Callable[[], nn.Module]
#: builds a normalisation layer for a number of channels (``nn.BatchNorm2d``, a GroupNorm partial ...)
Norm = Callable[[int], nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, never below it or 10% under ``value``.

    The rounding of the MobileNet papers: channel counts stay friendly to vectorised kernels.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormAct(nn.Sequential):
    """Conv (no bias, "same" padding) -> norm -> optional activation, named ``conv``/``norm``/``act``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: Activation | None = nn.ReLU, norm: Norm = nn.BatchNorm2d) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), norm=norm(cout))
        if act is not None:
            layers["act"] = act()
        super().__init__(layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channels rescaled by ``x * gate``, the gate computed from their means."""

    def __init__(self, channels: int, squeezed: int, act: Activation = nn.ReLU,
                 gate: Activation = nn.Sigmoid) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch per sample with probability ``drop_prob``.

    In eval mode it returns its input, so an eval-mode fx trace holds no node for it. The training
    path uses only tensor methods, so it traces too.
    """

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class InvertedResidual(nn.Module):
    """MobileNetV3 / EfficientNet MBConv: expand 1x1 -> depthwise kxk -> optional SE -> linear 1x1.

    The input is added back when the shape is unchanged, through :class:`DropPath` if ``drop_prob``.
    """

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, act: Activation,
                 se: SqueezeExcite | None = None, drop_prob: float = 0.0) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if hidden != cin:
            layers["expand"] = ConvNormAct(cin, hidden, 1, act=act)
        layers["depthwise"] = ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, act=act)
        if se is not None:
            layers["se"] = se
        layers["project"] = ConvNormAct(hidden, cout, 1, act=None)
        self.block = nn.Sequential(layers)
        self.use_residual = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_prob) if self.use_residual and drop_prob > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if not self.use_residual:
            return out
        return x + (self.drop_path(out) if self.drop_path is not None else out)


class Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``; the shortcut is a 1x1 conv + norm where the shape changes."""

    def __init__(self, body: nn.Module, cin: int, cout: int, stride: int, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.body = body
        self.shortcut = (ConvNormAct(cin, cout, 1, stride, act=None, norm=norm)
                         if stride != 1 or cin != cout else None)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return self.act(self.body(x) + shortcut)


def classifier_head(channels: int, num_classes: int, hidden: int = 0,
                    act: Activation = nn.Hardswish) -> nn.Sequential:
    """Global average pool -> flatten -> (linear -> ``act`` when ``hidden``) -> linear to the classes."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())
    if hidden:
        layers["hidden"] = nn.Linear(channels, hidden)
        layers["act"] = act()
        channels = hidden
    layers["fc"] = nn.Linear(channels, num_classes)
    return nn.Sequential(layers)


def init_conv_weights(model: nn.Module) -> None:
    """He-normal (fan-out) conv weights, as the reference implementations start from."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")


class FeatureClassifier(nn.Module):
    """``features`` (a stack ending in ``channels`` maps) then :func:`classifier_head`, He-initialized convs:
    the shape every 32x32 network of the zoo shares, so each defines only its feature stack."""

    def __init__(self, layers: list[nn.Module], channels: int, num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.classifier = classifier_head(channels, num_classes, hidden)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
