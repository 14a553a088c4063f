"""Hyperparameters of the networks as checked dataclasses (no Keras import: cheap to load).

The paper's selections are supplementary Tables 5 and 11 (regressors) and 7 (CVAE); every field is
checked on construction, and an unknown key in `from_dict` is an error naming the allowed ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from deepdram.errors import InputError

ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "none": None}
OPTIMIZERS = ("adam", "rmsprop")
SHAPES = ("triangle", "rectangle")
SCALINGS = ("minmax", "none")
FEATURES = ("none", "homogenized")  # extra physics inputs of a regressor (a space feature set)
LR_SCHEDULES = ("constant", "cosine")
LOSSES = ("mse", "balanced")
SYMMETRIES = ("none", "mirrors", "all")  # the 4 mirror images, or those and their transposes (8)


def hidden_widths(n_layers: int, first: int, shape: str = "triangle", n_out: int = 4) -> list[int]:
    """Widths of the hidden layers (supplementary section 2.2).

    "rectangle": every layer has `first` units. "triangle": widths decline from `first` by the
    step (first - n_out) / n_layers, rounded up: w_k = ceil(first - k * step), computed in
    integers as first - floor(k * (first - n_out) / n_layers). Gives the paper's 500-376-252-128
    for (4, 500, 4) and 512-428-343-258-174-89 for (6, 512, 4).
    """
    n_layers, first, n_out = int(n_layers), int(first), int(n_out)
    if n_layers < 1 or first < 1 or n_out < 1:
        raise InputError(f"hidden_widths: need n_layers, first, n_out >= 1; got {n_layers}, {first}, {n_out}")
    if shape == "rectangle":
        return [first] * n_layers
    if shape == "triangle":
        return [first - (k * (first - n_out)) // n_layers for k in range(n_layers)]
    raise InputError(f"hidden_widths: shape must be one of {SHAPES}; got {shape!r}")


def _choice(value, allowed, what: str):
    if value not in allowed:
        raise InputError(f"{what} must be one of {tuple(allowed)}; got {value!r}")
    return value


def _positive(value, what: str, *, allow_zero: bool = False, kind=int):
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number; got {value!r}") from None
    if kind is int and v != value and not (isinstance(value, float) and value.is_integer()):
        raise InputError(f"{what} must be an integer; got {value!r}")
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"{what} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")
    return v


class _ConfigMixin:
    """from_dict / to_dict for the config dataclasses (unknown keys are an error)."""

    @classmethod
    def from_dict(cls, d: dict | None):
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"{cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RegressorConfig(_ConfigMixin):
    """Hyperparameters of a forward regressor (supplementary Tables 5 and 11)."""

    hidden_layers: int = 4
    first_width: int = 500
    shape: str = "triangle"
    activation: str = "relu"
    output_activation: str = "relu"
    batch_norm: bool = False
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    batch_size: int = 32
    epochs: int = 200
    scaling: str = "minmax"
    seed: int = 0
    patience: int = 0  # early stopping on val_loss (best weights restored); 0 = off
    # Beyond the paper: "homogenized" adds the design's periodic-homogenisation features
    # (computed exactly inside the model) to the inputs; "cosine" decays the learning rate to 0
    # over the planned epochs.
    features: str = "none"
    lr_schedule: str = "constant"
    # "balanced": MSE per output weighted by 1 / its scaled train variance (mean weight 1), i.e.
    # the mean of (1 - R2) over the outputs; with MinMax targets plain MSE favours E over nu.
    loss: str = "mse"
    # Average the prediction over the design's symmetry images (outputs mapped back): the model
    # becomes exactly invariant / equivariant, as the physics is; inference costs 4x or 8x.
    symmetrize: str = "none"
    # Dropout after every hidden layer during training (the GIDN seed's peaks predictor: 0.5).
    dropout: float = 0.0

    def __post_init__(self):
        self.hidden_layers = _positive(self.hidden_layers, "hidden_layers")
        self.first_width = _positive(self.first_width, "first_width")
        _choice(self.shape, SHAPES, "shape")
        _choice(self.activation, ACTIVATIONS, "activation")
        _choice(self.output_activation, ACTIVATIONS, "output_activation")
        if not isinstance(self.batch_norm, (bool, np.bool_)):
            raise InputError(f"batch_norm must be true or false; got {self.batch_norm!r}")
        self.batch_norm = bool(self.batch_norm)
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        self.learning_rate = _positive(self.learning_rate, "learning_rate", kind=float)
        self.batch_size = _positive(self.batch_size, "batch_size")
        self.epochs = _positive(self.epochs, "epochs")
        _choice(self.scaling, SCALINGS, "scaling")
        self.seed = _positive(self.seed, "seed", allow_zero=True)
        self.patience = _positive(self.patience, "patience", allow_zero=True)
        _choice(self.features, FEATURES, "features")
        _choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        _choice(self.loss, LOSSES, "loss")
        _choice(self.symmetrize, SYMMETRIES, "symmetrize")
        self.dropout = _positive(self.dropout, "dropout", allow_zero=True, kind=float)
        if self.dropout >= 1:
            raise InputError(f"dropout must be in [0, 1); got {self.dropout!r}")

    @classmethod
    def forward_paper(cls, **overrides) -> "RegressorConfig":
        """Unit-cell model, Table 5: 4 layers from 500, triangle, ReLU (also output), Adam 1e-4,
        batch 32, 200 epochs, MinMax, no batch norm."""
        return cls(**{**dict(hidden_layers=4, first_width=500, shape="triangle", activation="relu",
                             output_activation="relu", batch_norm=False, optimizer="adam",
                             learning_rate=1e-4, batch_size=32, epochs=200, scaling="minmax"),
                      **overrides})

    @classmethod
    def size_agnostic_paper(cls, **overrides) -> "RegressorConfig":
        """Size-agnostic model, Table 11: 6 layers from 512, triangle, ReLU (also output),
        Adam 1e-4, batch 128, 200 epochs, MinMax."""
        return cls(**{**dict(hidden_layers=6, first_width=512, shape="triangle", activation="relu",
                             output_activation="relu", batch_norm=False, optimizer="adam",
                             learning_rate=1e-4, batch_size=128, epochs=200, scaling="minmax"),
                      **overrides})


@dataclass
class CVAEConfig(_ConfigMixin):
    """Hyperparameters of the CVAE (supplementary Table 7)."""

    latent_dim: int = 8
    encoder_hidden: list[int] = field(default_factory=lambda: [512, 260])
    decoder_hidden: list[int] = field(default_factory=lambda: [512, 260])
    activation: str = "relu"
    # Paper: ReLU. Default "none" (linear mean and log-variance); see the module docstring.
    encoder_output_activation: str = "none"
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    batch_size: int = 32
    epochs: int = 2000
    beta_kl: float = 1.0
    # Not in the paper (0: off). Nats per latent dimension below which the KL term stops pulling:
    # against posterior collapse (KL ~1e-4 nats, z ignored, measured with a tuned CVAE here).
    kl_free_bits: float = 0.0
    weight_mse: float = 1.0
    seed: int = 0
    patience: int = 0

    def __post_init__(self):
        self.latent_dim = _positive(self.latent_dim, "latent_dim")
        for what in ("encoder_hidden", "decoder_hidden"):
            widths = getattr(self, what)
            if isinstance(widths, (int, np.integer)) or not len(widths):
                raise InputError(f"{what} must be a non-empty list of widths; got {widths!r}")
            setattr(self, what, [_positive(w, what) for w in widths])
        _choice(self.activation, ACTIVATIONS, "activation")
        _choice(self.encoder_output_activation, ACTIVATIONS, "encoder_output_activation")
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        self.learning_rate = _positive(self.learning_rate, "learning_rate", kind=float)
        self.batch_size = _positive(self.batch_size, "batch_size")
        self.epochs = _positive(self.epochs, "epochs")
        self.beta_kl = _positive(self.beta_kl, "beta_kl", allow_zero=True, kind=float)
        self.kl_free_bits = _positive(self.kl_free_bits, "kl_free_bits", allow_zero=True, kind=float)
        self.weight_mse = _positive(self.weight_mse, "weight_mse", allow_zero=True, kind=float)
        self.seed = _positive(self.seed, "seed", allow_zero=True)
        self.patience = _positive(self.patience, "patience", allow_zero=True)

    @classmethod
    def paper(cls, **overrides) -> "CVAEConfig":
        """Table 7: latent 8, 512-260 both sides, ReLU, Adam 1e-4, batch 32, 2000 epochs."""
        return cls(**overrides)
