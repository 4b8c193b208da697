"""``compress`` on a small network per operator family (SE gates, hardswish/SiLU, pre-activation DenseNet,
channel shuffle, upsampling, GroupNorm/LayerNorm, pools, grouped convs, Inception, channels-last, splits):
each is planned, pruned, quantized, exported and meets a flash budget measured on the written file."""

from __future__ import annotations

import pytest
import torch

import opnets
from cnncompress import Budget, compress
from cnncompress.models import ModelSpec
from cnncompress.train import TrainConfig, fit
from opnets import OPNETS

OPTIONS = dict(finetune_epochs=1, qat_epochs=1, batch_size=64, lr=0.01, sensitivity_images=100,
               prune_options=(0.5,), calib_images=128, weight_bits=(4, 8), max_rounds=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


#: accuracy lost beyond the budget's 5 points at this flash budget (flash itself is met): the planner's
#: 100-image sensitivity misjudges the Inception block's branches (19.6 pt lost on test, 2026-12-03)
ACCURACY_SHORT = {"inception"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    strict=True, reason="accuracy drop above the budget; see ACCURACY_SHORT")) if n in ACCURACY_SHORT else n
    for n in sorted(OPNETS)])
def test_compress_meets_a_flash_budget_on_every_operator_family(name, digits_split, tmp_path):
    from cnncompress.pipeline import CompressOptions

    train, val, test = digits_split
    torch.manual_seed(0)
    model = OPNETS[name]()
    fit(model, train, TrainConfig(epochs=4, batch_size=32, lr=0.02, optimizer="adam", augment=False), progress=False)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    budget = Budget.from_mapping({"flash_bytes": fp32_bytes // 2 + 1500, "max_accuracy_drop": 5.0})
    spec = ModelSpec(f"{opnets.__file__}:build", {"name": name})  # a user's factory, named by the caller
    result = compress(model.eval(), budget, train, val, test, output_dir=tmp_path, spec=spec,
                      options=CompressOptions(**OPTIONS), progress=False)
    measured = result.verification.measured
    assert measured.flash_bytes == result.paths["deployable"].stat().st_size <= budget.flash_bytes, (
        result.verification.describe())
    assert result.fits, result.verification.describe()
    print(f"{name}: fp32 {fp32_bytes} B, budget {budget.flash_bytes} B, file {measured.flash_bytes} B, "
          f"top-1 {result.baseline_top1:.1f} -> {result.onnx_top1:.1f} (onnxruntime)")
