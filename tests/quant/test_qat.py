"""QAT through the foundation's training loop: it recovers low-bit accuracy and keeps pruned zeros."""

from __future__ import annotations

import copy

import torch

from cnncompress.export.onnx_qdq import export_onnx
from cnncompress.models import ModelSpec
from cnncompress.prune.unstructured import make_permanent, prune_weights
from cnncompress.quant import FakeQuantize, load_quantized, qat, quant_layers, quantize, save_quantized
from cnncompress.train import TrainConfig, evaluate

QUICK = dict(batch_size=64, lr=0.01, weight_decay=0.0, augment=False, seed=0)


def test_qat_recovers_w2a4_accuracy(digits_model, calib, digits_train, digits_test):
    qmodel = quantize(digits_model, calib, weight_bits=2, act_bits=4)
    before = evaluate(qmodel, digits_test).top1
    qat(qmodel, digits_train, TrainConfig(epochs=3, **QUICK), teacher=digits_model, progress=False)
    after = evaluate(qmodel, digits_test).top1
    assert after > before + 10 and after > 85


def test_pruned_zeros_survive_lsq_qat_and_export(digits_model, calib, digits_train, tmp_path):
    pruned = make_permanent(prune_weights(copy.deepcopy(digits_model), 0.6))
    qmodel = quantize(pruned, calib, weight_bits=4, act_bits=8)
    zeros = {name: layer.weight.detach() == 0 for name, layer in quant_layers(qmodel)}
    assert sum(int(z.sum()) for z in zeros.values()) > 0.5 * sum(z.numel() for z in zeros.values())
    scales = {n: m.scale.clone() for n, m in qmodel.named_modules() if isinstance(m, FakeQuantize)}
    qat(qmodel, digits_train, TrainConfig(epochs=1, max_batches_per_epoch=10, **QUICK), learnable_scales=True,
        progress=False)
    for name, layer in quant_layers(qmodel):
        assert torch.all(layer.weight[zeros[name]] == 0), name
        assert torch.all(layer.weight_quant.codes(layer.weight)[zeros[name]] == 0), name
        assert not hasattr(layer, "weight_mask")  # masks are baked in again after QAT
    changed = [n for n, m in qmodel.named_modules() if isinstance(m, FakeQuantize) and
               not torch.equal(m.scale.detach(), scales[n])]
    assert len(changed) == len(scales)  # LSQ trained every scale
    assert qmodel.quant_config.learnable_scales
    export_onnx(qmodel, tmp_path / "pruned.onnx", (1, 8, 8))
    loaded, _, _ = load_quantized(save_quantized(tmp_path / "q.pt", qmodel, ModelSpec("digits_cnn")))
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
