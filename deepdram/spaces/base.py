"""The `DesignSpace` interface: everything the data, learning and design code need of a space.

A design space owns its variables (the columns of a design), what a valid design is, its
properties with their reachable bounds, its conditioning inputs (the lattice's tiling size
`d1, d2`; none elsewhere), sampling, dedupe keys, its exact symmetries, its FE oracle (batched,
with optional extras such as stresses and an optional gradient) and its data-validation rules.
Code outside `deepdram.spaces.<name>` reaches a space only through this interface, so adding a
space is one new subpackage plus one line in `deepdram.spaces.registry`.

Conventions: designs are (N, n_variables) arrays (uint8 0/1 for binary spaces, float64 for
continuous ones); properties are (N, n_properties) float64 in `properties` order; conditions are
(N, n_conditions) float64 in `conditions` order, or None where a space has none (or, for the
lattice, for a single unit cell).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from deepdram.errors import InputError, first_rows

Progress = Callable[[int], None] | None


@dataclass(frozen=True)
class Symmetry:
    """An exact symmetry of the oracle, as gather indices.

    The image of a design x under the symmetry is x[:, variables] (with conditions c[:, conditions]),
    and its properties are y[:, properties]: oracle(x[:, v], c[:, cond]) == oracle(x, c)[:, p].
    """

    name: str
    variables: np.ndarray
    properties: np.ndarray
    conditions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def keeps_properties(self) -> bool:
        """True when the image has the same properties and conditions (an invariance)."""
        return bool(np.array_equal(self.properties, np.arange(len(self.properties)))
                    and np.array_equal(self.conditions, np.arange(len(self.conditions))))


@dataclass
class Evaluation:
    """What the oracle returns for N designs: properties (N, P) and named extras, e.g. stresses."""

    properties: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One data-validation rule, declared by a space and run by Great Expectations.

    `kind` is a Great Expectations expectation class name (e.g. "ExpectColumnValuesToBeInSet");
    `args` its keyword arguments; `meaning` what the rule says about the data; `columns` the
    columns shown beside a failing row; `hint` plain words for rules on derived helper columns.
    """

    kind: str
    args: Mapping[str, Any]
    column: str | None
    rule: str
    meaning: str
    columns: tuple[str, ...] = ()
    hint: str = ""


@dataclass(frozen=True)
class FeatureSet:
    """Extra physics inputs of a regressor: a Keras layer on the design variables and its NumPy twin."""

    name: str
    n_features: int
    layer: Callable[..., Any]  # Keras layer class; called with name=layer_name
    layer_name: str
    numpy: Callable[[np.ndarray], np.ndarray]


SYMMETRY_SETS = ("none", "mirrors", "all")  # identity; the invariances; the whole group


class DesignSpace(ABC):
    """A design space: variables, properties, conditions, sampling, checks, symmetries, oracle."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    variables: ClassVar[tuple[str, ...]]
    properties: ClassVar[tuple[str, ...]]
    property_bounds: ClassVar[Mapping[str, tuple[float, float]]]
    conditions: ClassVar[tuple[str, ...]] = ()
    condition_bounds: ClassVar[tuple[tuple[float, float], ...]] = ()
    binary: ClassVar[bool] = True
    variable_bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    feature_sets: ClassVar[tuple[str, ...]] = ()  # names `feature_set` knows besides "none"

    # --- sizes -------------------------------------------------------------------------------

    @property
    def n_variables(self) -> int:
        return len(self.variables)

    @property
    def n_properties(self) -> int:
        return len(self.properties)

    @property
    def n_conditions(self) -> int:
        return len(self.conditions)

    # --- designs -------------------------------------------------------------------------------

    @abstractmethod
    def sample(self, n: int, seed: int | Sequence[int], **options) -> np.ndarray:
        """(n, n_variables) valid random designs, seeded (space-specific options, e.g. Z_g)."""

    @abstractmethod
    def is_valid(self, designs: np.ndarray) -> np.ndarray:
        """(N,) True where a design is valid (never simulated or stored otherwise)."""

    def check_designs(self, designs, *, require_valid: bool = True, what: str = "design") -> np.ndarray:
        """`designs` as a checked array, else InputError naming the row, the column and the rule."""
        arr = self._as_matrix(designs, what)
        if self.binary:
            bad = ~np.isin(arr, (0, 1))
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise InputError(f"{what} entries must be 0 or 1: row {r} column {self.variables[c]} is "
                                 f"{arr[r, c].item()!r} (rows with bad entries: {first_rows(bad.any(axis=1))})")
            arr = arr.astype(np.uint8)
        else:
            arr = arr.astype(np.float64)
            bad = ~np.isfinite(arr)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise InputError(f"{what} entries must be finite numbers: row {r} column {self.variables[c]} "
                                 f"is {arr[r, c]!r}")
        if require_valid:
            ok = self.is_valid(arr)
            if not ok.all():
                raise InputError(f"invalid {what} in row{'s' if (~ok).sum() > 1 else ''} {first_rows(~ok)}: "
                                 f"{self.validity_rule}")
        return arr

    validity_rule: ClassVar[str] = "the design breaks the space's validity rule"

    def _as_matrix(self, designs, what: str) -> np.ndarray:
        """A 2D numeric array with n_variables columns, else InputError."""
        n = self.n_variables
        try:
            arr = np.asarray(designs)
        except ValueError:  # ragged rows
            lengths = [len(r) for r in designs]
            bad = [i for i, k in enumerate(lengths) if k != n]
            raise InputError(f"a {what} must have {n} entries ({self.variables_text}); row "
                             f"{bad[0] if bad else '?'} has {lengths[bad[0]] if bad else '?'}") from None
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != n:
            raise InputError(f"a {what} must have {n} entries ({self.variables_text}); got shape "
                             f"{tuple(np.shape(designs))}")
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{what} entries must be numbers; got dtype {arr.dtype}")
        return arr

    @property
    def variables_text(self) -> str:
        """The variable columns in words, e.g. 'b00..b41'."""
        v = self.variables
        return f"{v[0]}..{v[-1]}" if len(v) > 3 else ", ".join(v)

    def keys(self, designs: np.ndarray) -> np.ndarray:
        """Exact dedupe keys, one per design (uint64 bit-packing for binary spaces of <= 64 variables)."""
        d = np.atleast_2d(np.asarray(designs))
        if self.binary and self.n_variables <= 64:
            packed = np.packbits(d.astype(np.uint8), axis=1, bitorder="little")
            buf = np.zeros((d.shape[0], 8), dtype=np.uint8)
            buf[:, : packed.shape[1]] = packed
            return buf.view("<u8").ravel().astype(np.uint64)
        row = np.ascontiguousarray(d.astype(np.float64 if not self.binary else np.uint8))
        return row.view(np.dtype((np.void, row.dtype.itemsize * row.shape[1]))).ravel()

    def distinct_valid(self, designs: np.ndarray, seen: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(designs, keys, n_valid, n_distinct): valid designs, first occurrence of each key only,
        sorted by key; `seen` (sorted keys kept earlier) are dropped too."""
        keys = self.keys(designs)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        valid_u = self.is_valid(np.asarray(designs)[first])
        n_valid = int(valid_u[inverse.ravel()].sum())
        keep = valid_u
        if seen is not None and len(seen):
            keep = keep & ~np.isin(uniq, seen, assume_unique=True)
        return np.asarray(designs)[first[keep]], uniq[keep], n_valid, int(keep.sum())

    def frame(self, designs: np.ndarray, properties: np.ndarray | None = None, **columns):
        """DataFrame: the variable columns, then extra named columns, then the properties."""
        import pandas as pd

        d = np.asarray(designs)
        df = pd.DataFrame(d.astype(np.uint8) if self.binary else d.astype(np.float64), columns=list(self.variables))
        for name, values in columns.items():
            df[name] = values
        if properties is not None:
            for k, c in enumerate(self.properties):
                df[c] = np.asarray(properties[:, k], dtype=np.float64)
        return df

    def designs_of(self, df, *, require_valid: bool = True) -> np.ndarray:
        """Checked designs from the variable columns of a table (InputError naming what is wrong)."""
        missing = [c for c in self.variables if c not in df.columns]
        if missing:
            if len(missing) == self.n_variables:
                found = ", ".join(repr(str(c)) for c in list(df.columns)[:5])
                more = f", ... ({len(df.columns)} in all)" if len(df.columns) > 5 else ""
                raise InputError(f"missing design columns {self.variables_text} ({self.n_variables} columns"
                                 f"{' of 0/1' if self.binary else ''}); found columns {found}{more}")
            raise InputError(f"missing design column(s): {', '.join(missing)} (need {self.variables_text})")
        block = df[list(self.variables)]
        nonnum = [c for c in self.variables if block[c].dtype.kind not in "biuf"]
        if nonnum:
            c = nonnum[0]
            bad = ~block[c].astype(str).isin(["0", "1", "0.0", "1.0"]) if self.binary else block[c].notna()
            example = block[c][bad].iloc[0] if bad.any() else block[c].iloc[0]
            rule = "0 or 1" if self.binary else "numbers"
            raise InputError(f"design entries must be {rule}: column {c} is not numeric, e.g. row "
                             f"{first_rows(bad.to_numpy(), 1)} holds {example!r}")
        values = block.to_numpy()
        nan = np.isnan(values.astype(float))
        if nan.any():
            r, c = np.argwhere(nan)[0]
            raise InputError(f"design entries must be {'0 or 1' if self.binary else 'numbers'}: row {r} "
                             f"column {self.variables[c]} is empty")
        return self.check_designs(values, require_valid=require_valid)

    # --- conditions ----------------------------------------------------------------------------

    def check_conditions(self, conditions, n: int) -> np.ndarray | None:
        """(n, n_conditions) checked conditions, or None; InputError naming the rule."""
        if conditions is None:
            return None
        if not self.conditions:
            raise InputError(f"the {self.name} space takes no conditions; got {conditions!r}")
        c = np.asarray(conditions, dtype=np.float64)
        return np.broadcast_to(c, (n, self.n_conditions)).copy()

    # --- design requests ------------------------------------------------------------------------

    noun: ClassVar[str] = "this design space"  # in messages: "... the reachable range of <noun>"
    needs_target: ClassVar[bool] = True  # requests name target properties (else an objective)
    request_keys: ClassVar[tuple[str, ...]] = ()  # space-specific keys of a design request
    required_request_keys: ClassVar[tuple[str, ...]] = ()
    default_objective: ClassVar[str] = "mse"

    def parse_conditions(self, spec: Mapping, where: str) -> tuple[int, ...] | None:
        """The conditions of a design request (None: unconditioned), from its space-specific keys."""
        return None

    def request_size(self, values, where: str) -> tuple[int, ...]:
        """A checked tuple of condition values as a sweep lists them."""
        return tuple(int(v) for v in values)

    def condition_columns(self, conditions: tuple[int, ...] | None, n: int) -> dict[str, np.ndarray]:
        """The condition columns of a result table with n rows."""
        if conditions is None:
            return {}
        return {c: np.full(n, v) for c, v in zip(self.conditions, conditions)}

    def secondary(self, extras: Mapping[str, np.ndarray], n: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """(extra result columns, ranking key) from the oracle's extras: accepted designs are ranked
        by the key, ascending (the lattice: peak stress), or by the objective when None."""
        return {}, None

    ranking_extras: ClassVar[tuple[str, ...]] = ()  # oracle extras the ranking needs
    # The engineer's acceptance test: group -> (property columns, "relative" | "absolute", default).
    tolerance_groups: ClassVar[dict[str, tuple[tuple[str, ...], str, float]]] = {}

    def parse_constraints(self, spec: Mapping, where: str) -> dict[str, Any]:
        """Space-specific constraints of a design request (e.g. the composite's soft fraction)."""
        return {}

    def sample_for(self, n: int, rng: np.random.Generator, constraints: Mapping[str, Any]) -> np.ndarray:
        """n random valid designs that meet a request's constraints (random designs for the methods)."""
        return self.sample(n, rng.integers(2**32), **dict(constraints))

    def repair(self, designs: np.ndarray, rng: np.random.Generator, constraints: Mapping[str, Any]) -> np.ndarray | None:
        """Designs changed minimally to meet the constraints, or None when the space has no repair
        (then invalid designs are scored as unfit)."""
        return None

    def binarised_counts(self, x: np.ndarray, constraints: Mapping[str, Any] | None = None) -> list[int]:
        """How many ones to rank relaxed variables to when binarising (topology optimisation)."""
        if not self.binary:
            return []
        n = self.constrained_ones(constraints or {})
        return [n] if n is not None else [int(round(float(np.sum(x[0]))))]

    def constrained_ones(self, constraints: Mapping[str, Any]) -> int | None:
        """How many variables are 1 in every design meeting the constraints (None: free)."""
        return None

    def meets(self, designs: np.ndarray, constraints: Mapping[str, Any]) -> np.ndarray:
        """(N,) True where designs meet the request's constraints."""
        return np.ones(len(designs), bool)

    # --- symmetries ----------------------------------------------------------------------------

    def symmetries(self) -> list[Symmetry]:
        """The exact symmetry group of the oracle, identity first (default: the identity only)."""
        return [self.identity()]

    def identity(self) -> Symmetry:
        return Symmetry("identity", np.arange(self.n_variables), np.arange(self.n_properties),
                        np.arange(self.n_conditions))

    def symmetry_set(self, which: str) -> list[Symmetry]:
        """'none': the identity; 'mirrors': the symmetries keeping properties and conditions; 'all'."""
        if which not in SYMMETRY_SETS:
            raise InputError(f"symmetries must be one of {SYMMETRY_SETS}; got {which!r}")
        group = self.symmetries()
        if which == "none":
            return group[:1]
        if which == "mirrors":
            return [s for s in group if s.keeps_properties]
        return group

    # --- the oracle ------------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self, designs, conditions=None, *, extras: Sequence[str] = (), progress: Progress = None,
                 threads: int | None = None) -> Evaluation:
        """FE (or exact) properties of N designs (at N conditions); `extras` names optional outputs."""

    extra_outputs: ClassVar[tuple[str, ...]] = ()  # names `evaluate` accepts in `extras`
    has_gradient: ClassVar[bool] = False  # `gradient` is implemented (exact, e.g. by the adjoint method)
    relaxed_init: ClassVar[float] = 0.5  # where a relaxed (topology) optimisation starts

    def relaxed_properties(self, x: np.ndarray, conditions=None, **options) -> np.ndarray:
        """(N, P) oracle properties of relaxed designs (binary spaces: variables in [0, 1])."""
        raise NotImplementedError(f"the {self.name} space has no relaxed oracle")

    def gradient(self, x: np.ndarray, conditions=None, **options) -> tuple[np.ndarray, np.ndarray]:
        """(properties (N, P), d properties / d relaxed variables (N, P, n_variables)) where supported."""
        raise NotImplementedError(f"the {self.name} space has no oracle gradient")

    # --- learning ---------------------------------------------------------------------------------

    def keras_objects(self) -> dict:
        """The space's own Keras layers by registered name (what loading its saved models needs)."""
        return {}

    table_order: ClassVar[tuple[str, ...] | None] = None  # display order of regression tables
    class_names: ClassVar[tuple[str, ...]] = ()  # names of `classify`'s classes, if any

    def classify(self, props: np.ndarray) -> np.ndarray | None:
        """A class id per row of properties (e.g. the lattice's auxeticity classes), or None."""
        return None

    def feature_set(self, name: str) -> FeatureSet | None:
        """The physics feature set `name` of the regressors (None for "none")."""
        if name == "none":
            return None
        raise InputError(f"the {self.name} space has no feature set {name!r}; known: "
                         f"{', '.join(('none', *self.feature_sets))}")

    # --- data validation --------------------------------------------------------------------------

    derived_text: ClassVar[str] = ""  # what `derive`'s helper columns mean, for reports

    @property
    def report_columns(self) -> dict[str, Callable[[Any, int], str]]:
        """Pseudo-columns reports may show beside a failing row: name -> text(frame, row)."""
        return {}

    def validation_rules(self, kind: str) -> list[Rule]:
        """The data-validation rules of a dataset kind of this space (see data.validation)."""
        raise NotImplementedError(f"the {self.name} space declares no validation rules")

    def derive(self, df):
        """Copy of `df` with positional index and any helper columns its rules check."""
        return df.reset_index(drop=True)

    def derived_columns(self, kind: str) -> tuple[str, ...]:
        """Helper columns `derive` appends for a dataset kind."""
        return ()

    def expected_columns(self, kind: str) -> tuple[str, ...]:
        """Ordered columns a dataset of `kind` must have."""
        raise NotImplementedError(f"the {self.name} space has no datasets of kind {kind!r}")
