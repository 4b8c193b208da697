"""A model file is data: no name read from a file is imported or called, and zoo specs are range-checked.

Each forgery below would run a command or import a file if the loader resolved the factory the file
names; the tests assert the refusal *and* that the marker the payload would create never appears.
"""

from __future__ import annotations

import textwrap
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncompress.cli import main
from cnncompress.encode import CnncFormatError, encode_model, read_cnnc, write_cnnc
from cnncompress.models import (
    MAX_FILE_PARAMS,
    CheckpointError,
    ModelSpec,
    ModelSpecError,
    UntrustedFactoryError,
    load_model,
    save_checkpoint,
)
from cnncompress.quant import load_quantized, quantize, save_quantized
from cnncompress.quant.deployable import read_deployable, write_deployable
from cnncompress.rundir import RunDirectory, Stage
from testsupport import DIGITS8, rewrite_cnnc_header


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


def _evil_specs(tmp_path, marker) -> list[dict]:
    """Specs whose factory runs ``touch MARKER`` (or imports a file that does) when resolved and called."""
    evil_file = tmp_path / "evil.py"
    evil_file.write_text(f"open({str(marker)!r}, 'w').close()\ndef f(**kw):\n    return None\n")
    return [{"factory": "os:system", "kwargs": {"command": f"touch {marker}"}},
            {"factory": "subprocess:call", "kwargs": {"args": ["touch", str(marker)]}},
            {"factory": f"{evil_file}:f", "kwargs": {}},
            {"factory": "builtins:eval", "kwargs": {"source": f"open({str(marker)!r}, 'w')"}}]


@pytest.fixture(scope="module")
def encoded_digits() -> bytes:
    torch.manual_seed(0)
    return encode_model(DIGITS8.build(), DIGITS8, input_shape=(1, 8, 8))[0]


def _forged_cnnc(encoded: bytes, spec: dict) -> bytes:
    return rewrite_cnnc_header(encoded, lambda header: header.update(spec=spec))


def _forged_checkpoint(path, spec: dict):
    torch.save({"format": "cnncompress-checkpoint", "version": 1, "spec": spec,
                "state_dict": DIGITS8.build().state_dict(), "meta": {}}, path)
    return path


def test_forged_cnnc_runs_nothing_and_says_how_to_allow_it(tmp_path, marker, encoded_digits):
    for spec in _evil_specs(tmp_path, marker):
        path = tmp_path / "evil.cnnc"
        path.write_bytes(_forged_cnnc(encoded_digits, spec))
        with pytest.raises(UntrustedFactoryError, match="never imports") as info:
            read_cnnc(path)
        assert spec["factory"] in str(info.value) and "--model" in str(info.value)
        assert main(["decode", str(path)]) == 1
    assert not marker.exists()


def test_forged_checkpoint_runs_nothing(tmp_path, marker):
    for spec in _evil_specs(tmp_path, marker):
        path = _forged_checkpoint(tmp_path / "evil.pt", spec)
        with pytest.raises(UntrustedFactoryError):
            load_model(path)
        # the caller names a zoo model: it is built with the file's keyword arguments, checked against it
        if spec["kwargs"]:
            with pytest.raises(CheckpointError, match="digits_cnn takes no keyword argument"):
                load_model(path, ModelSpec("digits_cnn"))
        else:
            assert load_model(path, ModelSpec("digits_cnn"))[1] == ModelSpec("digits_cnn")
        code = main(["evaluate", "--model", "digits_cnn", "--weights", str(path), "--limit", "8"])
        assert code == (1 if spec["kwargs"] else 0)
    assert not marker.exists()


def test_forged_quantized_files_run_nothing(tmp_path, marker, encoded_digits):
    torch.manual_seed(0)
    qmodel = quantize(DIGITS8.build().eval(), torch.randn(16, 1, 8, 8))
    good_ckpt = torch.load(save_quantized(tmp_path / "q.pt", qmodel, DIGITS8), weights_only=True)
    deployable = write_deployable(tmp_path / "q.cnnc", qmodel, DIGITS8, (1, 8, 8)).read_bytes()
    for spec in _evil_specs(tmp_path, marker):
        torch.save({**good_ckpt, "spec": spec}, tmp_path / "evil-q.pt")
        with pytest.raises(UntrustedFactoryError):
            load_quantized(tmp_path / "evil-q.pt")
        (tmp_path / "evil-q.cnnc").write_bytes(_forged_cnnc(deployable, spec))
        with pytest.raises(UntrustedFactoryError):
            read_deployable(tmp_path / "evil-q.cnnc")
    assert not marker.exists()


def test_forged_run_directory_artifact_runs_nothing(tmp_path, marker):
    run = RunDirectory(tmp_path / "run", DIGITS8, {"n": 1})
    run.run(Stage("a", lambda m: (m, {})), DIGITS8.build())
    artifact = tmp_path / "run" / run.records[0].artifact
    run.close()
    for spec in _evil_specs(tmp_path, marker):
        _forged_checkpoint(artifact, spec)
        with RunDirectory(tmp_path / "run", DIGITS8, {"n": 1}, resume=True) as resumed:
            stage = Stage("a", lambda m: (m, {}))
            if spec["kwargs"]:  # rebuilt as the run's own zoo model, whose arguments are checked
                with pytest.raises(CheckpointError, match="digits_cnn takes no keyword argument"):
                    resumed.run(stage, DIGITS8.build())
            else:
                assert resumed.run(stage, DIGITS8.build())[1].resumed
    assert not marker.exists()


def _write_user_model(tmp_path) -> str:
    source = tmp_path / "mynet.py"
    source.write_text(textwrap.dedent("""
        from torch import nn
        def tiny(width=4):
            return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Flatten(), nn.Linear(width * 36, 3))
    """))
    return f"{source}:tiny"


def test_a_users_own_model_decodes_with_the_factory_they_name(tmp_path):
    ref = _write_user_model(tmp_path)
    model = ModelSpec(ref, {"width": 5}).build()
    path = tmp_path / "mine.cnnc"
    write_cnnc(path, model, ModelSpec(ref, {"width": 5}), input_shape=(1, 8, 8))
    with pytest.raises(UntrustedFactoryError, match="mynet.py:tiny"):
        read_cnnc(path)
    decoded, spec, _ = read_cnnc(path, ModelSpec(ref))
    assert spec == ModelSpec(ref, {"width": 5}) and decoded[0].out_channels == 5
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(decoded(x), model.eval()(x))
    assert main(["decode", str(path), "--model", ref, "--json"]) == 0
    save_checkpoint(tmp_path / "mine.pt", model, ModelSpec(ref, {"width": 5}))
    with pytest.raises(UntrustedFactoryError):
        load_model(tmp_path / "mine.pt")
    assert load_model(tmp_path / "mine.pt", ModelSpec(ref))[0][0].out_channels == 5


@pytest.mark.parametrize(("spec", "message"), [
    (ModelSpec("resnet20", {"depth": 20_000}), r"depth.*\[8, 1202\]"),
    (ModelSpec("resnet20", {"depth": 21}), "6n\\+2"),
    (ModelSpec("resnet20", {"depth": "20"}), "expected an integer"),
    (ModelSpec("resnet20", {"num_classes": True}), "expected an integer"),
    (ModelSpec("lenet5", {"command": "touch x"}), "no keyword argument 'command'"),
    (ModelSpec("mobilenetv2", {"width_mult": float("nan")}), "width_mult"),
    (ModelSpec("vgg16_bn", {"cfg": [2048] * 32}), "parameters, over the limit"),
    (ModelSpec("vgg16_bn", {"cfg": "M"}), "list of 1 to 32"),
])
def test_zoo_keyword_arguments_are_checked_before_allocation(spec, message):
    tracemalloc.start()
    try:
        with pytest.raises(ModelSpecError, match=message):
            ModelSpec.from_dict(spec.to_dict()).build()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20


def test_a_deep_resnet_in_a_file_is_refused_as_a_format_error(encoded_digits):
    forged = _forged_cnnc(encoded_digits, {"factory": "resnet20", "kwargs": {"depth": 20_000}})
    with pytest.raises(CnncFormatError, match="depth"):
        read_cnnc_bytes(forged)


def read_cnnc_bytes(data: bytes):
    from cnncompress.encode import decode_model
    return decode_model(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["resnet20", "lenet5", "digits_cnn", "mobilenetv2", "vgg16_bn", "lenet300"]),
       st.dictionaries(st.sampled_from(["depth", "num_classes", "in_channels", "width", "width_mult", "cfg",
                                        "in_features", "other"]),
                       st.one_of(st.integers(-2**63, 2**63), st.floats(), st.text(max_size=5), st.booleans(),
                                 st.none(), st.lists(st.integers(-5, 5000), max_size=40)), max_size=3))
def test_any_spec_from_a_file_builds_or_is_refused_in_bounded_memory(name, kwargs):
    spec = ModelSpec.from_dict({"factory": name, "kwargs": kwargs})
    try:
        model = spec.build()
    except ModelSpecError:
        return
    assert sum(p.numel() for p in model.parameters()) <= MAX_FILE_PARAMS


@pytest.mark.parametrize("data", ["os:system", {"factory": 3}, {"factory": "x" * 301}, {"factory": "lenet5",
                                                                                      "kwargs": [1]}])
def test_malformed_specs_are_one_line_errors(data):
    with pytest.raises(ModelSpecError) as info:
        ModelSpec.from_dict(data)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200
