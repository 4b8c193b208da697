"""Planner: constraints hold, the exact solver finds the brute-force optimum, infeasibility is named."""

from __future__ import annotations

import itertools

import pytest
from plan_helpers import BITS, PRUNE, ResDepthNet, synthetic_table

from cnncompress.plan import (
    Budget,
    Choice,
    CostModel,
    Infeasible,
    LatencyModel,
    Plan,
    PlanOptions,
    SensitivityTable,
    load_device,
    plan,
)


@pytest.fixture(scope="module")
def cost() -> CostModel:
    return CostModel.from_model(ResDepthNet(c1=8, c2=12, hidden=20), (1, 8, 8))


def brute_force(cost: CostModel, table: SensitivityTable, budget: Budget, options: PlanOptions) -> float | None:
    """Minimum summed cost over every combination (first/last layers pinned), None when none fits."""
    groups = list(cost.groups)
    free = cost.layer_names[1:-1]
    keeps = [[1.0] + [1 - r for r in PRUNE] for _ in groups]
    best = None
    for keep in itertools.product(*keeps):
        prune_cost = sum(0.0 if k == 1.0 else table.prune[g][round(1 - k, 6)].cost()
                         for g, k in zip(groups, keep, strict=True))
        for bits in itertools.product(BITS, repeat=len(free)):
            choice = Choice(dict(zip(groups, keep, strict=True)), {cost.layer_names[0]: 8, cost.layer_names[-1]: 8,
                                                     **dict(zip(free, bits, strict=True))}, {}, options.act_bits)
            p = cost.predict(choice)
            if any(getattr(p, k) > v for k, v in budget.limits().items()):
                continue
            total = prune_cost + sum(table.bits[l][b].cost() for l, b in choice.bits.items())
            best = total if best is None else min(best, total)
    return best


def _check_fits(result: Plan, cost: CostModel, budget: Budget) -> None:
    predicted = cost.predict(result.choice)
    assert predicted == result.predicted
    for key, limit in budget.limits().items():
        assert getattr(predicted, key) <= limit


@pytest.mark.parametrize(("seed", "flash", "ram", "macs"), [
    (0, "6KB", None, None), (1, "5KB", "600B", None), (2, None, None, "40k"), (3, "4.5KB", "700B", "60k"),
])
def test_exact_matches_brute_force_and_greedy_fits(cost, seed, flash, ram, macs):
    table = synthetic_table(cost, seed)
    budget = Budget(flash_bytes=flash, ram_bytes=ram, macs=macs)
    options = PlanOptions(weight_bits=BITS)
    optimum = brute_force(cost, table, budget, options)
    assert optimum is not None
    exact = plan(cost, table, budget, PlanOptions(weight_bits=BITS, solver="exact", frontier_points=3))
    greedy = plan(cost, table, budget, PlanOptions(weight_bits=BITS, solver="greedy"))
    assert isinstance(exact, Plan) and isinstance(greedy, Plan)
    assert exact.solver == "exact" and greedy.solver == "greedy"
    chosen_cost = sum(g.cost for g in exact.groups) + sum(l.cost for l in exact.layers)
    assert chosen_cost == pytest.approx(optimum, abs=1e-9)
    greedy_cost = sum(g.cost for g in greedy.groups) + sum(l.cost for l in greedy.layers)
    assert greedy_cost >= optimum - 1e-9
    for result in (exact, greedy):
        _check_fits(result, cost, budget)
        assert result.choice.bits["conv1"] == 8 and result.choice.bits["fc2"] == 8
        assert sum(c.chosen for c in result.candidates) == 1
    frontier = [c for c in exact.candidates if c.source == "frontier"]
    assert len(frontier) == 3 and frontier[0].predicted_cost >= frontier[-1].predicted_cost
    assert frontier[-1].predicted_cost <= chosen_cost + 1e-9  # the loosest point costs no more


def test_loose_budget_changes_nothing_and_plan_round_trips(cost, tmp_path):
    result = plan(cost, synthetic_table(cost, 0), Budget(flash_bytes="1MB"), PlanOptions(weight_bits=(8, 32)))
    assert isinstance(result, Plan)
    assert all(g.kept == g.channels for g in result.groups)
    assert result.predicted_accuracy_drop == pytest.approx(
        sum(-synthetic_table(cost, 0).bits[l][8].accuracy for l in ("conv1", "fc2")))
    assert all(l.weight_bits == 32 for l in result.layers[1:-1])
    result.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").to_dict() == result.to_dict()
    assert "conv2" in result.table() and "predicted" in result.table()


def test_sparsity_is_used_when_flash_binds(cost):
    table = synthetic_table(cost, 4)
    dense = plan(cost, table, Budget(flash_bytes=1), PlanOptions(weight_bits=BITS))
    assert isinstance(dense, Infeasible) and "allow unstructured sparsity" in dense.message
    budget = Budget(flash_bytes=dense.smallest - 1)
    assert isinstance(plan(cost, table, budget, PlanOptions(weight_bits=BITS)), Infeasible)
    result = plan(cost, table, budget, PlanOptions(weight_bits=BITS, sparsity=True))
    assert isinstance(result, Plan) and max(l.sparsity for l in result.layers) == 0.8
    _check_fits(result, cost, budget)
    c_options = PlanOptions.for_device(load_device("cortex-m4"), weight_bits=BITS)
    refused = plan(cost, table, Budget(flash_bytes=1), c_options)  # a C target stores weights dense
    assert c_options.dense_weights and isinstance(refused, Infeasible) and "sparsity" not in refused.message


def test_infeasible_names_binding_constraint_and_smallest_value(cost):
    table = synthetic_table(cost, 0)
    result = plan(cost, table, Budget(flash_bytes="1KB", macs="1M"), PlanOptions(weight_bits=BITS))
    assert isinstance(result, Infeasible) and result.constraint == "flash_bytes"
    smallest = cost.predict(Choice({g: 0.25 for g in cost.groups},
                                   {l: 2 for l in cost.layer_names} | {"conv1": 8, "fc2": 8}, {}, 8))
    assert result.smallest == smallest.flash_bytes
    assert result.message.startswith("flash 1.0 KB cannot be met: smallest reachable is ")
    assert "relax --flash to >= " in result.message and "2-bit weights" in result.message
    ram = plan(cost, table, Budget(ram_bytes="100B"), PlanOptions(weight_bits=BITS))
    assert isinstance(ram, Infeasible) and ram.constraint == "ram_bytes" and "--ram" in ram.message


def test_latency_limit_through_calibrated_line(cost):
    table = synthetic_table(cost, 1)
    full_macs = cost.predict(Choice()).macs
    line = LatencyModel.fit([(0, 0.5), (full_macs, 1.5)])
    result = plan(cost, table, Budget(latency_ms="1.0ms"), PlanOptions(weight_bits=BITS), latency=line)
    assert isinstance(result, Plan) and result.predicted.latency_ms <= 1.0
    too_fast = plan(cost, table, Budget(latency_ms="0.4ms"), PlanOptions(weight_bits=BITS), latency=line)
    assert isinstance(too_fast, Infeasible) and too_fast.constraint == "latency_ms"
    assert "(predicted on this host)" in too_fast.message
    with pytest.raises(ValueError, match="LatencyModel"):
        plan(cost, table, Budget(latency_ms="1ms"))


def test_missing_sensitivity_for_an_allowed_width_is_an_error(cost):
    table = synthetic_table(cost, 0)
    with pytest.raises(ValueError, match="no entry for any allowed weight width"):
        plan(cost, table, Budget(flash_bytes="5KB"), PlanOptions(weight_bits=(3, 5)))
