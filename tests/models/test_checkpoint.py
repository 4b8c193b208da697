"""Checkpoint I/O: cnncompress files, the shared pretrained ResNets, wrong files, pruned widths."""

from __future__ import annotations

import pytest
import torch

from cnncompress.models import CheckpointError, ModelSpec, build_model, load_model, save_checkpoint
from testsupport import SHARED


def test_round_trip_preserves_weights_and_meta(tmp_path):
    spec = ModelSpec("digits_cnn", {"width": 8})
    model = spec.build()
    path = save_checkpoint(tmp_path / "m.pt", model, spec, top1=97.5)
    loaded, loaded_spec, meta = load_model(path)
    assert loaded_spec == spec and meta == {"top1": 97.5}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_narrowed_layers_reload_from_the_original_spec(tmp_path):
    """A structurally pruned model is the original spec plus narrower tensors."""
    spec = ModelSpec("lenet5")
    model = spec.build()
    model.conv2 = torch.nn.Conv2d(20, 30, 5)
    model.fc1 = torch.nn.Linear(480, 500)
    x = torch.randn(3, 1, 28, 28)
    expected = model.eval()(x)
    loaded, _, _ = load_model(save_checkpoint(tmp_path / "narrow.pt", model, spec))
    assert loaded.conv2.out_channels == 30 and loaded.fc1.in_features == 480
    torch.testing.assert_close(loaded(x), expected)


def test_bare_state_dict_needs_an_architecture(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_model("lenet300").state_dict(), path)
    with pytest.raises(CheckpointError, match="--model"):
        load_model(path)
    model, _, _ = load_model(path, ModelSpec("lenet300"))
    assert model.fc1.in_features == 784


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(path, ModelSpec("lenet5"))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "absent.pt", ModelSpec("lenet5"))


@pytest.mark.shared
def test_shared_resnet56_weights_do_not_fit_resnet20():
    with pytest.raises(CheckpointError, match=r"unexpected keys \(180\).*layer1\.3"):
        load_model(SHARED / "pretrained/resnet56-4bfd9763.th", ModelSpec("resnet20"))


@pytest.mark.shared
def test_wrong_width_is_reported_not_adopted():
    """Third-party files never reshape the model: a mismatch lists the mis-shaped keys."""
    with pytest.raises(CheckpointError, match="mis-shaped keys.*conv1.weight"):
        load_model(SHARED / "pretrained/resnet20-12fca82f.th", ModelSpec("resnet20", {"in_channels": 1}))


@pytest.mark.shared
@pytest.mark.parametrize("name, file, stored", [("resnet20", "resnet20-12fca82f.th", 91.78),
                                                 ("resnet56", "resnet56-4bfd9763.th", 93.62)])
def test_shared_pretrained_weights_load(name, file, stored):
    model, spec, meta = load_model(SHARED / "pretrained" / file, ModelSpec(name))
    assert spec.factory == name
    assert meta["best_prec1"] == pytest.approx(stored, abs=1e-3)
