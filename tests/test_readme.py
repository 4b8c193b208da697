"""The README's Python API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.fits, result.verification.describe()
    assert (tmp_path / "runs/api/model.onnx").is_file() and (tmp_path / "runs/api/compress/report.html").is_file()
    assert "TOTAL" in capsys.readouterr().out
