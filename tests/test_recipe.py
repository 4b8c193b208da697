"""Hand-written recipes: validation before anything runs, and an end-to-end run measured like a plan."""

from __future__ import annotations

import json

import pytest
import yaml

from cnncompress.cli import main
from cnncompress.models import save_checkpoint
from cnncompress.pipeline import compress_with_recipe
from cnncompress.plan import Budget
from cnncompress.quant.deployable import integer_state, read_deployable
from cnncompress.recipe import RecipeError, load_recipe
from testsupport import DIGITS8

SPEC = DIGITS8
RECIPE = {"stages": [
    {"prune": {"ratio": 0.25}},
    {"finetune": {"epochs": 3, "lr": 0.02, "batch_size": 64}},
    {"sparsify": {"sparsity": 0.5, "scope": "layer"}},
    {"finetune": {"epochs": 3, "lr": 0.02, "batch_size": 64}},
    {"quantize": {"weight_bits": 4, "layer_bits": {"conv1": 8, "fc": 8}, "calib_images": 256}},
    {"qat": {"epochs": 3, "lr": 0.001, "batch_size": 64}},
]}


@pytest.mark.parametrize("recipe, message", [
    ({}, "non-empty 'stages'"),
    ({"stages": [{"shrink": {}}]}, "unknown stage 'shrink'"),
    ({"stages": [{"prune": {"ratoi": 0.5}}]}, r"unknown options \['ratoi'\]"),
    ({"stages": [{"qat": {}}]}, "needs a 'quantize' stage before it"),
    ({"stages": ["quantize", {"prune": {"ratio": 0.5}}]}, "only 'qat' may follow"),
    ({"stages": [{"prune": 0.5}]}, "options must be a mapping"),
])
def test_bad_recipes_are_refused_with_the_stage_named(recipe, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_recipe_file_is_parsed_safely(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_recipe_runs_deploys_and_verifies(tmp_path, digits_split, digits_cnn8):
    train, val, test = digits_split
    budget = Budget.from_mapping({"flash_bytes": "8KB", "max_accuracy_drop": 5.0})
    result = compress_with_recipe(digits_cnn8, RECIPE, train, val, test, budget, output_dir=tmp_path, spec=SPEC,
                                  progress=False)
    assert result.fits, result.verification.describe()
    assert [s["name"] for s in result.stages] == ["prune1", "finetune2", "sparsify3", "finetune4", "quantize5",
                                                  "qat6"]
    decoded, _, _ = read_deployable(result.paths["deployable"])
    codes = integer_state(decoded)["conv2.weight"]
    assert (codes == 0).float().mean() >= 0.5  # the sparsified zeros survived fine-tuning, QAT and the file
    assert decoded.conv2.weight.shape[0] < 16  # channels were removed for real
    assert json.loads((tmp_path / "report.json").read_text())["fits"] is True


def test_cli_compress_with_a_recipe(tmp_path, capsys, digits_cnn8):
    weights = save_checkpoint(tmp_path / "w.pt", digits_cnn8, SPEC)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"quantize": {"weight_bits": 8}}]}))
    code = main(["compress", "--model", "digits_cnn", "--weights", str(weights), "--dataset", "digits",
                 "--config", str(recipe), "--output", str(tmp_path / "run"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["fits"] and out["plan"] is None
    assert abs(out["onnx_top1"] - out["top1"]) <= 1.0
