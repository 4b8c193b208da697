"""Report writers: every figure in JSON, Markdown tables, and a self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re

import pytest

from cnncompress.models import build_model
from cnncompress.plan import Budget, CostModel, Delta, Plan, PlanOptions, SensitivityTable, load_device, plan
from cnncompress.report import (
    FigureRow,
    RunReport,
    figure_rows,
    layer_rows_from_plan,
    render_markdown,
    write_report,
)


@pytest.fixture(scope="module")
def report() -> RunReport:
    cost = CostModel.from_model(build_model("digits_cnn"), (1, 8, 8))
    table = SensitivityTable(0.1, 97.0)
    for i, group in enumerate(cost.groups):
        for ratio in (0.25, 0.5):
            table.add("prune", group, ratio, Delta(ratio, -ratio * (i + 1)))
    for layer in cost.layer_names:
        for bits in (2, 4, 8):
            table.add("bits", layer, bits, Delta((8 - bits) / 10, -(8 - bits) / 4))
    budget = Budget(flash_bytes="6KB", ram_bytes="4KB")
    result = plan(cost, table, budget, PlanOptions(weight_bits=(2, 4, 8), frontier_points=4))
    assert isinstance(result, Plan)
    data = result.to_dict()
    measured = {"flash_bytes": 5_900, "ram_bytes": result.predicted.ram_bytes, "macs": result.predicted.macs}
    figures = figure_rows(budget.to_dict(), {"flash_bytes": 40_000, "macs": 90_000}, data["predicted"], measured)
    figures.append(FigureRow("accuracy", None, 95.0, None, 94.2))
    candidates = data["candidates"] + [{**data["candidates"][-1], "chosen": False, "accuracy_drop": 0.8}]
    return RunReport("digits_cnn <script>x</script> to 6 KB", "digits_cnn", "digits",
                     load_device("cortex-m4").to_dict(), budget.to_dict(), figures, layer_rows_from_plan(data),
                     candidates, table.to_dict(), data, [{"name": "prune", "seconds": 1.5}],
                     {"weights": "model.cnnc"}, True, ["a note"])


def test_files_written_with_every_figure(report, tmp_path):
    paths = write_report(report, tmp_path / "run")
    assert sorted(p.name for p in paths.values()) == ["report.html", "report.json", "report.md"]
    data = json.loads(paths["json"].read_text())
    assert RunReport.from_dict(data) == report
    flash = next(f for f in data["figures"] if f["name"] == "flash_bytes")
    assert flash == {"name": "flash_bytes", "limit": 6000, "before": 40_000,
                     "predicted": report.plan["predicted"]["flash_bytes"], "measured": 5_900}
    md = paths["markdown"].read_text()
    assert "| flash | 6.0 KB | 40.0 KB |" in md and "| yes |" in md and "predicted" in md and "measured" in md
    assert "## Layers" in md and "conv2" in md


def test_html_is_self_contained_with_inline_plots(report, tmp_path):
    page = write_report(report, tmp_path)["html"].read_text()
    assert "<script>" not in page  # user text is escaped
    assert "&lt;script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert not re.search(r"https?://|@import|url\(", page)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # widths/bits, sensitivity, candidates
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)


def test_non_finite_figures_are_refused(report, tmp_path):
    bad = RunReport.from_dict(report.to_dict())
    bad.figures.append(FigureRow("accuracy", measured=float("nan")))
    with pytest.raises(ValueError):
        write_report(bad, tmp_path)
    assert not (tmp_path / "report.json").exists()


def test_minimal_report_renders(tmp_path):
    minimal = RunReport("bare")
    assert "not verified" in render_markdown(minimal)
    paths = write_report(minimal, tmp_path)
    assert "<img" not in paths["html"].read_text()
    with pytest.raises(ValueError, match="unknown RunReport fields"):
        RunReport.from_dict({"title": "x", "colour": "red"})
