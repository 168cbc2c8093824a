"""The ``landscape`` command line: thin argparse subcommands over the library.

Each subcommand lives in its own module ``landscape/cli/<name>.py`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int``.  Parsing happens here; the work happens in typed library
functions that the subcommand calls.

Exit codes: 0 done; 2 a user error (bad option, missing, corrupt or refused file, an
output that cannot be written, a model that fails on the data given to it), reported as
one line ``landscape CMD: error: ...`` on stderr, never a traceback (``-vv`` shows it);
3 training stopped at a non-finite loss (the run folder keeps the checkpoints written
before); 130 interrupted (Ctrl-C; the output files hold what was finished).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import NoReturn

from landscape._version import __version__

# The order `landscape --help` lists subcommands in; modules not named here follow.
_ORDER = (
    "demo",
    "train",
    "surface",
    "hessian",
    "compare",
    "correlate",
    "sweep",
    "connect",
    "plot",
    "report",
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``PROG: error: MESSAGE (...)``."""

    def error(self, message: str) -> NoReturn:
        """Print the message on one line (no usage block) and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(exc: BaseException) -> str:
    """The exception as one line; an ``OSError`` as ``FILE: reason``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where != "" else exc.strerror
    else:
        text = str(exc)
        if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
            text = exc.args[0]  # not its repr, quotes and all
    return " ".join(text.split()) or type(exc).__name__


def _command_modules() -> list[str]:
    here = importlib.import_module("landscape.cli")
    found = [m.name for m in pkgutil.iter_modules(here.__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = _Parser(
        prog="landscape",
        description="Loss landscapes, curvature and sharpness of PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"sharpscape {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _command_modules():
        module = importlib.import_module(f"landscape.cli.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``landscape`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except FloatingPointError as exc:
        # Training stopped at a non-finite loss (landscape.training.NonFiniteLoss).
        if args.verbose >= 2:
            raise
        print(f"landscape {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 3
    except (ValueError, KeyError, OSError) as exc:
        # Errors the library raises for bad user input, and files the system refuses
        # (missing, unreadable, unwritable): one line, no traceback.
        if args.verbose >= 2:
            raise
        print(f"landscape {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"landscape {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Anything else, most often the user's own model failing on the user's data (a
        # torch RuntimeError, a TypeError of its forward): its first line, not a traceback.
        if args.verbose >= 2:
            raise
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        print(
            f"landscape {args.command}: error: {text} (-vv shows the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
