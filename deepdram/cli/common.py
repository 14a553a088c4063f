"""Helpers every `deepdram` subcommand shares: argument types, the help formatter, status lines."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

PROG = "deepdram"


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=28)


def say(args: argparse.Namespace, message: str) -> None:
    """Print a status line to stderr unless --quiet."""
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr)


def add_parser(sub, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand parser with the project's formatter and no abbreviations."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=formatter,
                          allow_abbrev=False)
