"""``cnncompress`` command line: a thin layer over the Python API.

Exit codes: 0 success, 1 an error with a one-line reason on stderr, 2 bad usage,
3 a budget that cannot be met.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from .common import EXIT_ERROR, CLIError, add_common, setup_logging

# Each module has register(subparsers); adding a command means adding its module here.
COMMAND_MODULES = ("basic", "prune", "encode", "quantize", "compress")


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
        print(f"cnncompress {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except (FileNotFoundError, ValueError, TypeError, RuntimeError, FloatingPointError) as exc:
        logging.getLogger(__name__).debug("failure", exc_info=True)
        print(f"cnncompress {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. `cnncompress profile --json | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"cnncompress {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
