"""Graph rewriting: exact BN folding, quantizers exactly where an integer runtime holds integers."""

from __future__ import annotations

import torch
from torch import nn

from cnncompress.models import build_model
from cnncompress.quant import QuantConfig, act_quantizers, equalize, fold_batchnorm, prepare, quant_layers
from cnncompress.quant.graph import op_kind, trace


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


def test_bn_folding_is_exact_on_resnet_and_mobilenet():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for name, kw in (("resnet20", {}), ("mobilenetv2", {"width_mult": 0.25})):
        model = _randomize_bn(build_model(name, **kw))
        gm = trace(model)
        folded = fold_batchnorm(gm)
        assert len(folded) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
        with torch.no_grad():
            ref, out = model(x), gm(x)
        assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max().item()), (out - ref).abs().max()


def test_resnet_quantizers_sit_at_runtime_integer_tensors():
    gm = prepare(build_model("resnet20"), QuantConfig())
    modules = dict(gm.named_modules())
    names = [n for n, _ in act_quantizers(gm)]
    # input + after every conv (fused ReLU or bare before the add) + after every add's ReLU + before the fc
    assert names[0] == "x_quant" and "avgpool_quant" in names
    assert len(names) == 1 + 19 + 9 + 1
    assert len(list(quant_layers(gm))) == 20
    for node in gm.graph.nodes:  # every conv/linear/add input comes from a quantizer through data movement
        if op_kind(node, modules) in ("conv", "linear", "add"):
            for arg in node.args[:2] if op_kind(node, modules) == "add" else node.args[:1]:
                src = arg
                while op_kind(src, modules) in ("slice", "pad", "flatten", "maxpool", "identity"):
                    src = src.args[0]
                assert op_kind(src, modules) == "quant", (node.name, src.name)


def _folded(model: nn.Module):
    gm = trace(model)
    fold_batchnorm(gm)
    return gm


def test_cross_layer_equalization_keeps_the_function_and_balances_ranges():
    x = torch.randn(2, 3, 32, 32)
    resnet = _folded(_randomize_bn(build_model("resnet20"), seed=3))
    with torch.no_grad():
        before = resnet(x)
    assert equalize(resnet) == 9  # conv1 -> ReLU -> conv2 inside every residual block
    with torch.no_grad():
        assert torch.allclose(resnet(x), before, atol=1e-4 * before.abs().max().item())

    mobilenet = _randomize_bn(build_model("mobilenetv2", width_mult=0.25), seed=2)
    strict, relaxed = _folded(mobilenet), _folded(mobilenet)
    with torch.no_grad():
        ref = strict(x)
    spread_before = _depthwise_spread(strict)
    homogeneous_pairs = equalize(strict)  # only linear-to-linear pairs: ReLU6 is not scale-invariant
    with torch.no_grad():
        assert torch.allclose(strict(x), ref, atol=1e-4 * ref.abs().max().item())
    assert equalize(relaxed, relu6_to_relu=True) > homogeneous_pairs
    assert _depthwise_spread(relaxed) < 0.5 * spread_before


def _depthwise_spread(gm) -> float:
    """Mean over depthwise convs of max/min per-channel weight range (1 = perfectly balanced)."""
    ratios = []
    for m in gm.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            r = m.weight.detach().abs().flatten(1).amax(1)
            ratios.append((r.max() / r.clamp(min=1e-8).min()).item())
    return sum(ratios) / len(ratios)
