"""Weight sharing: k-means with linear init, exact zeros, summed centroid gradients, fine-tuning via fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnncompress.encode.share import CODES, finalize_sharing, kmeans_1d, share_weights
from cnncompress.models import ModelSpec
from cnncompress.prune.unstructured import make_permanent, prune_weights
from cnncompress.train import TrainConfig, fit

SPEC = ModelSpec("lenet300", {"in_features": 64})


def _pruned(sparsity: float = 0.7) -> torch.nn.Module:
    torch.manual_seed(0)
    return make_permanent(prune_weights(SPEC.build(), sparsity, scope="layer"))


def test_kmeans_assigns_each_value_to_its_nearest_centroid():
    values = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    centroids, assignment = kmeans_1d(values, 8)
    assert torch.equal(centroids, centroids.sort().values)
    nearest = (values[:, None] - centroids[None, :]).abs().min(1).values
    assert ((values - centroids[assignment]).abs() <= nearest + 1e-6).all()
    means = torch.stack([values[assignment == k].mean() for k in range(8)])
    assert torch.allclose(means, centroids, atol=1e-5)  # converged Lloyd: centroids are cluster means


def test_kmeans_linear_init_keeps_extremes_and_recovers_few_values():
    values = torch.tensor([-1.0, -1.0, 0.5, 0.5, 0.5, 2.0])
    centroids, assignment = kmeans_1d(values, 4)
    used = centroids[assignment.unique()]
    assert set(used.tolist()) == {-1.0, 0.5, 2.0}
    assert torch.equal(centroids[assignment], values)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_sharing_limits_distinct_values_and_keeps_zeros(bits):
    model = _pruned()
    zeros = {n: p.detach() == 0 for n, p in model.named_parameters() if n.endswith("weight")}
    model, records = share_weights(model, bits)
    finalize_sharing(model)
    for name, param in model.named_parameters():
        if name.endswith("weight"):
            assert torch.equal(param.detach() == 0, zeros[name])
            assert param.detach()[param != 0].unique().numel() <= 2**bits
    assert [r.bits for r in records] == [bits] * 3
    with pytest.raises(ValueError, match="1..8"):
        share_weights(_pruned(), 9)


def test_centroid_gradient_is_the_sum_of_its_cluster_gradients():
    model, _ = share_weights(_pruned(), 3)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    layer = model.fc2
    dense = layer.weight.detach().clone().requires_grad_(True)  # same values as a plain weight
    h = F.relu(model.fc1(model.flatten(x)))
    F.cross_entropy(model.fc3(F.relu(F.linear(h, dense, layer.bias))), y).backward()
    codes = getattr(layer, CODES).long()
    expected = torch.zeros(8).index_add_(0, codes[codes >= 0], dense.grad[codes >= 0])
    assert torch.allclose(layer.weight_centroids.grad, expected, atol=1e-6)


def test_centroid_fine_tuning_keeps_codes_and_zeros(digits_train):
    model, _ = share_weights(_pruned(0.8), 4)
    codes = model.fc1.weight_codes.clone()
    before = model.fc1.weight_centroids.detach().clone()
    fit(model, digits_train, TrainConfig(epochs=1, lr=1e-3, weight_decay=0, augment=False,
                                         max_batches_per_epoch=5), progress=False)
    assert not torch.equal(model.fc1.weight_centroids, before)
    finalize_sharing(model, torch.float16)
    weight = model.fc1.weight.detach()
    assert torch.equal(weight == 0, codes < 0)
    assert set(model.state_dict()) == set(SPEC.build().state_dict())
    assert torch.equal(weight, weight.half().float())  # half-precision codebook values
