"""The command-line reference as markdown, rendered from the ``landscape`` argument parsers.

Each subcommand registered by :func:`landscape.cli.build_parser` becomes one section: its
description, its usage line and a table of its arguments (flags, choices, defaults and
help, as ``--help`` prints them). ``python scripts/docs/cli_reference.py`` prints the page.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """Make argparse wrap help at ``width`` columns, whatever the terminal."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """Inline code for a table cell (pipes escaped)."""
    return "`" + text.replace("|", "\\|") + "`"


def _flags(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if not action.option_strings:  # positional
        return _code(formatter._metavar_formatter(action, action.dest)(1)[0])
    if action.nargs == 0:
        return ", ".join(_code(s) for s in action.option_strings)
    metavar = formatter._format_args(action, action.dest.upper())
    return ", ".join(_code(f"{s} {metavar}") for s in action.option_strings)


def _default(action: argparse.Action) -> str:
    value = action.default
    if action.nargs == 0 or value in (None, argparse.SUPPRESS) or value == []:
        return ""
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    return _code(str(value))


def _help(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    text = formatter._expand_help(action) if action.help else ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        choices = ", ".join(_code(str(c)) for c in action.choices)
        text = f"{_cell(text)} (one of {choices})" if text else f"one of {choices}"
        return text
    return _cell(text)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def command_markdown(name: str, parser: argparse.ArgumentParser, summary: str) -> str:
    """One subcommand's section: description, usage and its arguments as a table."""
    formatter = parser._get_formatter()
    lines = [f"## `landscape {name}`", ""]
    if summary:
        lines += [f"*{summary[0].upper()}{summary[1:]}.*", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = {"options": "Options", "positional arguments": "Arguments"}.get(
            group.title or "", (group.title or "").capitalize()
        )
        lines += [f"**{title}**", ""]
        if group.description:
            lines += [" ".join(group.description.split()), ""]
        lines += ["| argument | default | description |", "|---|---|---|"]
        for action in actions:
            lines.append(
                f"| {_flags(action, formatter)} | {_default(action)} | {_help(action, formatter)} |"
            )
        lines.append("")
    if parser.epilog:
        lines += ["```text", parser.epilog.strip(), "```", ""]
    return "\n".join(lines)


def cli_markdown() -> str:
    """The whole command-line reference page."""
    import landscape.cli as cli

    with _columns(100):
        parser = cli.build_parser()
        subs = _subcommands(parser)
        summaries = _summaries(parser)
        intro = cli.__doc__ or ""
        exit_codes = intro[intro.find("Exit codes") :].strip() if "Exit codes" in intro else ""
        lines = [
            "# Command line",
            "",
            "`landscape COMMAND [OPTIONS]` (also `python -m landscape`, or under `torchrun ...",
            "-m landscape`). This page is generated from the argument parsers by the docs",
            "build, so it lists exactly what `landscape COMMAND --help` prints; the guides",
            "explain what the options do.",
            "",
            "| command | what it does |",
            "|---|---|",
            *[f"| [`{n}`](#landscape-{n}) | {_cell(summaries.get(n, ''))} |" for n in subs],
            "",
            "Global options: `landscape --version`, `-v`/`--verbose` (`-vv` for debug logging",
            "and full tracebacks).",
            "",
        ]
        if exit_codes:
            lines += [" ".join(exit_codes.split()).replace("Exit codes:", "**Exit codes:**"), ""]
        for name, sub in subs.items():
            lines.append(command_markdown(name, sub, summaries.get(name, "")))
    return "\n".join(lines)


if __name__ == "__main__":
    print(cli_markdown())
