"""The ``landscape`` command line: thin argparse subcommands over the library.

Each subcommand lives in its own module ``landscape/cli/<name>.py`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int``.  Parsing happens here; the work happens in typed library
functions that the subcommand calls.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from landscape._version import __version__

# The order `landscape --help` lists subcommands in; modules not named here follow.
_ORDER = ("demo", "train", "surface", "hessian", "compare", "plot", "report")


def _command_modules() -> list[str]:
    here = importlib.import_module("landscape.cli")
    found = [m.name for m in pkgutil.iter_modules(here.__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
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
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # Errors the library raises for bad user input: one line, no traceback.
        if args.verbose >= 2:
            raise
        print(f"landscape {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"landscape {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
