"""The composite design space (GIDN): a stiff/soft grid with an edge crack, designed for toughness.

Variables x00..x31 (the left half of the 8 x 8 specimen, row-major from the bottom; 1 = stiff,
0 = soft; the mirror symmetry is built into the encoding, so the symmetry group over x00..x31 is
trivial); property `toughness` (the work of fracture over the all-stiff specimen's, SPEC section
8); no conditions; every 0/1 design is valid, and a request may fix the number of soft cells
(`soft_fraction`, the seed's volume fraction, or `soft_count`). The oracle is the batched
progressive-failure solver (`fem.toughness`); a relaxed oracle (cell moduli between the phases)
serves topology optimisation with finite-difference gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from deepdram.errors import InputError, check_number
from deepdram.spaces.base import DesignSpace, Evaluation, Progress, Rule
from deepdram.spaces.composite.mesh import N_VARS

DESIGN_COLUMNS = tuple(f"x{k:02d}" for k in range(N_VARS))
SOFT_FRACTIONS = (0.125, 0.25, 0.5)  # the seed's volume fractions


def soft_count_of(fraction: float, where: str = "soft_fraction") -> int:
    """The number of soft cells of a soft fraction (InputError unless it is a whole number of cells)."""
    f = check_number(fraction, where)
    k = f * N_VARS
    if not 0 <= f <= 1 or abs(k - round(k)) > 1e-9:
        raise InputError(f"{where} must be a multiple of 1/{N_VARS} in [0, 1] (a whole number of the "
                         f"{N_VARS} cells), e.g. 0.125, 0.25, 0.5; got {fraction!r}")
    return int(round(k))


class CompositeSpace(DesignSpace):
    """8 x 8 stiff/soft composite with an edge crack (mirror-symmetric: 32 design cells)."""

    name: ClassVar[str] = "composite"
    description: ClassVar[str] = "GIDN stiff/soft composite with an edge crack, 8 x 8 cells (toughness)"
    variables: ClassVar[tuple[str, ...]] = DESIGN_COLUMNS
    properties: ClassVar[tuple[str, ...]] = ("toughness",)
    property_bounds: ClassVar[dict] = {"toughness": (0.0, 100.0)}
    binary: ClassVar[bool] = True
    validity_rule: ClassVar[str] = "composite cells must be 0 (soft) or 1 (stiff)"
    noun: ClassVar[str] = "this composite"
    needs_target: ClassVar[bool] = False
    default_objective: ClassVar[str] = "max-toughness"
    request_keys: ClassVar[tuple[str, ...]] = ("soft_fraction", "soft_count")
    relaxed_init: ClassVar[float] = 0.5

    def __init__(self, m: int = 1, ratio: float = 10.0):
        if not (isinstance(m, (int, np.integer)) and m >= 1):
            raise InputError(f"m (elements per cell side) must be an integer >= 1; got {m!r}")
        self.m, self.ratio = int(m), float(ratio)

    # --- designs -------------------------------------------------------------------------------

    def sample(self, n: int, seed, *, soft_fraction: float | None = None, soft_count: int | None = None,
               unique: bool = True, **options) -> np.ndarray:
        """n designs with a given number of soft cells, uniformly at random (distinct by default)."""
        from deepdram.spaces.composite.enumeration import sample_designs

        if options:
            raise InputError(f"unknown sampling option(s) {sorted(options)} for the composite space; known: "
                             "soft_fraction, soft_count")
        from deepdram.spaces.composite.enumeration import n_designs

        k = self._soft(soft_fraction, soft_count)
        if k is None:
            raise InputError("the composite space samples one soft fraction at a time: give soft_fraction "
                             "(e.g. 0.25) or soft_count")
        if not unique:
            return sample_designs(n, k, seed)
        if n > n_designs(k):
            raise InputError(f"only {n_designs(k):,} distinct designs have {k} soft cells; asked for {n:,}")
        rng = np.random.default_rng(seed)
        out = np.zeros((0, N_VARS), np.uint8)
        while len(out) < n:
            more = sample_designs(int((n - len(out)) * 1.2) + 16, k, rng)
            keys = self.keys(np.concatenate([out, more]))
            _, first = np.unique(keys, return_index=True)
            out = np.concatenate([out, more])[np.sort(first)]
        return out[:n]

    def _soft(self, fraction, count) -> int | None:
        if fraction is not None and count is not None:
            raise InputError("give soft_fraction or soft_count, not both")
        if fraction is not None:
            return soft_count_of(fraction)
        if count is not None:
            from deepdram.errors import check_integer

            return check_integer(count, "soft_count", 0, N_VARS)
        return None

    def is_valid(self, designs: np.ndarray) -> np.ndarray:
        d = np.asarray(designs)
        return np.all((d == 0) | (d == 1), axis=1)

    def parse_constraints(self, spec: Mapping, where: str) -> dict[str, Any]:
        k = self._soft(spec.get("soft_fraction"), spec.get("soft_count"))
        return {} if k is None else {"soft_count": k}

    def meets(self, designs, constraints) -> np.ndarray:
        k = constraints.get("soft_count")
        d = np.asarray(designs)
        return np.ones(len(d), bool) if k is None else (N_VARS - d.sum(axis=1)) == k

    def constrained_ones(self, constraints) -> int | None:
        k = constraints.get("soft_count")
        return None if k is None else N_VARS - int(k)

    def sample_for(self, n: int, rng: np.random.Generator, constraints) -> np.ndarray:
        k = constraints.get("soft_count")
        if k is None:
            return rng.integers(0, 2, size=(n, N_VARS)).astype(np.uint8)
        from deepdram.spaces.composite.enumeration import sample_designs

        return sample_designs(n, int(k), rng)

    def repair(self, designs: np.ndarray, rng: np.random.Generator, constraints) -> np.ndarray | None:
        """Designs with the soft count restored by flipping randomly chosen cells of the surplus phase."""
        k = constraints.get("soft_count")
        if k is None:
            return designs
        out = np.array(designs, dtype=np.uint8, copy=True)
        for row in out:
            soft = np.flatnonzero(row == 0)
            if len(soft) > k:
                row[rng.choice(soft, len(soft) - k, replace=False)] = 1
            elif len(soft) < k:
                stiff = np.flatnonzero(row == 1)
                row[rng.choice(stiff, k - len(soft), replace=False)] = 0
        return out

    def check_designs(self, designs, *, require_valid: bool = True, what: str = "design") -> np.ndarray:
        from deepdram.spaces.composite.fem import check_designs

        return check_designs(designs, what=what)

    # --- the oracle ------------------------------------------------------------------------------

    def evaluate(self, designs, conditions=None, *, extras: Sequence[str] = (), progress: Progress = None,
                 threads: int | None = None, validate: bool = True, soft_count: int | None = None) -> Evaluation:
        """Normalised toughness of half designs (the batched progressive-failure solver)."""
        from deepdram.spaces.composite.fem import toughness

        if conditions is not None:
            raise InputError("the composite space takes no conditions")
        if extras:
            raise InputError(f"the composite space has no oracle extras; got {list(extras)}")
        t = toughness(designs, m=self.m, ratio=self.ratio, soft_count=soft_count, threads=threads).toughness
        if progress is not None:
            progress(len(t))
        return Evaluation(np.asarray(t, float)[:, None])

    def relaxed_properties(self, x: np.ndarray, conditions=None, *, penalty: float = 1.0, **options) -> np.ndarray:
        """(N, 1) toughness of relaxed designs (cell modulus between the phases, `fem.relaxed_toughness`)."""
        from deepdram.spaces.composite.fem import relaxed_toughness

        return relaxed_toughness(x, m=self.m, ratio=self.ratio, penalty=penalty)[:, None]

    # --- data validation --------------------------------------------------------------------------

    def expected_columns(self, kind: str) -> tuple[str, ...]:
        if kind == "designs":
            return (*DESIGN_COLUMNS, "soft_count", "toughness")
        if kind == "designs_split":
            return (*DESIGN_COLUMNS, "soft_count", "toughness", "split")
        raise InputError(f"unknown composite dataset kind {kind!r}; known: designs, designs_split")

    derived_text: ClassVar[str] = ("`soft_minus_count` = number of 0 cells - soft_count; `design_key` = the "
                                   "packed design. They are null where a row's cells are not all 0/1.")

    def derived_columns(self, kind: str) -> tuple[str, ...]:
        return ("soft_minus_count", "design_key")

    def derive(self, df):
        cells = df[[c for c in DESIGN_COLUMNS if c in df.columns]].to_numpy(dtype=float) \
            if all(c in df.columns for c in DESIGN_COLUMNS) else np.full((len(df), N_VARS), np.nan)
        ok = np.all((cells == 0) | (cells == 1), axis=1)
        soft = np.where(ok, (cells == 0).sum(axis=1), np.nan)
        count = df["soft_count"].to_numpy(dtype=float) if "soft_count" in df.columns else np.full(len(df), np.nan)
        key = np.where(ok, self.keys(np.where(ok[:, None], cells, 0).astype(np.uint8)).astype(np.float64), np.nan)
        return df.reset_index(drop=True).assign(soft_minus_count=soft - count, design_key=key)

    def validation_rules(self, kind: str) -> list[Rule]:
        from deepdram.data import validation

        cols = self.expected_columns(kind)
        dtypes = {**{c: "uint8" for c in DESIGN_COLUMNS}, "soft_count": "int64", "toughness": "float64",
                  "split": "str"}
        r = validation.schema_rules(cols, self.derived_columns(kind), dtypes, f"x00..x31, {', '.join(cols[N_VARS:])}")
        r += [Rule("ExpectColumnValuesToBeInSet", {"column": c, "value_set": [0, 1]}, c, "{0, 1}",
                   "cells are 0 (soft) or 1 (stiff)", (c,)) for c in DESIGN_COLUMNS]
        r += [Rule("ExpectColumnValuesToBeInSet", {"column": "soft_minus_count", "value_set": [0]}, "soft_minus_count",
                   "{0}", "the number of soft cells equals soft_count (derived)", ("soft_minus_count", "soft_count"),
                   "soft cell count"),
              Rule("ExpectColumnValuesToBeUnique", {"column": "design_key"}, "design_key", "unique",
                   "no duplicate design", ("design_key", "soft_count"), "duplicate design")]
        r += validation.range_rules("toughness", *self.property_bounds["toughness"], shown=("toughness", "soft_count"))
        if "split" in cols:
            from deepdram.data.splits import SPLIT_NAMES

            r += validation.set_rules("split", list(SPLIT_NAMES), "split is train, val or test")
        return r
