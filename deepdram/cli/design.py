"""`deepdram design`: one inverse-design request with the registry's champion models."""

from __future__ import annotations

import argparse
import sys

from deepdram.cli.common import add_parser, int_at_least, say
from deepdram.errors import InputError
from deepdram.spaces.lattice.constants import STRAIN

DESCRIPTION = f"""\
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

EPILOG = """\
Examples:
  deepdram design --target E11=0.03,E22=0.03,nu12=-0.2,nu21=0.2 --d1 4 --d2 4 -o designs.csv
  deepdram design --target E11=0.03,E22=0.03,nu12=0.5,nu21=0.5 --d1 10 --d2 4 -n 100000 --top 50 \\
      -o designs.parquet --export prints/
  deepdram design --request data/requests/table10_I.yaml -o cell.csv
"""



def add(sub) -> None:
    p = add_parser(sub, "design", "inverse design: lattices with target properties at a printed size, FE-checked, "
                   "ranked", DESCRIPTION, EPILOG)
    p.add_argument("--target", metavar="E11=..,E22=..,nu12=..,nu21=..",
                   help="target properties E11/Eb, E22/Eb, nu12, nu21 (all four, comma-separated)")
    p.add_argument("--d1", metavar="D1", help="cells along direction 1 (even, 2..20; 1 with --d2 1: a unit cell)")
    p.add_argument("--d2", metavar="D2", help="cells along direction 2 (even, 2..20; 1 with --d1 1: a unit cell)")
    p.add_argument("--request", metavar="YAML", help="read the request from a YAML file instead "
                   "(data/requests/*.yaml format; flags given as well override it)")
    p.add_argument("-n", dest="n_candidates", type=int_at_least(1), metavar="N",
                   help="candidates to generate (default: 100000, the paper's)")
    p.add_argument("--top", dest="top_k", type=int_at_least(0), metavar="K",
                   help="best-predicted designs to verify by FE (default: 20)")
    p.add_argument("--threshold", dest="mse_threshold", type=float, metavar="MSE",
                   help="acceptance threshold on the MSE (default: 0.1, the paper's)")
    p.add_argument("--seed", type=int_at_least(0), metavar="S", help="random seed (default: 0)")
    p.add_argument("--rule", choices=("threshold", "bernoulli"),
                   help="probabilities -> designs: p > 0.5 (default) or Bernoulli sampling")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="ranked designs table, .csv or .parquet/.pq")
    p.add_argument("--export", metavar="DIR", help="also write SVG + STL of the best --export-top designs to DIR")
    p.add_argument("--export-top", type=int_at_least(1), default=3, metavar="K",
                   help="how many ranked designs to export (default: 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=run)



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


def run(args: argparse.Namespace) -> int:
    """Run one design request with the champion models; write the ranked designs."""
    from deepdram.data.tables import table_format, write_table

    table_format(args.output)  # fail on a bad extension before any work
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
    from tqdm import tqdm

    from deepdram.design import pipeline
    from deepdram.design.requests import parse_request
    from deepdram.mlops.champions import load_champions
    from deepdram.spaces.registry import get

    req = parse_request(spec, "request")
    space = get(req.space)
    models = load_champions(space.name)
    with tqdm(total=req.n_candidates, unit="cand", unit_scale=True, desc="screen", file=sys.stderr,
              disable=args.quiet, dynamic_ncols=True) as bar:
        screened = pipeline.screen(space, models, req, progress=bar.update)
    n_fe = min(req.top_k, len(screened.mse_pred))
    with tqdm(total=n_fe, unit="design", desc="FE verify", file=sys.stderr, disable=args.quiet,
              dynamic_ncols=True) as bar:
        result = pipeline.verify_and_rank(space, req, screened, progress=bar.update)
    write_table(result.table, args.output)
    if args.export:
        from pathlib import Path

        import numpy as np

        from deepdram.spaces.lattice import export

        for _, row in result.table.head(args.export_top).iterrows():
            d = row[list(space.variables)].to_numpy(np.uint8)
            export.write_print_files(Path(args.export) / f"design_rank{int(row['rank'])}", d,
                                     int(row["d1"]), int(row["d2"]))
    s = result.summary
    flag = " (BEST EFFORT: no candidate met the threshold)" if s["best_effort"] else ""
    best = "-" if s["best_mse_fe"] is None else f"{s['best_mse_fe']:.3g}"
    say(args, f"{s['candidates']} candidates, {s['valid']} valid, {s['distinct']} distinct, {s['accepted']} "
               f"accepted (predicted MSE <= {req.mse_threshold:g}); {s['verified']} verified by FE, "
               f"{s['fe_within_threshold']} within the threshold, best FE MSE {best}{flag}; "
               f"wrote {args.output}")
    return 0
