"""Command-line interface: `deepdram sample` and `deepdram simulate`.

Heavy libraries (numpy, pandas, numba, the FE solvers) are imported inside the command
functions, so `deepdram --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from deepdram.constants import (
    BIT_COLUMNS,
    D_MAX,
    D_MIN,
    E_B,
    PROPERTY_COLUMNS,
    SIZE_COLUMNS,
    STRAIN,
    STRESS_COLUMNS,
    ZG_VALUES,
)
from deepdram.errors import DeepdramError, InputError

PROG = "deepdram"
ZG_TEXT = ", ".join(f"{z:g}" for z in ZG_VALUES)

MAIN_DESCRIPTION = """\
Deep-DRAM random-network mechanical metamaterials: sample lattice designs and
compute their elastic properties with a 2D Timoshenko frame model.

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

SAMPLE_DESCRIPTION = f"""\
Draw N distinct valid designs uniformly at random for one mean nodal
connectivity Z_g: each design has exactly 8 * Z_g beams (Z_g * 16 nodes / 2),
chosen uniformly among the 42 candidates; designs whose 16 nodes are not all
connected are rejected and redrawn. The same --seed gives the same file.

Supported Z_g: {ZG_TEXT} (20, 24, 28, 32, 36 beams).

Output columns:
  b00..b41   beam present (1) or absent (0), uint8, in the canonical beam order
             (0-11 horizontal, 12-23 vertical, 24-41 diagonals)
  zg         the connectivity Z_g of the row
"""

SAMPLE_EPILOG = """\
Examples:
  deepdram sample --zg 3.5 -n 1000 --seed 0 -o designs.csv
  deepdram sample --zg 2.5 -n 100000 --seed 1 -o data/zg25.parquet
"""

SIMULATE_DESCRIPTION = f"""\
Compute the effective elastic properties of every design in a table with the
linear 2D Timoshenko frame model (beam width 1 mm, depth 10 mm, E_b = {E_B:g} MPa,
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
"""

SIMULATE_EPILOG = """\
Examples:
  deepdram simulate designs.csv -o props.csv
  deepdram simulate designs.parquet -o props.parquet --stress
  deepdram simulate designs.csv -o tiled.csv --d1 4 --d2 4
  deepdram simulate sized.parquet -o tiled.parquet   # sizes from d1, d2 columns
"""


DESIGN_DESCRIPTION = f"""\
Inverse design (Deep-DRAM): find lattices whose D1 x D2 tiling has the target
properties, with the champion models of the registry (deepdram-generator,
deepdram-size-agnostic, deepdram-forward; run `make repro` first).

  1. generate N candidate designs from the generator (target + N(0, 1) latent
     samples; beam present where its probability > 0.5);
  2. drop invalid (disconnected) and duplicate designs;
  3. predict the tiling's properties with the size-agnostic model (D1 = D2 = 1:
     a single unit cell, the unit-cell model) and accept designs whose MSE to
     the target is <= the threshold. MSE = mean over E11/Eb, E22/Eb, nu12, nu21
     of the squared errors, all dimensionless (the paper's threshold is 0.1);
  4. verify the K best by FE (properties and peak von Mises in both load cases,
     divided by E_b * {STRAIN:g});
  5. rank: FE-accepted designs by ascending peak stress sqrt(vm1^2 + vm2^2),
     then the rest by FE MSE. If nothing is accepted the closest designs are
     still verified and the result is flagged best_effort.

Output columns: rank, b00..b41, d1, d2, E11..nu21 (predicted), fe_E11..fe_nu21,
mse_pred, mse_fe, vm1, vm2, vm, within_threshold, pareto (on the Pareto front of
FE MSE vs peak stress), best_effort.
"""

DESIGN_EPILOG = """\
Examples:
  deepdram design --target E11=0.03,E22=0.03,nu12=-0.2,nu21=0.2 --d1 4 --d2 4 -o designs.csv
  deepdram design --target E11=0.03,E22=0.03,nu12=0.5,nu21=0.5 --d1 10 --d2 4 -n 100000 --top 50 \\
      -o designs.parquet --export prints/
  deepdram design --request data/requests/table10_I.yaml -o cell.csv
"""


def _int_at_least(minimum: int) -> Callable[[str], int]:
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


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=28)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for `deepdram` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=MAIN_DESCRIPTION,
        epilog=MAIN_EPILOG,
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")

    p = sub.add_parser(
        "sample",
        help="draw random valid designs with a given mean connectivity Z_g",
        description=SAMPLE_DESCRIPTION,
        epilog=SAMPLE_EPILOG,
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    p.add_argument("--zg", type=float, required=True, metavar="ZG",
                   help=f"mean nodal connectivity Z_g, one of {ZG_TEXT}")
    p.add_argument("-n", dest="n", type=_int_at_least(1), required=True, metavar="N",
                   help="number of distinct designs to draw")
    p.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="random seed, an integer >= 0 (default: 0)")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="output table, .csv or .parquet/.pq")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "simulate",
        help="compute E11, E22, nu12, nu21 (and peak stresses) of unit cells or tilings",
        description=SIMULATE_DESCRIPTION,
        epilog=SIMULATE_EPILOG,
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    p.add_argument("input", metavar="INPUT", help="design table, .csv or .parquet/.pq, with columns b00..b41")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="output table, .csv or .parquet/.pq")
    p.add_argument("--d1", type=int, metavar="D1",
                   help=f"tile each design D1 times along direction 1 (even, {D_MIN}..{D_MAX}); needs --d2")
    p.add_argument("--d2", type=int, metavar="D2",
                   help=f"tile each design D2 times along direction 2 (even, {D_MIN}..{D_MAX}); needs --d1")
    p.add_argument("--stress", action="store_true",
                   help="also output peak von Mises stresses vm1, vm2")
    p.add_argument("--chunk", type=_int_at_least(1), default=1 << 16, metavar="N",
                   help="unit cells solved per batch (default: 65536); bounds memory use")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary line")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "design",
        help="inverse design: lattices with target properties at a printed size, FE-checked, ranked",
        description=DESIGN_DESCRIPTION,
        epilog=DESIGN_EPILOG,
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    p.add_argument("--target", metavar="E11=..,E22=..,nu12=..,nu21=..",
                   help="target properties E11/Eb, E22/Eb, nu12, nu21 (all four, comma-separated)")
    p.add_argument("--d1", metavar="D1", help="cells along direction 1 (even, 2..20; 1 with --d2 1: a unit cell)")
    p.add_argument("--d2", metavar="D2", help="cells along direction 2 (even, 2..20; 1 with --d1 1: a unit cell)")
    p.add_argument("--request", metavar="YAML", help="read the request from a YAML file instead "
                   "(data/requests/*.yaml format; flags given as well override it)")
    p.add_argument("-n", dest="n_candidates", type=_int_at_least(1), metavar="N",
                   help="candidates to generate (default: 100000, the paper's)")
    p.add_argument("--top", dest="top_k", type=_int_at_least(0), metavar="K",
                   help="best-predicted designs to verify by FE (default: 20)")
    p.add_argument("--threshold", dest="mse_threshold", type=float, metavar="MSE",
                   help="acceptance threshold on the MSE (default: 0.1, the paper's)")
    p.add_argument("--seed", type=_int_at_least(0), metavar="S", help="random seed (default: 0)")
    p.add_argument("--rule", choices=("threshold", "bernoulli"),
                   help="probabilities -> designs: p > 0.5 (default) or Bernoulli sampling")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="ranked designs table, .csv or .parquet/.pq")
    p.add_argument("--export", metavar="DIR", help="also write SVG + STL of the best --export-top designs to DIR")
    p.add_argument("--export-top", type=_int_at_least(1), default=3, metavar="K",
                   help="how many ranked designs to export (default: 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=cmd_design)

    from deepdram import registry  # cheap: mlflow itself is imported only when a command runs

    p = sub.add_parser(
        "promote",
        help="move the 'champion' alias of a registered model to a challenger that is at least as good",
        description=registry.PROMOTE_DESCRIPTION,
        epilog="Examples:\n  deepdram promote deepdram-forward\n  deepdram promote deepdram-forward --version 3 --force",
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    registry.add_promote_arguments(p)
    p.set_defaults(func=registry.promote_command)

    from deepdram import tuning  # cheap: optuna, keras and mlflow are imported when it runs

    p = sub.add_parser(
        "tune",
        help="run or join a hyperparameter study (Optuna / Keras-Tuner; every trial in MLflow)",
        description=tuning.TUNE_DESCRIPTION,
        epilog=tuning.TUNE_EPILOG,
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    tuning.add_tune_arguments(p)
    p.set_defaults(func=tuning.tune_command)
    return parser


def _version() -> str:
    """Installed package version, or 'unknown'."""
    try:
        from importlib.metadata import version

        return version("deepdram")
    except Exception:
        return "unknown"


def _say(args: argparse.Namespace, message: str) -> None:
    """Print a status line to stderr unless --quiet."""
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr)


# --- sample -----------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    """Draw random valid designs and write them with their zg column."""
    from deepdram import io, lattice

    io.table_format(args.output)  # fail on a bad extension before any work
    designs = lattice.sample_designs(args.zg, args.n, args.seed)
    df = lattice.to_frame(designs, zg=float(args.zg))
    io.write_table(df, args.output)
    _say(args, f"wrote {len(df)} designs (Z_g = {args.zg:g}, {lattice.beams_for_zg(args.zg)} beams) to {args.output}")
    return 0


# --- simulate ---------------------------------------------------------------------------------


def _tiling_sizes(args: argparse.Namespace, df, n: int):
    """(d1, d2) int arrays of length n for a tiling run, or None for unit cells."""
    import numpy as np

    from deepdram.lattice import check_size

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


def cmd_simulate(args: argparse.Namespace) -> int:
    """Read designs, solve unit cells or tilings, write inputs plus properties."""
    import numpy as np
    import pandas as pd

    from deepdram import io

    io.table_format(args.output)  # fail on a bad extension before any work
    df = io.read_table(args.input)
    try:
        designs = io.designs_from_table(df)
    except InputError as exc:
        raise InputError(f"{args.input}: {exc}") from None
    sizes = _tiling_sizes(args, df, len(designs))

    from tqdm import tqdm

    if sizes is None:
        from deepdram.fem import solve_cells
    else:
        from deepdram.tiling import solve_tilings

    with tqdm(total=len(designs), unit="design", delay=2, file=sys.stderr,
              disable=args.quiet, dynamic_ncols=True) as bar:
        if sizes is None:
            result = solve_cells(designs, stress=args.stress, chunk=args.chunk, progress=bar.update)
        else:
            result = solve_tilings(designs, sizes[0], sizes[1], stress=args.stress, progress=bar.update)

    computed = list(PROPERTY_COLUMNS) + list(STRESS_COLUMNS)
    if sizes is not None:
        computed += list(SIZE_COLUMNS)
    out = df.drop(columns=[c for c in computed if c in df.columns])
    out = out.astype({c: "uint8" for c in BIT_COLUMNS})  # validated 0/1 above
    extra: dict[str, np.ndarray] = {}
    if sizes is not None:
        extra["d1"], extra["d2"] = sizes
    props = np.asarray(result.properties, dtype=float)
    extra.update({c: props[:, k] for k, c in enumerate(PROPERTY_COLUMNS)})
    if args.stress:
        peak = np.asarray(result.peak_vm, dtype=float)
        extra.update({c: peak[:, k] for k, c in enumerate(STRESS_COLUMNS)})
    out = pd.concat([out, pd.DataFrame(extra, index=out.index)], axis=1)
    io.write_table(out, args.output)
    what = "unit cell" if sizes is None else "tiling"
    _say(args, f"wrote properties of {len(out)} {what}{'s' * (len(out) != 1)} to {args.output}")
    return 0


# --- design -----------------------------------------------------------------------------------


def _parse_target(text: str) -> dict:
    """{'E11': .., ...} from 'E11=0.03,E22=0.03,nu12=-0.2,nu21=0.2'."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise InputError(f"--target: expected NAME=VALUE pairs like E11=0.03; got {part.strip()!r}")
        key = key.strip()
        if key in out:
            raise InputError(f"--target: {key} given twice")
        out[key] = value.strip()
    return out


def cmd_design(args: argparse.Namespace) -> int:
    """Run one design request with the champion models; write the ranked designs."""
    from deepdram import io

    io.table_format(args.output)  # fail on a bad extension before any work
    spec: dict = {}
    if args.request:
        import yaml
        from pathlib import Path

        try:
            spec = yaml.safe_load(Path(args.request).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"{args.request}: cannot read the request: {e}") from None
        if not isinstance(spec, dict) or "grid" in spec:
            raise InputError(f"{args.request}: need a single request (target, d1, d2, ...), not a grid")
    if args.target is not None:
        spec["target"] = _parse_target(args.target)
    for key in ("d1", "d2", "n_candidates", "top_k", "mse_threshold", "seed", "rule"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    for key, flag in (("target", "--target"), ("d1", "--d1"), ("d2", "--d2")):
        if key not in spec:
            raise InputError(f"{flag} is required (or give it in --request)")
    spec.setdefault("name", "cli")
    from deepdram import design as D

    req = D.parse_request(spec, "request")
    models = D.load_champions()
    from tqdm import tqdm

    with tqdm(total=req.n_candidates, unit="cand", unit_scale=True, desc="screen", file=sys.stderr,
              disable=args.quiet, dynamic_ncols=True) as bar:
        screened = D.screen(models, req, progress=bar.update)
    n_fe = min(req.top_k, len(screened.mse_pred))
    with tqdm(total=n_fe, unit="design", desc="FE verify", file=sys.stderr, disable=args.quiet,
              dynamic_ncols=True) as bar:
        result = D.verify_and_rank(req, screened, progress=bar.update)
    io.write_table(result.table, args.output)
    if args.export:
        from pathlib import Path

        import numpy as np

        from deepdram import export

        for _, row in result.table.head(args.export_top).iterrows():
            d = row[list(BIT_COLUMNS)].to_numpy(np.uint8)
            export.write_print_files(Path(args.export) / f"design_rank{int(row['rank'])}", d, req.d1, req.d2)
    s = result.summary
    flag = " (BEST EFFORT: no candidate met the threshold)" if s["best_effort"] else ""
    best = "-" if s["best_mse_fe"] is None else f"{s['best_mse_fe']:.3g}"
    _say(args, f"{s['candidates']} candidates, {s['valid']} valid, {s['distinct']} distinct, {s['accepted']} "
               f"accepted (predicted MSE <= {req.mse_threshold:g}); {s['verified']} verified by FE, "
               f"{s['fe_within_threshold']} within the threshold, best FE MSE {best}{flag}; "
               f"wrote {args.output}")
    return 0


# --- entry point ------------------------------------------------------------------------------


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
