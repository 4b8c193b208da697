"""Peak live activation memory on graphs whose live sets can be listed by hand."""

import pytest
import torch
from torch import nn

from cnncompress.analysis import ActivationTraceError, peak_activation, profile
from cnncompress.models import build_model


class Chain(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def test_chain_peak_is_relu_input_plus_output() -> None:
    # live elements per step: x 192 | x+c1 448 | c1+relu 512 | relu+c2 384 | c2 128
    peak = peak_activation(Chain(inplace=False), torch.randn(1, 3, 8, 8))
    assert (peak.peak_bytes, peak.peak_node) == (512 * 4, "relu")
    assert peak_activation(Chain(inplace=False), torch.randn(1, 3, 8, 8), act_bits=8).peak_bytes == 512


def test_inplace_relu_aliases_its_input() -> None:
    # relu writes into c1: steps x+c1 448 | c1 256 | c1+c2 384
    peak = peak_activation(Chain(inplace=True), torch.randn(1, 3, 8, 8))
    assert (peak.peak_bytes, peak.peak_node) == (448 * 4, "conv1")


class Residual(nn.Module):
    def __init__(self, inplace_add: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.inplace_add = inplace_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv_b(self.conv_a(x))
        if self.inplace_add:
            z += x
            return z
        return z + x


@pytest.mark.parametrize("inplace_add", [False, True])
def test_skip_connection_keeps_input_live(inplace_add: bool) -> None:
    # 256 elements each; at conv_b the input x, conv_a's output and conv_b's output are all live
    peak = peak_activation(Residual(inplace_add), torch.randn(1, 4, 8, 8))
    assert (peak.peak_bytes, peak.peak_node) == (768 * 4, "conv_b")


def test_views_do_not_double_count() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(32, 100)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.view(x.size(0), -1)
            return self.fc(torch.flatten(flat, 1)[:, :32])

    peak = peak_activation(Head(), torch.randn(1, 2, 4, 4))
    assert (peak.peak_bytes, peak.peak_node) == ((32 + 100) * 4, "fc")


def test_profile_reports_peak_and_node_for_resnet20() -> None:
    # block input (skip) + conv1 output + bn1 output, each 16x32x32
    model = build_model("resnet20")
    for act_bits, expected in ((32, 196_608), (8, 49_152)):
        report = profile(model, (3, 32, 32), act_bits=act_bits)
        assert report.peak_activation_bytes == expected
        assert report.peak_activation_node == "layer1_0_bn1"


def test_untraceable_model_names_the_module() -> None:
    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)
            self.gate = Gate()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gate(self.conv(x))

    with pytest.raises(ActivationTraceError, match=r"gate \(Gate\)"):
        profile(Net(), (1, 4, 4))
