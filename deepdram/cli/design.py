"""`deepdram design`: one inverse-design request with the registry's champion models."""

from __future__ import annotations

import argparse
import sys

from deepdram.cli.common import add_parser, int_at_least, say
from deepdram.errors import InputError
from deepdram.spaces.lattice.constants import STRAIN

DESCRIPTION = f"""\
Inverse design: find structures with target properties (lattices: at a printed
size D1 x D2) or the highest toughness (the composite), with a design method,
the champion models of the registry (run `make repro` first) and the FE oracle.

Every method feeds the same pipeline:
  1. the method proposes candidate designs (see below);
  2. invalid (disconnected lattices; composites with the wrong soft count) and
     duplicate designs are dropped;
  3. the surrogate predicts their properties (the size-agnostic model at D1 x D2;
     D1 = D2 = 1: a single unit cell, the unit-cell model; the composite
     predictor), and designs whose MSE to the target is <= the threshold are
     accepted. MSE = mean over E11/Eb, E22/Eb, nu12, nu21 of the squared errors,
     all dimensionless (the paper's threshold is 0.1);
  4. the K best by the objective are verified by FE (lattices: properties and
     peak von Mises in both load cases, divided by E_b * {STRAIN:g}), unless the
     method already evaluated them by FE;
  5. rank: FE-accepted designs by ascending peak stress sqrt(vm1^2 + vm2^2),
     then the rest by the FE objective. If nothing is accepted the closest
     designs are still verified and the result is flagged best_effort.

Methods (--method, options with --option NAME=VALUE):
  cvae      Deep-DRAM (default): N candidates from the CVAE generator (target +
            N(0, 1) latent samples; beam present where its probability > 0.5).
  backprop  GIDN: Adam on sigmoid-relaxed designs through the surrogate from
            Gaussian starts, then binarised. Options: n_starts (1000), sd (1.5),
            steps (200), lr (0.1), n_ones (beam count to rank to; default:
            threshold 0.5), count_penalty (1.0), tau_end (0.2: sigmoid
            temperature annealed from 1), single_image (true), record_paths.
  active    GIDN active learning: rounds of propose with the current surrogate
            -> FE -> update a per-request copy of it. Options: rounds (3),
            fe_per_round (20), proposer (backprop | cvae), epochs (30), lr
            (0.001), proposer_starts (200), proposer_steps (60),
            proposer_candidates (5000, the cvae proposer).
  ga        genetic algorithm: population (1000), parents (100), mutation
            (0.01), generations (1000), oracle (fe | surrogate); centre-point
            crossover, parents kept; invalid children are repaired where the
            space can (composite), else unfit (lattice).
  topopt    gradient topology optimisation on relaxed densities with the exact
            adjoint gradient (lattice) or the seed's finite differences
            (gradient fd): iterations (200), step (0.01), update (seed | adam),
            penalty (3), init, h (1e-5); binarised by ranking.
  random    valid random designs, each evaluated by FE (the baseline): batch.

Objectives (--objective): mse (the paper's, default for a target), scaled (each
property's squared error over its train-split variance), max-toughness (the
composite). --tolerance E=0.10,nu=0.05 sets the within_tolerance test (moduli
relative, Poisson's ratios absolute). --budget-seconds and --budget-fe bound a
request (one FE call = one design evaluated at one size, verification
included).

Output columns: rank, the design columns, d1, d2 (lattices), the predicted
properties, fe_<property>, mse_pred, mse_fe (target requests), objective_pred,
objective_fe (other objectives), vm1, vm2, vm (lattices), within_threshold,
within_tolerance, pareto (on the Pareto front of FE objective vs peak stress),
best_effort.
"""

EPILOG = """\
Examples:
  deepdram design --target E11=0.03,E22=0.03,nu12=-0.2,nu21=0.2 --d1 4 --d2 4 -o designs.csv
  deepdram design --target E11=0.03,E22=0.03,nu12=0.5,nu21=0.5 --d1 10 --d2 4 -n 100000 --top 50 \\
      -o designs.parquet --export prints/
  deepdram design --request data/requests/table10_I.yaml -o cell.csv
  deepdram design --target E11=0.05,E22=0.05,nu12=0.1,nu21=0.1 --d1 1 --d2 1 --method backprop \\
      --option n_starts=500 --objective scaled --tolerance E=0.1,nu=0.05 -o bp.csv
  deepdram design --target E11=0.05,E22=0.05,nu12=0.1,nu21=0.1 --d1 4 --d2 4 --method ga \\
      --option generations=20 --budget-fe 2000 -o ga.csv
  deepdram design --space composite --objective max-toughness --soft-fraction 0.25 --method backprop -o out.csv
"""


def add(sub) -> None:
    p = add_parser(sub, "design", "inverse design: structures with target properties (or the most toughness), "
                   "FE-checked, ranked; methods cvae, backprop, active, ga, topopt, random", DESCRIPTION, EPILOG)
    from deepdram.spaces.registry import NAMES as SPACE_NAMES

    p.add_argument("--space", choices=SPACE_NAMES, default=None,
                   help="design space (default: lattice, or the request file's)")
    p.add_argument("--target", metavar="E11=..,E22=..,nu12=..,nu21=..",
                   help="target properties E11/Eb, E22/Eb, nu12, nu21 (all four, comma-separated)")
    p.add_argument("--d1", metavar="D1", help="cells along direction 1 (even, 2..20; 1 with --d2 1: a unit cell)")
    p.add_argument("--d2", metavar="D2", help="cells along direction 2 (even, 2..20; 1 with --d1 1: a unit cell)")
    p.add_argument("--soft-fraction", dest="soft_fraction", type=float, metavar="F",
                   help="composite: share of soft cells, e.g. 0.25 (8 of the 32)")
    p.add_argument("--request", metavar="YAML", help="read the request from a YAML file instead "
                   "(data/requests/*.yaml format; flags given as well override it)")
    p.add_argument("--method", choices=("cvae", "backprop", "active", "ga", "topopt", "random"),
                   help="design method (default: cvae; see above)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="NAME=VALUE",
                   help="a method option, e.g. --option n_starts=500 (repeatable; values parsed as YAML)")
    p.add_argument("--objective", metavar="NAME",
                   help="mse (default with a target), scaled, max-toughness (composite), min-z (peaks)")
    p.add_argument("--tolerance", metavar="E=0.10,nu=0.05",
                   help="the within_tolerance test: moduli relative, Poisson's ratios absolute")
    p.add_argument("--budget-seconds", dest="budget_seconds", type=float, metavar="S",
                   help="wall time of the search per request")
    p.add_argument("--budget-fe", dest="budget_fe", type=int_at_least(1), metavar="N",
                   help="FE calls per request, verification included")
    p.add_argument("-n", dest="n_candidates", type=int_at_least(1), metavar="N",
                   help="candidates to generate (default: 100000, the paper's)")
    p.add_argument("--top", dest="top_k", type=int_at_least(0), metavar="K",
                   help="best designs to verify by FE (default: 20)")
    p.add_argument("--threshold", dest="mse_threshold", type=float, metavar="MSE",
                   help="acceptance threshold on the MSE (default: 0.1, the paper's)")
    p.add_argument("--seed", type=int_at_least(0), metavar="S", help="random seed (default: 0)")
    p.add_argument("--rule", choices=("threshold", "bernoulli"),
                   help="cvae: probabilities -> designs: p > 0.5 (default) or Bernoulli sampling")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="ranked designs table, .csv or .parquet/.pq")
    p.add_argument("--export", metavar="DIR", help="lattices: also write SVG + STL of the best --export-top designs")
    p.add_argument("--export-top", type=int_at_least(1), default=3, metavar="K",
                   help="how many ranked designs to export (default: 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=run)


def _pairs(text: str, flag: str) -> dict:
    """{'E11': '0.03', ...} from 'E11=0.03,E22=0.03,...'."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise InputError(f"{flag}: expected NAME=VALUE pairs like E11=0.03; got {part.strip()!r}")
        key = key.strip()
        if key in out:
            raise InputError(f"{flag}: {key} given twice")
        out[key] = value.strip()
    return out


def _parse_target(text: str) -> dict:
    """{'E11': .., ...} from 'E11=0.03,E22=0.03,nu12=-0.2,nu21=0.2'."""
    return _pairs(text, "--target")


def _options(items: list[str]) -> dict:
    """Method options from NAME=VALUE flags, values as YAML scalars."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option: expected NAME=VALUE, e.g. n_starts=500; got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _variances(space, conditions) -> list[float]:
    """The train split's property variances (the scaled objective), from the pipeline's datasets."""
    import numpy as np
    import pandas as pd

    from deepdram.paths import SPLITS_DIR, TILINGS_PATH

    path = SPLITS_DIR / "train.parquet" if conditions is None else TILINGS_PATH
    if not path.exists():
        raise InputError(f"the scaled objective needs the training split ({path}): run `make repro` first")
    df = pd.read_parquet(path, columns=list(space.properties) + ([] if conditions is None else ["split"]))
    if conditions is not None:
        df = df[df["split"] == "train"]
    return np.var(df[list(space.properties)].to_numpy(), axis=0).tolist()


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
    if args.space is not None:
        spec["space"] = args.space
    space_name = spec.get("space", "lattice")
    if args.target is not None:
        spec["target"] = _parse_target(args.target)
    for key in ("d1", "d2", "soft_fraction", "n_candidates", "top_k", "mse_threshold", "seed", "rule", "method",
                "objective", "budget_seconds", "budget_fe"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.options:
        spec["options"] = {**dict(spec.get("options") or {}), **_options(args.options)}
    if args.tolerance is not None:
        spec["tolerance"] = _pairs(args.tolerance, "--tolerance")
    if space_name == "lattice":
        for key, flag in (("target", "--target"), ("d1", "--d1"), ("d2", "--d2")):
            if key not in spec and not (key == "target" and "objective" in spec):
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
    variances = _variances(space, req.conditions) if req.objective == "scaled" else None
    with tqdm(total=req.n_candidates, unit="cand", unit_scale=True, desc=f"{req.method}", file=sys.stderr,
              disable=args.quiet, dynamic_ncols=True) as bar:
        screened = pipeline.screen(space, models, req, progress=bar.update, variances=variances)
    n_fe = min(req.top_k, len(screened.mse_pred))
    with tqdm(total=n_fe, unit="design", desc="FE verify", file=sys.stderr, disable=args.quiet,
              dynamic_ncols=True) as bar:
        result = pipeline.verify_and_rank(space, req, screened, progress=bar.update)
    write_table(result.table, args.output)
    if result.acquired is not None:
        from pathlib import Path

        acquired = Path(args.output)
        write_table(result.acquired, acquired.with_name(f"{acquired.stem}_acquired{acquired.suffix}"))
    if args.export and space.name == "lattice":
        from pathlib import Path

        import numpy as np

        from deepdram.spaces.lattice import export

        for _, row in result.table.head(args.export_top).iterrows():
            d = row[list(space.variables)].to_numpy(np.uint8)
            export.write_print_files(Path(args.export) / f"design_rank{int(row['rank'])}", d,
                                     int(row["d1"]), int(row["d2"]))
    s = result.summary
    flag = " (BEST EFFORT: no candidate met the threshold)" if s["best_effort"] else ""
    if req.target is not None:
        best = "-" if s["best_mse_fe"] is None else f"{s['best_mse_fe']:.3g}"
        verdict = (f"{s['fe_within_threshold']} within the threshold, best FE MSE {best}{flag}")
    else:
        verdict = f"best FE {req.objective} {-s['best_objective_fe'] if req.objective.startswith('max') else s['best_objective_fe']:.4g}"
    say(args, f"{s['candidates']} candidates, {s['valid']} valid, {s['distinct']} distinct, {s['accepted']} "
              f"accepted (predicted MSE <= {req.mse_threshold:g}); {s['verified']} verified by FE, "
              f"{verdict}; wrote {args.output}")
    return 0
