"""The .cnnc decoder on hostile input: every malformed file is a one-line CnncFormatError, in bounded memory.

Forgeries keep the envelope valid (length and CRC recomputed) so that only the decoder's own checks
can refuse them. Memory is measured with tracemalloc (NumPy's buffers included), never time.
"""

from __future__ import annotations

import json
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompress.encode import DeepCompressionConfig, bit_equal_states, deep_compress, huffman
from cnncompress.encode.container import (
    MAX_DIM,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    CnncFormatError,
    encode_state,
    parse_cnnc,
)
from testsupport import DIGITS8, reseal_cnnc, rewrite_cnnc_header, with_packed_header

MEMORY_BOUND = 96 * 2**20  # any file below, decoded or refused: 64 MiB + 256 x its size of tensors at most
REFUSAL_BOUND = 8 * 2**20  # a refusal that happens before allocation
EXOTIC = {  # every raw dtype pairing the encoder writes, besides the model's own float16/int8/shared ones
    "exotic.bf16_half": torch.tensor([1.5, -2.0, 3e-3], dtype=torch.bfloat16),  # stored float16
    "exotic.bf16_full": torch.tensor([1e-30, 7.0], dtype=torch.bfloat16),  # stored float32
    "exotic.fp32": torch.tensor([0.1, -0.2, 0.3]),  # stored float32
    "exotic.fp32_half": torch.tensor([0.1, 1 / 3]).half().float(),  # stored float16
    "exotic.fp64": torch.tensor([0.1], dtype=torch.float64),
    "exotic.flags": torch.tensor([True, False, True]),
    "exotic.bytes": torch.tensor([0, 1, 2, 255], dtype=torch.uint8),
    "exotic.int32": torch.tensor([1, -300, 70_000], dtype=torch.int32),
}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """A pruned, weight-shared digits CNN's state (shared, float16, int64 tensors) plus ``EXOTIC``."""
    torch.manual_seed(0)
    model, _ = deep_compress(DIGITS8.build(), DeepCompressionConfig(sparsity=0.8, bits=3))
    return {**model.state_dict(), **EXOTIC}


@pytest.fixture(scope="module")
def encoded(state) -> bytes:
    return encode_state(state, DIGITS8, 1000, meta={"note": "test"}, input_shape=(1, 8, 8))[0]


@contextmanager
def _peak_memory(limit: int) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak:,} bytes"


def _decodes_or_refuses(data: bytes, limit: int = MEMORY_BOUND) -> None:
    """Decoding ``data`` succeeds or raises a one-line CnncFormatError, within ``limit`` bytes."""
    with _peak_memory(limit):
        try:
            parse_cnnc(data)
        except CnncFormatError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 400


def _refused(data: bytes, match: str) -> None:
    """Decoding ``data`` raises CnncFormatError matching ``match`` before allocating anything large."""
    with _peak_memory(REFUSAL_BOUND), pytest.raises(CnncFormatError, match=match) as info:
        parse_cnnc(data)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def _with_header_text(data: bytes, text: str | bytes) -> bytes:
    return with_packed_header(data, zlib.compress(text.encode() if isinstance(text, str) else text))


def _edit_entry(data: bytes, name: str, **fields: Any) -> bytes:
    """``data`` with the header entry of tensor ``name`` updated by ``fields``."""
    def edit(header: dict) -> None:
        next(entry for entry in header["tensors"] if entry["name"] == name).update(fields)

    return rewrite_cnnc_header(data, edit)


# ------------------------------------------------------------------------------------ property-based fuzz
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(),
    st.sampled_from([-1, 0, 1, 2**31, 2**32 + 1, 2**63, 10**40, MAX_DIM, -(2**63)]),
    st.text(max_size=12),
    st.sampled_from(["raw", "shared", "float16", "float32", "bfloat16", "float64", "int8", "int64", "uint8", "bool",
                     "complex64", "object", "U5", "float8_e4m3fn", "conv1.weight", "digits_cnn", "os:system"]))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
ACTIONS = st.sampled_from(["replace", "delete", "add", "nudge"])


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a JSON document, as the keys and indices leading to it (the root first)."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [path] + [deeper for key, child in children for deeper in _paths(child, (*path, key))]


def _mutate(header: dict, path: tuple, action: str, value: Any, delta: int) -> None:
    """Apply one edit at ``path`` (not the root): replace, delete, add a child, or nudge an integer."""
    *parents, last = path
    parent = header
    for key in parents:
        parent = parent[key]
    target = parent[last]
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(target, dict):
        target["extra" if value is None else str(value)[:8]] = value
    elif action == "add" and isinstance(target, list):
        target.append(value)
    elif action == "nudge" and type(target) is int:
        parent[last] = target + delta
    else:
        parent[last] = value


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_any_header_edit_decodes_or_is_refused_in_bounded_memory(encoded, data):
    def edit(header: dict) -> None:
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(_paths(header)[1:]))
            delta = data.draw(st.one_of(st.integers(-3, 3), st.sampled_from([1000, 2**20, 2**31, -(2**31)])))
            _mutate(header, path, data.draw(ACTIONS), data.draw(JSON_VALUES), delta)

    _decodes_or_refuses(rewrite_cnnc_header(encoded, edit))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused(blob):
    _decodes_or_refuses(blob)
    _decodes_or_refuses(reseal_cnnc(b"CNNC\x01" + blob[:8].ljust(8, b"\x00") + blob[8:]))


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(alphabet='[]{}",:\\ 0a-e.', max_size=300).map(str.encode)))
def test_arbitrary_header_text_is_refused(encoded, text):
    _decodes_or_refuses(_with_header_text(encoded, text))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_truncated_and_bit_flipped_files_with_valid_checksums(encoded, data):
    cut = data.draw(st.integers(13, len(encoded) - 5))
    _decodes_or_refuses(reseal_cnnc(encoded[:cut]))
    flipped = bytearray(encoded[:-4])
    for _ in range(data.draw(st.integers(1, 3))):
        flipped[data.draw(st.integers(13, len(flipped) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    _decodes_or_refuses(reseal_cnnc(bytes(flipped)))


# ------------------------------------------------------------------------------------ explicit forgeries
def test_every_dtype_pairing_the_encoder_writes_decodes_bit_exactly(state, encoded):
    decoded, spec, header = parse_cnnc(encoded)
    assert spec == DIGITS8 and bit_equal_states(state, decoded)
    stored = {entry["name"]: entry.get("stored") for entry in header["tensors"]}
    assert stored["exotic.bf16_half"] == "float16" and stored["exotic.bf16_full"] == "float32"


@pytest.mark.parametrize(("name", "fields", "match"), [
    ("exotic.fp32", {"dtype": "bfloat16"}, "do not convert to bfloat16 exactly"),
    ("exotic.fp32_half", {"dtype": "bfloat16"}, "do not convert to bfloat16 exactly"),
    ("exotic.bytes", {"dtype": "bool"}, "do not convert to bool exactly"),
    ("exotic.fp32", {"dtype": "int8"}, "pair a dtype"),
    ("exotic.fp32", {"dtype": "bool"}, "pair a dtype"),
    ("exotic.fp32", {"dtype": "float16"}, "pair a dtype"),
    ("exotic.fp32_half", {"dtype": "int8"}, "pair a dtype"),
    ("bn1.num_batches_tracked", {"dtype": "bool"}, "pair a dtype"),
    ("bn1.num_batches_tracked", {"stored": "uint8"}, "pair a dtype"),
    ("exotic.int32", {"dtype": "int16"}, "pair a dtype"),
    ("exotic.fp32", {"dtype": "complex64"}, "pair a dtype"),
    ("exotic.fp32", {"dtype": "float8_e4m3fn"}, "pair a dtype"),
    ("exotic.fp32", {"stored": "object"}, "pair a dtype"),
    ("conv1.weight", {"dtype": "bfloat16"}, "only float32 tensors are shared"),
    ("conv1.weight", {"dtype": "float16"}, "only float32 tensors are shared"),
    ("conv1.weight", {"codebook_dtype": "int8"}, "codebook_dtype"),
    ("conv1.weight", {"codebook_dtype": "bfloat16"}, "codebook_dtype"),
])
def test_a_dtype_edit_that_would_alter_values_is_refused(encoded, name, fields, match):
    _refused(_edit_entry(encoded, name, **fields), match)


@pytest.mark.parametrize(("name", "shape", "match"), [
    ("exotic.fp32", [2**31, 2**31], "shape must be"),
    ("exotic.fp32", [2**30, 2**30], "decoded bytes"),
    ("exotic.fp32", [4096, 8192], "decoded bytes"),
    ("exotic.fp32", [500, 1000], "runs past the end"),
    ("exotic.fp32", [2] * 9, "shape must be"),
    ("conv1.weight", [2**20, 2**20, 2**20], "decoded bytes"),
    ("conv1.weight", [MAX_DIM] * 8, "decoded bytes"),
])
def test_size_claims_beyond_the_file_are_refused_before_allocation(encoded, name, shape, match):
    _refused(_edit_entry(encoded, name, shape=shape), match)


def test_all_zero_shared_tensors_decode_up_to_the_allowance():
    """Zeros after a shared tensor's last non-zero value cost no bits: only the allowance bounds them."""
    tiny = encode_state({"w": torch.zeros(1, 1)}, DIGITS8, 0)[0]
    with _peak_memory(MEMORY_BOUND):
        assert parse_cnnc(_edit_entry(tiny, "w", shape=[4096, 3840]))[0]["w"].shape == (4096, 3840)  # 60 MiB
    _refused(_edit_entry(tiny, "w", shape=[4096, 4352]), "decoded bytes")  # 68 MiB


def test_bit_counts_beyond_the_file_are_refused_before_decoding(encoded):
    big = 10**6
    _refused(_edit_entry(encoded, "conv1.weight", entries=big, index_bits=big, gap_bits=big), "runs past the end")
    _refused(_edit_entry(encoded, "conv1.weight", index_bits=2**40), "index_bits must be")
    _refused(_edit_entry(encoded, "conv1.weight", entries=1000), "index_bits must be")


def test_a_zlib_bomb_header_is_refused_in_bounded_memory(encoded):
    packer = zlib.compressobj(9)
    chunk = b" " * 2**20
    packed = packer.compress(b'{"meta": "') + b"".join(packer.compress(chunk) for _ in range(16))
    packed += packer.compress(b'"}') + packer.flush()
    assert len(packed) < 64 * 1024
    _refused(with_packed_header(encoded, packed), f"inflates to more than {MAX_HEADER_BYTES:,} bytes")


def test_deeply_nested_json_is_refused_without_recursion(encoded):
    _refused(_with_header_text(encoded, "[" * 100_000 + "]" * 100_000), "nested more than")
    _refused(_with_header_text(encoded, '{"meta": ' + "[" * 100_000), "nested more than")
    deep = rewrite_cnnc_header(encoded, lambda h: h.update(meta={"a": json.loads("[" * 30 + "]" * 30)}))
    assert parse_cnnc(deep)[2]["meta"]["a"] == json.loads("[" * 30 + "]" * 30)  # within the cap of 32 levels
    assert MAX_JSON_DEPTH == 32


def _first(header: dict) -> dict:
    return header["tensors"][0]


@pytest.mark.parametrize(("edit", "match"), [
    (lambda h: h.update(tensors="x"), "tensors must be a list"),
    (lambda h: h.update(spec="x"), "spec must be a JSON object"),
    (lambda h: h["tensors"].__setitem__(0, list(_first(h).values())), "must be an object with coding"),
    (lambda h: h.pop("tensors"), "lacks the field 'tensors'"),
    (lambda h: h.update(extra=1), "unknown field"),
    (lambda h: h.update(params="1000"), "params must be"),
    (lambda h: h.update(params=-1), "params must be"),
    (lambda h: h.update(meta=[1]), "meta must be"),
    (lambda h: h.update(input_shape=[0, 8, 8]), "input_shape must be"),
    (lambda h: h.update(input_shape=[1, 8]), "input_shape must be"),
    (lambda h: h.update(input_shape=[4096, 4096, 4096]), "input_shape must be"),
    (lambda h: h.update(input_shape="1x8x8"), "input_shape must be"),
    (lambda h: h.update(spec={"factory": 5}), "corrupt header: .*model spec"),
    (lambda h: h.update(spec={"factory": "digits_cnn", "kwargs": [1]}), "kwargs must be"),
    (lambda h: h.update(spec={"factory": "digits_cnn", "kwargs": {"width": {"a": 1}}}), "kwarg 'width'"),
    (lambda h: h.update(spec={"factory": "digits_cnn", "kwargs": {"w": [[1]]}}), "kwarg 'w'"),
    (lambda h: h.update(spec={"factory": "digits_cnn", "code": "x"}), "unknown field"),
    (lambda h: _first(h).update(coding="zip"), "coding 'raw' or 'shared'"),
    (lambda h: _first(h).update(coding=["shared"]), "coding 'raw' or 'shared'"),
    (lambda h: _first(h).update(extra=1), "unknown field"),
    (lambda h: _first(h).pop("gap_bits"), "lacks the field 'gap_bits'"),
    (lambda h: _first(h).update(name=5), "name must be"),
    (lambda h: _first(h).update(name="x" * 300), "name must be"),
    (lambda h: _first(h).update(shape="abc"), "shape must be"),
    (lambda h: _first(h).update(shape=[-1, 9]), "shape must be"),
    (lambda h: _first(h).update(shape=[True, 9]), "shape must be"),
    (lambda h: _first(h).update(shape=[1.5, 9]), "shape must be"),
    (lambda h: _first(h).update(codebook=257), "codebook must be"),
    (lambda h: _first(h).update(gap_width=13), "gap_width must be"),
    (lambda h: _first(h).update(gap_width=True), "gap_width must be"),
    (lambda h: _first(h).update(entries="24"), "entries must be"),
    (lambda h: h["tensors"].append(dict(_first(h))), "names must be unique"),
])
def test_malformed_header_fields_are_refused(encoded, edit, match):
    _refused(rewrite_cnnc_header(encoded, edit), match)


@pytest.mark.parametrize("text", ['"x"', "[]", "null", "{", '{"spec": 1e999999}', '{"a": 1' + "0" * 5000 + "}",
                                  b"\xff\xfe"])
def test_a_header_that_is_not_a_json_object_is_refused(encoded, text):
    _refused(_with_header_text(encoded, text), "corrupt header")


def test_a_truncated_or_padded_zlib_header_is_refused(encoded):
    packed = zlib.compress(json.dumps({"spec": {"factory": "x"}}).encode())
    _refused(with_packed_header(encoded, packed[:-3]), "truncated")
    _refused(with_packed_header(encoded, packed + b"\x00"), "stray bytes")


def test_error_messages_never_echo_a_whole_value(encoded):
    with pytest.raises(CnncFormatError) as info:
        parse_cnnc(rewrite_cnnc_header(encoded, lambda h: h.update(params="A" * 10_000)))
    assert len(str(info.value)) < 200 and "AAAA..." in str(info.value)


def test_huffman_decoding_is_linear_in_the_stream():
    """Any stream costs a bounded number of bytes per bit, valid or not (a 1 MB block once grew toward 3 GB)."""
    stream = np.random.default_rng(0).integers(0, 256, 32 * 1024, dtype=np.uint8).tobytes()
    n_bits = 8 * len(stream)
    with _peak_memory(32 * n_bits):
        assert len(huffman.decode(stream, n_bits, np.asarray([1, 1]))) == n_bits  # one symbol per bit
    with _peak_memory(32 * n_bits), pytest.raises(huffman.HuffmanError, match="invalid Huffman code"):
        huffman.decode(stream, n_bits, np.asarray([15] * 4096))
    with pytest.raises(huffman.HuffmanError, match="Kraft"):
        huffman.decode(stream, n_bits, np.asarray([1, 1, 1]))
