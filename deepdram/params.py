"""The typed, strict schema of params.yaml: every section, every key, its type and its range.

`load()` reads and checks the whole file before any stage does work: an unknown or misspelt key
anywhere fails naming the key and its section; a wrong type names the key, the value and what
was expected. Stages then read their own section as typed attributes (`params.cells.per_zg`).
`check_overrides()` checks an overrides file (params-paper.yaml) against the same schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from deepdram.design.methods.names import BUILT_IN
from deepdram.errors import InputError
from deepdram.learn.backend import BACKENDS
from deepdram.spaces.lattice.constants import TILING_SIZES, ZG_VALUES



class Section(BaseModel):
    """A params section: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


# --- execution ----------------------------------------------------------------------------------


class Dask(Section):
    """Execution only, never an input of a stage's result (not a DVC dependency)."""

    scheduler: str | None = None
    n_workers: PositiveInt | None = None
    threads_per_worker: PositiveInt = 1


class Keras(Section):
    """The Keras backend of the stages that train (an input of their results: float arithmetic
    differs by backend); `evaluate` and served models run on TensorFlow."""

    backend: Literal[BACKENDS] = "tensorflow"


# --- data stages ------------------------------------------------------------------------------------


class Cells(Section):
    per_zg: PositiveInt
    zg: list[float]
    shard_size: PositiveInt
    seed: Seed

    @field_validator("zg")
    @classmethod
    def _zg(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("must be a non-empty list of Z_g values")
        for z in v:
            if not any(abs(z - a) < 1e-9 for a in ZG_VALUES):
                raise ValueError(f"has unknown Z_g {z!r}; supported: {list(ZG_VALUES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"repeats a Z_g value: {v}")
        return [float(z) for z in v]


class Undersampling(Section):
    e_decimals: Count
    nu_decimals: Count
    max_per_group: PositiveInt


class Oversampling(Section):
    base_size: PositiveInt
    rare_quantile: Fraction
    factor: PositiveInt
    k_neighbors: PositiveInt
    noise_swaps: PositiveInt


class NoResampling(Section):
    size: PositiveInt


class SplitFractions(Section):
    train: Fraction
    val: Fraction
    test: Fraction

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.train + self.val + self.test - 1) > 1e-9:
            raise ValueError(f"fractions must sum to 1; got {self.model_dump()}")
        return self


class Resample(Section):
    method: Literal["under", "over", "none"]
    seed: Seed
    under: Undersampling
    over: Oversampling
    none: NoResampling
    split: SplitFractions


class Tilings(Section):
    cells: PositiveInt
    sizes_per_cell: PositiveInt
    sizes: list[int]
    shard_size: PositiveInt
    seed: Seed

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must be a non-empty list of sizes")
        for d in v:
            if d not in TILING_SIZES:
                raise ValueError(f"has size {d!r}; sizes must be even integers in [2, 20]")
        return sorted(set(v))

    @model_validator(mode="after")
    def _enough_sizes(self):
        if self.sizes_per_cell > len(self.sizes) ** 2:
            raise ValueError(f"sizes_per_cell = {self.sizes_per_cell} exceeds the {len(self.sizes) ** 2} "
                             "(d1, d2) sizes")
        return self


class DataReport(Section):
    seed: Seed


# --- tuning -----------------------------------------------------------------------------------------


class RangeSpec(Section):
    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError(f"needs low <= high; got low {self.low}, high {self.high}")
        return self


class Fit(Section):
    epochs: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    learning_rate: Annotated[float, Field(gt=0)] | None = None


class Pruner(Section):
    """How a study stops weak trials early (the step is the epoch over the folds: fold * epochs + epoch).

    kind median: Optuna's median pruner (a trial below the median of earlier trials at the same step
    stops) after `startup_trials` trials and `warmup_epochs` steps; kind halving: asynchronous
    successive halving (a trial goes on past the rung at step min_epochs * reduction_factor**k only if
    it is in the best 1 / reduction_factor of the trials that reached that rung). `startup_trials` is
    also the TPE sampler's number of random start-up trials."""

    kind: Literal["median", "halving"] = "median"
    startup_trials: Count = 5
    warmup_epochs: Count = 2
    min_epochs: PositiveInt = 1
    reduction_factor: Annotated[int, Field(ge=2)] = 3


class Heartbeat(Section):
    interval: PositiveInt = 10
    grace: PositiveInt = 30


class TuneData(Section):
    pool_cells: PositiveInt = 100_000


class Tune(Section):
    """One hyperparameter study (`tune_<model>`); the model-specific checks are in `_model_checks`."""

    backend: Literal["optuna", "keras_tuner"] = "optuna"
    storage: str | None = None
    trials: PositiveInt = 20
    seed: Seed = 0
    folds: Annotated[int, Field(ge=2)] = 3
    rows: PositiveInt = 6000
    fit: Fit = Fit()
    pruner: Pruner = Pruner()
    heartbeat: Heartbeat = Heartbeat()
    data: TuneData = TuneData()
    space: dict[str, list[Any] | RangeSpec]
    paper: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    score: str = ""

    @field_validator("space")
    @classmethod
    def _space(cls, v):
        if not v:
            raise ValueError("must be a non-empty mapping of search parameters")
        for k, spec in v.items():
            if isinstance(spec, list) and not spec:
                raise ValueError(f"'{k}' is an empty list of choices")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        for k, val in self.paper.items():
            spec = self.space.get(k)
            ok = spec is not None and (val in spec if isinstance(spec, list) else spec.low <= val <= spec.high)
            if not ok:
                raise ValueError(f"paper.{k} = {val!r} is not in the search space")
        if self.backend == "keras_tuner" and self.storage and not self.storage.startswith("sqlite"):
            raise ValueError(f"storage {self.storage!r}: shared storage needs backend optuna "
                             "(Keras-Tuner keeps its state in a folder)")
        return self


class TuneForward(Tune):
    pass


class TuneSizeAgnostic(Tune):
    pass


class TuneCVAE(Tune):
    pass


# --- training, evaluation, promotion -------------------------------------------------------------


class TrainRegressor(Section):
    source: Literal["paper", "tuned"] = "paper"
    augment: Literal["none", "mirrors", "all"] = "none"
    max_train_rows: PositiveInt | None = None
    model: dict[str, Any] = {}

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        from deepdram.learn.configs import RegressorConfig

        _check_config(RegressorConfig, v)
        return v


class TrainCVAE(Section):
    source: Literal["paper", "tuned"] = "paper"
    max_train_rows: PositiveInt | None = None
    model: dict[str, Any] = {}

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        from deepdram.learn.configs import CVAEConfig

        _check_config(CVAEConfig, v)
        return v


def _check_config(cls, overrides: Mapping) -> None:
    """Unknown config keys and bad values of a model override mapping, naming the key."""
    from dataclasses import fields

    names = sorted(f.name for f in fields(cls))
    for key in overrides:
        if key not in names:
            raise PydanticCustomError("config_field", "{detail}", {
                "field": key, "detail": f"is not a {cls.__name__} setting; allowed: {', '.join(names)}"})
    try:
        cls.from_dict(dict(overrides))
    except InputError as exc:
        text = str(exc)
        field = next((n for n in names if text.startswith(n + " ")), None)
        if field is None:
            raise ValueError(text) from None
        raise PydanticCustomError("config_field", "{detail}", {"field": field, "detail": text[len(field) + 1:]}) from None


class Evaluate(Section):
    seed: Seed
    generator_k: PositiveInt
    generator_targets: PositiveInt
    tsne_points: PositiveInt
    fresh_per_zg: PositiveInt = 2000
    fresh_tilings: PositiveInt = 2000
    fresh_seed: Seed = 20261201


class Promote(Section):
    tolerance: NonNegative
    force: bool = False


# --- design -------------------------------------------------------------------------------------------


class SweepProfile(Section):
    n_candidates: PositiveInt | None = None
    sizes: list[list[int]] | None = None
    target_stride: PositiveInt = 1
    single_image: bool = False

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v):
        if v is None:
            return v
        for i, s in enumerate(v):
            ok = len(s) == 2 and (tuple(s) == (1, 1) or all(d in TILING_SIZES for d in s))
            if not ok:
                raise ValueError(f"sizes[{i}] = {s}: need [d1, d2], both even in [2, 20] (or [1, 1])")
        return v


class Design(Section):
    requests: list[str]
    objective: Literal["mse", "scaled"] = "mse"
    n_candidates: PositiveInt | None = None
    sweep: str | None = None
    sweep_profile: SweepProfile = SweepProfile()
    export_top: Count = 2
    register_designer: bool = Field(True, alias="register")
    tolerance: NonNegative = 0.0

    @field_validator("requests")
    @classmethod
    def _requests(cls, v):
        if not all(v):
            raise ValueError("must be a list of request names (files in data/requests/, without .yaml)")
        return v


def _method_names(methods: dict) -> dict:
    """`methods` unless a name is not a built-in method. Names only: each stage checks the options
    through the method registry before any work (importing it here would make every stage depend on
    the methods' code); `deepdram params check` checks both."""
    for name in methods:
        if name not in BUILT_IN:
            raise ValueError(f"has unknown method {name!r}; known: {', '.join(BUILT_IN)}")
    return methods


class CompareMethods(Section):
    """The head-to-head of the design methods (`compare_methods`)."""

    test_cells: Count = 2
    tiling_sizes: list[list[int]] = [[4, 4], [10, 10], [20, 2]]
    requests: list[str] = []
    rare: bool = True
    objective: Literal["mse", "scaled"] = "scaled"
    n_candidates: PositiveInt = 20000
    top_k: PositiveInt = 20
    race_seconds: Annotated[float, Field(gt=0)] = 3.0
    race_fe: PositiveInt = 100
    fe_race_time_cap: Annotated[float, Field(gt=0)] | None = 20.0
    seed: Seed = 0
    methods: dict[str, dict[str, Any]]

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if not v:
            raise ValueError("must name at least one method")
        return _method_names(v)


class PeaksDemo(Section):
    """The GIDN seed's peaks demonstration (`peaks_demo`)."""

    points: PositiveInt = 10_000
    train: PositiveInt = 8_000
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 100
    learning_rate: Annotated[float, Field(gt=0)] = 3e-3
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    n_starts: PositiveInt = 1000
    sd: Annotated[float, Field(gt=0)] = 1.5
    steps: PositiveInt = 300
    lr: Annotated[float, Field(gt=0)] = 0.01
    seed: Seed = 0


# --- the composite space (GIDN, SPEC section 8) -------------------------------------------------------


def _soft_fraction(v: float) -> float:
    """A soft fraction that is a whole number of the 32 design cells."""
    k = v * 32
    if abs(k - round(k)) > 1e-9:
        raise ValueError(f"must be a multiple of 1/32 (a whole number of the 32 cells), e.g. 0.125, 0.25; got {v!r}")
    return v


class Composite(Section):
    """The composite system every composite stage reads: FE parameters and the soft fraction."""

    m: PositiveInt = 1  # Q4 elements per cell side
    ratio: Annotated[float, Field(gt=0)] = 10.0  # stiff / soft modulus
    soft_fraction: Fraction = 0.125  # share of soft cells (the seed's volume fraction)

    @field_validator("soft_fraction")
    @classmethod
    def _soft(cls, v: float) -> float:
        return _soft_fraction(v)


class CompositeBruteForce(Section):
    shard_size: PositiveInt = 5000  # designs per Dask task / Parquet shard
    bins: PositiveInt = 100  # histogram bins


class CompositeData(Section):
    groups: list[PositiveInt] = [100, 1000]  # nested training groups (the seed's Table S1)
    test: PositiveInt = 2000  # held-out random designs
    seed: Seed = 0

    @field_validator("groups")
    @classmethod
    def _groups(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list of distinct group sizes; got {v}")
        return sorted(v)


class CompositeTune(Tune):
    """The seed's 28-structure study (depths x widths) as an Optuna study in MLflow."""

    grid: bool = True  # try every configuration of the (list-valued) space first, as the seed did
    space: dict[str, list[Any] | RangeSpec] = {"hidden_layers": [2, 4, 6, 8],
                                               "first_width": [16, 32, 64, 128, 256, 512, 1024]}


class CompositeTrain(Section):
    source: Literal["paper", "tuned"] = "paper"  # paper: the seed's 6 x 64 (+ `model`); tuned: the study's best
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1  # of the training group, for the curves
    model: dict[str, Any] = {}
    tolerance: NonNegative = 0.01  # gated promotion on test R2
    force: bool = False

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        from deepdram.learn.configs import RegressorConfig

        _check_config(RegressorConfig, v)
        return v


class CompositeTable(Section):
    """Table S1 / S2: a predictor per training group drives the backprop designer."""

    n_starts: PositiveInt = 10000  # Gaussian starts (seed: 1,000,000)
    steps: PositiveInt = 150  # Adam steps of the designer
    lr: Annotated[float, Field(gt=0)] = 0.1
    sd: Annotated[float, Field(gt=0)] = 1.5  # of the Gaussian starts (seed: 1.5)
    model: dict[str, Any] = {}  # the per-group predictor: the seed's 6 x 64 with these overrides
    seed: Seed = 0

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        from deepdram.learn.configs import RegressorConfig

        _check_config(RegressorConfig, v)
        return v


class CompositeRace(Section):
    """The head-to-head: every method under equal wall time, then under equal FE calls."""

    repeats: PositiveInt = 3  # seeds per method
    seconds: Annotated[float, Field(gt=0)] = 6.0  # equal-time budget per run
    fe: PositiveInt = 2000  # equal-FE budget per run (verification included)
    fe_time_cap: Annotated[float, Field(gt=0)] = 20.0  # bounds a slow method's wall time in the FE race
    methods: dict[str, dict[str, Any]] = {}

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return _method_names(v)


class CompositeDesign(Section):
    table: CompositeTable = CompositeTable()
    race: CompositeRace = CompositeRace()
    top_k: PositiveInt = 20  # designs verified by FE per head-to-head run of a surrogate method


class Params(Section):
    """The whole params.yaml."""

    dask: Dask = Dask()
    keras: Keras = Keras()
    cells: Cells
    resample: Resample
    tilings: Tilings
    data_report: DataReport
    tune_forward: TuneForward
    tune_size_agnostic: TuneSizeAgnostic
    tune_cvae: TuneCVAE
    train_forward: TrainRegressor
    train_size_agnostic: TrainRegressor
    train_cvae: TrainCVAE
    evaluate: Evaluate
    promote: Promote
    design: Design
    compare_methods: CompareMethods
    peaks_demo: PeaksDemo
    composite: Composite = Composite()
    composite_brute_force: CompositeBruteForce = CompositeBruteForce()
    composite_data: CompositeData = CompositeData()
    composite_tune: CompositeTune = CompositeTune()
    composite_train: CompositeTrain = CompositeTrain()
    composite_design: CompositeDesign = CompositeDesign()


SECTIONS = tuple(Params.model_fields)
EXECUTION_SECTIONS = ("dask",)  # read by stages but never an input of their results


# --- errors that name the key -------------------------------------------------------------------------


_EXPECTED = {
    "int_type": "must be an integer", "int_parsing": "must be an integer", "float_type": "must be a number",
    "float_parsing": "must be a number", "bool_type": "must be true or false", "string_type": "must be a string",
    "list_type": "must be a list", "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping", "none_required": "must be null",
}


def _where(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        elif p in ("list[any,RangeSpec]", "RangeSpec", "list[any]", "int", "float", "str", "none",
                   "constrained-int", "constrained-float") or p.startswith(("list[", "function-")):
            continue  # pydantic's union-member labels
        else:
            parts.append(str(p))
    return ".".join(parts)


def _message(err: dict, source: str) -> str:
    """One line naming the key (section.key), the value and what was expected."""
    key = _where(err["loc"])
    section = key.split(".")[0] if key else ""
    value = err.get("input")
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        where = f"section '{'.'.join(key.split('.')[:-1])}'" if "." in key else "the file (no such section)"
        return f"{source}: unknown key '{key}' in {where}"
    if kind == "missing":
        return f"{source}: missing key '{key}'" + (f" in section '{section}'" if "." in key else " (a section)")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        what = "an integer" if isinstance(value, int) and not isinstance(bound, float) else "a number"
        return f"{source}: '{key}' must be {what} {op} {bound}; got {value!r}"
    if kind == "literal_error":
        return f"{source}: '{key}' must be one of {ctx.get('expected', '')}; got {value!r}"
    if kind == "config_field":
        return f"{source}: '{key}.{ctx['field']}' {ctx['detail']}"
    if kind == "value_error":
        return f"{source}: '{key}' {str(ctx.get('error', err['msg']))}" + (
            "" if isinstance(value, (dict, list)) else f"; got {value!r}")
    expected = _EXPECTED.get(kind, err["msg"].lower().replace("input should be", "must be"))
    return f"{source}: '{key}' {expected}; got {value!r}"


def _first_error(exc: ValidationError, source: str) -> str:
    errors = exc.errors(include_url=False)
    # A union reports one error per member: name the most specific (the deepest location).
    rank = {"value_error": 3, "config_field": 3, "extra_forbidden": 2, "missing": 2}
    best = max(errors, key=lambda e: (rank.get(e["type"], 1 if e["type"] != "model_type" else 0), len(e["loc"])))
    more = len({_where(e["loc"]) for e in errors}) - 1
    return _message(best, source) + (f" (and {more} more problem{'s' * (more > 1)})" if more > 0 else "")


# --- loading --------------------------------------------------------------------------------------------


def read_yaml(path: Path | str) -> dict:
    """A YAML mapping from a file (InputError if missing, unreadable or not a mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of section names to parameters")
    return data


def parse(data: Mapping, source: str = "params.yaml") -> Params:
    """The typed params of a mapping (InputError naming the first bad key)."""
    try:
        return Params.model_validate(dict(data))
    except ValidationError as exc:
        raise InputError(_first_error(exc, source)) from None


def load(path: Path | str | None = None) -> Params:
    """The checked params.yaml (default: the project's)."""
    if path is None:
        from deepdram.paths import PARAMS_PATH

        path = PARAMS_PATH
    return parse(read_yaml(path), Path(path).name)


def merge(base: Mapping, overrides: Mapping) -> dict:
    """`base` with `overrides` applied key by key: nested mappings merged, other values replaced
    (what `dvc exp run -S key=value` does with each leaf)."""
    out = dict(base)
    for k, v in overrides.items():
        nested = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = merge(out[k], v) if nested else v
    return out


def flat_overrides(overrides: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} leaves of an overrides mapping (lists stay whole)."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_overrides(v, key + "."))
        else:
            out[key] = v
    return out


def _hydra(value: Any) -> str:
    """A value in the override grammar `dvc exp run -S` parses (Hydra's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if text.replace("_", "").replace("-", "").isalnum() else "'" + text.replace("'", "\\'") + "'"


def _has(data: Mapping, dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def exp_run_args(base: Path | str, overrides: Path | str) -> list[str]:
    """`-S key=value` arguments of `dvc exp run` that apply an overrides file to `base`
    (keys absent from `base` get Hydra's `+` prefix); the overrides are checked first."""
    check_overrides(base, overrides)
    data = read_yaml(base)
    args = []
    for key, value in flat_overrides(read_yaml(overrides)).items():
        args += ["-S", f"{'' if _has(data, key) else '+'}{key}={_hydra(value)}"]
    return args


def changed_sections(base: Mapping, overrides: Mapping) -> list[str]:
    """Sections whose values the overrides change."""
    merged = merge(base, overrides)
    return [s for s in merged if merged.get(s) != base.get(s)]


def check_overrides(base: Path | str, overrides: Path | str) -> Params:
    """The typed params of `base` with the overrides file applied (InputError naming a bad key)."""
    data = read_yaml(overrides)
    return parse(merge(read_yaml(base), data), f"{Path(overrides).name} (applied to {Path(base).name})")
