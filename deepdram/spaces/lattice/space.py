"""The lattice design space (Deep-DRAM): 42-beam random networks on a 4 x 4 node cell, tiled D1 x D2.

Variables b00..b41 (0/1, SPEC section 1); properties E11, E22 (over E_b), nu12, nu21 (SPEC 3);
conditions d1, d2 (even in 2..20, SPEC 4), absent for a single unit cell; valid = all 16 nodes
connected; symmetries: the two mirrors and their product keep the properties, the transposes
swap E11 <-> E22, nu12 <-> nu21 and d1 <-> d2 (FE-tested); the oracle is the batched unit-cell
solver (no conditions) or the tiling solver, with peak von Mises stresses as the extra "vm".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from deepdram.errors import InputError, check_integer
from deepdram.spaces.base import DesignSpace, Evaluation, FeatureSet, Progress, Rule, Symmetry
from deepdram.spaces.lattice import geometry
from deepdram.spaces.lattice import rules
from deepdram.spaces.lattice.constants import (
    BIT_COLUMNS,
    D_MAX,
    D_MIN,
    PROPERTY_BOUNDS,
    PROPERTY_COLUMNS,
    SIZE_COLUMNS,
    UNIT_CELL,
    ZG_VALUES,
)

SWAP_PROPS = np.array([1, 0, 3, 2])  # transposing a design swaps E11 <-> E22 and nu12 <-> nu21
SWAP_SIZES = np.array([1, 0])


def _gather(perm: np.ndarray) -> np.ndarray:
    """Gather indices of a beam permutation (new beam perm[k] takes old beam k)."""
    return geometry.transform(np.arange(len(perm))[None], perm)[0]


class LatticeSpace(DesignSpace):
    """Random-network lattices: unit cells of 42 candidate beams, tiled D1 x D2."""

    name: ClassVar[str] = "lattice"
    description: ClassVar[str] = "42-beam random-network lattices (Deep-DRAM), unit cells or D1 x D2 tilings"
    variables: ClassVar[tuple[str, ...]] = BIT_COLUMNS
    properties: ClassVar[tuple[str, ...]] = PROPERTY_COLUMNS
    property_bounds: ClassVar[dict] = PROPERTY_BOUNDS
    conditions: ClassVar[tuple[str, ...]] = SIZE_COLUMNS
    condition_bounds: ClassVar[tuple[tuple[float, float], ...]] = ((D_MIN, D_MAX), (D_MIN, D_MAX))
    binary: ClassVar[bool] = True
    validity_rule: ClassVar[str] = "not all 16 nodes are connected (every node must belong to one connected network)"
    extra_outputs: ClassVar[tuple[str, ...]] = ("vm",)
    feature_sets: ClassVar[tuple[str, ...]] = ("homogenized",)
    derived_text: ClassVar[str] = rules.DERIVED_TEXT
    table_order: ClassVar[tuple[str, ...]] = ("nu12", "nu21", "E11", "E22")  # the paper's tables

    # --- designs -------------------------------------------------------------------------------

    def sample(self, n: int, seed: int | Sequence[int], *, zg: float | None = None, **options) -> np.ndarray:
        """n distinct valid designs with 8 * zg beams (zg required: the connectivity is the design rule)."""
        if options:
            raise InputError(f"unknown sampling option(s) {sorted(options)} for the lattice space; known: zg")
        if zg is None:
            raise InputError(f"the lattice space samples one connectivity at a time: give zg, one of {list(ZG_VALUES)}")
        return geometry.sample_designs(zg, n, seed)

    def is_valid(self, designs: np.ndarray) -> np.ndarray:
        return geometry.is_valid(designs)

    def check_designs(self, designs, *, require_valid: bool = True, what: str = "design") -> np.ndarray:
        return geometry.check_designs(designs, require_valid=require_valid, what=what)

    def keys(self, designs: np.ndarray) -> np.ndarray:
        return geometry.to_keys(designs)

    def designs_of(self, df, *, require_valid: bool = True) -> np.ndarray:
        return geometry.from_frame(df, require_valid=require_valid) if any(c in df.columns for c in BIT_COLUMNS) \
            else super().designs_of(df, require_valid=require_valid)

    # --- conditions ----------------------------------------------------------------------------

    def check_conditions(self, conditions, n: int) -> np.ndarray | None:
        """(n, 2) tiling sizes (even in 2..20), or None for unit cells."""
        if conditions is None:
            return None
        c = np.broadcast_to(np.asarray(conditions), (n, 2)) if np.ndim(conditions) <= 2 else None
        if c is None:
            raise InputError(f"conditions must be (d1, d2) pairs; got shape {np.shape(conditions)}")
        geometry.check_size(c[:, 0], c[:, 1])
        return c.astype(np.int64)

    # --- design requests ------------------------------------------------------------------------

    noun: ClassVar[str] = "these lattices"
    request_keys: ClassVar[tuple[str, ...]] = SIZE_COLUMNS
    required_request_keys: ClassVar[tuple[str, ...]] = SIZE_COLUMNS
    ranking_extras: ClassVar[tuple[str, ...]] = ("vm",)
    tolerance_groups: ClassVar[dict] = {"E": (("E11", "E22"), "relative", 0.10),
                                        "nu": (("nu12", "nu21"), "absolute", 0.05)}

    def sample_for(self, n: int, rng: np.random.Generator, constraints) -> np.ndarray:
        """n random valid designs, each of a connectivity drawn uniformly from the five Z_g values."""
        zgs = rng.choice(ZG_VALUES, size=n)
        out = np.empty((n, len(BIT_COLUMNS)), np.uint8)
        for z in np.unique(zgs):
            rows = np.flatnonzero(zgs == z)
            out[rows] = geometry.sample_designs(float(z), len(rows), int(rng.integers(2**32)), unique=False)
        return out

    def request_size(self, values, where: str) -> tuple[int, int]:
        """(d1, d2): both even in [2, 20] (a tiling), or both 1 (a unit cell)."""
        a = check_integer(values[0], f"{where}.d1", 1, D_MAX)
        b = check_integer(values[1], f"{where}.d2", 1, D_MAX)
        if (a, b) == (UNIT_CELL, UNIT_CELL):
            return a, b
        for name, v in (("d1", a), ("d2", b)):
            if v % 2 or v < D_MIN:
                raise InputError(f"{where}.{name} must be an even integer in [{D_MIN}, {D_MAX}] "
                                 f"(or d1 = d2 = 1 for a unit cell); got {v}")
        return a, b

    def parse_conditions(self, spec, where: str) -> tuple[int, int] | None:
        """(d1, d2) of a tiling, or None for a single unit cell (d1 = d2 = 1)."""
        size = self.request_size((spec["d1"], spec["d2"]), where)
        return None if size == (UNIT_CELL, UNIT_CELL) else size

    def condition_columns(self, conditions, n: int) -> dict[str, np.ndarray]:
        d1, d2 = conditions if conditions is not None else (UNIT_CELL, UNIT_CELL)
        return {"d1": np.full(n, d1), "d2": np.full(n, d2)}

    def secondary(self, extras, n: int):
        """vm1, vm2 (peak von Mises / (Eb eps) per load case) and vm = their Euclidean norm, the
        paper's distance from the origin in Fig. 5b: accepted designs are ranked by it, ascending."""
        vm = extras["vm"] if n else np.zeros((0, 2))
        peak = np.hypot(vm[:, 0], vm[:, 1]) if n else np.zeros(0)
        return {"vm1": vm[:, 0], "vm2": vm[:, 1], "vm": peak}, peak

    # --- symmetries ----------------------------------------------------------------------------

    def symmetries(self) -> list[Symmetry]:
        """identity, left-right, top-bottom and both mirrors, then the transpose of each."""
        ident = np.arange(geometry.N_BEAMS)
        mx, my = _gather(geometry.MIRROR_X), _gather(geometry.MIRROR_Y)
        mirrors = [("identity", ident), ("mirror_x", mx), ("mirror_y", my), ("mirror_xy", mx[my])]
        keep_p, keep_c = np.arange(4), np.arange(2)
        out = [Symmetry(n, v, keep_p, keep_c) for n, v in mirrors]
        swap = _gather(geometry.SWAP_XY)
        out += [Symmetry(f"transpose_{n}" if n != "identity" else "transpose", v[swap], SWAP_PROPS, SWAP_SIZES)
                for n, v in mirrors]
        return out

    # --- the oracle ------------------------------------------------------------------------------

    def evaluate(self, designs, conditions=None, *, extras: Sequence[str] = (), progress: Progress = None,
                 threads: int | None = None, validate: bool = True) -> Evaluation:
        """Unit cells (no conditions) or d1 x d2 tilings, both load cases; extras: "vm" peak stresses."""
        unknown = sorted(set(extras) - set(self.extra_outputs))
        if unknown:
            raise InputError(f"unknown oracle extra(s) {unknown}; the lattice space offers {list(self.extra_outputs)}")
        stress = "vm" in extras
        d = self.check_designs(designs, require_valid=validate)
        if conditions is None:
            from deepdram.spaces.lattice.fem import solve_cells

            r = solve_cells(d, stress=stress, progress=progress, validate=False)
        else:
            from deepdram.spaces.lattice.tiling import solve_tilings

            c = np.asarray(conditions)
            c = np.broadcast_to(c, (len(d), 2))
            r = solve_tilings(d, c[:, 0], c[:, 1], stress=stress, progress=progress, threads=threads,
                              validate=False)
        out = Evaluation(np.asarray(r.properties, float))
        if stress:
            out.extras["vm"] = np.asarray(r.peak_vm, float)
        return out

    has_gradient: ClassVar[bool] = True

    def relaxed_properties(self, x: np.ndarray, conditions=None, *, penalty: float = 3.0, **options) -> np.ndarray:
        """(N, 4) properties of beam densities in [0, 1] (SIMP stiffness; `spaces.lattice.relaxed`)."""
        from deepdram.spaces.lattice import relaxed

        d1, d2 = (None, None) if conditions is None else conditions
        return relaxed.properties(np.atleast_2d(x), d1, d2, penalty=penalty)

    def gradient(self, x: np.ndarray, conditions=None, *, penalty: float = 3.0, **options):
        """(properties (N, 4), d properties / d densities (N, 4, 42)) by the adjoint method."""
        from deepdram.spaces.lattice import relaxed

        d1, d2 = (None, None) if conditions is None else conditions
        return relaxed.gradient(np.atleast_2d(x), d1, d2, penalty=penalty)

    def binarised_counts(self, x: np.ndarray, constraints=None) -> list[int]:
        """The five Z_g beam counts and the rounded density sum."""
        counts = {geometry.beams_for_zg(z) for z in ZG_VALUES} | {int(round(float(np.sum(x[0]))))}
        return sorted(c for c in counts if 15 <= c <= len(BIT_COLUMNS))

    # --- learning ---------------------------------------------------------------------------------

    def keras_objects(self) -> dict:
        from deepdram.spaces.lattice.layers import Homogenization

        return {"deepdram>Homogenization": Homogenization}

    def feature_set(self, name: str) -> FeatureSet | None:
        if name == "homogenized":
            from deepdram.spaces.lattice.layers import HOMOGENIZED

            return HOMOGENIZED
        return super().feature_set(name)

    def classify(self, props: np.ndarray) -> np.ndarray:
        """Auxeticity class per row (0 auxetic, 1 conventional, 2 double-auxetic)."""
        return auxeticity_class(props)

    class_names: ClassVar[tuple[str, ...]] = ("auxetic", "conventional", "double-auxetic")

    # --- data validation --------------------------------------------------------------------------

    def validation_rules(self, kind: str) -> list[Rule]:
        if kind not in rules.KINDS:
            raise InputError(f"unknown lattice dataset kind {kind!r}; known: {', '.join(rules.KINDS)}")
        return rules.rules(kind)

    def derive(self, df):
        return rules.derive(df)

    def derived_columns(self, kind: str) -> tuple[str, ...]:
        return rules.DERIVED_COLUMNS

    def expected_columns(self, kind: str) -> tuple[str, ...]:
        return rules.expected_columns(kind)

    @property
    def report_columns(self) -> dict[str, Any]:
        return {"beams": rules.beams_text}


def auxeticity_class(props) -> np.ndarray:
    """Class per row of (N, 4) properties, as in the paper's section 5.2 / Supplementary Fig. 9:
    0 auxetic (exactly one of nu12, nu21 negative), 1 conventional (both >= 0), 2 double-auxetic
    (both < 0). A Poisson's ratio of exactly 0 counts as non-negative (not auxetic)."""
    p = np.asarray(props, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 4:
        raise InputError(f"props must have shape (N, 4) [E11, E22, nu12, nu21]; got {p.shape}")
    if not np.all(np.isfinite(p[:, 2:])):
        raise InputError("props: non-finite Poisson's ratio; classes need finite nu12, nu21")
    neg = (p[:, 2] < 0).astype(np.int64) + (p[:, 3] < 0).astype(np.int64)
    return np.choose(neg, [1, 0, 2]).astype(np.int64)
