"""Small shared helpers: atomic file writes, seeding, human-readable units."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import platform
import random
import reprlib
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed

# A parameter attribute that the training loop honours: weight decay would shrink such a parameter
# toward zero (learned quantizer step sizes), so it trains in a group without decay.
NO_WEIGHT_DECAY = "no_weight_decay"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash mid-write therefore never leaves a truncated artifact where a good one was expected.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (on rank 0 only under torch.distributed: one writer per file)."""
    if not distributed.is_main():
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_result(stem: str | os.PathLike, result: Mapping[str, Any], markdown: str) -> None:
    """Write a benchmark's ``stem.json`` (the figures) and ``stem.md`` (their table), each atomically."""
    stem = Path(stem)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown)


def torch_save_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file so readers never see a partial checkpoint (rank 0 only)."""
    if not distributed.is_main():
        return
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def cpu_name() -> str:
    """The processor's model name, for the machine line of benchmark results."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def command_line() -> str:
    """This process's command line, quoted so that it can be pasted back into a shell (empty args too)."""
    return shlex.join(["python", *sys.argv])


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_finite(model: nn.Module, action: str) -> None:
    """Refuse a model holding NaN/inf in a parameter or buffer, naming the tensor.

    Such a model otherwise passes silently through evaluation, pruning and export, and the damage
    surfaces far away (a sensitivity table blamed for NaN, an exported file that predicts nothing).
    """
    tensors = [("weight", *item) for item in model.named_parameters()]
    tensors += [("buffer", *item) for item in model.named_buffers()]
    for kind, name, tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"model {kind} {name!r} holds {bad} non-finite values (NaN/inf); "
                             f"refusing to {action} it")


def per_layer(names: Iterable[str], value: Any, what: str, cast: Callable[[Any], Any],
              valid: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """``value`` for every layer in ``names``, or a ``{layer: value}`` mapping over known layers, validated.

    One rule for every per-layer option (sparsity, bits, ...): unknown layer names and out-of-range
    values are refused with a message naming them.
    """
    names = list(names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"no {what} layer named {', '.join(unknown)}; layers: {', '.join(names)}")
        chosen = {name: cast(v) for name, v in value.items()}
    else:
        chosen = dict.fromkeys(names, cast(value))
    for name, v in chosen.items():
        if not valid(v):
            raise ValueError(f"{what} of {name} must be {expected}, got {v}")
    return chosen


def _brief_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 2, 4, 4, 4, 4
    short.maxstring, short.maxlong, short.maxother = 60, 40, 60
    return short


_BRIEF = _brief_repr()


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, never building the whole repr of a huge value.

    For user values in error messages: a message must stay one readable line whatever the input.
    """
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shorten(value: object, limit: int = 80) -> str:
    """``value`` as text on one line, its middle cut out past ``limit`` characters (head and tail both
    inform): an error message never echoes a huge value from a user or a file."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = f"{text[:(limit - 5) // 2]} ... {text[-((limit - 5) // 2):]}"
    return text


def import_callable(ref: str, what: str) -> Callable[..., Any]:
    """The callable ``ref`` names, ``path/to/file.py:name`` or ``package.module:name``; ``what`` says what it
    is for in errors ("model", "dataset factory"). This imports and runs code: pass only a name the user gave."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr:
        raise ValueError(f"{what} {ref!r} must be 'path/to/file.py:function' or 'package.module:function'")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{what} file {path} does not exist (from {ref!r})")
        name = f"cnncompress_user_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {path} as a Python module (from {what} {ref!r})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ValueError(f"cannot import module {target!r} for {what} {ref!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not callable(found):
        raise ValueError(f"{what} {ref!r}: {target} has no callable named {attr!r}")
    return found
