"""Deep-DRAM inverse design (paper sections 2.5, 2.6): requests -> candidates -> FE-checked ranking.

One request asks for target properties [E11/Eb, E22/Eb, nu12, nu21] at a printed size of
d1 x d2 cells. The procedure (Figures 4a and 5a):

1. generate `n_candidates` designs from the CVAE generator: the target with z ~ N(0, I) gives 42
   beam probabilities, turned into designs by `rule` (default "threshold": beam present where
   p > 0.5, the most likely design of each z, as the evaluation stage does; "bernoulli": every
   beam drawn with its probability). Measured on the champions for the Fig. 5 targets and 1e5
   candidates: threshold gives ~85 % valid and ~45 % distinct designs with the lower best MSE,
   bernoulli ~50 % valid, all distinct, and about the same number of accepted designs;
2. drop duplicates (uint64 keys + np.unique) and invalid (disconnected) designs;
3. predict the d1 x d2 tiling properties with the size-agnostic model (d1 = d2 = 1 means a
   single unit cell, predicted by the unit-cell forward model: supplementary Table 10's cases);
   accept designs whose MSE to the target is <= `mse_threshold`;
4. verify the `top_k` accepted designs of lowest predicted MSE by FE (tiling solver, or the
   unit-cell solver), with the peak von Mises stress of both load cases (SPEC section 3);
5. rank: designs whose FE MSE is within the threshold first, lowest peak stress first (peak
   stress = Euclidean norm of (vm1, vm2), the paper's distance from the origin in Fig. 5b),
   then the others by FE MSE; mark the Pareto front of FE MSE vs peak stress.

MSE units (the paper's Eq. 1 and its acceptance threshold 0.1): the plain mean over the four
properties of the squared difference in their own dimensionless units (E/Eb and Poisson's
ratios), unweighted and unscaled, so a design at the threshold is off by an RMS 0.32 over the
four; the Poisson's ratios dominate it (E/Eb of 0.03 can contribute at most ~1e-3).

When no candidate meets the threshold, the closest designs are still verified and returned, and
the result is flagged `best_effort`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepdram.constants import (
    BIT_COLUMNS,
    D_MAX,
    D_MIN,
    E_RANGE,
    N_BEAMS,
    NU_RANGE,
    PROPERTY_COLUMNS,
)
from deepdram.errors import DeepdramError, InputError

MSE_THRESHOLD = 0.1  # the paper's acceptance threshold (units: see the module docstring)
N_CANDIDATES = 100_000  # per target (paper: 1e5)
MAX_CANDIDATES = 2_000_000  # per request in the library (bounded memory: ~100 MB)
TOP_K = 20
MAX_TOP_K = 5000
RULES = ("threshold", "bernoulli")
DEFAULT_RULE = "threshold"
CHUNK = 250_000  # candidates generated and screened per batch
UNIT_CELL = 1  # d1 = d2 = 1: a single unit cell
MODEL_NAMES = {"generator": "deepdram-generator", "size_agnostic": "deepdram-size-agnostic",
               "forward": "deepdram-forward"}
FE_COLUMNS = tuple(f"fe_{c}" for c in PROPERTY_COLUMNS)
# Physically reachable bounds of the properties (the FE validation bounds of the data stages).
TARGET_BOUNDS = {"E11": E_RANGE, "E22": E_RANGE, "nu12": NU_RANGE, "nu21": NU_RANGE}


# --- Requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DesignRequest:
    """One inverse-design request: target properties at a printed size, and search settings."""

    target: tuple[float, float, float, float]  # E11/Eb, E22/Eb, nu12, nu21
    d1: int
    d2: int
    n_candidates: int = N_CANDIDATES
    mse_threshold: float = MSE_THRESHOLD
    top_k: int = TOP_K
    seed: int = 0
    name: str = "request"
    rule: str = DEFAULT_RULE

    @property
    def unit_cell(self) -> bool:
        return self.d1 == UNIT_CELL and self.d2 == UNIT_CELL


def _number(value: Any, what: str) -> float:
    """A finite float from `value`, else InputError naming `what`."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"{what} must be a number; got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number; got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{what} must be a finite number; got {value!r}")
    return v


def _integer(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    """An integer in [lo, hi] from `value` (integral floats accepted), else InputError."""
    v = _number(value, what)
    if v != round(v):
        raise InputError(f"{what} must be an integer; got {value!r}")
    v = int(round(v))
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise InputError(f"{what} must be an integer {rng}; got {v}")
    return v


def check_target(target: Any, where: str = "target") -> tuple[float, float, float, float]:
    """The 4 target properties (mapping by name or sequence) as floats, checked against TARGET_BOUNDS."""
    if isinstance(target, Mapping):
        missing = [c for c in PROPERTY_COLUMNS if c not in target]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)} (need E11, E22, nu12, nu21)")
        extra = sorted(set(map(str, target)) - set(PROPERTY_COLUMNS))
        if extra:
            raise InputError(f"{where}: unknown key(s) {extra} (need E11, E22, nu12, nu21)")
        values = [target[c] for c in PROPERTY_COLUMNS]
    elif isinstance(target, (list, tuple, np.ndarray)):
        values = list(target)
        if len(values) != 4:
            raise InputError(f"{where}: need 4 values [E11, E22, nu12, nu21]; got {len(values)}")
    else:
        raise InputError(f"{where}: need E11, E22, nu12, nu21; got {target!r}")
    out = []
    for name, v in zip(PROPERTY_COLUMNS, values):
        x = _number(v, f"{where}.{name}")
        lo, hi = TARGET_BOUNDS[name]
        if not lo < x < hi:
            raise InputError(f"{where}.{name} = {x:g} is outside the physically reachable range "
                             f"({lo:g}, {hi:g}) of these lattices")
        out.append(x)
    return tuple(out)  # type: ignore[return-value]


def check_size(d1: Any, d2: Any, where: str = "request") -> tuple[int, int]:
    """(d1, d2): both even in [2, 20] (a tiling), or both 1 (a unit cell)."""
    a = _integer(d1, f"{where}.d1", 1, D_MAX)
    b = _integer(d2, f"{where}.d2", 1, D_MAX)
    if (a, b) == (UNIT_CELL, UNIT_CELL):
        return a, b
    for name, v in (("d1", a), ("d2", b)):
        if v % 2 or v < D_MIN:
            raise InputError(f"{where}.{name} must be an even integer in [{D_MIN}, {D_MAX}] "
                             f"(or d1 = d2 = 1 for a unit cell); got {v}")
    return a, b


REQUEST_KEYS = ("name", "target", "d1", "d2", "n_candidates", "mse_threshold", "top_k", "seed", "rule")


def parse_request(spec: Mapping, where: str = "request", *, max_candidates: int = MAX_CANDIDATES,
                  max_top_k: int = MAX_TOP_K, defaults: Mapping | None = None) -> DesignRequest:
    """A checked DesignRequest from a mapping (YAML request, CLI or served row)."""
    if not isinstance(spec, Mapping):
        raise InputError(f"{where}: a request must be a mapping; got {type(spec).__name__}")
    spec = {**(defaults or {}), **spec}
    unknown = sorted(set(map(str, spec)) - set(REQUEST_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {list(REQUEST_KEYS)}")
    for key in ("target", "d1", "d2"):
        if key not in spec:
            raise InputError(f"{where}: missing '{key}'")
    target = check_target(spec["target"], f"{where}.target")
    d1, d2 = check_size(spec["d1"], spec["d2"], where)
    n = _integer(spec.get("n_candidates", N_CANDIDATES), f"{where}.n_candidates", 1)
    if n > max_candidates:
        raise InputError(f"{where}.n_candidates = {n} is above the cap of {max_candidates}")
    thr = _number(spec.get("mse_threshold", MSE_THRESHOLD), f"{where}.mse_threshold")
    if thr <= 0:
        raise InputError(f"{where}.mse_threshold must be > 0; got {thr:g}")
    top_k = _integer(spec.get("top_k", TOP_K), f"{where}.top_k", 0, max_top_k)
    seed = _integer(spec.get("seed", 0), f"{where}.seed", 0, 2**32 - 1)
    rule = spec.get("rule", DEFAULT_RULE)
    if rule not in RULES:
        raise InputError(f"{where}.rule must be one of {RULES}; got {rule!r}")
    name = str(spec.get("name", "request"))
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise InputError(f"{where}.name must be a plain file-name stem; got {name!r}")
    return DesignRequest(target, d1, d2, n, thr, top_k, seed, name, rule)


def _axis(spec: Any, where: str) -> list[float]:
    """Grid values: a list, or {start, stop, step} inclusive of stop."""
    if isinstance(spec, Mapping):
        start, stop, step = (_number(spec.get(k), f"{where}.{k}") for k in ("start", "stop", "step"))
        if step <= 0 or stop < start:
            raise InputError(f"{where}: need step > 0 and stop >= start; got {dict(spec)}")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        return [round(start + i * step, 10) for i in range(n)]
    if isinstance(spec, (list, tuple)) and spec:
        return [_number(v, f"{where}[{i}]") for i, v in enumerate(spec)]
    raise InputError(f"{where}: need a list of values or {{start, stop, step}}; got {spec!r}")


@dataclass(frozen=True)
class DesignGrid:
    """A sweep of targets x sizes (Fig. 4b): screened only (no FE), best predicted MSE per cell."""

    name: str
    targets: np.ndarray  # (T, 4)
    sizes: tuple[tuple[int, int], ...]
    n_candidates: int = N_CANDIDATES
    mse_threshold: float = MSE_THRESHOLD
    seed: int = 0
    rule: str = DEFAULT_RULE


def parse_grid(spec: Mapping, where: str = "grid") -> DesignGrid:
    """A checked DesignGrid from {name, grid: {E11, E22, nu12, nu21, sizes}, n_candidates, ...}."""
    g = spec.get("grid")
    if not isinstance(g, Mapping):
        raise InputError(f"{where}: missing 'grid' mapping")
    unknown = sorted(set(g) - {*PROPERTY_COLUMNS, "sizes"})
    if unknown:
        raise InputError(f"{where}.grid: unknown key(s) {unknown}")
    axes = [_axis(g.get(c), f"{where}.grid.{c}") for c in PROPERTY_COLUMNS]
    mesh = np.meshgrid(*axes, indexing="ij")
    targets = np.stack([m.ravel() for m in mesh], axis=1)
    for i, t in enumerate(targets):
        check_target(t, f"{where}.grid target {i}")
    sizes = g.get("sizes")
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise InputError(f"{where}.grid.sizes: need a list of [d1, d2] pairs")
    pairs = []
    for i, s in enumerate(sizes):
        if not isinstance(s, (list, tuple)) or len(s) != 2:
            raise InputError(f"{where}.grid.sizes[{i}]: need [d1, d2]; got {s!r}")
        pairs.append(check_size(s[0], s[1], f"{where}.grid.sizes[{i}]"))
    base = parse_request({"target": targets[0].tolist(), "d1": pairs[0][0], "d2": pairs[0][1],
                          **{k: spec[k] for k in ("n_candidates", "mse_threshold", "seed", "rule", "name")
                             if k in spec}}, where)
    return DesignGrid(base.name, targets, tuple(dict.fromkeys(pairs)), base.n_candidates,
                      base.mse_threshold, base.seed, base.rule)


def load_request_file(path: Path) -> DesignRequest | DesignGrid:
    """A request or grid from one YAML file (its name defaults to the file stem)."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read the request: {e}") from None
    if not isinstance(spec, dict):
        raise InputError(f"{path}: a request file must hold a mapping")
    spec.setdefault("name", path.stem)
    if "grid" in spec:
        return parse_grid(spec, str(path.name))
    return parse_request(spec, str(path.name))


# --- Models --------------------------------------------------------------------------------------


@dataclass
class DesignModels:
    """The three Keras models of the procedure, in physical units."""

    generator: Any  # (N, 4 + latent) -> (N, 42) probabilities
    size_agnostic: Any  # (N, 44) -> (N, 4)
    forward: Any  # (N, 42) -> (N, 4)
    versions: dict = field(default_factory=dict)

    @property
    def latent_dim(self) -> int:
        return int(self.generator.input_shape[-1]) - len(PROPERTY_COLUMNS)


def load_keras_models(paths: Mapping[str, Any]) -> DesignModels:
    """DesignModels from .keras files keyed generator / size_agnostic / forward."""
    from deepdram import models

    return DesignModels(**{k: models.load_model(paths[k]) for k in MODEL_NAMES})


def champion_files(dest: Path, alias: str = "champion") -> tuple[dict[str, Path], dict[str, int]]:
    """Download the .keras files of the three `alias` models into dest; (paths, versions).

    Fails with a clear message when a model is not registered or has no such alias.
    """
    from deepdram import registry, tracking

    uri = tracking.configure()
    import mlflow.artifacts

    c = tracking.client()
    paths, versions = {}, {}
    for kind, name in MODEL_NAMES.items():
        if registry._registered(c, name) is None:
            raise DeepdramError(f"no registered model {name!r} in {uri}: run `dvc repro` (or `make repro`) "
                                "to train and register it")
        mv = registry._by_alias(c, name, alias)
        if mv is None:
            raise DeepdramError(f"model {name!r} has no {alias}: run `dvc repro` or "
                                f"`deepdram promote {name} --version N`")
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{alias}",
                                                         dst_path=str(dest / kind)))
        found = sorted((local / "artifacts").glob("*.keras"))
        if len(found) != 1:
            raise DeepdramError(f"{name} version {mv.version}: expected one .keras artifact, found {len(found)}")
        paths[kind], versions[kind] = found[0], int(mv.version)
    return paths, versions


def load_champions(alias: str = "champion") -> DesignModels:
    """The champion models from the registry (`models:/NAME@champion`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deepdram-champions-") as tmp:
        paths, versions = champion_files(Path(tmp), alias)
        m = load_keras_models(paths)
    m.versions = versions
    return m


# --- Screening -------------------------------------------------------------------------------------


def mse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-row mean over the 4 properties of squared errors, physical units (paper Eq. 1)."""
    return np.mean((np.asarray(pred, float) - np.asarray(target, float)) ** 2, axis=-1)


def generate_designs(generator, target: Sequence[float], n: int, rng: np.random.Generator,
                     rule: str = DEFAULT_RULE, latent_dim: int | None = None) -> np.ndarray:
    """(n, 42) uint8 designs from the generator for one target (z ~ N(0, I), then `rule`)."""
    from deepdram import models

    latent = latent_dim if latent_dim is not None else int(generator.input_shape[-1]) - 4
    x = np.empty((n, 4 + latent), np.float32)
    x[:, :4] = np.asarray(target, np.float32)
    x[:, 4:] = rng.standard_normal((n, latent), dtype=np.float32)
    return models.designs_from_probabilities(models.predict(generator, x, batch_size=n), rule, rng)


def distinct_valid(designs: np.ndarray, seen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(designs, keys, n_valid, n_distinct_valid): valid designs, first occurrences only.

    `seen`: sorted keys already kept (from earlier batches); those are dropped too.
    """
    from deepdram.lattice import from_keys, is_valid, to_keys

    keys = to_keys(designs)
    uniq, inverse = np.unique(keys, return_inverse=True)
    valid_u = is_valid(from_keys(uniq))
    n_valid = int(valid_u[inverse].sum())
    keep = valid_u
    if seen is not None and len(seen):
        keep = keep & ~np.isin(uniq, seen, assume_unique=True)
    k = uniq[keep]
    return from_keys(k), k, n_valid, len(k)


def predict_properties(m: DesignModels, designs: np.ndarray, d1: int, d2: int) -> np.ndarray:
    """(N, 4) predicted properties: size-agnostic model at (d1, d2), or the forward model for a unit cell."""
    from deepdram import models

    if len(designs) == 0:
        return np.zeros((0, 4), np.float32)
    if d1 == UNIT_CELL and d2 == UNIT_CELL:
        return models.predict(m.forward, designs, batch_size=CHUNK)
    x = np.empty((len(designs), N_BEAMS + 2), np.float32)
    x[:, :N_BEAMS] = designs
    x[:, N_BEAMS], x[:, N_BEAMS + 1] = d1, d2
    return models.predict(m.size_agnostic, x, batch_size=CHUNK)


@dataclass
class Screened:
    """Distinct valid candidates of one request, sorted by predicted MSE (best first)."""

    designs: np.ndarray  # (M, 42) uint8
    predicted: np.ndarray  # (M, 4)
    mse_pred: np.ndarray  # (M,)
    counts: dict  # candidates, valid, distinct, accepted


def screen(m: DesignModels, req: DesignRequest, progress: Callable[[int], None] | None = None,
           keep: int | None = None) -> Screened:
    """Steps 1-3: generate, drop invalid and duplicates, predict at (d1, d2), sort by MSE.

    Keeps the `keep` best distinct designs (default: max(top_k, 1000)) to bound memory.
    """
    rng = np.random.default_rng(req.seed)
    keep = max(req.top_k, 1000) if keep is None else keep
    target = np.asarray(req.target, float)
    best_d = np.zeros((0, N_BEAMS), np.uint8)
    best_p = np.zeros((0, 4), np.float32)
    best_e = np.zeros(0)
    seen = np.zeros(0, np.uint64)
    n_valid = n_distinct = n_accepted = 0
    for start in range(0, req.n_candidates, CHUNK):
        n = min(CHUNK, req.n_candidates - start)
        raw = generate_designs(m.generator, target, n, rng, req.rule, m.latent_dim)
        d, k, nv, nd = distinct_valid(raw, seen)
        n_valid += nv
        n_distinct += nd
        seen = np.union1d(seen, k)
        pred = predict_properties(m, d, req.d1, req.d2)
        err = mse(pred, target)
        n_accepted += int((err <= req.mse_threshold).sum())
        best_d = np.concatenate([best_d, d])
        best_p = np.concatenate([best_p, pred])
        best_e = np.concatenate([best_e, err])
        order = np.argsort(best_e, kind="stable")[:keep]
        best_d, best_p, best_e = best_d[order], best_p[order], best_e[order]
        if progress is not None:
            progress(n)
    counts = {"candidates": req.n_candidates, "valid": n_valid, "invalid": req.n_candidates - n_valid,
              "distinct": n_distinct, "duplicates": n_valid - n_distinct, "accepted": n_accepted,
              "best_mse_pred": float(best_e[0]) if len(best_e) else None}
    return Screened(best_d, best_p, best_e, counts)


# --- FE verification and ranking -------------------------------------------------------------------


def fe_verify(designs: np.ndarray, d1: int, d2: int, progress=None, threads: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(properties (N, 4), peak von Mises / (Eb eps) (N, 2)) by FE: the tiling or unit-cell solver."""
    if len(designs) == 0:
        return np.zeros((0, 4)), np.zeros((0, 2))
    if d1 == UNIT_CELL and d2 == UNIT_CELL:
        from deepdram.fem import solve_cells

        r = solve_cells(designs, stress=True, progress=progress)
    else:
        from deepdram.tiling import solve_tilings

        r = solve_tilings(designs, d1, d2, stress=True, progress=progress, threads=threads)
    return np.asarray(r.properties, float), np.asarray(r.peak_vm, float)


def pareto_front(error: np.ndarray, stress: np.ndarray) -> np.ndarray:
    """True for points no other point beats in both (lower error and lower stress, one strictly)."""
    e, s = np.asarray(error, float), np.asarray(stress, float)
    order = np.lexsort((s, e))  # by error, then stress
    front = np.zeros(len(e), bool)
    best = np.inf
    for i in order:
        if s[i] < best:
            front[i] = True
            best = s[i]
    # equal points: both on the front when the first is
    for i in np.flatnonzero(~front):
        same = front & (e == e[i]) & (s == s[i])
        front[i] = bool(same.any())
    return front


def rank_order(mse_fe: np.ndarray, peak: np.ndarray, threshold: float) -> np.ndarray:
    """Indices: FE-accepted designs by ascending peak stress, then the rest by ascending FE MSE."""
    ok = np.asarray(mse_fe) <= threshold
    a = np.flatnonzero(ok)[np.argsort(np.asarray(peak)[ok], kind="stable")]
    b = np.flatnonzero(~ok)[np.argsort(np.asarray(mse_fe)[~ok], kind="stable")]
    return np.concatenate([a, b]).astype(np.int64)


@dataclass
class DesignResult:
    """The ranked, FE-verified designs of one request and its summary counts."""

    request: DesignRequest
    table: Any  # pandas DataFrame, one row per verified design, best first
    summary: dict


def stress_spread(peak: np.ndarray) -> float | None:
    """(max - min) / min in percent (the paper's 250-310 %), or None with fewer than 2 values."""
    peak = np.asarray(peak, float)
    if len(peak) < 2 or peak.min() <= 0:
        return None
    return float((peak.max() - peak.min()) / peak.min() * 100.0)


def verify_and_rank(req: DesignRequest, s: Screened, progress=None, threads: int | None = None) -> DesignResult:
    """Steps 4-5: FE of the top_k best-predicted designs, ranking, Pareto front, summary."""
    import pandas as pd

    accepted = s.mse_pred <= req.mse_threshold
    best_effort = not bool(accepted.any())
    pick = np.flatnonzero(accepted)[: req.top_k] if not best_effort else np.arange(min(req.top_k, len(s.mse_pred)))
    d = s.designs[pick]
    fe, vm = fe_verify(d, req.d1, req.d2, progress, threads)
    target = np.asarray(req.target, float)
    mse_fe = mse(fe, target) if len(d) else np.zeros(0)
    peak = np.hypot(vm[:, 0], vm[:, 1]) if len(d) else np.zeros(0)
    order = rank_order(mse_fe, peak, req.mse_threshold)
    cols: dict[str, Any] = {"rank": np.arange(1, len(order) + 1)}
    cols |= {c: d[order, i] for i, c in enumerate(BIT_COLUMNS)}
    cols |= {"d1": np.full(len(order), req.d1), "d2": np.full(len(order), req.d2)}
    cols |= {c: s.predicted[pick][order, i].astype(float) for i, c in enumerate(PROPERTY_COLUMNS)}
    cols |= {c: fe[order, i] for i, c in enumerate(FE_COLUMNS)}
    cols |= {"mse_pred": s.mse_pred[pick][order], "mse_fe": mse_fe[order], "vm1": vm[order, 0],
             "vm2": vm[order, 1], "vm": peak[order], "within_threshold": mse_fe[order] <= req.mse_threshold,
             "pareto": pareto_front(mse_fe, peak)[order] if len(order) else np.zeros(0, bool),
             "best_effort": np.full(len(order), best_effort)}
    table = pd.DataFrame(cols)
    table[list(BIT_COLUMNS)] = table[list(BIT_COLUMNS)].astype(np.uint8)
    ok = table["within_threshold"].to_numpy()
    summary = {**s.counts, "name": req.name, "target": list(req.target), "d1": req.d1, "d2": req.d2,
               "mse_threshold": req.mse_threshold, "verified": int(len(table)),
               "fe_within_threshold": int(ok.sum()),
               "best_mse_fe": float(mse_fe.min()) if len(mse_fe) else None,
               "peak_min": float(table["vm"][ok].min()) if ok.any() else None,
               "peak_max": float(table["vm"][ok].max()) if ok.any() else None,
               "peak_spread_pct": stress_spread(table["vm"][ok]), "best_effort": best_effort}
    return DesignResult(req, table, summary)


def design(m: DesignModels, req: DesignRequest, progress=None, fe_progress=None,
           threads: int | None = None) -> DesignResult:
    """The whole procedure for one request."""
    return verify_and_rank(req, screen(m, req, progress), fe_progress, threads)


# --- Sweeps (Fig. 4b) --------------------------------------------------------------------------------


def sweep(m: DesignModels, grid: DesignGrid, progress=None, keep_designs: int = 50):
    """Best predicted MSE per (target, size); candidates generated once per target, all sizes screened.

    Returns (table, envelope): one row per (target, size) with counts and the best design; and
    up to `keep_designs` distinct generated designs per target (for the Fig. 2b envelope).
    """
    import pandas as pd

    from deepdram.lattice import to_keys

    rows, envelope = [], []
    for t_idx, target in enumerate(grid.targets):
        rng = np.random.default_rng([grid.seed, t_idx])
        raw = generate_designs(m.generator, target, grid.n_candidates, rng, grid.rule, m.latent_dim)
        d, _, n_valid, n_distinct = distinct_valid(raw)
        envelope.append(d[rng.permutation(len(d))[:keep_designs]])
        for d1, d2 in grid.sizes:
            pred = predict_properties(m, d, d1, d2)
            err = mse(pred, target)
            b = int(np.argmin(err)) if len(err) else -1
            row = {"target": t_idx, **dict(zip(PROPERTY_COLUMNS, map(float, target))), "d1": d1, "d2": d2,
                   "candidates": grid.n_candidates, "valid": n_valid, "distinct": n_distinct,
                   "accepted": int((err <= grid.mse_threshold).sum()),
                   "best_mse_pred": float(err[b]) if b >= 0 else np.nan,
                   **{f"pred_{c}": float(pred[b, i]) if b >= 0 else np.nan for i, c in enumerate(PROPERTY_COLUMNS)},
                   "best_key": int(to_keys(d[b:b + 1])[0]) if b >= 0 else -1}
            rows.append(row)
        if progress is not None:
            progress(1)
    env = np.concatenate(envelope) if envelope else np.zeros((0, N_BEAMS), np.uint8)
    return pd.DataFrame(rows), env


def subset_grid(grid: DesignGrid, sizes: Sequence[Sequence[int]] | None, n_candidates: int | None,
                target_stride: int = 1) -> DesignGrid:
    """The grid restricted to `sizes` (None: all), every `target_stride`-th target, n_candidates."""
    sz = grid.sizes if sizes is None else tuple(check_size(a, b, "sizes") for a, b in sizes)
    missing = [s for s in sz if s not in grid.sizes]
    if missing:
        raise InputError(f"sizes {missing} are not part of grid {grid.name!r}")
    return replace(grid, sizes=sz, targets=grid.targets[::max(1, int(target_stride))],
                   n_candidates=grid.n_candidates if n_candidates is None else int(n_candidates))


# --- Per-beam stresses (drawings, Fig. 5c) ----------------------------------------------------------


def beam_stresses(design: np.ndarray, d1: int, d2: int):
    """(nodes (N, 2) mm, beams (M, 2), properties (4,), von Mises / (Eb eps) (2, M)) of one tiling.

    An assembled sparse solve of the whole frame (fem.solve_frame), independent of the
    substructuring tiling solver; d1 = d2 = 1 is the unit cell.
    """
    from deepdram.fem import beam_von_mises, solve_frame
    from deepdram.lattice import check_designs, tiling_geometry

    design = check_designs(np.asarray(design).reshape(1, -1))[0]
    nodes, beams = tiling_geometry(design, d1, d2)
    props, u, _ = solve_frame(nodes, beams, 3 * d1 + 1, 3 * d2 + 1, sparse=True)
    vm = np.stack([beam_von_mises(nodes, beams, u[c]) for c in (0, 1)])
    return nodes, beams, props, vm


# --- The DVC stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageConfig:
    """The `design` section of params.yaml, checked."""

    requests: tuple[str, ...]
    sweep: str | None
    sweep_sizes: tuple[tuple[int, int], ...] | None
    sweep_candidates: int | None
    sweep_target_stride: int
    n_candidates: int | None
    export_top: int
    register: bool
    tolerance: float


def stage_config(params: Mapping) -> StageConfig:
    """StageConfig from params.yaml (InputError naming the bad key)."""
    from deepdram import params as P

    sec = P.section(params, "design")
    reqs = P.get(sec, "requests", "design")
    if not isinstance(reqs, list) or not all(isinstance(r, str) and r for r in reqs):
        raise InputError(f"params.yaml: 'design.requests' must be a list of request names; got {reqs!r}")
    prof = sec.get("sweep_profile") or {}
    if not isinstance(prof, Mapping):
        raise InputError("params.yaml: 'design.sweep_profile' must be a mapping")
    sizes = prof.get("sizes")
    if sizes is not None:
        sizes = tuple(check_size(s[0], s[1], f"design.sweep_profile.sizes[{i}]") for i, s in enumerate(sizes))
    n_sw = prof.get("n_candidates")
    n_all = sec.get("n_candidates")
    tol = _number(sec.get("tolerance", 0.0), "design.tolerance")
    return StageConfig(tuple(reqs), sec.get("sweep"), sizes,
                       None if n_sw is None else _integer(n_sw, "design.sweep_profile.n_candidates", 1),
                       _integer(prof.get("target_stride", 1), "design.sweep_profile.target_stride", 1),
                       None if n_all is None else _integer(n_all, "design.n_candidates", 1),
                       _integer(sec.get("export_top", 2), "design.export_top", 0),
                       bool(sec.get("register", True)), tol)


def _flat_summary(summaries: dict) -> dict:
    out = {}
    for name, s in summaries.items():
        for k in ("candidates", "valid", "distinct", "accepted", "verified", "fe_within_threshold",
                  "best_mse_fe", "peak_spread_pct"):
            if isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool):
                out[f"{name}.{k}"] = s[k]
    return out


def _train_properties(n: int = 20000, seed: int = 0) -> np.ndarray:
    """A sample of the training split's unit-cell properties (empty if the split is missing)."""
    from deepdram import constants as C

    path = C.SPLITS_DIR / "train.parquet"
    if not path.exists():
        return np.zeros((0, 4))
    import pandas as pd

    df = pd.read_parquet(path, columns=list(PROPERTY_COLUMNS))
    idx = np.random.default_rng(seed).permutation(len(df))[:n]
    return df.to_numpy()[np.sort(idx)]


def _selected_drawings(results: dict) -> list:
    """Fig. 5c: per request, the lowest- and highest-stress FE-accepted designs with beam stresses."""
    items = []
    for name, r in results.items():
        t = r.table
        ok = t[t["within_threshold"]]
        if not len(ok):
            continue
        picks = [("lowest", ok.iloc[0])] + ([("highest", ok.iloc[-1])] if len(ok) > 1 else [])
        for label, row in picks:
            d = row[list(BIT_COLUMNS)].to_numpy(np.uint8)
            nodes, beams, _, vm = beam_stresses(d, r.request.d1, r.request.d2)
            items.append((f"{name}: {label} peak stress (vm = {row['vm']:.2f}, MSE_FE = {row['mse_fe']:.3g})",
                          nodes, beams, vm.max(axis=0)))
    return items


def _register_designer(keras_paths: dict, versions: dict, summaries: dict, fingerprint: str,
                       tolerance: float) -> dict:
    """Log the designer pyfunc in a run, register it as challenger and promote it (gated)."""
    import mlflow

    from deepdram import designer, registry, tracking

    tracking.experiment(designer.NAME)
    n = len(summaries)
    success = sum(1 for s in summaries.values() if s["fe_within_threshold"] > 0) / max(1, n)
    best = [s["best_mse_fe"] for s in summaries.values() if s["best_mse_fe"] is not None]
    with mlflow.start_run(run_name="design") as run:
        tracking.log_tags({tracking.TEST_SET_TAG: fingerprint})
        tracking.log_params_flat({f"{k}_version": v for k, v in versions.items()})
        mlflow.log_metrics({"design_success_rate": success,
                            "design_mean_best_mse_fe": float(np.mean(best)) if best else float("nan"),
                            **{f"{k}_{m}": float(v) for k, s in summaries.items()
                               for m, v in (("accepted", s["accepted"]), ("fe_within", s["fe_within_threshold"]))}})
        designer.log_designer(keras_paths, metadata={"models": {k: f"{MODEL_NAMES[k]}@v{v}" for k, v in versions.items()}})
    version = registry.register(run.info.run_id, designer.NAME, artifact="designer")
    decision = registry.promote(designer.NAME, metric="design_success_rate", tolerance=tolerance)
    return {"run_id": run.info.run_id, "version": version, "decision": decision["decision"],
            "reason": decision["reason"], "design_success_rate": success}


def run_stage(params: Mapping, requests_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """The `design` stage: every shipped request, the sweep subset, plots, exports, designer registration.

    Writes into a temporary folder next to `out_dir` and swaps it in at the end (nothing half-written).
    """
    import json
    import shutil
    import tempfile

    from tqdm import tqdm

    from deepdram import design_report as R
    from deepdram import export, models
    from deepdram import params as P
    from deepdram.io import write_json, write_table

    cfg = stage_config(params)
    reqs: list[DesignRequest] = []
    for name in cfg.requests:
        r = load_request_file(Path(requests_dir) / f"{name}.yaml")
        if not isinstance(r, DesignRequest):
            raise InputError(f"design.requests: {name}.yaml is a grid; name it under design.sweep")
        reqs.append(r if cfg.n_candidates is None else replace(r, n_candidates=cfg.n_candidates))
    grid = None
    if cfg.sweep:
        g = load_request_file(Path(requests_dir) / f"{cfg.sweep}.yaml")
        if not isinstance(g, DesignGrid):
            raise InputError(f"design.sweep: {cfg.sweep}.yaml has no 'grid'")
        grid = subset_grid(g, cfg.sweep_sizes, cfg.sweep_candidates, cfg.sweep_target_stride)
    files = sorted(Path(requests_dir).glob("*.yaml"))
    fingerprint = P.fingerprint(json.dumps(cfg.__dict__, default=str, sort_keys=True), files=files)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        keras_dir = work / ".models"
        keras_paths, versions = champion_files(keras_dir)
        m = load_keras_models(keras_paths)
        m.versions = versions
        results, summaries = {}, {}
        total = sum(r.n_candidates for r in reqs)
        with tqdm(total=total, unit="cand", unit_scale=True, desc="design requests", disable=not progress) as bar:
            for r in reqs:
                res = design(m, r, progress=bar.update)
                results[r.name] = res
                summaries[r.name] = res.summary
                write_table(res.table, work / f"{r.name}.csv")
        sweep_df = None
        if grid is not None:
            with tqdm(total=len(grid.targets), unit="target", desc=f"sweep {grid.name}", disable=not progress) as bar:
                sweep_df, env_designs = sweep(m, grid, progress=bar.update)
            write_table(sweep_df, work / f"{grid.name}.csv")
            R.mse_heatmaps(work / "plots" / "fig4b_mse_heatmaps.png", sweep_df, grid.mse_threshold)
            R.envelope(work / "plots" / "fig2b_envelope.png", _train_properties(),
                       models.predict(m.forward, env_designs))
            summaries_sweep = {f"{d1}x{d2}": int((g_["best_mse_pred"] <= grid.mse_threshold).sum())
                               for (d1, d2), g_ in sweep_df.groupby(["d1", "d2"], sort=False)}
        thr = reqs[0].mse_threshold if reqs else MSE_THRESHOLD
        R.stress_scatter(work / "plots" / "fig5b_peak_stress.png",
                         {n: r.table for n, r in results.items() if not r.request.unit_cell}, thr)
        R.drawings(work / "plots" / "fig5c_drawings.png", _selected_drawings(
            {n: r for n, r in results.items() if not r.request.unit_cell}))
        R.drawings(work / "plots" / "table10_unit_cells.png", _selected_drawings(
            {n: r for n, r in results.items() if r.request.unit_cell}))
        for name, r in results.items():
            for _, row in r.table.head(cfg.export_top).iterrows():
                d = row[list(BIT_COLUMNS)].to_numpy(np.uint8)
                export.write_print_files(work / "export" / f"{name}_rank{int(row['rank'])}", d,
                                         r.request.d1, r.request.d2)
        reg = None
        if cfg.register:
            reg = _register_designer(keras_paths, versions, summaries, fingerprint, cfg.tolerance)
        shutil.rmtree(keras_dir)
        summary = {"requests": summaries, "models": versions, "designer": reg,
                   "sweep": None if grid is None else {
                       "name": grid.name, "targets": len(grid.targets), "sizes": [list(s) for s in grid.sizes],
                       "n_candidates": grid.n_candidates, "targets_within_threshold": summaries_sweep}}
        write_json(summary, work / "summary.json")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    flat = _flat_summary(summaries)
    if grid is not None:
        flat |= {f"sweep.within_{k}": v for k, v in summaries_sweep.items()}
    if reg is not None:
        flat |= {"designer_version": reg["version"], "designer_decision": reg["decision"]}
    return flat | {"requests": len(reqs)}
