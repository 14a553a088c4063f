"""`deepdram simulate`: the FE oracle of a design space on a table of designs."""

from __future__ import annotations

import argparse
import sys

from deepdram.cli.common import add_parser, int_at_least, say
from deepdram.errors import InputError
from deepdram.spaces.lattice.constants import D_MAX, D_MIN, E_B, SIZE_COLUMNS, STRAIN, STRESS_COLUMNS
from deepdram.spaces.registry import NAMES as SPACES

DESCRIPTION = f"""\
Compute the properties of every design in a table with the design space's
FE oracle.

Lattice space (default): the effective elastic properties by the linear 2D
Timoshenko frame model (beam width 1 mm, depth 10 mm, E_b = {E_B:g} MPa,
nu_b = 0.3) under two load cases at {STRAIN:g} strain: stretching along
direction 1 (x) and along direction 2 (y), one edge clamped, the opposite edge
displaced.

By default each design is solved as a single unit cell (22.5 x 22.5 mm). With
--d1/--d2, or when the input table has d1 and d2 columns, each design is
solved as a D1 x D2 tiling: the cell repeated D1 times along x and D2 times
along y, neighbouring cells sharing their boundary nodes and beams. D1 and D2
must be even integers in {D_MIN}..{D_MAX}. Flags override table columns.

Input: a table with columns b00..b41 (0/1); other columns are copied through.
Every design is checked first (42 columns, entries 0 or 1, all 16 nodes
connected); error messages number the data rows from 0, header excluded.

Output: the input columns, then (tilings only) d1, d2, then
  E11, E22   Young's moduli along directions 1 and 2 divided by E_b
             (dimensionless)
  nu12       Poisson's ratio -eps22/eps11 in load case 1 (strain along x)
  nu21       Poisson's ratio -eps11/eps22 in load case 2 (strain along y)
  vm1, vm2   (with --stress) peak beam von Mises stress in load case 1 / 2,
             divided by E_b * {STRAIN:g}
Old E11..nu21, vm1, vm2 columns in the input are replaced. The output file is
written only when every design has been computed.

Peaks space (--space peaks): columns x, y in [-3, 3]; adds z = peaks(x, y).
"""

EPILOG = """\
Examples:
  deepdram simulate designs.csv -o props.csv
  deepdram simulate designs.parquet -o props.parquet --stress
  deepdram simulate designs.csv -o tiled.csv --d1 4 --d2 4
  deepdram simulate sized.parquet -o tiled.parquet   # sizes from d1, d2 columns
  deepdram simulate --space peaks points.csv -o heights.csv
"""


def add(sub) -> None:
    p = add_parser(sub, "simulate", "compute the properties of designs with the space's FE oracle "
                   "(lattice: E11, E22, nu12, nu21 of unit cells or tilings, peak stresses)", DESCRIPTION, EPILOG)
    p.add_argument("input", metavar="INPUT", help="design table, .csv or .parquet/.pq, with the design columns")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="output table, .csv or .parquet/.pq")
    p.add_argument("--space", choices=SPACES, default="lattice", help="design space (default: lattice)")
    p.add_argument("--d1", type=int, metavar="D1",
                   help=f"lattice: tile each design D1 times along direction 1 (even, {D_MIN}..{D_MAX}); needs --d2")
    p.add_argument("--d2", type=int, metavar="D2",
                   help=f"lattice: tile each design D2 times along direction 2 (even, {D_MIN}..{D_MAX}); needs --d1")
    p.add_argument("--stress", action="store_true", help="lattice: also output peak von Mises stresses vm1, vm2")
    p.add_argument("--chunk", type=int_at_least(1), default=1 << 16, metavar="N",
                   help="lattice unit cells solved per batch (default: 65536); bounds memory use")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=run)


def tiling_sizes(args: argparse.Namespace, df, n: int):
    """(d1, d2) int arrays of length n for a tiling run, or None for unit cells."""
    import numpy as np

    from deepdram.spaces.lattice.geometry import check_size

    if args.d1 is not None or args.d2 is not None:
        if args.d1 is None or args.d2 is None:
            raise InputError("--d1 and --d2 must be given together (the tiling is D1 x D2 cells)")
        check_size(args.d1, args.d2)
        return np.full(n, args.d1, dtype=np.int64), np.full(n, args.d2, dtype=np.int64)
    has = [c in df.columns for c in SIZE_COLUMNS]
    if not any(has):
        return None
    if not all(has):
        present, absent = (SIZE_COLUMNS if has[0] else SIZE_COLUMNS[::-1])
        raise InputError(f"{args.input}: the table has a {present} column but no {absent} column")
    sizes = []
    for c in SIZE_COLUMNS:
        col = df[c]
        if col.dtype.kind not in "iuf":
            raise InputError(f"{args.input}: column {c} must hold even integers in [{D_MIN}, {D_MAX}]")
        sizes.append(col.to_numpy())
    try:
        check_size(*sizes)
    except InputError as exc:
        raise InputError(f"{args.input}: {exc}") from None
    return sizes[0].astype(np.int64), sizes[1].astype(np.int64)


def run(args: argparse.Namespace) -> int:
    """Read designs, run the oracle, write inputs plus properties."""
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from deepdram.data.tables import read_table, table_format, write_table
    from deepdram.spaces.registry import get

    table_format(args.output)  # fail on a bad extension before any work
    space = get(args.space)
    df = read_table(args.input)
    try:
        designs = space.designs_of(df)
    except InputError as exc:
        raise InputError(f"{args.input}: {exc}") from None
    lattice = space.name == "lattice"
    if not lattice and (args.d1 is not None or args.d2 is not None or args.stress):
        raise InputError(f"--d1, --d2 and --stress are lattice options; the {space.name} space takes none")
    sizes = tiling_sizes(args, df, len(designs)) if lattice else None
    with tqdm(total=len(designs), unit="design", delay=2, file=sys.stderr, disable=args.quiet,
              dynamic_ncols=True) as bar:
        if lattice and sizes is None:
            from deepdram.spaces.lattice.fem import solve_cells

            r = solve_cells(designs, stress=args.stress, chunk=args.chunk, progress=bar.update)
            props, peak = r.properties, r.peak_vm
        else:
            cond = None if sizes is None else np.stack(sizes, axis=1)
            r = space.evaluate(designs, cond, extras=("vm",) if args.stress else (), progress=bar.update)
            props, peak = r.properties, r.extras.get("vm")
    computed = list(space.properties) + (list(STRESS_COLUMNS) if lattice else [])
    if sizes is not None:
        computed += list(SIZE_COLUMNS)
    out = df.drop(columns=[c for c in computed if c in df.columns])
    if space.binary:
        out = out.astype({c: "uint8" for c in space.variables})  # validated 0/1 above
    extra: dict[str, np.ndarray] = {}
    if sizes is not None:
        extra["d1"], extra["d2"] = sizes
    props = np.asarray(props, dtype=float)
    extra.update({c: props[:, k] for k, c in enumerate(space.properties)})
    if args.stress:
        peak = np.asarray(peak, dtype=float)
        extra.update({c: peak[:, k] for k, c in enumerate(STRESS_COLUMNS)})
    out = pd.concat([out, pd.DataFrame(extra, index=out.index)], axis=1)
    write_table(out, args.output)
    what = ("unit cell" if sizes is None else "tiling") if lattice else "design"
    say(args, f"wrote properties of {len(out)} {what}{'s' * (len(out) != 1)} to {args.output}")
    return 0
