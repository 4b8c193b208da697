"""Shared CLI plumbing: options every command takes, model/data resolution, output and errors.

Each subcommand module exposes ``register(subparsers)``; its handler returns a JSON-able dict that
is printed as JSON with ``--json`` or rendered by the command's own ``render`` for humans.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..artifacts import load_artifact
from ..data import DATASETS, ImageSet, is_factory_ref, load_dataset, load_user_dataset
from ..models import ModelSpec, default_dataset, default_input_shape
from ..utils import shorten

EXIT_OK = 0
EXIT_ERROR = 1  # bad input, missing file, wrong checkpoint: a one-line reason on stderr
EXIT_USAGE = 2  # argparse's own code for bad command lines
EXIT_INFEASIBLE = 3  # a budget that cannot be met (distinct from a crash)

Handler = Callable[[argparse.Namespace], dict[str, Any]]


class CLIError(Exception):
    """An expected failure with a message for the user (exit code ``code``)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bars or log lines (the result is still printed)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


class _RenamedOption(argparse.Action):
    """An option that moved to another name: using it is a usage error that names the new option."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", why: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.new, self.why = new, why

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        example = f" (here: {self.new} {values})" if values else ""
        parser.error(f"{option_string} was renamed {self.new}{example}; {self.why}")


#: what a device profile is called on the command line; the torch device has a name of its own
TORCH_DEVICE_OPTION = "--torch-device"


def add_torch_device_arg(parser: argparse.ArgumentParser, what: str = "training and evaluation") -> None:
    """``--torch-device cpu|cuda[:N]``; ``--device`` means a device profile (compress, demo), so here it is
    refused with a usage error that names the new option."""
    parser.add_argument(TORCH_DEVICE_OPTION, default="cpu", metavar="DEVICE",
                        help=f"torch device for {what}: cpu, cuda or cuda:N")
    parser.add_argument("--device", action=_RenamedOption, new=TORCH_DEVICE_OPTION,
                        why="--device names a device profile (cortex-m7, ...) in compress and demo")


def add_model_args(parser: argparse.ArgumentParser, weights_required: bool = False) -> None:
    parser.add_argument("--model", required=True,
                        help="zoo name (resnet20, lenet5, ...), 'pkg.module:factory' or 'file.py:factory'")
    parser.add_argument("--weights", required=weights_required,
                        help="checkpoint: a cnncompress .pt or a (DataParallel) state_dict file")


#: where the parsed arguments keep ``--dataset`` exactly as typed: the only dataset factory ever imported
TYPED_DATASET = "_dataset_typed"


def dataset_choice(text: str) -> str:
    """argparse type of ``--dataset``: a built-in dataset's name or a factory ``file.py:fn`` / ``pkg.mod:fn``."""
    if text in DATASETS or (is_factory_ref(text) and text.rpartition(":")[0] and text.rpartition(":")[2]):
        return text
    raise argparse.ArgumentTypeError(f"unknown dataset {text!r}: choose from {', '.join(sorted(DATASETS))}, "
                                     "or name your own as path/to/data.py:function")


class _TypedDataset(argparse.Action):
    """Stores ``--dataset`` and notes that the user typed it (a value filled in later from a file is not)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, TYPED_DATASET, values)


def add_dataset_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--dataset", type=dataset_choice, action=_TypedDataset, metavar="NAME|FILE.py:FN",
                        help=f"{help_text}: {', '.join(sorted(DATASETS))}, or your own data as "
                             "path/to/data.py:build (build(split) returns a torch Dataset or DataLoader of "
                             "float images and int labels; see README)")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    add_dataset_option(parser, "default: the model's usual dataset")
    parser.add_argument("--data-dir", help="folder with the dataset files (else $CNNCOMPRESS_DATA, ../shared/data)")
    parser.add_argument("--download", action="store_true", help="fetch missing dataset files from the official URLs")


def resolve_model(args: argparse.Namespace) -> tuple[nn.Module, ModelSpec]:
    """Build ``--model``, loading ``--weights`` when given: any file cnncompress writes (see
    :func:`~cnncompress.artifacts.load_artifact`; the file's own zoo spec wins)."""
    spec = ModelSpec(args.model)
    if getattr(args, "weights", None):
        loaded = load_artifact(args.weights, spec)
        model, spec = loaded.model, loaded.spec
    else:
        model = spec.build()
    return model.eval(), spec


def dataset_name(args: argparse.Namespace, spec: ModelSpec) -> str:
    name = getattr(args, "dataset", None) or default_dataset(spec.factory)
    if name is None:
        raise CLIError(f"--dataset is required for model {spec.factory!r}")
    return name


def load_split(args: argparse.Namespace, name: str, split: str) -> ImageSet:
    """Split ``split`` of a built-in dataset, or of a user's dataset factory named on this command line.

    A factory is imported and called only when ``name`` is exactly the ``--dataset`` the user typed, never
    when it was read from a file (a checkpoint's ``dataset`` is plain text, shown but not trusted).
    Each split of a factory is loaded once per command.
    """
    if not is_factory_ref(name):
        return load_dataset(name, split, data_dir=getattr(args, "data_dir", None),
                            download=getattr(args, "download", False))
    if name != getattr(args, TYPED_DATASET, None):
        raise CLIError(f"the file names the dataset factory {name!r}; cnncompress never imports or calls a name "
                       f"read from a file. If you trust that code, name it yourself: --dataset {name!r}")
    loaded = vars(args).setdefault("_user_splits", {})
    if (name, split) not in loaded:
        progress = not (getattr(args, "quiet", False) or getattr(args, "json", False))
        loaded[name, split] = load_user_dataset(name, split, progress=progress)
    return loaded[name, split]


def check_output_file(path: str | os.PathLike, option: str = "--output") -> Path:
    """Refuse an output file that could not be written, before any work goes into producing it."""
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{option} {_quoted(target)} is a directory; give a file path")
    _check_writable_folder(target.parent, target, option)
    return target


def check_output_dir(path: str | os.PathLike, option: str = "--output") -> Path:
    """Refuse an output directory that could not be created or written, before any work goes into it."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise CLIError(f"{option} {_quoted(target)} exists and is not a directory")
    _check_writable_folder(target, target, option)
    return target


def _check_writable_folder(folder: Path, target: Path, option: str) -> None:
    """``folder`` must be a writable directory, or be missing below one (writing creates it)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise CLIError(f"cannot write {option} {_quoted(target)}: {_quoted(existing)} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write {option} {_quoted(target)}: no write permission in {_quoted(existing)}")


def _quoted(path: Path) -> str:
    return repr(shorten(path))


def input_shape(args: argparse.Namespace, spec: ModelSpec) -> tuple[int, int, int]:
    """``--input-shape C,H,W`` if given, else the zoo default, else the dataset's shape."""
    text = getattr(args, "input_shape", None)
    if text:
        try:
            dims = tuple(int(v) for v in text.split(","))
        except ValueError:
            dims = ()
        if len(dims) != 3 or min(dims) <= 0:
            raise CLIError(f"--input-shape must be C,H,W with positive integers, got {text!r}")
        return dims  # type: ignore[return-value]
    shape = default_input_shape(spec.factory)
    if shape is None:
        dataset = getattr(args, "dataset", None)
        if dataset is None:
            raise CLIError("give --input-shape C,H,W (or --dataset) for a user model")
        if is_factory_ref(dataset):
            return load_split(args, dataset, "test").info.input_shape  # type: ignore[return-value]
        return DATASETS[dataset].input_shape
    return shape


def emit(args: argparse.Namespace, result: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """Print the result on stdout, as JSON or as the human rendering; ``--quiet`` never hides it.

    Under torchrun rank 0 alone prints it."""
    if not distributed.is_main():
        return
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=_jsonable)
        sys.stdout.write("\n")
    else:
        print(render(result))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


_NAMES_DEFAULT = re.compile(r"\(default\b|\bdefault:", re.IGNORECASE)  # help that states its default itself


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help of every option of every subcommand that has a default and
    does not name it already (flags that are off and options without a default are left alone)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                show_defaults(sub)
            continue
        default, text = action.default, action.help
        unset = default is None or default is False or default in ("", argparse.SUPPRESS)  # 0 and 0.0 are shown
        if not action.option_strings or text == argparse.SUPPRESS or unset or _NAMES_DEFAULT.search(text or ""):
            continue
        action.help = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def partial_epochs(path: str | os.PathLike) -> int | None:
    """Finished epochs held by a training checkpoint ``*.partial`` (None: no such file or unreadable)."""
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["epoch"])
    except Exception:  # a damaged file is reported by fit itself on --resume
        return None


def refuse_stale_partial(path: str | os.PathLike, resume: bool) -> None:
    """Without ``--resume``, an epoch checkpoint left by an interrupted run would be overwritten: refuse."""
    if resume or not os.path.exists(path):
        return
    epochs = partial_epochs(path)
    held = f"holds {epochs} finished epoch{'s' * (epochs != 1)}" if epochs is not None else "exists"
    raise CLIError(f"{_quoted(Path(path))} {held} of an interrupted run; pass --resume to continue it, "
                   "or remove the file to start over")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet or not distributed.is_main() else logging.INFO  # stderr: --json keeps them
    if args.verbose:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr, beside JSON on stdout; off with --quiet or without a terminal."""
    return not args.quiet and sys.stderr.isatty() and distributed.is_main()


def format_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        cols = zip(row, widths, strict=True)
        lines.append("  ".join(c.rjust(w) if j and _numeric(c) else c.ljust(w) for c, w in cols))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("%", "").isdigit()
