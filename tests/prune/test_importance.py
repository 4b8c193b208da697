"""Importance criteria: each ranks the channels its paper says are least needed lowest."""

from __future__ import annotations

import pytest
import torch

from cnncompress.graph import build_channel_graph
from cnncompress.models import build_model
from cnncompress.prune import FPGM, BNScale, Magnitude, Random, Taylor, bn_l1_penalty, get_importance
from cnncompress.train import TrainConfig, fit


def stem_group(model, shape=(1, 8, 8)):
    graph = build_channel_graph(model, shape)
    return next(g for g in graph.groups if "conv1" in g.modules)


def test_l1_averages_normalised_filter_and_consumer_norms():
    model = build_model("digits_cnn", width=4)
    group = stem_group(model)
    rows = model.conv1.weight.detach().abs().flatten(1).sum(1).double()
    cols = model.conv2.weight.detach().abs().sum((0, 2, 3)).double()
    expected = (rows / rows.mean() + cols / cols.mean()) / 2
    torch.testing.assert_close(Magnitude(1).score(model, group), expected)


@torch.no_grad()
def test_fpgm_drops_redundant_filters_where_l1_drops_small_ones():
    model = build_model("digits_cnn", width=5)
    gen = torch.Generator().manual_seed(0)
    v, u = torch.randn(9, generator=gen), torch.randn(9, generator=gen)
    filters = [v, v + 0.01 * u, v - 0.01 * u, 0.2 * u, -3 * v]  # three near copies, one small, one far
    model.conv1.weight.copy_(torch.stack(filters).view(5, 1, 3, 3))
    group = stem_group(model)
    assert int(FPGM().score(model, group).argmin()) in (0, 1, 2)
    only_filters = Magnitude(1)
    only_filters.roles = ("out",)
    assert int(only_filters.score(model, group).argmin()) == 3


@torch.no_grad()
def test_bn_scale_ranks_by_gamma_and_falls_back_without_batchnorm():
    model = build_model("digits_cnn", width=4)
    model.bn1.weight.copy_(torch.tensor([0.5, -0.05, 2.0, 1.0]))
    assert BNScale().score(model, stem_group(model)).argsort().tolist() == [1, 0, 3, 2]
    lenet = build_model("lenet5")
    group = stem_group(lenet, (1, 28, 28))
    torch.testing.assert_close(BNScale().score(lenet, group), Magnitude(1).score(lenet, group))


def test_bn_l1_penalty_is_a_fit_loss_term_that_shrinks_gammas(digits_train):
    def gamma_sum(model):
        return sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    term = bn_l1_penalty(0.05)
    model = build_model("digits_cnn")
    assert float(term(model).detach()) == pytest.approx(0.05 * gamma_sum(model), rel=1e-6)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, augment=False, max_batches_per_epoch=15)
    plain, sparse = build_model("digits_cnn"), build_model("digits_cnn")
    sparse.load_state_dict(plain.state_dict())
    fit(plain, digits_train, config, progress=False)
    fit(sparse, digits_train, config, loss_terms=[term], progress=False)
    assert gamma_sum(sparse) < gamma_sum(plain) - 1.0
    with pytest.raises(ValueError):
        bn_l1_penalty(float("nan"))


@torch.no_grad()
def _kill_channel(model, c):
    model.conv1.weight[c] = 0
    model.bn1.weight[c] = 0
    model.bn1.bias[c] = 0


def test_taylor_needs_data_and_scores_a_dead_channel_zero(digits_train):
    model = build_model("digits_cnn", width=4)
    _kill_channel(model, 2)
    group = stem_group(model)
    taylor = Taylor(batches=2)
    with pytest.raises(ValueError, match="needs data"):
        taylor.prepare(model, None, None)
    taylor.prepare(model, None, digits_train.batches(32))
    scores = taylor.score(model, group)
    assert scores[2] == 0 and bool((scores[[0, 1, 3]] > 0).all())
    assert all(p.grad is None for p in model.parameters())


def test_random_is_seeded_and_unknown_names_fail():
    group = stem_group(build_model("digits_cnn"))
    assert torch.equal(Random(1).score(None, group), Random(1).score(None, group))
    assert not torch.equal(Random(1).score(None, group), Random(2).score(None, group))
    assert get_importance("fpgm").name == "fpgm"
    with pytest.raises(ValueError, match="unknown criterion"):
        get_importance("hrank")
