"""`deepdram sample`: random valid designs of a design space, seeded."""

from __future__ import annotations

import argparse

from deepdram.cli.common import add_parser, int_at_least, say
from deepdram.spaces.lattice.constants import ZG_VALUES
from deepdram.spaces.registry import NAMES as SPACES

ZG_TEXT = ", ".join(f"{z:g}" for z in ZG_VALUES)

DESCRIPTION = f"""\
Draw N distinct valid designs uniformly at random.

Lattice space (default): one mean nodal connectivity Z_g per call: each design
has exactly 8 * Z_g beams (Z_g * 16 nodes / 2), chosen uniformly among the 42
candidates; designs whose 16 nodes are not all connected are rejected and
redrawn. Supported Z_g: {ZG_TEXT} (20, 24, 28, 32, 36 beams).

Peaks space (--space peaks): points uniform in [-3, 3]^2 (columns x, y).

Composite space (--space composite): the left halves (x00..x31, 1 stiff,
0 soft) of 8 x 8 stiff/soft composites with exactly --soft-fraction x 32 soft
cells, uniform among those designs; a soft_count column follows.

The same --seed gives the same file.

Output columns (lattice):
  b00..b41   beam present (1) or absent (0), uint8, in the canonical beam order
             (0-11 horizontal, 12-23 vertical, 24-41 diagonals)
  zg         the connectivity Z_g of the row
"""

EPILOG = """\
Examples:
  deepdram sample --zg 3.5 -n 1000 --seed 0 -o designs.csv
  deepdram sample --zg 2.5 -n 100000 --seed 1 -o data/zg25.parquet
  deepdram sample --space peaks -n 100 -o points.csv
  deepdram sample --space composite --soft-fraction 0.25 -n 1000 --seed 0 -o d.csv
"""


def add(sub) -> None:
    p = add_parser(sub, "sample", "draw random valid designs (lattice: with a given mean connectivity Z_g)",
                   DESCRIPTION, EPILOG)
    p.add_argument("--space", choices=SPACES, default="lattice", help="design space (default: lattice)")
    p.add_argument("--zg", type=float, metavar="ZG", help=f"lattice: mean nodal connectivity Z_g, one of {ZG_TEXT}")
    p.add_argument("--soft-fraction", dest="soft_fraction", type=float, metavar="F",
                   help="composite: share of soft cells, a multiple of 1/32, e.g. 0.25 (8 of the 32)")
    p.add_argument("-n", dest="n", type=int_at_least(1), required=True, metavar="N",
                   help="number of distinct designs to draw")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed, an integer >= 0 (default: 0)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="output table, .csv or .parquet/.pq")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw random valid designs and write them."""
    from deepdram.data.tables import table_format, write_table
    from deepdram.errors import InputError
    from deepdram.spaces.registry import get

    table_format(args.output)  # fail on a bad extension before any work
    space = get(args.space)
    if space.name == "lattice":
        if args.zg is None:
            raise InputError("--zg is required for the lattice space (the mean connectivity of the designs)")
        if getattr(args, "soft_fraction", None) is not None:
            raise InputError("--soft-fraction is a composite option; the lattice space takes none")
        from deepdram.spaces.lattice.geometry import beams_for_zg

        designs = space.sample(args.n, args.seed, zg=args.zg)
        df = space.frame(designs, zg=float(args.zg))
        what = f" (Z_g = {args.zg:g}, {beams_for_zg(args.zg)} beams)"
    else:
        if args.zg is not None:
            raise InputError(f"--zg is a lattice option; the {space.name} space takes none")
        designs = space.sample(args.n, args.seed, **sample_options(space, args))
        df = space.frame(designs)
        what = ""
        if space.name == "composite":
            df["soft_count"] = (space.n_variables - designs.sum(axis=1)).astype("int64")
            what = f" ({int(df['soft_count'].iloc[0])} of {space.n_variables} cells soft)"
    write_table(df, args.output)
    say(args, f"wrote {len(df)} designs{what} to {args.output}")
    return 0


def sample_options(space, args) -> dict:
    """Space-specific sampling options given on the command line."""
    from deepdram.errors import InputError

    fraction = getattr(args, "soft_fraction", None)
    if space.name == "composite":
        if fraction is None:
            raise InputError("--soft-fraction is required for the composite space (the share of soft cells, "
                             "e.g. 0.25)")
        from deepdram.spaces.composite.space import soft_count_of

        return {"soft_count": soft_count_of(fraction, "--soft-fraction")}
    if fraction is not None:
        raise InputError(f"--soft-fraction is a composite option; the {space.name} space takes none")
    return {}
