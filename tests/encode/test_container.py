"""The .cnnc container: bit-exact round trips, the ratio on the written file, and clear errors on bad input."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncompress.encode import (
    CnncFormatError,
    DeepCompressionConfig,
    bit_equal_states,
    decode_state,
    deep_compress,
    encode_model,
    read_cnnc,
    write_cnnc,
)
from cnncompress.models import ModelSpec
from cnncompress.prune.unstructured import prune_weights
from testsupport import reseal_cnnc, rewrite_cnnc_header


@pytest.fixture(scope="module")
def shared_model():
    """A pruned, weight-shared digits CNN (BatchNorm included: raw int64 and fp16 tensors too)."""
    torch.manual_seed(0)
    spec = ModelSpec("digits_cnn", {"width": 8})
    model = spec.build()
    model.bn1.running_var.uniform_(0.5, 2.0)  # non-trivial BN statistics
    model, _ = deep_compress(model, DeepCompressionConfig(sparsity={"conv1": 0.3, "conv2": 0.8, "conv3": 0.95,
                                                                     "fc": 0.5}, bits={"conv1": 8, "conv2": 4,
                                                                                       "conv3": 2, "fc": 1}))
    return model, spec


@pytest.fixture(scope="module")
def encoded(shared_model):
    model, spec = shared_model
    return encode_model(model, spec, meta={"note": "test"}, input_shape=(1, 8, 8))[0]


def test_roundtrip_is_bit_exact_and_outputs_identical(shared_model, encoded):
    model, spec = shared_model
    state, decoded_spec, header = decode_state(encoded)
    assert decoded_spec == spec and header["meta"] == {"note": "test"}
    assert bit_equal_states(model.state_dict(), state)
    rebuilt = decoded_spec.build()
    rebuilt.load_state_dict(state)
    x = torch.randn(16, 1, 8, 8)
    assert torch.equal(model.eval()(x), rebuilt.eval()(x))


def test_sparse_layers_use_codebooks_and_stats_match(shared_model):
    model, spec = shared_model
    _, stats = encode_model(model, spec)
    by_name = {s.name: s for s in stats}
    conv3 = by_name["conv3.weight"]
    assert conv3.coding == "shared" and conv3.codebook <= 4 and conv3.bits <= 2
    assert conv3.nonzero == int(torch.count_nonzero(model.conv3.weight))
    assert by_name["fc.weight"].codebook <= 2
    assert by_name["bn1.num_batches_tracked"].coding == "raw" and by_name["bn1.num_batches_tracked"].bits == 8
    assert by_name["bn1.running_var"].bits == 16  # rounded to fp16 by the pipeline, stored in 2 bytes


def test_ratio_is_measured_on_the_written_file(shared_model, tmp_path):
    model, spec = shared_model
    path = tmp_path / "m.cnnc"
    report = write_cnnc(path, model, spec)
    params = sum(p.numel() for p in model.parameters())
    assert report.file_bytes == path.stat().st_size
    assert report.ratio == pytest.approx(4 * params / path.stat().st_size)
    assert report.file_bytes < 4 * params / 4  # sparse 1-8 bit codes beat fp32 by far
    loaded, loaded_spec, _ = read_cnnc(path)
    assert loaded_spec == spec and bit_equal_states(model.state_dict(), loaded.state_dict())


def test_unshared_dense_weights_roundtrip_raw():
    spec = ModelSpec("lenet300", {"in_features": 16})
    model = spec.build()
    data, stats = encode_model(model, spec)
    assert {s.coding for s in stats} == {"raw"}
    assert bit_equal_states(model.state_dict(), decode_state(data)[0])


def test_empty_and_single_value_layers(shared_model):
    spec = ModelSpec("lenet300", {"in_features": 16})
    model = spec.build()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc2.weight.fill_(0.25)
    data, stats = encode_model(model, spec)
    by_name = {s.name: s for s in stats}
    assert by_name["fc1.weight"].codebook == 0 and by_name["fc2.weight"].codebook == 1
    assert bit_equal_states(model.state_dict(), decode_state(data)[0])


def test_refuses_live_masks_and_non_finite_values():
    spec = ModelSpec("lenet300", {"in_features": 16})
    model = prune_weights(spec.build(), 0.5)
    with pytest.raises(ValueError, match="make pruning masks"):
        encode_model(model, spec)
    model = spec.build()
    with torch.no_grad():
        model.fc3.bias[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        encode_model(model, spec)


def test_bad_magic_version_and_length(encoded):
    with pytest.raises(CnncFormatError, match="not a .cnnc file"):
        decode_state(b"PK\x03\x04" + encoded[4:])
    with pytest.raises(CnncFormatError, match="not a .cnnc file"):
        decode_state(b"CNN")
    bumped = encoded[:4] + bytes([2]) + encoded[5:-4]
    with pytest.raises(CnncFormatError, match="unsupported .cnnc version 2"):
        decode_state(bumped + struct.pack("<I", zlib.crc32(bumped)))
    with pytest.raises(CnncFormatError, match="trailing bytes"):
        decode_state(encoded + b"\x00")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_or_corrupted_files_raise_clear_errors(encoded, data):
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(CnncFormatError, match="truncated|not a .cnnc"):
        decode_state(encoded[:cut])
    position = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    corrupted = bytearray(encoded)
    corrupted[position] ^= flip
    with pytest.raises(CnncFormatError):
        decode_state(bytes(corrupted))


def _forge_shape(encoded: bytes, name: str) -> bytes:
    """Double the first dimension of tensor ``name`` in the header, keeping the file self-consistent."""
    def edit(header: dict) -> None:
        next(e for e in header["tensors"] if e["name"] == name)["shape"][0] *= 2

    return rewrite_cnnc_header(encoded, edit)


@pytest.mark.parametrize(("name", "message"), [("fc.bias", "runs past the end"),
                                               ("conv1.weight", "does not run"),
                                               ("fc.weight", "do not fit")])
def test_consistent_checksum_but_wrong_content_is_rejected(encoded, name, message):
    with pytest.raises(CnncFormatError, match=message):
        decode_state(_forge_shape(encoded, name))
    with pytest.raises(CnncFormatError, match="unexplained bytes"):
        decode_state(reseal_cnnc(encoded[:-4] + b"\x00\x00"))
