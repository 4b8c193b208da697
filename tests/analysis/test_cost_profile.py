"""Exact parameter, MAC and weight-storage counts on nets small enough to count by hand, and on the zoo."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnncompress.analysis import count_macs, profile
from cnncompress.models import build_model


class Mixed(nn.Module):
    """Strided+padded conv, depthwise conv, grouped 1x1 conv, linear: one of each MAC rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 3x16x16 -> 8x8x8
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1, groups=2)  # -> 16x8x8
        self.fc = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pw(self.dw(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


def test_macs_and_params_by_hand() -> None:
    report = profile(Mixed(), (3, 16, 16))
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["conv"].macs == 512 * 3 * 9  # out elems * in_ch/groups * kh * kw
    assert by_name["dw"].macs == 512 * 1 * 9
    assert by_name["pw"].macs == 1024 * 4
    assert by_name["fc"].macs == 10 * 1024
    assert report.macs == 32768
    assert [by_name[n].params for n in ("conv", "dw", "pw", "fc")] == [224, 72, 80, 10250]
    assert report.params == report.nonzero_params == 10626
    assert by_name["pw"].output_shape == (1, 16, 8, 8)
    assert by_name["pw"].output_bytes == 1024 * 4


def test_figures_are_per_image_whatever_the_input_form() -> None:
    model = Mixed()
    expected = count_macs(model, (3, 16, 16))
    assert count_macs(model, (7, 3, 16, 16)) == expected
    assert count_macs(model, torch.randn(5, 3, 16, 16)) == expected
    assert profile(model, torch.randn(5, 3, 16, 16)).input_shape == (1, 3, 16, 16)


def test_transposed_conv_and_reused_module() -> None:
    up = nn.ConvTranspose2d(4, 2, 2, stride=2)  # each of 100 inputs meets 2*2*2 weights
    assert count_macs(up, (4, 5, 5)) == 800

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x.flatten(1)))

    report = profile(Twice(), (1, 2, 3))
    assert report.macs == 2 * 36
    assert report.params == 42


def test_nonzero_params_count_exact_zeros() -> None:
    model = Mixed()
    with torch.no_grad():
        model.fc.weight[:, :512] = 0
        model.dw.weight[0] = 0
    report = profile(model, (3, 16, 16))
    assert report.nonzero_params == 10626 - 5120 - 9
    assert {l.name: l.nonzero_params for l in report.layers}["fc"] == 10250 - 5120
    assert report.params == 10626


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)  # 216 weights + 8 biases
        self.bn = nn.BatchNorm2d(8)  # 16 affine parameters
        self.fc = nn.Linear(3, 3, bias=False)  # 9 weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x))[:, :, 0, :3])


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        (32, (216 + 8 + 16 + 9) * 4),
        (8, 216 + 9 + (8 + 16) * 4),
        (4, 108 + 5 + (8 + 16) * 4),  # 9 weights * 4 bits = 36 bits -> 5 bytes
        (3, 81 + 4 + (8 + 16) * 4),  # 648 bits; 27 bits -> 4 bytes
        ({"conv": 4, "conv.bias": 8, "bn.weight": 16}, 108 + 8 + 16 + 32 + 36),
    ],
)
def test_weight_bytes(bits: int | dict[str, int], expected: int) -> None:
    assert profile(ConvBN(), (3, 5, 5), weight_bits=bits).weight_bytes == expected


def test_weight_bytes_per_layer_sum_to_total_and_bad_names_raise() -> None:
    report = profile(ConvBN(), (3, 5, 5), weight_bits=4)
    assert sum(l.weight_bytes for l in report.layers) == report.weight_bytes
    with pytest.raises(ValueError, match="conv9"):
        profile(ConvBN(), (3, 5, 5), weight_bits={"conv9": 4})
    with pytest.raises(ValueError):
        profile(ConvBN(), (3, 5, 5), weight_bits=0)


def test_report_serialises_and_tabulates() -> None:
    report = profile(Mixed(), (3, 16, 16), weight_bits=8, act_bits=8)
    data = json.loads(json.dumps(report.to_dict()))
    for key in ("params", "nonzero_params", "macs", "weight_bytes", "peak_activation_bytes", "layers"):
        assert key in data
    assert data["layers"][0]["output_shape"] == [1, 8, 8, 8]
    table = report.table()
    assert "MACs" in table and "FLOP" not in table
    assert "32,768" in table and "TOTAL" in table


def test_profile_restores_training_mode() -> None:
    model = Mixed().train()
    profile(model, (3, 16, 16))
    assert model.training and model.fc.training


@pytest.mark.parametrize(
    ("name", "shape", "params", "macs"),
    [
        ("lenet300", (1, 28, 28), 266_610, 266_200),
        ("lenet5", (1, 28, 28), 431_080, 2_293_000),
        ("resnet20", (3, 32, 32), 269_722, 40_551_040),
        ("resnet56", (3, 32, 32), 853_018, 125_485_696),
    ],
)
def test_zoo_totals(name: str, shape: tuple[int, int, int], params: int, macs: int) -> None:
    report = profile(build_model(name), shape)
    assert (report.params, report.macs) == (params, macs)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16_bn", "digits_cnn"])
def test_macs_agree_with_torch_flop_counter(name: str) -> None:
    model = build_model(name).eval()
    shape = (1, 8, 8) if name == "digits_cnn" else (3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, *shape))
    assert count_macs(model, shape) * 2 == counter.get_total_flops()


class FunctionalNet(nn.Module):
    """A conv module, then a functional conv with its own weight and a matmul head: 3 kinds of MACs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.kernel = nn.Parameter(torch.randn(4, 8, 3, 3))
        self.head = nn.Parameter(torch.randn(4 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(self.conv(x), self.kernel, padding=1)
        return x.flatten(1) @ self.head


def test_functional_conv_and_matmul_macs_are_counted() -> None:
    module_macs = 8 * 8 * 8 * 3 * 9
    functional = 4 * 8 * 8 * 8 * 9 + 4 * 8 * 8 * 10
    report = profile(FunctionalNet(), (3, 8, 8))
    assert (report.macs, report.functional_macs) == (module_macs + functional, functional)
    assert count_macs(FunctionalNet(), (3, 8, 8)) == module_macs + functional
    assert f"{functional:,} MACs of functional" in report.table()
