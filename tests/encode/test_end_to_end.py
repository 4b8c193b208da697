"""Real-data end to end on scikit-learn digits: train, prune + retrain, share + fine-tune, write, decode.

Also drives the ``encode`` and ``decode`` commands on a saved checkpoint.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch

from cnncompress.cli import main
from cnncompress.encode import DeepCompressionConfig, bit_equal_states, deep_compress, read_cnnc, write_cnnc
from cnncompress.models import ModelSpec, save_checkpoint
from cnncompress.train import TrainConfig, evaluate, fit

SPEC = ModelSpec("lenet300", {"in_features": 64})


@pytest.fixture(scope="module")
def trained(digits_train):
    torch.manual_seed(0)
    model = SPEC.build()
    fit(model, digits_train, TrainConfig(epochs=6, lr=0.05, augment=False), progress=False)
    return model


def test_pipeline_file_roundtrip_keeps_accuracy(trained, digits_train, digits_test, tmp_path):
    baseline = evaluate(trained, digits_test).top1
    model = SPEC.build()
    model.load_state_dict(trained.state_dict())
    config = DeepCompressionConfig(sparsity={"fc1": 0.8, "fc2": 0.8, "fc3": 0.5}, bits=4, prune_epochs=3,
                                   share_epochs=1, distill=True,
                                   train=TrainConfig(lr=0.02, augment=False))
    model, record = deep_compress(model, config, digits_train, val=digits_test)
    compressed = evaluate(model, digits_test).top1
    report = write_cnnc(tmp_path / "digits.cnnc", model, SPEC, input_shape=(1, 8, 8))
    decoded, spec, header = read_cnnc(tmp_path / "digits.cnnc")
    assert spec == SPEC and header["input_shape"] == [1, 8, 8]
    assert bit_equal_states(model.state_dict(), decoded.state_dict())
    assert evaluate(decoded, digits_test).top1 == compressed  # identical accuracy from the file alone
    assert compressed >= baseline - 3.0  # 80 % pruned, 4-bit shared: close to the dense model
    assert record.sparsity["layers"][0]["nonzero"] == 64 * 300 - round(0.8 * 64 * 300)
    assert len(record.prune_history) == 3 and record.shared_top1 is not None
    assert report.ratio > 20


def test_iterative_rounds_reach_the_target_sparsity(trained, digits_train):
    model = SPEC.build()
    model.load_state_dict(trained.state_dict())
    config = DeepCompressionConfig(sparsity=0.9, bits=2, scope="global", prune_epochs=3, rounds=2,
                                   train=TrainConfig(lr=0.02, augment=False, max_batches_per_epoch=4))
    model, record = deep_compress(model, config, digits_train)
    assert record.sparsity["nonzero"] == record.sparsity["params"] - round(0.9 * record.sparsity["params"])
    assert len(record.prune_history) == 3
    with pytest.raises(ValueError, match="rounds"):
        DeepCompressionConfig(sparsity=0.5, bits=4, prune_epochs=1, rounds=2)


def test_encode_and_decode_commands(trained, tmp_path, capsys):
    weights = tmp_path / "dense.pt"
    save_checkpoint(weights, trained, SPEC)
    out = tmp_path / "m.cnnc"
    code = main(["encode", "--model", "lenet300", "--weights", str(weights), "--dataset", "digits",
                 "--sparsity", "0.7,fc3=0.3", "--bits", "5,fc1=3", "--finetune-epochs", "1", "--distill",
                 "--evaluate", "--output", str(out), "--json"])
    assert code == 0
    encoded = json.loads(capsys.readouterr().out)
    assert encoded["file_bytes"] == out.stat().st_size
    assert encoded["ratio"] == pytest.approx(encoded["dense_bytes"] / out.stat().st_size)
    kept = {layer["name"]: layer["nonzero"] / layer["params"] for layer in encoded["layers"]}
    assert kept["fc1"] == pytest.approx(0.3, abs=1e-3) and kept["fc3"] == pytest.approx(0.7, abs=1e-3)
    assert {t["name"]: t["bits"] for t in encoded["tensors"]}["fc1.weight"] <= 3
    assert main(["decode", str(out), "--evaluate", "--json"]) == 0  # dataset from the file's metadata
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["top1"] == encoded["top1_after"] and decoded["file_bytes"] == encoded["file_bytes"]


def test_decode_command_reports_corrupt_files(tmp_path, capsys):
    bad = tmp_path / "bad.cnnc"
    bad.write_bytes(b"CNNC\x01" + struct.pack("<II", 1000, 10) + b"\x00" * 10)  # promises 1000 bytes
    assert main(["decode", str(bad)]) == 1
    assert "truncated" in capsys.readouterr().err
    assert main(["encode", "--model", "lenet5", "--sparsity", "conv9=0.5", "--output", str(bad)]) == 1
    assert "unknown layer" in capsys.readouterr().err
