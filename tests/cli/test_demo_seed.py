"""The demo's baseline is seeded: the same command trains the same weights, whatever ran before."""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from cnncompress.cli import compress as demo
from cnncompress.models import ModelSpec
from cnncompress.train import fit


def _quick_fit(model, data, config, **kwargs):
    """The demo's training cut to three batches: enough to show that the weights repeat."""
    return fit(model, data, replace(config, epochs=1, max_batches_per_epoch=3), **kwargs)


def _baseline(tmp_path, train, seed: int, name: str) -> dict[str, torch.Tensor]:
    args = argparse.Namespace(seed=seed, quiet=True, json=False)
    return demo._trained_baseline(ModelSpec("digits_cnn"), train, tmp_path / name, args).state_dict()


def test_demo_baseline_is_the_same_for_the_same_seed(tmp_path, monkeypatch, digits_train):
    monkeypatch.setattr(demo, "fit", _quick_fit)
    first = _baseline(tmp_path, digits_train, 0, "a.pt")
    torch.rand(1000)  # whatever drew from the global generator in between does not matter
    again, other = _baseline(tmp_path, digits_train, 0, "b.pt"), _baseline(tmp_path, digits_train, 1, "c.pt")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])
    assert torch.load(tmp_path / "a.pt", weights_only=True)["meta"]["seed"] == 0


def test_demo_says_what_it_skipped_without_the_toolchain(monkeypatch) -> None:
    """Without the Arm toolchain the demo's budget is the limits alone, checked on the .cnnc container, and says so."""
    import cnncompress.cli.compress as cli_compress

    monkeypatch.setattr(cli_compress, "missing_tools", lambda: ["qemu-system-arm"])
    device, budget = cli_compress._demo_budget(None, 57_832, "4096B", "1.0")
    assert device is None and (budget.flash_bytes, budget.ram_bytes) == (5783, 4096)  # a tenth, no kernel code
    line = cli_compress._render_mcu({"skipped": cli_compress._missing_toolchain()}, [])
    assert "qemu-system-arm not found" in line and "checked on the .cnnc container, not on executable C" in line


def test_demo_verdict_names_what_it_was_checked_on_and_why_it_misses() -> None:
    import cnncompress.cli.compress as cli_compress

    out = {"before": {"flash_bytes": 57_832}, "seed": 0, "paths": {}, "baseline_top1": 98.67, "onnx_top1": 96.2,
           "before_after": [{"figure": "flash_bytes", "limit": 8359, "measured": 7848, "fits": True}], "fits": False,
           "verification": {"misses": [{"message": "accuracy drop 2.45 pt exceeds 1.00 pt by 1.45 pt"}]},
           "mcu": {"skipped": "qemu-system-arm not found"}}
    text = cli_compress._render_demo(out)
    assert "does NOT fit the budget on the .cnnc container (seed 0): accuracy drop 2.45 pt exceeds" in text
    assert "after (measured on .cnnc)" in text
