import shlex
import sys

from cnncompress.utils import command_line


def test_command_line_survives_a_shell_round_trip(monkeypatch):
    """Benchmarks record their command: empty and spaced arguments must come back as they were given."""
    argv = ["benchmarks/structured_pruning.py", "--criteria", "", "--out", "results/a b"]
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(command_line()) == ["python", *argv]
