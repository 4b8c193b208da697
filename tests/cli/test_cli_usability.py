"""A new user's first hour (issue 20): help shows defaults, one name per meaning of "device", each epoch
printed once, interrupted runs say what they kept and how to continue, long steps say what they do, a
lossy one-shot encode reports its accuracy, and an impossible budget is refused before any measurement."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
import torch

import cnncompress.cli.basic as basic
import cnncompress.cli.common as common
import cnncompress.cli.prune as cli_prune
import cnncompress.pipeline as pipeline
from cnncompress.cli import build_parser, main
from cnncompress.models import ModelSpec, save_checkpoint
from cnncompress.pipeline import preflight
from cnncompress.plan import PlanOptions, load_device
from cnncompress.plan.planner import unreachable
from cnncompress.train import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only wait on busy cores

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--model", "digits_cnn", "--dataset", "digits", "--batch-size", "64", "--no-augment"]
STEPS_PER_EPOCH = 1347 // 64  # digits train split, full batches


class FakeTerminal(io.StringIO):
    """stderr as a terminal: progress bars are drawn on it, as a user sees them."""

    def isatty(self) -> bool:
        return True


def interrupt_at_step(monkeypatch, module, step: int) -> None:
    """Make ``module.fit`` raise KeyboardInterrupt (as Ctrl-C does) after ``step`` optimizer steps."""
    real_fit, done = fit, [0]

    def hook(model) -> None:
        done[0] += 1
        if done[0] == step:
            raise KeyboardInterrupt

    def interrupted_fit(*args, **kwargs):
        kwargs["after_step"] = [*kwargs.get("after_step", ()), hook]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(module, "fit", interrupted_fit)


def resume_command(err: str) -> list[str]:
    """The command the interrupt message says continues the run, as argv for main()."""
    found = re.search(r"to continue: (cnncompress .*)$", err, re.M)
    assert found, err
    argv = shlex.split(found.group(1))
    assert argv[0] == "cnncompress" and "--resume" in argv
    return argv[1:]


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was loaded although the command had to stop before")
    monkeypatch.setattr(common, "load_dataset", refuse)


# -- 1. --help shows the defaults --------------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_help_shows_its_defaults():
    commands = _subcommands(build_parser())
    assert {"train", "prune", "encode", "quantize", "compress", "demo", "export-c"} <= set(commands)
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            default = action.default
            if not action.option_strings or default is None or default is False or default in ("", argparse.SUPPRESS):
                continue
            text = formatter._expand_help(action)
            assert re.search(r"default:? ", text) and str(default) in text, f"{name} {action.option_strings}: {text!r}"
    train_help = " ".join(commands["train"].format_help().split())
    assert "--epochs EPOCHS passes over the training split (default: 10)" in train_help
    assert "--seed SEED seed of the shuffles and augmentation (default: 0)" in train_help
    assert "(default: None)" not in train_help and "(default: False)" not in train_help


# -- 2. train prints every epoch once ----------------------------------------------------------------------

def test_train_prints_each_epoch_once(tmp_path, capsys, caplog):
    """Each epoch is one log line (stderr, as it finishes); the result is one line on stdout, not a replay."""
    caplog.set_level(logging.INFO, logger="cnncompress")
    assert main([*TRAIN, "--epochs", "2", "--output", str(tmp_path / "d.pt")]) == 0
    out, err = capsys.readouterr()
    shown = "\n".join([caplog.text, out, err])
    for epoch in (1, 2):
        assert len(re.findall(rf"^.*\bepoch {epoch}/2\b.*$", shown, re.M)) == 1, shown
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "digits_cnn on digits test: top-1" in lines[0] and "after 2 epochs" in lines[0]


# -- 3. --device is a device profile; the torch device is --torch-device --------------------------------------

@pytest.mark.parametrize("argv", [
    [*TRAIN, "--output", "x.pt"],
    ["prune", "--model", "digits_cnn", "--ratio", "0.5"],
    ["quantize", "--model", "digits_cnn", "--weights", "w.pt", "--output", "q"],
])
def test_device_for_a_torch_device_is_a_usage_error_naming_the_new_option(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device was renamed --torch-device (here: --torch-device cuda)" in err and "device profile" in err


def test_torch_device_and_device_profile_have_distinct_names():
    parser = build_parser()
    train = parser.parse_args([*TRAIN, "--output", "x.pt", "--torch-device", "cuda:1"])
    assert basic.train_config(train).device == "cuda:1"
    prune = parser.parse_args(["prune", "--model", "m", "--ratio", "0.5", "--torch-device", "cuda"])
    assert prune.torch_device == "cuda"
    compress = parser.parse_args(["compress", "--model", "m", "--output", "o", "--device", "cortex-m7",
                                  "--torch-device", "cuda"])
    assert (compress.device, compress.torch_device) == ("cortex-m7", "cuda")
    old = parser.parse_args(["compress", "--model", "m", "--output", "o", "--train-device", "cuda"])
    assert old.torch_device == "cuda"  # the earlier spelling still works


def test_docs_call_no_torch_device_as_device():
    """README, docs and Makefile: every cnncompress command with --device names a device profile."""
    texts = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "docs").glob("*.md"))]
    for path in texts:
        for line in path.read_text().splitlines():
            if re.search(r"(cnncompress|\$C) (train|prune|quantize|evaluate|encode)\b.*--device\b", line):
                pytest.fail(f"{path.name}: {line.strip()}")


# -- 4. train never overwrites the epochs of an interrupted run -------------------------------------------------

@pytest.mark.usefixtures("no_data")
def test_train_refuses_an_earlier_partial_without_resume(tmp_path, capsys):
    partial = tmp_path / "d.pt.partial"
    torch.save({"epoch": 3, "model": {}}, partial)
    before = partial.read_bytes()
    assert main([*TRAIN, "--epochs", "5", "--output", str(tmp_path / "d.pt")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "holds 3 finished epochs of an interrupted run" in err
    assert "pass --resume to continue it, or remove the file" in err
    assert partial.read_bytes() == before


# -- 5. Ctrl-C: a line of its own, what was saved, the command that continues --------------------------------------

def test_interrupted_train_says_what_it_saved_and_how_to_resume(tmp_path, monkeypatch, caplog):
    out = tmp_path / "d.pt"
    interrupt_at_step(monkeypatch, basic, STEPS_PER_EPOCH + 5)  # in the second of three epochs
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([*TRAIN, "--epochs", "3", "--output", str(out), "--json"]) == 130
    err = terminal.getvalue()
    assert "epoch 2/3" in err  # the progress bar was drawn ...
    message = err[err.index("cnncompress train: interrupted"):]
    assert err[:-len(message)].endswith(("\n", "\r\x1b[K"))  # ... and the message does not continue its line
    assert len(message.splitlines()) == 1
    assert f"1 of 3 epochs are saved in {out}.partial" in message and message.rstrip().endswith("--resume")

    monkeypatch.setattr(basic, "fit", fit)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with caplog.at_level(logging.INFO, logger="cnncompress.train"):
        assert main(resume_command(message)) == 0
    assert "after epoch 1" in caplog.text
    assert len(json.loads(sys.stdout.getvalue())["history"]) == 3
    assert out.is_file() and not Path(f"{out}.partial").exists()


# -- 6. prune: progress for its evaluations, a resumable fine-tuning -------------------------------------------

def test_prune_logs_its_evaluations_and_resumes_an_interrupted_finetuning(tmp_path, monkeypatch, capsys, caplog):
    out = tmp_path / "p.pt"
    argv = ["prune", "--model", "digits_cnn", "--dataset", "digits", "--ratio", "0.5", "--finetune-epochs", "2",
            "--max-batches", "3", "--batch-size", "64", "--output", str(out), "--json"]
    interrupt_at_step(monkeypatch, cli_prune, 5)  # the second fine-tuning epoch
    caplog.set_level(logging.INFO, logger="cnncompress")
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"1 of 2 epochs are saved in {out}.partial" in err
    assert "evaluating the unpruned model on 450 test images" in caplog.text  # no terminal: log lines
    assert re.search(r"pruned model: test top-1 \d+\.\d\d% \(\d+\.\d s\)", caplog.text)

    monkeypatch.setattr(cli_prune, "fit", fit)
    assert main(argv) == 1  # the saved epoch is never overwritten silently
    assert "pass --resume" in capsys.readouterr().err
    assert main(resume_command(err)) == 0
    finetuned = json.loads(capsys.readouterr().out)["finetuned"]
    assert finetuned["resumed_from_epoch"] == 1 and len(finetuned["history"]) == 2
    assert out.is_file() and not Path(f"{out}.partial").exists()


def test_prune_resume_needs_an_output(capsys):
    assert main(["prune", "--model", "digits_cnn", "--ratio", "0.5", "--resume"]) == 1
    assert "--resume needs --output" in capsys.readouterr().err


# -- 7. compress without a terminal logs each stage; an interrupted compress says how to continue -------------

def test_compress_logs_its_stages_and_resumes_after_an_interrupt(tmp_path, monkeypatch, capsys, caplog):
    run = tmp_path / "run"
    argv = ["compress", "--model", "digits_cnn", "--dataset", "digits", "--flash", "20KB", "--finetune-epochs", "1",
            "--max-batches", "2", "--qat-epochs", "0", "--sensitivity-images", "60", "--max-rounds", "1",
            "--output", str(run), "--json"]
    real_quantize = pipeline.quantize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "quantize", interrupted)
    caplog.set_level(logging.INFO, logger="cnncompress")
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"finished stages r1-prune, r1-finetune and the sensitivity measurements are kept in {run}" in err
    for line in ("measuring sensitivity on 60 validation images", "stage r1-prune: started",
                 "stage r1-finetune: started", "stage r1-quantize: started"):
        assert line in caplog.text
    assert re.search(r"stage r1-finetune: epochs 1, val top-1 \d+\.\d\d%", caplog.text)
    assert re.search(r"stage r1-finetune: done in \d+\.\d s", caplog.text)

    monkeypatch.setattr(pipeline, "quantize", real_quantize)
    caplog.clear()
    assert main(resume_command(err)) in (0, 3)
    assert "stage r1-finetune: resumed" in caplog.text
    assert re.search(r"stage r1-quantize: val top-1 \d+\.\d\d%, act bits 8", caplog.text)
    assert json.loads(capsys.readouterr().out)["verification"]["measured"]["flash_bytes"] > 0


# -- 8. a lossy encode without fine-tuning reports its accuracy --------------------------------------------------

def test_one_shot_encode_measures_its_accuracy_or_warns(tmp_path, capsys, caplog, digits_model):
    weights = save_checkpoint(tmp_path / "w.pt", digits_model, ModelSpec("digits_cnn"))
    argv = ["encode", "--model", "digits_cnn", "--weights", str(weights), "--sparsity", "0.97", "--bits", "1",
            "--output", str(tmp_path / "m.cnnc")]
    assert main([*argv, "--json"]) == 0  # no --evaluate, no --dataset: measured on the model's own dataset
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "digits" and out["top1_before"] > 90 and out["top1_after"] is not None
    assert out["top1_before"] - out["top1_after"] > 5 and "lost" in caplog.text and "--finetune-epochs" in caplog.text

    caplog.clear()
    assert main([*argv, "--no-evaluate"]) == 0
    assert "NOT measured" in capsys.readouterr().out and "NOT measured" in caplog.text


def test_one_shot_encode_of_a_model_without_a_dataset_warns(tmp_path, capsys, caplog):
    source = tmp_path / "net.py"
    source.write_text("from torch import nn\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    assert main(["encode", "--model", f"{source}:net", "--sparsity", "0.9", "--output", str(tmp_path / "m.cnnc")]) == 0
    assert "NOT measured" in capsys.readouterr().out
    assert "may have collapsed it: give --dataset to measure it" in caplog.text


# -- 11. an impossible budget is refused before sensitivity, naming every term ------------------------------------

def test_infeasible_budget_is_refused_before_sensitivity(tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("sensitivity measured for a budget the cost model already refuses")

    monkeypatch.setattr(pipeline, "measure_plan_sensitivity", must_not_run)
    monkeypatch.setattr(pipeline, "measure_sensitivity", must_not_run)
    began = time.perf_counter()
    code = main(["compress", "--model", "digits_cnn", "--dataset", "digits", "--device", "cortex-m7", "--ram", "33KB",
                 "--output", str(tmp_path / "run")])
    assert code == 3 and time.perf_counter() - began < 60
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(r"RAM 33\.0 KB cannot be met: smallest reachable is [\d.]+ KB = [\d.]+ K?B peak activations "
                     r"\(.*\) \+ 32\.8 KB \(32,768 B\) reserved by the cortex-m7 profile \(ram_reserved\)", err), err
    assert "smaller ram_reserved" in err
    assert not (tmp_path / "run" / "manifest.json").exists()  # nothing started


def test_readme_example_refusal_names_the_reserved_ram():
    """The README's ResNet-20 / cortex-m7 example: 81.9 KB = 49.2 KB of activations + the profile's 32 KiB."""
    device = load_device("cortex-m7")
    cost = preflight(ModelSpec("resnet20").build().eval(), (3, 32, 32), device.ram_reserved_bytes)
    budget = device.budget(3, {"flash": "64KB", "ram": "64KB", "macs": "20M"})
    refused = unreachable(cost, budget, PlanOptions.for_device(device), (0.25, 0.5, 0.75))
    assert refused is not None and refused.constraint == "ram_bytes"
    assert refused.message.startswith("RAM 64.0 KB cannot be met: smallest reachable is 81.9 KB = 49.2 KB peak "
                                      "activations (")
    assert "+ 32.8 KB (32,768 B) reserved by the cortex-m7 profile (ram_reserved)" in refused.message
    assert unreachable(cost, budget.merge({"ram": "82KB"}), PlanOptions.for_device(device), (0.25, 0.5, 0.75)) is None


# -- 10. packaging metadata without the setuptools license deprecation ------------------------------------------

def test_license_is_an_spdx_expression_with_its_file():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "BSD-3-Clause"
    assert all((REPO / name).is_file() for name in project["project"]["license-files"])
    assert "setuptools>=77" in project["build-system"]["requires"][0]  # the first to read both fields
