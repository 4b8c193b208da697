"""Every kind of model file cnncompress writes reloads through load_artifact, `evaluate --weights` and
`decode`, and scores what the model that wrote it scored."""

from __future__ import annotations

import json

import pytest

from cnncompress import load_artifact
from cnncompress.cli import main
from cnncompress.encode import write_cnnc
from cnncompress.models import CheckpointError, load_model, save_checkpoint
from cnncompress.prune import prune_channels
from cnncompress.quant import quantize, save_quantized
from cnncompress.quant.deployable import write_deployable
from cnncompress.train import evaluate
from testsupport import DIGITS8


@pytest.fixture(scope="module")
def written(tmp_path_factory, digits_cnn8, calib):
    """One file of each kind, as train/prune, quantize, encode and compress write them, with its model."""
    folder = tmp_path_factory.mktemp("artifacts")
    pruned = prune_channels(digits_cnn8, (1, 8, 8), ratio=0.5)
    qmodel = quantize(pruned, calib, weight_bits=4, act_bits=8)
    save_checkpoint(folder / "pruned.pt", pruned, DIGITS8)
    save_quantized(folder / "quantized.pt", qmodel, DIGITS8)
    write_cnnc(folder / "float.cnnc", pruned, DIGITS8)
    write_deployable(folder / "deployable.cnnc", qmodel, DIGITS8, (1, 8, 8))
    return {"pruned.pt": ("checkpoint", pruned), "quantized.pt": ("quantized checkpoint", qmodel),
            "float.cnnc": ("container", pruned), "deployable.cnnc": ("deployable", qmodel)}, folder


@pytest.mark.parametrize("name", ["pruned.pt", "quantized.pt", "float.cnnc", "deployable.cnnc"])
def test_every_artifact_reloads_and_scores_what_its_model_scored(name, written, digits_split, capsys):
    files, folder = written
    kind, model = files[name]
    test = digits_split[2]
    loaded = load_artifact(folder / name)
    assert loaded.kind == kind and loaded.spec == DIGITS8
    expected = evaluate(model, test).top1
    assert evaluate(loaded.model, test).top1 == pytest.approx(expected)
    command = ["evaluate", "--model", "digits_cnn", "--weights", str(folder / name), "--json", "--quiet"]
    assert main(command) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(expected)
    if name.endswith(".cnnc"):
        assert main(["decode", str(folder / name), "--evaluate", "--json", "--quiet"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["kind"] == kind and out["top1"] == pytest.approx(expected)


def test_decoding_a_deployable_to_a_checkpoint_keeps_it_quantized(written, tmp_path, digits_split):
    _, folder = written
    assert main(["decode", str(folder / "deployable.cnnc"), "--output", str(tmp_path / "d.pt"), "--quiet"]) == 0
    again = load_artifact(tmp_path / "d.pt")
    assert again.kind == "quantized checkpoint"
    test = digits_split[2]
    assert evaluate(again.model, test).top1 == pytest.approx(evaluate(load_artifact(folder / "deployable.cnnc").model,
                                                                      test).top1)


def test_load_model_names_the_loader_of_a_quantized_checkpoint(written):
    _, folder = written
    with pytest.raises(CheckpointError, match="quantized checkpoint: open it with cnncompress.load_artifact"):
        load_model(folder / "quantized.pt")
