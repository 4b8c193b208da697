"""``cnncompress`` command line: a thin layer over the Python API.

Exit codes: 0 success, 1 an error with a one-line reason on stderr, 2 bad usage,
3 a budget that cannot be met, 130 interrupted. ``--verbose`` adds the traceback of an error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..utils import shorten
from .common import EXIT_ERROR, CLIError, add_common, setup_logging

# Each module has register(subparsers); adding a command means adding its module here.
COMMAND_MODULES = ("basic", "prune", "encode", "quantize", "compress", "export_c")

# Exceptions whose message is written for the user; any other (an IndexError, ...) is reported with its
# type name, for a bug report. Either way one line, exit 1; --verbose logs the traceback.
USER_MESSAGES = (OSError, ValueError, TypeError, RuntimeError, FloatingPointError)
MAX_MESSAGE = 1000  # characters of an error line: a huge user value must not flood the terminal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnncompress",
        description="Compress trained CNNs to fit devices: prune, quantize, encode, export, verify.")
    parser.add_argument("--version", action="version", version=f"cnncompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub, add_common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args)
    try:
        return int(args.handler(args) or 0)
    except CLIError as exc:
        return _report(args.command, str(exc), exc.code)
    except BrokenPipeError:  # e.g. `cnncompress profile --json | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"cnncompress {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        logging.getLogger(__name__).debug("failure", exc_info=True)
        return _report(args.command, _describe(exc, args.command), EXIT_ERROR)


def _describe(exc: Exception, command: str) -> str:
    """The user-facing reason for an exception a command let through."""
    if isinstance(exc, MemoryError):
        return f"out of memory while running {command}" + (f": {exc}" if str(exc) else "")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {shorten(exc.filename)!r}" if exc.filename is not None else "")
    if isinstance(exc, USER_MESSAGES):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _report(command: str, message: str, code: int) -> int:
    """Print ``message`` as one bounded line on stderr and return the exit code."""
    print(f"cnncompress {command}: error: {shorten(' '.join(message.split()), MAX_MESSAGE)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
