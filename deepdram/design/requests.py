"""Design requests: what is asked (a target or an objective, in a space, under conditions) and how
hard to search, parsed from YAML files, CLI flags or served rows with errors that name the field.

A request file (data/requests/*.yaml) for the lattice space:

    target: {E11: 0.03, E22: 0.03, nu12: -0.2, nu21: 0.2}   # E/Eb and Poisson's ratios
    d1: 4                  # conditions of the space (lattice: cells along 1 and 2; 1 x 1 = a unit cell)
    d2: 4
    n_candidates: 100000   # candidates per target (paper: 1e5)
    mse_threshold: 0.1     # acceptance (paper: 0.1)
    top_k: 1000            # best-predicted designs verified by FE
    seed: 1

A file with a `grid:` mapping is a sweep of targets x conditions (Fig. 4b), see `DesignGrid`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepdram.errors import InputError, check_integer, check_number
from deepdram.spaces.base import DesignSpace

MSE_THRESHOLD = 0.1  # the paper's acceptance threshold (mean squared error over the properties)
N_CANDIDATES = 100_000  # per target (paper: 1e5)
MAX_CANDIDATES = 2_000_000  # per request in the library (bounded memory: ~100 MB)
TOP_K = 20
MAX_TOP_K = 5000
RULES = ("threshold", "bernoulli")
DEFAULT_RULE = "threshold"
DEFAULT_METHOD = "cvae"
DEFAULT_OBJECTIVE = "mse"
REQUEST_KEYS = ("name", "target", "n_candidates", "mse_threshold", "top_k", "seed", "rule", "method",
                "objective", "space", "options", "tolerance", "budget_seconds", "budget_fe")


@dataclass(frozen=True)
class DesignRequest:
    """One inverse-design request in a space: a target (or an objective), conditions, search settings."""

    target: tuple[float, ...] | None
    conditions: tuple[int, ...] | None  # None: the space's unconditioned case (the lattice's unit cell)
    n_candidates: int = N_CANDIDATES
    mse_threshold: float = MSE_THRESHOLD
    top_k: int = TOP_K
    seed: int = 0
    name: str = "request"
    rule: str = DEFAULT_RULE
    method: str = DEFAULT_METHOD
    objective: str = DEFAULT_OBJECTIVE
    space: str = "lattice"
    options: Mapping[str, Any] = field(default_factory=dict)  # method options (see each method)
    tolerance: Mapping[str, float] = field(default_factory=dict)  # the engineer's test, per property group
    budget_seconds: float | None = None  # wall time of the search (None: no limit)
    budget_fe: int | None = None  # FE calls of the whole request, verification included (None: no limit)
    constraints: Mapping[str, Any] = field(default_factory=dict)  # space-specific (composite: soft cells)

    @property
    def budget(self) -> dict[str, float | int | None]:
        return {"seconds": self.budget_seconds, "fe": self.budget_fe}


number = check_number  # the request parsers' names for the shared checks
integer = check_integer


def check_target(space: DesignSpace, target: Any, where: str = "target") -> tuple[float, ...]:
    """The target properties (mapping by name or sequence) as floats, inside the space's bounds."""
    names = space.properties
    need = ", ".join(names)
    if isinstance(target, Mapping):
        missing = [c for c in names if c not in target]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)} (need {need})")
        extra = sorted(set(map(str, target)) - set(names))
        if extra:
            raise InputError(f"{where}: unknown key(s) {extra} (need {need})")
        values = [target[c] for c in names]
    elif isinstance(target, (list, tuple, np.ndarray)):
        values = list(target)
        if len(values) != len(names):
            raise InputError(f"{where}: need {len(names)} values [{need}]; got {len(values)}")
    else:
        raise InputError(f"{where}: need {need}; got {target!r}")
    out = []
    for name, v in zip(names, values):
        x = number(v, f"{where}.{name}")
        lo, hi = space.property_bounds[name]
        if not lo < x < hi:
            raise InputError(f"{where}.{name} = {x:g} is outside the physically reachable range "
                             f"({lo:g}, {hi:g}) of {space.noun}")
        out.append(x)
    return tuple(out)


def _name(value: Any, where: str) -> str:
    name = str(value)
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise InputError(f"{where}.name must be a plain file-name stem; got {name!r}")
    return name


def parse_request(spec: Mapping, where: str = "request", *, max_candidates: int = MAX_CANDIDATES,
                  max_top_k: int = MAX_TOP_K, defaults: Mapping | None = None,
                  space: DesignSpace | None = None) -> DesignRequest:
    """A checked DesignRequest from a mapping (YAML request, CLI or served row)."""
    from deepdram.spaces.registry import get

    if not isinstance(spec, Mapping):
        raise InputError(f"{where}: a request must be a mapping; got {type(spec).__name__}")
    spec = {**(defaults or {}), **spec}
    space = space or get(str(spec.get("space", "lattice")))
    own = space.request_keys
    unknown = sorted(set(map(str, spec)) - set(REQUEST_KEYS) - set(own))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {[*REQUEST_KEYS[:1], 'target', *own, *REQUEST_KEYS[2:]]}")
    if space.needs_target and "target" not in spec and "objective" not in spec:
        raise InputError(f"{where}: missing 'target'")
    for key in space.required_request_keys:
        if key not in spec:
            raise InputError(f"{where}: missing '{key}'")
    target = check_target(space, spec["target"], f"{where}.target") if "target" in spec else None
    conditions = space.parse_conditions(spec, where)
    n = integer(spec.get("n_candidates", N_CANDIDATES), f"{where}.n_candidates", 1)
    if n > max_candidates:
        raise InputError(f"{where}.n_candidates = {n} is above the cap of {max_candidates}")
    thr = number(spec.get("mse_threshold", MSE_THRESHOLD), f"{where}.mse_threshold")
    if thr <= 0:
        raise InputError(f"{where}.mse_threshold must be > 0; got {thr:g}")
    top_k = integer(spec.get("top_k", TOP_K), f"{where}.top_k", 0, max_top_k)
    seed = integer(spec.get("seed", 0), f"{where}.seed", 0, 2**32 - 1)
    rule = spec.get("rule", DEFAULT_RULE)
    if rule not in RULES:
        raise InputError(f"{where}.rule must be one of {RULES}; got {rule!r}")
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise InputError(f"{where}.options must be a mapping of method options; got {options!r}")
    method = str(spec.get("method", DEFAULT_METHOD))
    objective = str(spec.get("objective", "mse" if target is not None else space.default_objective))
    from deepdram.design.methods.registry import check_method, check_options
    from deepdram.design.objectives import check_objective, check_tolerances

    check_method(method, space, f"{where}.method")
    check_options(method, options, f"{where}.options")
    check_objective(objective, space, target, f"{where}.objective")
    tolerance = check_tolerances(space, spec.get("tolerance") or {}, f"{where}.tolerance")
    budget_s = spec.get("budget_seconds")
    budget_s = None if budget_s is None else number(budget_s, f"{where}.budget_seconds")
    if budget_s is not None and budget_s <= 0:
        raise InputError(f"{where}.budget_seconds must be > 0; got {budget_s:g}")
    budget_fe = spec.get("budget_fe")
    budget_fe = None if budget_fe is None else integer(budget_fe, f"{where}.budget_fe", 1)
    constraints = space.parse_constraints(spec, where)
    return DesignRequest(target, conditions, n, thr, top_k, seed, _name(spec.get("name", "request"), where), rule,
                         method, objective, space.name, dict(options), tolerance, budget_s, budget_fe, constraints)


def _axis(spec: Any, where: str) -> list[float]:
    """Grid values: a list, or {start, stop, step} inclusive of stop."""
    if isinstance(spec, Mapping):
        start, stop, step = (number(spec.get(k), f"{where}.{k}") for k in ("start", "stop", "step"))
        if step <= 0 or stop < start:
            raise InputError(f"{where}: need step > 0 and stop >= start; got {dict(spec)}")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        return [round(start + i * step, 10) for i in range(n)]
    if isinstance(spec, (list, tuple)) and spec:
        return [number(v, f"{where}[{i}]") for i, v in enumerate(spec)]
    raise InputError(f"{where}: need a list of values or {{start, stop, step}}; got {spec!r}")


@dataclass(frozen=True)
class DesignGrid:
    """A sweep of targets x conditions (Fig. 4b): screened only (no FE), best predicted MSE per cell."""

    name: str
    targets: np.ndarray  # (T, P)
    sizes: tuple[tuple[int, ...], ...]  # condition values (the lattice: (d1, d2))
    n_candidates: int = N_CANDIDATES
    mse_threshold: float = MSE_THRESHOLD
    seed: int = 0
    rule: str = DEFAULT_RULE
    space: str = "lattice"


def parse_grid(spec: Mapping, where: str = "grid", space: DesignSpace | None = None) -> DesignGrid:
    """A checked DesignGrid from {name, grid: {<property>: axis, sizes: [...]}, n_candidates, ...}."""
    from deepdram.spaces.registry import get

    space = space or get(str(spec.get("space", "lattice")))
    g = spec.get("grid")
    if not isinstance(g, Mapping):
        raise InputError(f"{where}: missing 'grid' mapping")
    unknown = sorted(set(g) - {*space.properties, "sizes"})
    if unknown:
        raise InputError(f"{where}.grid: unknown key(s) {unknown}")
    axes = [_axis(g.get(c), f"{where}.grid.{c}") for c in space.properties]
    mesh = np.meshgrid(*axes, indexing="ij")
    targets = np.stack([m.ravel() for m in mesh], axis=1)
    for i, t in enumerate(targets):
        check_target(space, t, f"{where}.grid target {i}")
    sizes = g.get("sizes")
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise InputError(f"{where}.grid.sizes: need a list of [{', '.join(space.conditions)}] values")
    pairs = []
    for i, s in enumerate(sizes):
        if not isinstance(s, (list, tuple)) or len(s) != space.n_conditions:
            raise InputError(f"{where}.grid.sizes[{i}]: need [{', '.join(space.conditions)}]; got {s!r}")
        pairs.append(space.request_size(s, f"{where}.grid.sizes[{i}]"))
    base = parse_request({"target": targets[0].tolist(), **dict(zip(space.conditions, pairs[0])),
                          **{k: spec[k] for k in ("n_candidates", "mse_threshold", "seed", "rule", "name")
                             if k in spec}}, where, space=space)
    return DesignGrid(base.name, targets, tuple(dict.fromkeys(pairs)), base.n_candidates,
                      base.mse_threshold, base.seed, base.rule, space.name)


def subset_grid(grid: DesignGrid, sizes, n_candidates: int | None, target_stride: int = 1) -> DesignGrid:
    """The grid restricted to `sizes` (None: all), every `target_stride`-th target, n_candidates."""
    from deepdram.spaces.registry import get

    space = get(grid.space)
    sz = grid.sizes if sizes is None else tuple(space.request_size(s, "sizes") for s in sizes)
    missing = [s for s in sz if s not in grid.sizes]
    if missing:
        raise InputError(f"sizes {missing} are not part of grid {grid.name!r}")
    return replace(grid, sizes=sz, targets=grid.targets[::max(1, int(target_stride))],
                   n_candidates=grid.n_candidates if n_candidates is None else int(n_candidates))


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
