import json
import shlex
import sys

from cnncompress.utils import command_line, write_result


def test_command_line_survives_a_shell_round_trip(monkeypatch):
    """Benchmarks record their command: empty and spaced arguments must come back as they were given."""
    argv = ["benchmarks/structured_pruning.py", "--criteria", "", "--out", "results/a b"]
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(command_line()) == ["python", *argv]


def test_write_result_leaves_the_figures_and_their_table_side_by_side(tmp_path):
    write_result(tmp_path / "bench", {"speedup": 1.5}, "| speedup |\n")
    assert json.loads((tmp_path / "bench.json").read_text()) == {"speedup": 1.5}
    assert (tmp_path / "bench.md").read_text() == "| speedup |\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]  # no temp files left
