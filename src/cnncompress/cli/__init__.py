"""``cnncompress`` command line: a thin layer over the Python API.

Exit codes: 0 success, 1 an error with a one-line reason on stderr, 2 bad usage,
3 a budget that cannot be met, 130 interrupted. ``--verbose`` adds the traceback of an error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import shlex
import sys

from tqdm.std import tqdm

from .. import __version__, distributed
from ..utils import shorten
from .common import EXIT_ERROR, CLIError, add_common, setup_logging, show_defaults

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
    show_defaults(parser)
    return parser


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        distributed.init_from_env(getattr(args, "torch_device", None) or "cpu")  # under torchrun: join the ranks
    except (RuntimeError, ValueError) as exc:
        return _report(args.command, f"cannot join the torchrun process group: {exc}", EXIT_ERROR)
    setup_logging(args)
    try:
        return int(args.handler(args) or 0)
    except distributed.PeerFailed as exc:  # another rank failed and said why; this one only stops
        return _report(args.command, f"stopped because {exc}", EXIT_ERROR)
    except CLIError as exc:
        return _report(args.command, str(exc), exc.code)
    except BrokenPipeError:  # e.g. `cnncompress profile --json | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        _interrupted(args, argv)
        return EXIT_INTERRUPTED
    except Exception as exc:
        logging.getLogger(__name__).debug("failure", exc_info=True)
        return _report(args.command, _describe(exc, args.command), EXIT_ERROR)
    finally:
        distributed.shutdown()


def _interrupted(args: argparse.Namespace, argv: list[str]) -> None:
    """Say on a line of its own what an interrupted command saved and how to continue it.

    A command that can resume sets ``on_interrupt(args, resume_command) -> str``; the resume command is the
    command line as typed, with ``--resume`` added when it lacks it.
    """
    for bar in list(getattr(tqdm, "_instances", ())):  # bars the interrupt left open: close them (leave=False
        with contextlib.suppress(Exception):  # ones clear their line) so the message starts a line of its own
            bar.close()
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")  # whatever is still drawn on this line goes; the message replaces it
    resume = shlex.join(["cnncompress", *argv, *([] if "--resume" in argv else ["--resume"])])
    describe = getattr(args, "on_interrupt", None)
    detail = ""
    if describe is not None:
        try:
            detail = "; " + describe(args, resume)
        except Exception:  # the interrupt is the news: a failed look at the files must not hide it
            logging.getLogger(__name__).debug("describing the interrupted run failed", exc_info=True)
    print(f"cnncompress {args.command}: interrupted (exit {EXIT_INTERRUPTED}){detail}", file=sys.stderr, flush=True)


def _describe(exc: Exception, command: str) -> str:
    """The user-facing reason for an exception a command let through."""
    if distributed.active() and isinstance(exc, RuntimeError) and distributed.is_peer_loss(exc):
        return (f"lost contact with another rank, which failed or was stopped (its own message says why); "
                f"the run can continue with --resume ({shorten(exc)})")
    if isinstance(exc, MemoryError):
        return f"out of memory while running {command}" + (f": {exc}" if str(exc) else "")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {shorten(exc.filename)!r}" if exc.filename is not None else "")
    if isinstance(exc, USER_MESSAGES):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _report(command: str, message: str, code: int) -> int:
    """Print ``message`` as one bounded line on stderr and return the exit code (naming the rank under torchrun)."""
    where = f" on {distributed.describe()}" if distributed.describe() else ""
    print(f"cnncompress {command}: error{where}: {shorten(' '.join(message.split()), MAX_MESSAGE)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
