"""Command-line options for a device and per-field budget overrides, shared by planning commands.

``--device cortex-m7 --flash 128KB`` loads the profile and replaces its flash limit; without
``--device`` the fields alone form the budget. Values take the units of ``plan.units``.
"""

from __future__ import annotations

import argparse

from .budget import Budget
from .devices import DeviceProfile, list_devices, load_device

_FIELDS = (("flash", "flash limit, e.g. 256KB or 1MiB (KB = 1000 B, KiB = 1024 B)"),
           ("ram", "RAM limit for activations plus scratch, e.g. 64KiB"),
           ("macs", "multiply-accumulate limit per image, e.g. 20M"),
           ("latency", "batch-1 latency limit on this host (onnxruntime), e.g. 5ms"))


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--device``, ``--flash``, ``--ram``, ``--macs``, ``--latency`` and ``--max-accuracy-drop``."""
    parser.add_argument("--device", help=f"bundled profile ({', '.join(list_devices())}) or a .yaml file")
    for name, text in _FIELDS:
        parser.add_argument(f"--{name}", help=f"{text}; overrides the device's value")
    parser.add_argument("--max-accuracy-drop", default="1.0", help="tolerated top-1 drop in points (default 1.0)")


def budget_from_args(args: argparse.Namespace) -> tuple[DeviceProfile | None, Budget]:
    """The device (if any) and the budget it imposes with the command line's overrides applied."""
    overrides = {name: getattr(args, name, None) for name, _ in _FIELDS}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    device = load_device(args.device) if getattr(args, "device", None) else None
    drop = getattr(args, "max_accuracy_drop", 1.0)
    if device is None:
        if not overrides:
            raise ValueError("give --device or at least one of --flash, --ram, --macs, --latency")
        return None, Budget.from_mapping({**overrides, "max_accuracy_drop": drop})
    return device, device.budget(drop, overrides)
