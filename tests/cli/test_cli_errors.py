"""Every failure is one line on stderr, exit 1, no traceback: output locations, OS and internal errors."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import sys

import pytest
import torch

import cnncompress.cli.basic as basic
import cnncompress.cli.common as common
from cnncompress.cli import main
from cnncompress.models import ModelSpec, save_checkpoint
from cnncompress.rundir import RunDirectory

# Commands that write, with the arguments they need besides --output; the output check comes first, so
# no model, data or file named here is ever read.
FILE_WRITERS = {
    "train": ["train", "--model", "digits_cnn", "--dataset", "digits", "--epochs", "1"],
    "encode": ["encode", "--model", "digits_cnn", "--sparsity", "0.5"],
    "decode": ["decode", "missing.cnnc"],
    "prune": ["prune", "--model", "digits_cnn", "--dataset", "digits", "--ratio", "0.5"],
}
DIR_WRITERS = {
    "compress": ["compress", "--model", "digits_cnn", "--dataset", "digits", "--flash", "4KB",
                 "--finetune-epochs", "1"],
    "demo": ["demo", "--dataset", "digits"],
    "quantize": ["quantize", "--model", "digits_cnn", "--weights", "missing.pt", "--dataset", "digits"],
}
WRITERS = {**FILE_WRITERS, **DIR_WRITERS}


@pytest.fixture
def no_data_before_the_output_check(monkeypatch):
    """Loading a dataset here would mean the command did expensive work before checking its output."""
    def refuse(*args, **kwargs):
        raise AssertionError("dataset loaded before the output location was checked")
    monkeypatch.setattr(common, "load_dataset", refuse)


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI expecting exit 1 and return its single stderr line."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def regular_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    return path


@pytest.mark.usefixtures("no_data_before_the_output_check")
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_an_output_under_a_regular_file_is_refused(capsys, regular_file, command):
    err = one_error_line(capsys, [*WRITERS[command], "--output", str(regular_file / "sub" / "out.pt")])
    assert f"cnncompress {command}: error: cannot write --output" in err and "is not a directory" in err


@pytest.mark.usefixtures("no_data_before_the_output_check")
@pytest.mark.parametrize("command", sorted(FILE_WRITERS))
def test_a_directory_where_a_file_is_expected_is_refused(capsys, tmp_path, command):
    err = one_error_line(capsys, [*FILE_WRITERS[command], "--output", str(tmp_path)])
    assert "is a directory; give a file path" in err


@pytest.mark.usefixtures("no_data_before_the_output_check")
@pytest.mark.parametrize("command", sorted(DIR_WRITERS))
def test_a_file_where_a_directory_is_expected_is_refused(capsys, regular_file, command):
    err = one_error_line(capsys, [*DIR_WRITERS[command], "--output", str(regular_file)])
    assert "exists and is not a directory" in err


@pytest.mark.usefixtures("no_data_before_the_output_check")
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory, so nothing is refused")
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_an_output_in_a_read_only_directory_is_refused(capsys, tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        err = one_error_line(capsys, [*WRITERS[command], "--output", str(locked / "out")])
    finally:
        locked.chmod(0o755)
    assert "no write permission" in err


@pytest.mark.usefixtures("no_data_before_the_output_check")
def test_a_long_output_path_is_shortened_in_the_message(capsys, regular_file):
    err = one_error_line(capsys, [*FILE_WRITERS["train"], "--output", str(regular_file / ("x" * 5000))])
    assert len(err) < 500


@pytest.mark.parametrize("error, expected", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out.pt"), "error: Permission denied: '/data/out.pt'"),
    (OSError(errno.ENOSPC, "No space left on device"), "error: No space left on device"),
    (MemoryError(), "error: out of memory while running profile"),
    (OverflowError("cannot convert float infinity to integer"), "error: OverflowError: cannot convert"),
    (IndexError("list index out of range"), "error: IndexError: list index out of range"),
    (KeyError("params"), "error: KeyError: 'params'"),
    (AttributeError("'str' object has no attribute 'get'"), "error: AttributeError: 'str' object"),
    (RuntimeError("first line\n\tsecond line"), "error: first line second line"),
    (ValueError("v" * 100_000), "error: vvv"),
    (LookupError("no codec"), "error: LookupError: no codec"),  # any other exception: still one line
])
def test_an_unexpected_error_is_one_bounded_line(capsys, monkeypatch, error, expected):
    def fail(args):
        raise error
    monkeypatch.setattr(basic, "run_profile", fail)
    err = one_error_line(capsys, ["profile", "--model", "lenet5"])
    assert err.startswith("cnncompress profile: ") and expected in err and len(err) < 1100


def test_verbose_logs_the_traceback(capsys, monkeypatch, caplog):
    def fail(args):
        raise IndexError("list index out of range")
    monkeypatch.setattr(basic, "run_profile", fail)
    with caplog.at_level(logging.DEBUG, logger="cnncompress.cli"):
        assert main(["profile", "--model", "lenet5", "--verbose"]) == 1
    assert any(record.exc_info and record.exc_info[0] is IndexError for record in caplog.records)


@pytest.mark.parametrize("error, code", [(BrokenPipeError(), 0), (KeyboardInterrupt(), 130)])
def test_broken_pipe_and_interrupt_keep_their_exit_codes(monkeypatch, error, code):
    def fail(args):
        raise error
    monkeypatch.setattr(basic, "run_profile", fail)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a broken pipe closes stderr
    assert main(["profile", "--model", "lenet5"]) == code


def test_a_run_directory_in_use_is_refused_in_one_line(capsys, tmp_path):
    with RunDirectory(tmp_path, ModelSpec("digits_cnn"), {}):
        err = one_error_line(capsys, [*DIR_WRITERS["compress"], "--resume", "--output", str(tmp_path)])
    assert f"is in use by another cnncompress process (pid {os.getpid()})" in err


def test_non_finite_weights_are_refused_naming_the_tensor(capsys, tmp_path):
    model = ModelSpec("digits_cnn").build()
    with torch.no_grad():
        model.fc.weight[0, :3] = float("nan")
    weights = save_checkpoint(tmp_path / "nan.pt", model, ModelSpec("digits_cnn"))
    err = one_error_line(capsys, ["evaluate", "--model", "digits_cnn", "--weights", str(weights)])
    assert "model weight 'fc.weight' holds 3 non-finite values" in err


@pytest.mark.parametrize("command", [["profile", "--model", "digits_cnn"],
                                     ["evaluate", "--model", "digits_cnn", "--dataset", "digits", "--limit", "50"]])
def test_quiet_silences_progress_and_logs_never_the_answer(command, capsys):
    assert main([*command, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.strip(), "--quiet hid the result"
    assert "INFO" not in err


def test_evaluate_without_weights_warns_that_it_scores_random_weights(capsys, caplog):
    assert main(["evaluate", "--model", "digits_cnn", "--dataset", "digits", "--limit", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
    assert "initial random weights" in caplog.text
