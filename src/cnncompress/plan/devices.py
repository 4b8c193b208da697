"""Device profiles: the limits and kernel bit widths of a deployment target, from YAML.

Bundled profiles live in ``plan/devices/*.yaml`` (``list_devices()``); a user profile is any YAML
file with the same fields, read within the limits of :mod:`cnncompress.safe_yaml`. Fields: ``name``,
``description``, ``flash``, ``ram`` (RAM usable for activations), ``ram_total`` (informational),
``ram_reserved`` (scratch the runtime keeps; added to the predicted activation peak), ``macs``,
``latency``, ``latency_backend`` (how latency is measured on this host), ``weight_bits`` and
``activation_bits`` (widths the device's kernels support), ``notes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from ..safe_yaml import YamlInputError, load_yaml
from ..utils import brief, shorten
from .budget import Budget
from .units import parse_bytes, parse_count, parse_duration_ms

_BYTE_FIELDS = {"flash": "flash_bytes", "ram": "ram_bytes", "ram_total": "ram_total_bytes",
                "ram_reserved": "ram_reserved_bytes"}
_TEXT_FIELDS = ("name", "description", "latency_backend", "notes", "c_target")
_KNOWN = {*_BYTE_FIELDS, *_TEXT_FIELDS, "macs", "latency", "weight_bits", "activation_bits"}
LATENCY_BACKENDS = ("onnxruntime", "torch")
C_TARGETS = ("cortex-m4", "cortex-m7")  # cores the C export cross-compiles for (export.c.TARGETS less host)
C_WEIGHT_BITS = (2, 4, 8)  # widths the C kernels unpack


@dataclass(frozen=True)
class DeviceProfile:
    """A target's limits in base units and the bit widths its kernels run."""

    name: str
    weight_bits: tuple[int, ...]
    activation_bits: tuple[int, ...]
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    ram_total_bytes: int | None = None
    ram_reserved_bytes: int = 0
    macs: int | None = None
    latency_ms: float | None = None
    latency_backend: str | None = None
    c_target: str | None = None  # compress proves the fit on this core's firmware (export-c, QEMU)
    description: str = ""
    notes: str = ""
    source: str = ""

    def budget(self, max_accuracy_drop: float | str = 1.0, overrides: Mapping[str, Any] | None = None
               ) -> Budget:
        """The budget this device imposes, with per-field overrides (``{"flash": "128KB"}``) applied."""
        base = Budget(self.flash_bytes, self.ram_bytes, self.macs, self.latency_ms, max_accuracy_drop)
        return base.merge(overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["weight_bits"], out["activation_bits"] = list(self.weight_bits), list(self.activation_bits)
        return out


def list_devices() -> list[str]:
    """Names of the bundled device profiles."""
    folder = resources.files(__package__) / "devices"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_device(name_or_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> DeviceProfile:
    """A bundled profile by name or a user YAML file by path, with optional per-field overrides.

    Overrides use the YAML field names (``flash``, ``ram``, ``weight_bits``, ...) and are validated
    like the file itself, so a CLI ``--flash 128KB`` replaces just that field.
    """
    path = Path(name_or_path)
    if str(name_or_path) in list_devices():
        file = resources.files(__package__) / "devices" / f"{name_or_path}.yaml"
        source = f"bundled profile {name_or_path!r}"
    elif path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"device profile file not found: {path}")
        file, source = path, str(path)
    else:
        raise ValueError(f"unknown device {brief(str(name_or_path))}; bundled: {list_devices()}, or give a .yaml path")
    try:
        data = load_yaml(file)
    except OSError as exc:
        raise ValueError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except YamlInputError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    return device_from_mapping({**data, **dict(overrides or {})}, source)


def device_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> DeviceProfile:
    """Validate a profile mapping; every error names ``source`` and the field."""
    unknown = sorted(set(map(str, data)) - _KNOWN)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {brief(unknown)}; known: {sorted(_KNOWN)}")
    for key in ("name", "weight_bits", "activation_bits"):
        if data.get(key) is None:
            raise ValueError(f"{source}: field {key!r} is required")
    values: dict[str, Any] = {"source": source}
    try:
        for key in _TEXT_FIELDS:
            if data.get(key) is not None:
                values[key] = _text(key, data[key])
        for key, attr in _BYTE_FIELDS.items():
            if key == "ram_reserved" and data.get(key) == 0:
                values[attr] = 0  # no reserve is a valid choice, unlike a zero limit
            elif data.get(key) is not None:
                values[attr] = parse_bytes(data[key], key)
        if data.get("macs") is not None:
            values["macs"] = parse_count(data["macs"], "macs")
        if data.get("latency") is not None:
            values["latency_ms"] = parse_duration_ms(data["latency"], "latency")
        values["weight_bits"] = _bit_list("weight_bits", data["weight_bits"])
        values["activation_bits"] = _bit_list("activation_bits", data["activation_bits"])
    except ValueError as exc:  # the message names the field; shorten bounds the value it quotes
        raise ValueError(f"{source}: {shorten(exc, 300)}") from None
    _check_consistent(source, values)
    return DeviceProfile(**values)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or (key == "name" and not value.strip()):
        raise ValueError(f"{key}: expected text, got {brief(value)}")
    return value


def _bit_list(key: str, value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32 for b in items):
        raise ValueError(f"{key}: expected a non-empty list of integers in 1..32, got {brief(value)}")
    return tuple(sorted(set(items)))


def _check_consistent(source: str, values: dict[str, Any]) -> None:
    ram, reserved = values.get("ram_bytes"), values.get("ram_reserved_bytes", 0)
    if ram is not None and reserved >= ram:
        raise ValueError(f"{source}: field 'ram_reserved' ({reserved} B) leaves no RAM of 'ram' ({ram} B)")
    total = values.get("ram_total_bytes")
    if ram is not None and total is not None and ram > total:
        raise ValueError(f"{source}: field 'ram' ({ram} B) exceeds 'ram_total' ({total} B)")
    target = values.get("c_target")
    if target is not None and target not in C_TARGETS:
        raise ValueError(f"{source}: field 'c_target' must be one of {C_TARGETS}, got {brief(target)}")
    if target is not None and not set(values["weight_bits"]) <= set(C_WEIGHT_BITS):
        raise ValueError(f"{source}: field 'weight_bits' {list(values['weight_bits'])}: the C kernels of "
                         f"'c_target' run {list(C_WEIGHT_BITS)}-bit weights only")
    backend = values.get("latency_backend")
    if backend is not None and backend not in LATENCY_BACKENDS:
        raise ValueError(f"{source}: field 'latency_backend' must be one of {LATENCY_BACKENDS}, got {brief(backend)}")

