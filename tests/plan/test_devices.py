"""Bundled and user device profiles: loading, overrides and validation errors naming file and field."""

from __future__ import annotations

import tracemalloc

import pytest

from cnncompress.plan import PlanOptions, list_devices, load_device
from cnncompress.safe_yaml import MAX_BYTES
from testsupport import billion_laughs


def test_bundled_profiles_load_with_documented_limits():
    assert {"cortex-m4", "cortex-m7", "esp32", "linux-cpu"} <= set(list_devices())
    m4, m7, esp = load_device("cortex-m4"), load_device("cortex-m7"), load_device("esp32")
    assert (m4.flash_bytes, m4.ram_bytes) == (2**20, 256 * 2**10)
    assert (m7.flash_bytes, m7.ram_bytes) == (2 * 2**20, 512 * 2**10)
    assert (esp.flash_bytes, esp.ram_total_bytes, esp.ram_bytes) == (4_000_000, 520_000, 320_000)
    linux = load_device("linux-cpu")
    assert linux.latency_ms == 5.0 and linux.latency_backend == "onnxruntime"
    for name in list_devices():
        device = load_device(name)
        assert device.weight_bits and device.activation_bits and device.description
        assert device.to_dict()["name"] == name


def test_device_budget_and_overrides():
    m7 = load_device("cortex-m7", overrides={"flash": "128KB", "weight_bits": [8]})
    assert m7.flash_bytes == 128_000 and m7.weight_bits == (8,)
    budget = load_device("cortex-m4").budget(0.5, {"ram": "64KiB", "macs": "20M"})
    assert budget.flash_bytes == 2**20 and budget.ram_bytes == 65536 and budget.macs == 20_000_000
    assert budget.max_accuracy_drop == 0.5
    options = PlanOptions.for_device(load_device("cortex-m4"))
    assert options.weight_bits == (4, 8) and options.act_bits == 8
    assert load_device("cortex-m4").c_target == "cortex-m4" and load_device("esp32").c_target is None


def test_user_profile_from_file(tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text("name: board\nflash: 512KiB\nram: 96KiB\nram_reserved: 0\nweight_bits: [2, 4, 8]\n"
                    "activation_bits: 8\nmacs: 5M\n")
    device = load_device(path)
    assert device.flash_bytes == 512 * 1024 and device.ram_reserved_bytes == 0 and device.activation_bits == (8,)
    assert device.macs == 5_000_000 and device.source == str(path)


@pytest.mark.parametrize(("text", "needle"), [
    ("name: b\nweight_bits: [8]\n", "field 'activation_bits' is required"),
    ("name: b\nflash: -1MB\nweight_bits: [8]\nactivation_bits: [8]\n", "flash: '-1MB' must be positive"),
    ("name: b\nram: 10 furlongs\nweight_bits: [8]\nactivation_bits: [8]\n", "ram: unknown unit"),
    ("name: b\nweight_bits: [0, 8]\nactivation_bits: [8]\n", "weight_bits: expected a non-empty list"),
    ("name: b\nweight_bits: []\nactivation_bits: [8]\n", "weight_bits: expected a non-empty list"),
    ("name: b\nflsh: 1MB\nweight_bits: [8]\nactivation_bits: [8]\n", "unknown field(s) ['flsh']"),
    ("name: b\nram: 64KB\nram_reserved: 64KB\nweight_bits: [8]\nactivation_bits: [8]\n", "'ram_reserved'"),
    ("name: b\nlatency_backend: tflite\nweight_bits: [8]\nactivation_bits: [8]\n", "'latency_backend'"),
    ("name: b\nc_target: cortex-a53\nweight_bits: [8]\nactivation_bits: [8]\n", "'c_target' must be one of"),
    ("name: b\nc_target: cortex-m4\nweight_bits: [3, 8]\nactivation_bits: [8]\n", "run [2, 4, 8]-bit weights only"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_invalid_profiles_name_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_device(path)
    assert str(path) in str(err.value) and needle in str(err.value)


@pytest.mark.parametrize(("text", "needle"), [
    (billion_laughs() + "name: b\nweight_bits: *l8\nactivation_bits: [8]\n", "more than 10000 values"),
    ("name: b\nnotes: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32"),
    ("name: b\n" + "#" * MAX_BYTES + "\n", f"larger than {MAX_BYTES} bytes"),
    ("name: b\nflash: " + "9" * 50_000 + "furlongs\nweight_bits: [8]\nactivation_bits: [8]\n",
     "flash: unknown unit 'furlongs'"),
    ("name: b\nweight_bits: [" + ", ".join(["x" * 1000] * 50) + "]\nactivation_bits: [8]\n",
     "weight_bits: expected a non-empty list"),
    ("".join(f"{'x' * 900}{i}: 1\n" for i in range(50)) + "name: b\nweight_bits: [8]\nactivation_bits: [8]\n",
     "unknown field(s) ['xxxx"),
])
def test_hostile_profiles_are_refused_in_bounded_memory_with_one_short_line(tmp_path, text, needle):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as err:
            load_device(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert peak < 8 * 2**20 and needle in message and str(path) in message
    assert len(message) < 400 + len(str(path)) and "\n" not in message


def test_unknown_device_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown device 'cortex-m99'"):
        load_device("cortex-m99")
    with pytest.raises(FileNotFoundError):
        load_device(tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match="bundled profile 'esp32'.*flash"):
        load_device("esp32", overrides={"flash": "0"})


def test_command_line_budget():
    import argparse

    from cnncompress.plan.cli_args import add_budget_args, budget_from_args

    parser = argparse.ArgumentParser()
    add_budget_args(parser)
    device, budget = budget_from_args(parser.parse_args(["--device", "cortex-m7", "--flash", "128KB",
                                                         "--max-accuracy-drop", "0.5"]))
    assert device.name == "cortex-m7" and budget.flash_bytes == 128_000 and budget.ram_bytes == 512 * 1024
    assert budget.max_accuracy_drop == 0.5
    _, bare = budget_from_args(parser.parse_args(["--macs", "20M", "--latency", "2ms"]))
    assert bare.limits() == {"macs": 20_000_000, "latency_ms": 2.0}
    with pytest.raises(ValueError, match="give --device"):
        budget_from_args(parser.parse_args([]))
    with pytest.raises(ValueError, match="ram_bytes: unknown unit"):
        budget_from_args(parser.parse_args(["--ram", "3 apples"]))
