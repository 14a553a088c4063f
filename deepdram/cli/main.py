"""Command-line interface: `deepdram sample | simulate | design | promote | tune`.

Heavy libraries (numpy, pandas, numba, mlflow, the FE solvers) are imported inside the command
functions, so `deepdram --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deepdram.cli import design, params, promote, sample, simulate, tune
from deepdram.cli.common import PROG, formatter
from deepdram.errors import DeepdramError

MAIN_DESCRIPTION = """\
deepdram: machine-learning inverse design of 3D-printed mechanical
metamaterials. Sample designs of a design space, compute their properties with
its FE oracle, design structures with target properties, promote and tune the
models behind the designer.

Lattice space (the default, Deep-DRAM): random-network lattices, with their
elastic properties from a 2D Timoshenko frame model.
A design is a unit cell of 4 x 4 nodes (7.5 mm spacing, 22.5 x 22.5 mm) holding
a subset of 42 candidate beams (12 horizontal, 12 vertical, 18 diagonal). Tables
store it as 42 columns b00..b41 of 0/1, one row per design. A design is valid
when all 16 nodes form one connected network. Tables are CSV (.csv) or Parquet
(.parquet, .pq), chosen by the file extension.
"""

MAIN_EPILOG = """\
Examples:
  deepdram sample --zg 3.5 -n 1000 --seed 0 -o designs.csv
  deepdram simulate designs.csv -o props.parquet --stress
  deepdram simulate designs.csv -o tiled.csv --d1 4 --d2 4

Run 'deepdram COMMAND --help' for the options of one command. Invalid input is
reported as one line 'deepdram: error: ...' with exit status 2, and no output
file is written.
"""


COMMANDS = (sample, simulate, design, promote, tune, params)


def _version() -> str:
    """Installed package version, or 'unknown'."""
    try:
        from importlib.metadata import version

        return version("deepdram")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for `deepdram` and its subcommands."""
    parser = argparse.ArgumentParser(prog=PROG, description=MAIN_DESCRIPTION, epilog=MAIN_EPILOG,
                                     formatter_class=formatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `deepdram` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DeepdramError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
