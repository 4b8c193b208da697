"""What a reader sees in a run report: the budget named, units on every figure, legends that name only
what is drawn and stand clear of the data, stage summaries as sentences, plan warnings weighed against
the measurement, and the .cnnc container labelled apart from a firmware's flash figure (issues 18, 20)."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.figure import Figure

from cnncompress.models import build_model
from cnncompress.plan import Budget, CostModel, Delta, Plan, PlanOptions, SensitivityTable, load_device, plan
from cnncompress.report import FigureRow, LayerRow, RunReport, render_html, render_markdown, write_report
from cnncompress.report.describe import budget_sentence, stage_sentence
from cnncompress.report.plots import candidates_figure, sensitivity_figure, widths_figure

FIRMWARE_SOURCE = ("cortex-m4 firmware on QEMU mps2-an386: flash = text + data of the model and kernel objects; "
                   "RAM = their data + bss + painted stack + reserve")
CONTAINER_SOURCE = "flash: the .cnnc container's size; RAM: live activations of the graph + reserve"


def _legend_labels(fig: Figure) -> list[str]:
    assert len(fig.legends) == 1, "one figure legend, outside the panels"
    return [t.get_text() for t in fig.legends[0].get_texts()]


def _assert_clear_of_panels(fig: Figure) -> None:
    """No legend inside a panel, the figure legend overlaps no panel, no y-label runs into another panel."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    assert all(ax.get_legend() is None for ax in axes)
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers part of a panel"
    for ax in axes:
        label = ax.yaxis.label
        if not label.get_text():
            continue
        box = label.get_window_extent(renderer)
        for other in axes:
            if other is not ax:
                assert not box.overlaps(other.get_window_extent(renderer)), \
                    f"y-label {label.get_text()!r} overlaps the next plot"


def _candidate(source: str, flash: int, macs: int, cost: float, feasible: bool = True, chosen: bool = False):
    return {"source": source, "flash_bytes": flash, "ram_bytes": 4096, "macs": macs, "predicted_cost": cost,
            "feasible": feasible, "chosen": chosen}


# --- plots ------------------------------------------------------------------------------------------

def test_candidates_legend_names_only_points_that_can_be_seen():
    # greedy and exact found the same plan: both lie exactly under the chosen star, as in a real run
    candidates = [_candidate("greedy", 16_288, 451_904, 0.0, feasible=False),
                  _candidate("greedy", 9_376, 451_904, 0.67, feasible=False),
                  _candidate("greedy", 7_216, 414_960, 1.67),
                  _candidate("exact", 7_216, 414_960, 1.67, chosen=True),
                  _candidate("frontier", 5_016, 78_656, 155.7), _candidate("frontier", 5_728, 120_128, 84.0),
                  _candidate("frontier", 7_216, 414_960, 1.67)]
    fig = candidates_figure(candidates, "accuracy", measured_drop=0.22)
    labels = _legend_labels(fig)
    assert "greedy solver" not in labels  # its only feasible point is hidden under the star
    assert not any(label.startswith("exact solver") for label in labels)
    assert "greedy solver (over budget)" in labels and "optimal frontier (exact solves)" in labels
    assert any(label.startswith("chosen plan") for label in labels)
    assert any(label.startswith("measured drop") for label in labels)
    drawn = {c.get_label() for ax in fig.axes for c in ax.collections}
    assert "greedy solver" not in drawn  # not merely left out of the legend: not drawn either
    _assert_clear_of_panels(fig)

    # feasible greedy points away from the star can be seen, so they are named (and only the hidden one goes)
    visible = candidates + [_candidate("greedy", 12_000, 300_000, 40.0), _candidate("greedy", 14_000, 350_000, 9.0),
                            _candidate("frontier", 10_000, 200_000, 60.0)]
    fig = candidates_figure(visible, "accuracy")
    assert "greedy solver" in _legend_labels(fig)
    greedy = next(c for c in fig.axes[0].collections if c.get_label() == "greedy solver")
    assert sorted(x for x, _ in greedy.get_offsets()) == [12.0, 14.0]


def test_candidates_cost_axis_has_a_unit():
    candidates = [_candidate("exact", 7_216, 414_960, 1.67, chosen=True), _candidate("greedy", 9_000, 450_000, 0.5)]
    for objective, unit in (("accuracy", "(pt)"), ("loss", "loss")):
        fig = candidates_figure(candidates, objective)
        assert unit in fig.axes[0].get_ylabel()
        assert "predicted accuracy cost" not in fig.axes[0].get_ylabel()
    # a measured accuracy drop (pt) is not put on a loss axis
    loss = candidates_figure(candidates, "loss", measured_drop=0.5)
    assert not any(label.startswith("measured drop") for label in _legend_labels(loss))


def test_widths_legend_stands_outside_the_bars():
    layers = [LayerRow("conv1", 16, 16, 32, 8), LayerRow("conv2", 32, 32, 32, 4), LayerRow("conv3", 32, 24, 32, 3),
              LayerRow("fc", 10, 10, 32, 8)]  # fc's 32-bit bar sits where a legend inside would go
    fig = widths_figure(layers)
    assert _legend_labels(fig) == ["before", "after (planned)"]
    _assert_clear_of_panels(fig)


def test_sensitivity_panels_share_one_ylabel_and_name_each_drawn_curve_once():
    curve = {"0.25": [0.1, -1.0], "0.5": [0.4, -12.0]}
    table = {"prune": {"conv1": curve, "conv2": {"0.25": [3.0, -80.0], "0.5": [6.0, -85.0]}},
             "bits": {"conv1": {"2": [0.5, -18.0], "8": [0.0, 0.0]},
                      "conv2": {"2": [0.1, -0.2], "8": [0.0, 0.0]},  # these two coincide: one line,
                      "fc": {"2": [0.1, -0.2], "8": [0.0, 0.0]}}}  # named once for both
    fig = sensitivity_figure(table)
    labels = _legend_labels(fig)
    assert labels.count("conv1") == 1 and "conv2, fc" in labels and "fc" not in labels
    lines = [line for ax in fig.axes for line in ax.lines if not line.get_label().startswith("_")]
    assert len(lines) == 4  # prune: conv1, conv2; bits: conv1, conv2+fc
    assert [bool(ax.get_ylabel()) for ax in fig.axes] == [True, False]
    assert "pt" in fig.axes[0].get_ylabel()
    _assert_clear_of_panels(fig)


# --- text -------------------------------------------------------------------------------------------

def test_header_names_the_budget_never_device_dash():
    budget = Budget(flash_bytes="8KB", ram_bytes="4KiB", max_accuracy_drop=3).to_dict()
    custom = RunReport("run", "digits_cnn", "digits", budget=budget, fits=True)
    for page in (render_markdown(custom), render_html(custom)):
        assert "device -" not in page
        assert "custom budget" in page and "flash ≤ 8.0 KB" in page and "RAM ≤ 4.1 KB" in page
        assert "accuracy drop ≤ 3 pt" in page

    device = load_device("cortex-m4").to_dict()
    profiled = RunReport("run", budget={**budget, "ram_bytes": device["ram_bytes"]}, device=device)
    sentence = budget_sentence(profiled)
    assert sentence.startswith("flash ≤ 8.0 KB")
    assert "device profile cortex-m4" in sentence
    assert "flash 8.0 KB (profile: 1.0 MB)" in sentence  # the limit the run set instead of the profile's
    assert "RAM 262.1 KB" not in sentence.split("instead of")[-1]  # the profile's own RAM limit is no override
    assert "reserved scratch" in sentence
    assert "no budget" not in budget_sentence(RunReport("bare", budget={"max_accuracy_drop": 1.0}))


def test_stage_summaries_read_as_sentences_with_units():
    prune = {"name": "r1-prune", "seconds": 0.1, "summary": {
        "pruned": True, "sparsity": {}, "macs_before": 451_904, "macs_after": 378_016,
        "params_before": 14_458, "params_after": 9_658}}
    text = stage_sentence(prune)
    assert "MACs 451.90K → 378.02K (-16.4%)" in text and "parameters 14,458 → 9,658" in text
    assert "=" not in text and "sparsity" not in text  # an empty sparsity dict says nothing
    quantize = stage_sentence({"name": "r1-quantize", "summary": {
        "val_top1": 99.6667, "layer_bits": {"conv1": 8, "fc": 4}, "act_bits": 8}})
    assert quantize == "Weight bits: conv1 8, fc 4; activations 8-bit; validation top-1 99.67% after quantization."
    qat = stage_sentence({"name": "r1-qat", "summary": {"ran": False, "val_top1": 98.0, "drop_before": 1.667}}, 3.0)
    assert "QAT not needed: validation drop 1.67 pt, within the 3 pt tolerance" in qat
    ran = stage_sentence({"name": "qat4", "summary": {"ran": True, "val_top1_before": 89.33, "val_top1": 90.5,
                                                      "drop_before": 10.3}}, 3.0)
    assert "over the 3 pt tolerance" in ran and "89.33% → 90.50% after QAT" in ran
    finetune = stage_sentence({"name": "r1-finetune", "summary": {"epochs": 3, "val_top1": 99.0,
                                                                  "resumed_from_epoch": 2}})
    assert finetune == ("3 fine-tuning epochs; resumed from its checkpoint after 2 completed epochs; "
                        "validation top-1 99.00% after fine-tuning.")
    assert stage_sentence({"name": "x", "summary": {"colour": "red"}}) == "Colour: red."  # unknown keys kept

    report = RunReport("run", stages=[prune], budget={"max_accuracy_drop": 1.0})
    md = render_markdown(report)
    assert "pruned=" not in md and "macs_after" not in md and "| 0.1 s |" in md


@pytest.fixture(scope="module")
def planned() -> dict:
    """A real plan whose predicted accuracy drop exceeds its 3 pt tolerance."""
    cost = CostModel.from_model(build_model("digits_cnn"), (1, 8, 8))
    table = SensitivityTable(0.1, 97.0)
    for group in cost.groups:
        table.add("prune", group, 0.5, Delta(0.5, -2.0))
    for layer in cost.layer_names:
        for bits in (4, 8):
            table.add("bits", layer, bits, Delta((8 - bits) / 10, -(8 - bits) / 2))
    result = plan(cost, table, Budget(flash_bytes="6KB", max_accuracy_drop=3), PlanOptions(weight_bits=(4, 8)))
    assert isinstance(result, Plan) and result.predicted_accuracy_drop > 3 and result.warnings
    return result.to_dict()


def _drop_report(plan_dict: dict, measured: float | None) -> RunReport:
    predicted = plan_dict["predicted_accuracy_drop"]
    return RunReport("run", "digits_cnn", "digits", budget=plan_dict["budget"], plan=plan_dict,
                     figures=[FigureRow("accuracy_drop", 3.0, None, predicted, measured)],
                     fits=None if measured is None else measured <= 3.0)


def test_pessimistic_prediction_is_a_note_once_the_measurement_fits(planned):
    report = _drop_report(planned, 0.22)
    md, page = render_markdown(report), render_html(report)
    assert "pessimistic" in md and "0.22 pt" in md
    assert "warning" not in md.lower()
    assert "<p class=no>" not in page and "<p class=note>" in page and "pessimistic" in page
    assert "cost (pt)" in md and "percentage points" in md  # the plan's costs carry their unit


def test_prediction_stays_a_warning_when_the_measurement_exceeds_too(planned):
    md, page = render_markdown(_drop_report(planned, 3.5)), render_html(_drop_report(planned, 3.5))
    assert "**warning**" in md and "3.50 pt, exceeds it too" in md and "pessimistic" not in md
    assert "<p class=no>warning:" in page
    unmeasured = render_markdown(_drop_report(planned, None))
    assert "**warning**: predicted accuracy drop" in unmeasured and "pessimistic" not in unmeasured


def test_unforeseen_measured_drop_is_a_warning(planned):
    calm = {**planned, "warnings": [], "predicted_accuracy_drop": 0.5}
    md = render_markdown(_drop_report(calm, 4.0))
    assert "**warning**: measured accuracy drop 4.00 pt exceeds the 3 pt tolerance; the plan predicted 0.50 pt" in md


def _memory_report(tmp_path, memory_source: str, firmware: dict | None) -> RunReport:
    cnnc = tmp_path / "model.cnnc"
    cnnc.write_bytes(b"x" * 6916)
    (tmp_path / "c").mkdir(exist_ok=True)
    figures = [FigureRow("flash_bytes", 10_000, 57_800, 8_900, 9_000), FigureRow("ram_bytes", 262_144, 16_400,
                                                                                 20_500, 19_800)]
    return RunReport("run", "digits_cnn", "digits", budget={"flash_bytes": 10_000, "max_accuracy_drop": 3.0},
                     figures=figures, paths={"deployable": str(cnnc), "c_library": str(tmp_path / "c")}, fits=True,
                     memory_source=memory_source, firmware=firmware)


def test_cnnc_is_labelled_the_archive_format_when_flash_was_measured_on_firmware(tmp_path):
    firmware = {"library": "c", "const_bytes": 5_800, "arena_bytes": 3_100, "activation_sum_bytes": 3_900,
                "lower_bound_bytes": 3_100, "images": 450, "host_equals_reference": True, "top1_c": 87.78,
                "mcu": {"target": "cortex-m4", "board": "mps2-an386", "images": 100, "flash_bytes": 9_000,
                        "ram_bytes": 3_400, "stack_bytes": 308, "instructions_per_inference": 10_843_164},
                "mcu_equals_host": True}
    paths = write_report(_memory_report(tmp_path, FIRMWARE_SOURCE, firmware), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["memory_source"] == FIRMWARE_SOURCE and data["file_bytes"] == {"deployable": 6916}
    assert data["firmware"]["mcu"]["flash_bytes"] == 9_000
    for page in (paths["markdown"].read_text(), paths["html"].read_text()):
        assert "flash (measured on cortex-m4 firmware)" in page and "RAM (measured on cortex-m4 firmware)" in page
        cnnc_line = next(line for line in page.replace("<li>", "\n").splitlines() if "model.cnnc" in line)
        assert "compact archive and transport format" in cnnc_line and "6.9 KB" in cnnc_line
        assert "not the microcontroller flash figure" in cnnc_line
        assert "C build on the microcontroller" in page and "10,843,164" in page
    assert RunReport.from_dict(data).firmware == firmware


def test_cnnc_is_named_as_the_flash_figure_only_without_firmware(tmp_path):
    md = render_markdown(write_and_reload(_memory_report(tmp_path, CONTAINER_SOURCE, None), tmp_path))
    assert "flash (measured as the .cnnc container's size)" in md
    cnnc_line = next(line for line in md.splitlines() if "model.cnnc" in line)
    assert "compact archive and transport format" in cnnc_line and "is this container's size" in cnnc_line
    assert "not the microcontroller flash figure" not in md and "C build on the microcontroller" not in md


def write_and_reload(report: RunReport, run_dir) -> RunReport:
    return RunReport.from_dict(json.loads(write_report(report, run_dir)["json"].read_text()))


def test_no_raw_key_value_text_in_a_full_report(tmp_path):
    stages = [{"name": "r1-finetune", "seconds": 0.3, "summary": {"epochs": 3, "val_top1": 99.3}, "resumed": False},
              {"name": "r1-qat", "seconds": 0.2, "summary": {"ran": False, "val_top1": 99.3, "drop_before": 0.0}}]
    md = render_markdown(RunReport("run", stages=stages, budget={"max_accuracy_drop": 1.0}))
    assert not re.search(r"\b[a-z_]+=[\w.]+", md)
    assert "3 fine-tuning epochs" in md and "99.30% after fine-tuning" in md
