"""Hand-written recipes: validation before anything runs, and an end-to-end run measured like a plan."""

from __future__ import annotations

import json
import tracemalloc

import pytest
import yaml

from cnncompress.cli import main
from cnncompress.models import save_checkpoint
from cnncompress.pipeline import compress_with_recipe
from cnncompress.plan import Budget
from cnncompress.quant.deployable import integer_state, read_deployable
from cnncompress.recipe import OPTION_TYPES, STAGE_OPTIONS, RecipeError, load_recipe
from cnncompress.safe_yaml import MAX_BYTES
from testsupport import DIGITS8, billion_laughs

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


@pytest.mark.parametrize("text, message", [
    (billion_laughs() + "stages: *l8\n", "more than 10000 values"),
    ("a: &a " + "x" * 60_000 + "\nstages: [" + ", ".join(["*a"] * 8) + "]\n", "characters of text"),
    ("stages: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32"),
    ("stages: &s [quantize, *s]\n", "alias 's' refers to the value that contains it"),
    ("stages: [{finetune: {epochs: " + "9" * 5000 + "}}]\n", "not valid YAML"),
    ("#" * MAX_BYTES + "\n", f"larger than {MAX_BYTES} bytes"),
])
def test_hostile_recipe_files_are_refused_in_bounded_memory(tmp_path, text, message):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        with pytest.raises(RecipeError, match=message) as err:
            load_recipe(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # the expansion is counted while composing, never built
    assert len(str(err.value)) < 300 and "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("stage, option, value, expected", [
    ("finetune", "epochs", "abc", "an integer >= 0, got 'abc'"),
    ("qat", "lr", "fast", "a finite number, got 'fast'"),
    ("prune", "ratio", float("nan"), "a finite number, got nan"),
    ("finetune", "distill", "yes", "true or false, got 'yes'"),
    ("quantize", "layer_bits", {"conv1": 4.5}, "a mapping {layer: integer >= 1}, got {'conv1': 4.5}"),
    ("prune", "exclude", [["conv1"]], "a list of layer names"),
    ("quantize", "calib_images", "x" * 10_000, "an integer >= 1, got 'xxxx"),
])
def test_wrong_typed_options_name_stage_and_option(stage, option, value, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe({"stages": ["quantize", {stage: {option: value}}]})
    message = str(err.value)
    assert message.startswith(f"stage 2 ({stage}), option {option!r}: expected ") and expected in message
    assert len(message) < 200


def test_recipe_yaml_anchors_nulls_and_exponents_are_read_like_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("tune: &tune {epochs: 2, lr: 1e-4, max_batches_per_epoch: null}\n"
                    "stages: [{finetune: *tune}, quantize, {qat: *tune}]\n")
    assert load_recipe(path) == [("finetune", {"epochs": 2, "lr": 1e-4}), ("quantize", {}),
                                 ("qat", {"epochs": 2, "lr": 1e-4})]


def test_every_stage_option_has_a_type():
    assert set().union(*STAGE_OPTIONS.values()) == set(OPTION_TYPES)


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
