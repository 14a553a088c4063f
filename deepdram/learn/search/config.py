"""A study's settings: the checked `tune_<model>` section, and search values -> model configurations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepdram.data.shards import fingerprint
from deepdram.errors import DeepdramError, InputError

MODELS = ("forward", "size_agnostic", "cvae")
BACKENDS = ("optuna", "keras_tuner")
EXPERIMENT = "deepdram-tuning"
# Default score per model, and the scores a study may choose (`tune_<model>.score`).
SCORE = {"forward": "r2", "size_agnostic": "r2", "cvae": "gen_r2"}
SCORES = {"forward": ("r2",), "size_agnostic": ("r2",), "cvae": ("gen_r2", "loss")}
DIRECTIONS = {"r2": "maximize", "gen_r2": "maximize", "loss": "minimize"}
FIT_KEYS = ("epochs", "batch_size", "learning_rate")
# What a study's `pruner` mapping leaves out: the defaults of the params schema's Pruner
PRUNER_DEFAULTS = {"kind": "median", "startup_trials": 5, "warmup_epochs": 2, "min_epochs": 1, "reduction_factor": 3}
# Search keys that are not config fields: data options and the CVAE's width-list recipe.
DATA_KEYS = ("resampling",)
CVAE_RECIPE = ("encoder_layers", "encoder_first_width", "encoder_shape",
               "decoder_layers", "decoder_first_width", "decoder_shape")


class TrialFailed(DeepdramError):
    """A trial that could not produce a finite score (NaN loss)."""


@dataclass
class TuneConfig:
    """One study's settings, checked (from params.yaml section `tune_<model>`)."""

    model: str
    backend: str = "optuna"
    storage: str | None = None
    trials: int = 20
    seed: int = 0
    folds: int = 3
    rows: int = 6000
    fit: dict = field(default_factory=lambda: {"epochs": 8, "batch_size": 128, "learning_rate": 1e-3})
    space: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=lambda: dict(PRUNER_DEFAULTS))
    heartbeat: dict = field(default_factory=lambda: {"interval": 10, "grace": 30})
    data: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)  # config fields every trial uses (e.g. features)
    score: str = ""  # "" = the model's default (SCORE); the CVAE may use "loss", the paper's score
    work_dir: Path = Path("outputs/tuning")  # default sqlite storage and Keras-Tuner folders

    def __post_init__(self):
        self.score = self.score or SCORE[self.model]
        if self.score not in SCORES[self.model]:
            raise InputError(f"params.yaml: 'tune_{self.model}.score' must be one of {SCORES[self.model]}; "
                             f"got {self.score!r}")

    @property
    def direction(self) -> str:
        """'maximize' or 'minimize', by the study's score."""
        return DIRECTIONS[self.score]

    @property
    def study_name(self) -> str:
        """Model plus a fingerprint of everything that changes a trial's score (not trial counts)."""
        key = {"space": self.space, "fit": self.fit, "folds": self.folds, "rows": self.rows,
               "seed": self.seed, "data": self.data, "backend": self.backend}
        if self.fixed:
            key["fixed"] = self.fixed
        if self.score != "r2":  # a new score is a new study (R2 studies keep their names)
            key["score"] = self.score
        return f"{self.model}-{fingerprint(key)[:10]}"


def tune_config(section, model: str, work_dir: Path) -> TuneConfig:
    """The TuneConfig of a checked `tune_<model>` params section (model-specific checks here)."""
    if model not in MODELS:
        raise InputError(f"model must be one of {list(MODELS)}; got {model!r}")
    where = f"tune_{model}"
    space = {k: (v if isinstance(v, list) else v.model_dump(exclude_defaults=True)) for k, v in section.space.items()}
    fit = section.fit.model_dump(exclude_none=True)
    for k in FIT_KEYS:
        if k not in fit and k not in space:
            raise InputError(f"params.yaml: missing key '{where}.fit.{k}'")
    cfg = TuneConfig(model=model, backend=section.backend, storage=section.storage, trials=section.trials,
                     seed=section.seed, folds=section.folds, rows=section.rows, fit=fit, space=space,
                     paper=dict(section.paper), data=section.data.model_dump(exclude_unset=True), fixed=dict(section.fixed),
                     score=section.score, pruner=section.pruner.model_dump(), heartbeat=section.heartbeat.model_dump(),
                     work_dir=Path(work_dir))
    clash = sorted(set(cfg.fixed) & (set(space) | set(FIT_KEYS)))
    unknown = sorted(set(cfg.fixed) - config_fields(model))
    if clash or unknown:
        raise InputError(f"params.yaml: '{where}.fixed' keys {clash or unknown} are "
                         f"{'also searched or fit settings' if clash else f'not {model} config fields'}")
    bad = sorted(set(space) - config_fields(model) - set(DATA_KEYS) - set(CVAE_RECIPE))
    if bad:
        raise InputError(f"params.yaml: '{where}.space' keys {bad} are neither {model} config fields nor data "
                         f"options {list(DATA_KEYS)}" + (f" nor {list(CVAE_RECIPE)}" if model == "cvae" else ""))
    return cfg


# --- search parameters -> model configurations ----------------------------------------------------


def config_fields(model: str) -> set[str]:
    """Field names of the model's config dataclass (RegressorConfig or CVAEConfig)."""
    from dataclasses import fields

    from deepdram.learn import configs

    cls = configs.CVAEConfig if model == "cvae" else configs.RegressorConfig
    return {f.name for f in fields(cls)}


def architecture(model: str, values: Mapping, n_variables: int = 42) -> dict:
    """The config-field dict (what `<model>_best.yaml` holds under `model:`) of search values."""
    from deepdram.learn import configs

    known = config_fields(model)
    out = {k: v for k, v in values.items() if k in known}
    if model == "cvae":
        latent = int(out.get("latent_dim", configs.CVAEConfig().latent_dim))
        for side, n_out in (("encoder", latent), ("decoder", n_variables)):
            if f"{side}_layers" in values:
                out[f"{side}_hidden"] = configs.hidden_widths(
                    values[f"{side}_layers"], values[f"{side}_first_width"],
                    values.get(f"{side}_shape", "triangle"), n_out)
    unknown = sorted(set(values) - known - set(DATA_KEYS) - set(CVAE_RECIPE))
    if unknown:
        raise InputError(f"search parameter(s) {unknown} are neither {model} config fields {sorted(known)} "
                         f"nor data options {list(DATA_KEYS)}")
    return _plain(out)


def _plain(d: Mapping) -> dict:
    """NumPy scalars -> Python values (YAML / MLflow friendly)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, list):
            v = [x.item() if isinstance(x, np.generic) else x for x in v]
        out[k] = v
    return out


def trial_config(cfg: TuneConfig, values: Mapping, n_variables: int = 42):
    """The model config object a trial trains (fit settings from the study unless searched)."""
    from deepdram.learn import configs

    arch = architecture(cfg.model, values, n_variables)
    fit = {k: cfg.fit[k] for k in FIT_KEYS if k in cfg.fit}
    merged = {**fit, **cfg.fixed, **arch, "seed": cfg.seed, "patience": 0}
    cls = configs.CVAEConfig if cfg.model == "cvae" else configs.RegressorConfig
    return cls.from_dict(merged)
