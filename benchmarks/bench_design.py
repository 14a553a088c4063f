"""Design sweep screening speed: the Fig. 4 sweep's screening step (generated candidates -> validity
-> dedupe -> the size-agnostic surrogate at every tiling size), the old way against the new one,
on the same generated candidates and the real trained models.

- old path: per target `space.distinct_valid`, then per size `Surrogates.predict` with the saved
  Keras model (what `design.pipeline.sweep` did before `design.screening`);
- new path: `design.screening` as `sweep` runs it now: `PredictorAtConditions` (the regressor split
  into a per-design and a per-size part, float32 NumPy; checked against Keras, else Keras itself),
  a `PredictionCache` shared by the sweep's targets and `screen_batch`.

The candidates come from the generator exactly as in the sweep (targets and seeds of
requests/fig4_sweep.yaml); generating them is timed once, apart, and is the same for both paths.
Printed: candidates/s of each path, the speedup, whether both give the same best design of every
(target, size) cell (and the largest prediction difference), the projection to the paper's Fig. 4
sweep (196 targets x 1e5 candidates at its 19 sizes; the paper: ~38 min on 18 cores), and the
targets: the new path >= 3x the old one, and the aspiration of 250,000 candidates/s.

Also printed: the arithmetic ceiling of any exact screening on this machine, measured in the same
run: float32 multiply-adds per (design, size) of the network the new path runs, times the sizes
and the share of candidates it predicts (distinct, not cached), against the float32 matrix-product rate
of NumPy on blocks of the sweep's shape. A rate above it needs fewer products, not faster code.

Models: the registry's champions (deepdram-generator, deepdram-size-agnostic, deepdram-forward
@champion), else outputs/models/{generator,size_agnostic,forward}.keras, or the folder --models
names. The benchmark trains nothing: without the models it says which it needs and exits 2.

    python benchmarks/bench_design.py                            # 3 targets x 20,000, 19 sizes
    python benchmarks/bench_design.py --targets 5 --candidates 100000
    python benchmarks/bench_design.py --sizes 4x4,10x2 --saved-models
    python benchmarks/bench_design.py --models /path/to/folder   # generator.keras, size_agnostic.keras, ...
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROLE_FILES = {"generator": "generator.keras", "conditioned": "size_agnostic.keras", "forward": "forward.keras"}
NEEDED = ("generator", "conditioned")  # forward only for unit-cell sizes (1x1)
PAPER_TARGETS, PAPER_CANDIDATES, PAPER_SIZES = 196, 100_000, 19
PAPER_SECONDS = 38 * 60
SPEEDUP_TARGET = 3.0
ASPIRATION = 250_000  # candidates/s
RTOL = 1e-4  # predictions of the two paths agree to |new - old| <= RTOL * (1 + |old|)


class MissingModels(Exception):
    """The trained models the benchmark needs are not there."""


# --- models ------------------------------------------------------------------------------------------


def from_folder(folder: Path, space):
    """Surrogates from a folder's generator.keras, size_agnostic.keras and (if there) forward.keras."""
    from deepdram.design.pipeline import load_surrogates

    paths = {role: folder / name for role, name in ROLE_FILES.items() if (folder / name).is_file()}
    missing = [ROLE_FILES[r] for r in NEEDED if r not in paths]
    if missing:
        raise MissingModels(f"{folder}: no {', '.join(missing)}")
    return load_surrogates(paths, space)


def from_registry(space):
    """The champion surrogates of the lattice space (DeepdramError when they are not registered)."""
    import tempfile

    from deepdram.design.pipeline import load_surrogates
    from deepdram.mlops.champions import champion_files

    with tempfile.TemporaryDirectory(prefix="deepdram-bench-design-") as tmp:
        paths, versions = champion_files(Path(tmp), space.name)
        s = load_surrogates(paths, space)
    s.versions = versions
    return s


def load_models(folder: str | None, space):
    """(Surrogates, where they came from): --models, else the registry's champions, else outputs/models."""
    from deepdram.errors import DeepdramError
    from deepdram.paths import MODELS_DIR

    if folder:
        return from_folder(Path(folder), space), str(folder)
    try:
        s = from_registry(space)
        return s, "registry champions " + ", ".join(f"{r} v{v}" for r, v in s.versions.items())
    except DeepdramError as e:
        try:
            return from_folder(MODELS_DIR, space), f"{MODELS_DIR} (registry: {e})"
        except MissingModels as missing:
            raise MissingModels(f"registry: {e}\n  {missing}") from None


def needs_message(why: str) -> str:
    from deepdram.mlops.catalogue import DESIGN_ROLES
    from deepdram.paths import MODELS_DIR

    names = ", ".join(f"{n}@champion" for n in DESIGN_ROLES["lattice"].values())
    files = ", ".join(ROLE_FILES[r] for r in NEEDED)
    return (f"bench_design: no trained design models.\n  {why}\n"
            f"It needs the lattice's generator and size-agnostic model (the forward one for 1x1 sizes): the "
            f"registry's {names}, or {files} in {MODELS_DIR} (or in --models DIR). Train them with "
            "`dvc repro` (or `make repro`); this benchmark trains nothing.")


# --- the sweep's candidates --------------------------------------------------------------------------


def sweep_grid(args):
    """requests/fig4_sweep.yaml cut down to the command line's targets, sizes and candidates."""
    from dataclasses import replace

    from deepdram.design.requests import load_request_file
    from deepdram.paths import REQUESTS_DIR

    g = load_request_file(REQUESTS_DIR / "fig4_sweep.yaml")
    sizes = g.sizes if args.sizes == "all" else tuple(tuple(int(v) for v in s.split("x")) for s in args.sizes.split(","))
    first = args.first_target
    return replace(g, sizes=sizes, n_candidates=args.candidates), list(range(first, first + args.targets))


def candidates(space, s, grid, target_ids: list[int]) -> tuple[list[np.ndarray], float]:
    """Each target's generated candidates, as `sweep` generates them, and the seconds it took."""
    from deepdram.learn.generation import generate, generator_decoder, latent_size

    gen = s.models["generator"]
    latent = latent_size(gen, space.n_properties)
    t0 = time.perf_counter()
    out = []
    for t in target_ids:
        rng = np.random.default_rng([grid.seed, t])
        out.append(generate(generator_decoder(gen, grid.n_candidates), np.asarray(grid.targets[t], np.float32)[None],
                            grid.n_candidates, latent, rng, grid.rule))
    return out, time.perf_counter() - t0


# --- the two paths -------------------------------------------------------------------------------------


@dataclass
class PathResult:
    """Per target: seconds, (keys, predictions (M, S, P)) and counts."""

    seconds: list[float] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)
    pred: list[np.ndarray] = field(default_factory=list)
    counts: list[tuple[int, int]] = field(default_factory=list)
    new: list[int] = field(default_factory=list)


def old_screen(space, s, raw: np.ndarray, conds: list, out: PathResult) -> None:
    """distinct_valid, then the saved Keras model at each size."""
    t0 = time.perf_counter()
    d, keys, n_valid, n_distinct = space.distinct_valid(raw)
    pred = np.stack([s.predict(space, d, c) for c in conds], axis=1)
    out.seconds.append(time.perf_counter() - t0)
    out.keys.append(keys)
    out.pred.append(pred)
    out.counts.append((n_valid, n_distinct))
    out.new.append(n_distinct)


def new_screen(space, predict, cache, raw: np.ndarray, n_conditions: int, out: PathResult) -> None:
    """screen_batch with the sweep's predictor and cache."""
    from deepdram.design.screening import screen_batch

    t0 = time.perf_counter()
    sc = screen_batch(space, raw, predict, cache, n_conditions)
    out.seconds.append(time.perf_counter() - t0)
    out.keys.append(sc.keys)
    out.pred.append(sc.pred)
    out.counts.append((sc.n_valid, sc.n_distinct))
    out.new.append(sc.n_new)


def warm_up(space, s, raw: np.ndarray, conds: list) -> None:
    """One small call of each model (Keras traces its first call: not part of the sweep's cost)."""
    d = space.distinct_valid(raw[:2000])[0]
    for c in {conds[0], conds[-1]}:
        s.predict(space, d, c)


def run_paths(space, s, raws: list[np.ndarray], conds: list) -> tuple[PathResult, PathResult, object]:
    """Both paths on each target in turn (interleaved, so both see the same machine load)."""
    from deepdram.design.screening import PredictionCache, PredictorAtConditions

    old, new = PathResult(), PathResult()
    t0 = time.perf_counter()
    predict = PredictorAtConditions.build(space, s, conds)
    cache = PredictionCache(len(conds), space.n_properties)
    build = time.perf_counter() - t0
    for raw in raws:
        old_screen(space, s, raw, conds, old)
        new_screen(space, predict, cache, raw, len(conds), new)
    new.seconds[0] += build
    return old, new, predict


# --- comparison ------------------------------------------------------------------------------------------


def best_keys(space, keys: np.ndarray, pred: np.ndarray, target) -> np.ndarray:
    """The best design's key at each size (-1 without designs), as `sweep` picks it."""
    from deepdram.design.objectives import mse

    if not len(keys):
        return np.full(pred.shape[1], -1)
    return np.array([keys[int(np.argmin(mse(pred[:, j], target)))] for j in range(pred.shape[1])])


def agreement(space, old: PathResult, new: PathResult, targets) -> dict:
    """Same designs and counts, same best design per cell, the largest relative prediction difference."""
    cells = same_best = 0
    worst = 0.0
    same_designs = all(np.array_equal(a, b) for a, b in zip(old.keys, new.keys)) and old.counts == new.counts
    for k, target in enumerate(targets):
        a = best_keys(space, old.keys[k], old.pred[k], target)
        b = best_keys(space, new.keys[k], new.pred[k], target)
        cells += len(a)
        same_best += int((a == b).sum())
        if same_designs and len(old.keys[k]):
            worst = max(worst, float(np.max(np.abs(new.pred[k] - old.pred[k]) / (1 + np.abs(old.pred[k])))))
    return {"cells": cells, "same_best": same_best, "same_designs": same_designs, "max_rel": worst}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def predictor_text(predict) -> str:
    """What the new path predicts with, and why."""
    if predict.uses_split:
        return f"the split regressor (checked against Keras: max rel diff {predict.mismatch:.1e})"
    if predict.checked:
        return f"the Keras model (the split regressor disagreed with it: max rel diff {predict.mismatch:.1e})"
    return "the Keras model (the split regressor does not apply to this model)"


def gemm_rate(rows: int, widths: list[tuple[int, int]], repeats: int = 3) -> float:
    """Multiply-adds per second of float32 `rows x k @ k x n` products of these (k, n) shapes (best of
    `repeats`; NumPy's BLAS on every core, as the new path runs them)."""
    rng = np.random.default_rng(0)
    pairs = [(rng.random((rows, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)) for k, n in widths]
    macs = rows * sum(k * n for k, n in widths)
    best = np.inf
    for _ in range(repeats + 1):  # the first run warms the BLAS threads
        t0 = time.perf_counter()
        for a, b in pairs:
            a @ b
        best = min(best, time.perf_counter() - t0)
    return macs / best


def ceiling(predict, n_sizes: int, distinct_share: float) -> dict | None:
    """The exact screening's arithmetic bound: multiply-adds per (design, size) of the split regressor
    (its layers after the first, plus the conditions' share of the first), the machine's float32 rate
    on those shapes, and the candidates/s they allow (None without the split regressor)."""
    if not predict.uses_split:
        return None
    from deepdram.design.screening import BLOCK

    layers = predict.split.layers
    nv, n_in = predict.split.n_variables, len(predict.split.x_scale)
    widths = [(int(w.shape[0]), int(w.shape[1])) for w, *_ in layers[1:]]
    per_size = (n_in - nv) * int(layers[0][0].shape[1]) + sum(k * n for k, n in widths)
    rate = gemm_rate(BLOCK, widths)
    per_candidate = per_size * n_sizes * distinct_share
    return {"macs": per_size, "rate": rate, "candidates_s": rate / per_candidate,
            "needed": ASPIRATION * per_candidate}


def report(args, grid, source, predict, gen_s, old: PathResult, new: PathResult, agree: dict, target_ids) -> None:
    n_total = args.candidates * len(target_ids)
    n_sizes = len(grid.sizes)
    print(f"models: {source}")
    split = predictor_text(predict)
    print(f"conditioned surrogate: {'saved (symmetrised) model' if args.saved_models else 'single-image network'}; "
          f"new path predicts with {split}")
    print(f"sweep: targets {target_ids[0]}..{target_ids[-1]} of fig4_sweep x {args.candidates:,} candidates, "
          f"{n_sizes} sizes ({', '.join(f'{a}x{b}' for a, b in grid.sizes)})")
    print(f"{'target':>6} {'valid':>8} {'distinct':>8} {'new':>8} {'old s':>7} {'new s':>7}")
    for k, t in enumerate(target_ids):
        print(f"{t:>6} {old.counts[k][0]:>8,} {old.counts[k][1]:>8,} {new.new[k]:>8,} {old.seconds[k]:>7.2f} "
              f"{new.seconds[k]:>7.2f}")
    hits = 1 - sum(new.new[1:]) / max(1, sum(c[1] for c in new.counts[1:])) if len(target_ids) > 1 else 0.0
    print(f"cache: {hits:.1%} of the distinct designs of targets after the first were predicted before")
    r_old, r_new = n_total / sum(old.seconds), n_total / sum(new.seconds)
    r_gen = n_total / gen_s
    speedup = r_new / r_old
    print(f"generation (same for both, not in the rates below): {gen_s:.2f} s, {r_gen:,.0f} candidates/s")
    print(f"old path: {r_old:>12,.0f} candidates/s = {r_old * n_sizes:>12,.0f} (candidate, size)/s  "
          "(distinct_valid + Keras predict per size)")
    print(f"new path: {r_new:>12,.0f} candidates/s = {r_new * n_sizes:>12,.0f} (candidate, size)/s  "
          "(design.screening: cache + predictor at all sizes)")
    print(f"speedup:  {speedup:.2f}x over all {len(target_ids)} targets")
    warm = warm_rates(args.candidates, old, new)
    if warm is not None:
        print(f"          {warm[1] / warm[0]:.2f}x over the targets after the first (cache warm, as for most of "
              f"a 196-target sweep): old {warm[0]:,.0f}/s, new {warm[1]:,.0f}/s")
    print(f"agreement: same designs and counts: {agree['same_designs']}; same best design in "
          f"{agree['same_best']}/{agree['cells']} (target, size) cells; predictions max rel diff {agree['max_rel']:.1e}")
    print_projection(n_sizes, r_gen, warm or (r_old, r_new), warm is not None)
    print(f"target new >= {SPEEDUP_TARGET:g}x old (all timed targets): {verdict(speedup >= SPEEDUP_TARGET)} "
          f"({speedup:.2f}x)")
    print(f"aspiration >= {ASPIRATION:,} candidates/s (screening, new path, all timed targets): "
          f"{verdict(r_new >= ASPIRATION)} ({r_new:,.0f}/s)")
    share = sum(new.new) / n_total  # the designs the new path had to predict (distinct, not cached)
    bound = ceiling(predict, n_sizes, share)
    if bound is not None:
        print(f"arithmetic ceiling of exact screening: {bound['macs']:,} float32 multiply-adds per (design, size) "
              f"x {n_sizes} sizes x {share:.1%} of the candidates predicted (distinct, not cached); this machine's float32 products "
              f"{bound['rate'] / 1e9:.1f} G multiply-adds/s -> at most {bound['candidates_s']:,.0f} candidates/s "
              f"(new path at {r_new / bound['candidates_s']:.0%} of it); {ASPIRATION:,}/s would need "
              f"{bound['needed'] / 1e9:,.0f} G multiply-adds/s")


def warm_rates(n: int, old: PathResult, new: PathResult) -> tuple[float, float] | None:
    """(old, new) candidates/s over the targets after the first (None with one target)."""
    if len(old.seconds) < 2:
        return None
    k = n * (len(old.seconds) - 1)
    return k / sum(old.seconds[1:]), k / sum(new.seconds[1:])


def print_projection(n_sizes: int, r_gen: float, rates: tuple[float, float], warm: bool) -> None:
    """Minutes of the paper's Fig. 4 sweep's screening at these rates (scaled to its 19 sizes)."""
    paper = PAPER_TARGETS * PAPER_CANDIDATES
    scale = PAPER_SIZES / n_sizes  # screening cost grows about linearly with the sizes
    note = "" if n_sizes == PAPER_SIZES else f", scaled x{scale:.2f} from {n_sizes} sizes (rough)"
    old, new = (paper / r * scale / 60 for r in rates)
    print(f"Fig. 4 sweep projection (196 x 1e5 candidates, {PAPER_SIZES} sizes, "
          f"{'cache-warm' if warm else 'measured'} rates{note}): screening old {old:.1f} min, new {new:.1f} min; "
          f"with generation new {new + paper / r_gen / 60:.1f} min (paper: ~{PAPER_SECONDS // 60} min on 18 cores)")


# --- main -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=20_000, metavar="N",
                    help="generated candidates per target (default 20,000; the paper: 100,000)")
    ap.add_argument("--targets", type=int, default=3, metavar="T",
                    help="consecutive targets of fig4_sweep timed (default 3; the paper: 196)")
    ap.add_argument("--first-target", type=int, default=80, metavar="I",
                    help="index of the first target in fig4_sweep's 196 (default 80, mid-grid)")
    ap.add_argument("--sizes", default="all", metavar="D1xD2,...",
                    help="tiling sizes screened, e.g. 4x4,10x2 (default all: the paper's 19)")
    ap.add_argument("--saved-models", action="store_true",
                    help="screen with the saved (symmetrised) size-agnostic model, as the paper profile does; "
                         "default: its single-image network, as the default profile's sweep_profile.single_image")
    ap.add_argument("--models", metavar="DIR",
                    help="folder with generator.keras, size_agnostic.keras (and forward.keras) instead of the "
                         "registry's champions / outputs/models")
    args = ap.parse_args(argv)
    if args.candidates < 1 or args.targets < 1 or not 0 <= args.first_target <= PAPER_TARGETS - args.targets:
        ap.error(f"need --candidates >= 1, --targets >= 1 and --first-target + --targets <= {PAPER_TARGETS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from deepdram.design.pipeline import Surrogates
    from deepdram.errors import InputError
    from deepdram.learn.models import inner_regressor
    from deepdram.spaces.lattice.space import LatticeSpace

    space = LatticeSpace()
    try:
        s, source = load_models(args.models, space)
    except MissingModels as e:
        print(needs_message(str(e)), file=sys.stderr)
        return 2
    if not args.saved_models:  # as sweep(single_image=True)
        s = Surrogates({k: (inner_regressor(m) if k != "generator" else m) for k, m in s.models.items()})
    try:
        grid, target_ids = sweep_grid(args)
        conds = [space.parse_conditions(dict(zip(space.conditions, size)), "--sizes") for size in grid.sizes]
    except (ValueError, InputError) as e:
        print(f"bench_design: --sizes {args.sizes!r}: {e}", file=sys.stderr)
        return 2
    if None in conds and "forward" not in s.models:
        print(needs_message("no forward.keras for the 1x1 size"), file=sys.stderr)
        return 2
    raws, gen_s = candidates(space, s, grid, target_ids)
    warm_up(space, s, raws[0], conds)
    old, new, predict = run_paths(space, s, raws, conds)
    agree = agreement(space, old, new, grid.targets[target_ids])
    report(args, grid, source, predict, gen_s, old, new, agree, target_ids)
    ok = agree["same_designs"] and agree["max_rel"] <= RTOL
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
