"""Data as users have it: torch Datasets and DataLoaders of float tensors everywhere an ImageSet goes.

The same images give the same numbers whichever form they come in; bad data is refused with one line
that names the item; ``--dataset file.py:build`` works like ``--model file.py:build`` and is never
imported because a file named it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.utils.data import DataLoader, Dataset, TensorDataset

import cnncompress.pipeline as pipeline
from cnncompress.cli import main
from cnncompress.data import ImageSet, UserDataError, as_image_set, load_user_dataset
from cnncompress.models import save_checkpoint
from cnncompress.pipeline import CompressOptions, compress
from cnncompress.plan import Budget
from cnncompress.prune import prune_channels
from cnncompress.quant import quantize
from cnncompress.quant.sensitivity import sensitivity
from cnncompress.train import TrainConfig, evaluate, fit
from testsupport import DIGITS8, rewrite_cnnc_header

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mydata.py"
FACTORY = f"{EXAMPLE}:build"


class Items(Dataset):
    """A plain map-style Dataset (not a TensorDataset): items ``(C x H x W float tensor, int)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i] if self.labels is None else (self.images[i], int(self.labels[i]))


def float_forms(data: ImageSet, batch_size: int = 37) -> dict[str, object]:
    """The same images and labels as a TensorDataset, a plain Dataset and a DataLoader."""
    x, y = data.tensors()
    return {"tensor_dataset": TensorDataset(x, y), "dataset": Items(x, y),
            "loader": DataLoader(TensorDataset(x, y), batch_size=batch_size)}


@pytest.fixture(scope="module")
def small_model(digits_train) -> torch.nn.Module:
    torch.manual_seed(0)
    model = DIGITS8.build()
    fit(model, digits_train, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
    return model.eval()


def test_an_imageset_passes_through_untouched(digits_train):
    assert as_image_set(digits_train, need_labels=True) is digits_train


def test_every_form_loads_to_the_same_tensors(digits_test):
    x, y = digits_test.tensors()
    for name, form in float_forms(digits_test).items():
        loaded = as_image_set(form, source=name)
        assert loaded.is_float and loaded.labelled and loaded.info.input_shape == (1, 8, 8), name
        assert loaded.info.num_classes == 10 and len(loaded) == len(digits_test), name
        assert torch.equal(loaded.images, x) and torch.equal(loaded.labels, y), name
        assert loaded.images.data_ptr() != x.data_ptr()  # a copy: changing the user's tensor changes nothing
        batch_x, batch_y = next(loaded.batches(64))
        ref_x, ref_y = next(digits_test.batches(64))
        assert torch.equal(batch_x, ref_x) and torch.equal(batch_y, ref_y), name


def test_evaluate_agrees_on_every_form(small_model, digits_test):
    reference = evaluate(small_model, digits_test)
    for name, form in float_forms(digits_test).items():
        result = evaluate(small_model, form)
        assert result == reference, name  # top-1, top-5, loss and confusion, exactly
    assert 30 < reference.top1 <= 100  # a model that has learned something, so agreement means something


def test_fit_gives_the_same_weights_from_every_form(digits_train):
    """Same seed, same images in the same order: bit-identical weights. (With ``augment`` the ImageSet's
    random crop pads uint8 images with black, a float set pads with 0.0, so that is compared apart.)"""
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, augment=False, max_batches_per_epoch=8)
    data = digits_train.take(600)
    val = digits_train.take(100, seed=3)
    states = {}
    for name, form in {"imageset": data, **float_forms(data)}.items():
        torch.manual_seed(0)
        model = DIGITS8.build()
        record = fit(model, form, config, val=float_forms(val)["loader"], progress=False)
        states[name] = (model.state_dict(), record.history[0]["val_top1"])
    ref_state, ref_top1 = states.pop("imageset")
    for name, (state, top1) in states.items():
        assert top1 == ref_top1, name
        assert all(torch.equal(ref_state[k], state[k]) for k in ref_state), name


def test_float_augmentation_is_the_imagesets_crop_and_flip(digits_train):
    """Random crop and flip work on float images: where 0.0 is the padding of both, they agree exactly."""
    plain = replace(digits_train.info, mean=(0.0,), std=(1.0,), hflip=True)
    uint8 = ImageSet(digits_train.images, digits_train.labels, plain)
    x = digits_train.images.float() / 255
    floats = as_image_set(TensorDataset(x, digits_train.labels), crop_pad=plain.crop_pad, hflip=True)
    a = list(uint8.batches(128, shuffle=True, augment=True, seed=5))
    b = list(floats.batches(128, shuffle=True, augment=True, seed=5))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], next(uint8.batches(128, shuffle=True, seed=5))[0])  # it did augment
    torch.manual_seed(0)
    model = DIGITS8.build()
    record = fit(model, floats, TrainConfig(epochs=1, batch_size=64, lr=0.05, max_batches_per_epoch=5),
                 progress=False)
    assert np.isfinite(record.history[0]["train_loss"])


def test_calibration_agrees_and_needs_no_labels(small_model, digits_train, digits_test):
    calib = digits_train.take(256, seed=1)
    x, _ = calib.tensors()
    probe = digits_test.tensors()[0][:100]
    reference = quantize(copy.deepcopy(small_model), calib, calibration="minmax")(probe)
    forms = {**float_forms(calib, batch_size=64), "images_only": TensorDataset(x), "image_items": Items(x),
             "image_batches": [b for b in x.split(64)]}
    for name, form in forms.items():
        out = quantize(copy.deepcopy(small_model), form, calibration="minmax")(probe)
        assert torch.equal(out, reference), name
    with pytest.raises(UserDataError, match="no labels"):
        evaluate(small_model, TensorDataset(x))
    unlabelled = as_image_set(Items(x), need_labels=False)
    assert not unlabelled.labelled
    with pytest.raises(UserDataError, match="no labels"):
        fit(DIGITS8.build(), unlabelled, TrainConfig(epochs=1), progress=False)


def test_sensitivity_and_taylor_pruning_agree(small_model, digits_test):
    probe = digits_test.take(120)
    reference = sensitivity(small_model, probe, bits=(3,)).to_dict()
    assert sensitivity(small_model, float_forms(probe)["loader"], bits=(3,)).to_dict() == reference
    pruned = {name: prune_channels(copy.deepcopy(small_model), (1, 8, 8), ratio=0.25, criterion="taylor", data=form)
              for name, form in {"imageset": probe, **float_forms(probe)}.items()}
    ref = pruned.pop("imageset").state_dict()
    for name, model in pruned.items():
        state = model.state_dict()
        assert state.keys() == ref.keys() and all(torch.equal(ref[k], state[k]) for k in ref), name


@pytest.mark.slow
def test_compress_takes_a_loader_and_agrees(tmp_path, small_model, digits_split):
    train, val, test = digits_split
    options = CompressOptions(finetune_epochs=1, qat_epochs=0, batch_size=64, lr=0.02, sensitivity_images=100,
                              prune_options=(0.5,), calib_images=128, weight_bits=(8,), max_rounds=1)
    budget = Budget.from_mapping({"flash_bytes": "8KB"})
    results = {}
    for name, data in {"imageset": (train, val, test),
                       "float": (float_forms(train, 50)["loader"], float_forms(val)["dataset"],
                                 float_forms(test)["tensor_dataset"])}.items():
        results[name] = compress(small_model, budget, *data, output_dir=tmp_path / name, spec=DIGITS8,
                                 options=options, progress=False)
    a, b = results["imageset"], results["float"]
    assert a.plan.to_dict() == b.plan.to_dict()
    assert (a.baseline_top1, a.top1, a.onnx_top1) == (b.baseline_top1, b.top1, b.onnx_top1)


def test_compress_refuses_bad_data_before_any_work(tmp_path, small_model, digits_split):
    train, val, _ = digits_split
    x, y = val.tensors()
    x[7, 0, 3, 3] = float("nan")
    with pytest.raises(UserDataError, match="item 7: the image holds NaN"):
        compress(small_model, Budget(), train, TensorDataset(x, y), output_dir=tmp_path / "run", spec=DIGITS8,
                 progress=False)
    assert not (tmp_path / "run").exists()


def _one_line_error(data, match: str, **kwargs) -> None:
    with pytest.raises(UserDataError, match=match) as info:
        as_image_set(data, **kwargs)
    assert "\n" not in str(info.value)


def test_refusals_name_the_item(digits_test):
    x, y = digits_test.tensors()
    nan = x.clone()
    nan[12, 0, 0, 5] = float("nan")
    _one_line_error(Items(nan, y), r"item 12: the image holds NaN or inf")
    inf = x.clone()
    inf[40] = float("inf")
    _one_line_error(DataLoader(TensorDataset(inf, y), batch_size=16), r"item 40: the image holds NaN or inf")
    shapes = [(x[i], int(y[i])) for i in range(5)] + [(torch.zeros(1, 8, 9), 1)]
    _one_line_error(shapes, r"item 5: the image shape \(1, 8, 9\) differs from the first item's \(1, 8, 8\)")
    _one_line_error(Items(x, y), r"item \d+: label 9 is outside 0..8", num_classes=9)
    negative = y.clone()
    negative[3] = -1
    _one_line_error(TensorDataset(x, negative), r"item 3: label -1 is outside")
    _one_line_error(TensorDataset(x, y.float()), r"item 0: the label dtype is torch.float32")
    _one_line_error([(x[0].numpy(), 1)], r"item 0: the image is a ndarray")
    _one_line_error([{"image": x[0], "label": 1}], r"item 0: the image is a dict")
    _one_line_error([(x[0], "seven")], r"item 0: the label is a str")
    _one_line_error([(x[0], 1, "extra")], r"item 0: expected \(image, label\) or an image")
    _one_line_error(TensorDataset(digits_test.images, y), r"item 0: the image dtype is torch.uint8, not floating")
    _one_line_error(Items(x[:, 0], y), r"item 0: the image has shape \(8, 8\), not C x H x W")
    _one_line_error(TensorDataset(x[:0], y[:0]), r"holds no images")
    _one_line_error(Items(x, y), r"450 images of 1 x 8 x 8 float32 need 112.5 KiB, more than the 1,000 bytes",
                    max_bytes=1000)
    _one_line_error([(x[i:i + 2], y[i:i + 2]) for i in range(0, 20, 2)], r"over 4 images", max_bytes=1000)
    _one_line_error(42, r"expected an ImageSet, a torch Dataset")
    mixed = [(x[0], 1), x[1]]
    _one_line_error(mixed, r"item 1: some items have labels", need_labels=False)


class Broken(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        if i == 6:
            raise OSError("cannot read image 6.png")
        return torch.zeros(1, 8, 8), 0


def test_a_failing_getitem_is_reported_with_its_index():
    _one_line_error(Broken(), r"item 6 failed: OSError: cannot read image 6.png")


def test_classes_attribute_sets_the_class_count_and_names(digits_test):
    x, y = digits_test.tensors()
    named = Items(x, y)
    named.classes = [f"digit {i}" for i in range(12)]  # the torchvision convention
    loaded = as_image_set(DataLoader(named, batch_size=50))
    assert loaded.info.num_classes == 12 and loaded.info.classes[11] == "digit 11"


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 24), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5),
       batch_size=st.integers(1, 9), dtype=st.sampled_from([np.float16, np.float32, np.float64]))
def test_round_trip_preserves_values(data, n, c, h, w, batch_size, dtype):
    """Whatever the form, the adapter hands back the caller's values (as float32) and labels, in order."""
    pixels = data.draw(arrays(dtype, (n, c, h, w), elements=st.floats(-1e4, 1e4, width=np.dtype(dtype).itemsize * 8)))
    labels = torch.from_numpy(data.draw(arrays(np.int64, (n,), elements=st.integers(0, 6))))
    x = torch.from_numpy(pixels)
    expected = x.to(torch.float32)
    loader = DataLoader(TensorDataset(x, labels), batch_size=batch_size)
    for form in (TensorDataset(x, labels), Items(x, labels), loader, [(x[i], int(labels[i])) for i in range(n)]):
        loaded = as_image_set(form)
        assert loaded.images.dtype == torch.float32 and torch.equal(loaded.images, expected)
        assert torch.equal(loaded.labels, labels) and loaded.info.num_classes == int(labels.max()) + 1
        assert torch.equal(torch.cat([b for b, _ in loaded.batches(batch_size)]), expected)


def test_user_dataset_factory_loads_each_split(digits_train, digits_test):
    train, test = load_user_dataset(FACTORY, "train"), load_user_dataset(FACTORY, "test")
    assert len(train) == len(digits_train) and len(test) == len(digits_test)
    assert torch.equal(train.labels, digits_train.labels) and train.info.name == FACTORY
    with pytest.raises(ValueError, match="unknown split"):
        load_user_dataset(FACTORY, "val")


def test_cli_train_and_evaluate_take_a_dataset_factory(tmp_path, capsys):
    out = tmp_path / "mine.pt"
    code = main(["train", "--model", "digits_cnn", "--dataset", FACTORY, "--epochs", "1", "--batch-size", "64",
                 "--output", str(out), "--json"])
    assert code == 0 and out.is_file()
    trained = json.loads(capsys.readouterr().out)
    assert trained["dataset"] == FACTORY and trained["top1"] > 30
    code = main(["evaluate", "--model", "digits_cnn", "--weights", str(out), "--dataset", FACTORY, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 450 and result["top1"] == pytest.approx(trained["top1"])


@pytest.mark.parametrize("ref, message", [
    ("examples/missing.py:build", "does not exist"),
    ("examples/mydata.py:nothing", "no callable named 'nothing'"),
    ("no_such_module_xyz:build", "cannot import module"),
])
def test_cli_a_missing_factory_is_one_line(ref, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["evaluate", "--model", "digits_cnn", "--dataset", ref]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_a_factory_the_user_did_not_type_is_never_imported(tmp_path, capsys, small_model):
    """A .cnnc records its dataset as text: decoding it does not run that code until the user names it."""
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\nbuild = None\n")
    weights = save_checkpoint(tmp_path / "w.pt", small_model, DIGITS8)
    cnnc = tmp_path / "m.cnnc"
    assert main(["encode", "--model", "digits_cnn", "--weights", str(weights), "--dataset", FACTORY, "--evaluate",
                 "--sparsity", "0.5", "--output", str(cnnc), "--quiet"]) == 0
    # forge the recorded name to point at code that would leave a mark if it ran
    forged = tmp_path / "forged.cnnc"
    forged.write_bytes(rewrite_cnnc_header(cnnc.read_bytes(), lambda h: h["meta"].update(dataset=f"{evil}:build")))
    capsys.readouterr()
    assert main(["decode", str(forged), "--evaluate"]) == 1
    err = capsys.readouterr().err.strip()
    assert "never imports" in err and "--dataset" in err and len(err.splitlines()) == 1
    assert not marker.exists()
    assert main(["decode", str(cnnc), "--evaluate", "--dataset", FACTORY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 450


def _readme_block(language: str, needle: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    found = [b for b in blocks if needle in b]
    assert len(found) == 1, f"README has {len(found)} {language} blocks with {needle!r}"
    return found[0]


@pytest.fixture
def readme_dir(tmp_path, monkeypatch) -> Path:
    """A working directory holding the README's examples/mydata.py, as a fresh clone's root would."""
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "examples" / "mydata.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_readme_shows_examples_mydata_as_it_is():
    assert _readme_block("python", "def build(split") == EXAMPLE.read_text()


@pytest.mark.slow
def test_readme_python_api_runs(readme_dir, monkeypatch, capsys):
    """The README's Python block, with fewer epochs and a quicker compress run."""
    code = _readme_block("python", "from examples.mydata import build").replace("epochs=10", "epochs=2")
    monkeypatch.setattr(pipeline, "CompressOptions", lambda: CompressOptions(
        finetune_epochs=1, qat_epochs=0, sensitivity_images=200, prune_options=(0.5,), max_rounds=1))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["result"].paths["report_html"].is_file()
    top1 = float(capsys.readouterr().out.splitlines()[0])
    assert top1 > 30
