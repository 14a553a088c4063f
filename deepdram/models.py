"""The three Deep-DRAM networks in Keras 3: unit-cell forward model, size-agnostic model, CVAE.

Every model this module hands out works in PHYSICAL units: the MinMax scalers are `Affine`
layers inside the model, so one `.keras` file is all a caller needs (`save_model` /
`load_model`). The code only uses `keras.ops` / `keras.random`, so it runs on any Keras 3
backend (TensorFlow is the one installed and tested).

Models and their layouts
------------------------
- Unit-cell forward model ("unit cell elastic properties model", paper section 2.1):
  (N, 42) designs b00..b41 -> (N, 4) [E11/Eb, E22/Eb, nu12, nu21].
- Size-agnostic model (section 2.4): (N, 44) = b00..b41, d1, d2 (raw integers, d1 and d2 even
  in 2..20) -> (N, 4).
- Both are `full` models: input -> Affine (`x_scaler`) -> `core` MLP -> Affine (`y_unscaler`).
  `core` maps scaled inputs to scaled targets and is what `fit` trains (MSE). The design bits are
  left as 0/1; d1, d2 are mapped to [0, 1] by their known range 2..20; targets are MinMax-scaled
  to [0, 1] by the TRAIN split's min and max.
- CVAE (section 2.2, Eq. 3-5): recognition network (42 bits + 4 scaled properties -> z_mean,
  z_log_var), reparameterised sample, reconstruction network (z + 4 scaled properties -> 42
  logits -> sigmoid). The properties are scaled by the forward model's own target scaler.
  Trained with  L = BCE (summed over the 42 bits) + beta_kl * KL(q(z|x,y) || N(0, I))
  + weight_mse * MSE(y_scaled, frozen forward core(reconstructed probabilities)).
  Exported pieces: `generator` ((N, 4 + latent_dim) = 4 physical properties followed by
  standard-normal latent values -> (N, 42) probabilities) and `encoder` ((N, 46) = 42 bits
  followed by 4 physical properties -> (N, latent_dim) z_mean, for the t-SNE plot).

Deviations from the paper (and why)
-----------------------------------
- The paper (Table 7) gives the recognition model's output layer a ReLU. Applied to the mean and
  log-variance of q(z|x, y) a ReLU forbids negative means and variances below 1, so q could
  never match the N(0, I) prior the KL term pulls it to (and the generator is later fed
  N(0, I) samples). `CVAEConfig.encoder_output_activation` records the option; its default
  "none" keeps both heads linear, the standard VAE parameterisation.
- The reconstruction network ends in logits; the sigmoid is a separate layer. The BCE is
  computed from the logits (numerically stable); the probabilities are identical.
- Table 7's reconstruction widths (512, 260) do not follow the triangle rule for 42 outputs
  (which gives 512, 277); the recognition widths do (512, 260 for 8 latent outputs). The CVAE
  therefore takes explicit width lists, defaulting to the paper's [512, 260] for both.
- The regressors' output-layer bias starts at the mean scaled train target instead of 0. With
  the paper's ReLU output a zero start let an output unit die in the first steps (observed on
  tilings: nu12 stuck at the train minimum, R2 -10); the architecture is unchanged.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras imports TensorFlow: no C++ log noise

import keras
import numpy as np
from keras import ops

from deepdram.constants import D_MAX, D_MIN, N_BEAMS
from deepdram.errors import InputError

N_PROPS = 4  # [E11/Eb, E22/Eb, nu12, nu21]
N_SIZE_AGNOSTIC_IN = N_BEAMS + 2  # b00..b41, d1, d2
N_HOMOGENIZED = 12  # Homogenization features (deepdram.homogenize.N_FEATURES)
ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "none": None}
OPTIMIZERS = ("adam", "rmsprop")
SHAPES = ("triangle", "rectangle")
SCALINGS = ("minmax", "none")
FEATURES = ("none", "homogenized")  # extra physics inputs of a regressor (see `Homogenization`)
LR_SCHEDULES = ("constant", "cosine")
LOSSES = ("mse", "balanced")
SYMMETRIES = ("none", "mirrors", "all")  # the 4 mirror images, or those and their transposes (8)
SWAP_PROPS = [1, 0, 3, 2]  # transposing a design swaps E11 <-> E22 and nu12 <-> nu21

# --- Custom layers ---------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="deepdram")
class Affine(keras.layers.Layer):
    """y = x * scale + offset, per feature, with fixed (non-trainable) scale and offset.

    Used for MinMax scaling inside the models and for its inverse (`inverse()`). The values are
    kept in float64 in the layer config (so the inverse is exact) and as float32 weights.
    """

    def __init__(self, scale, offset, **kwargs):
        super().__init__(**kwargs)
        scale = np.asarray(scale, dtype=np.float64).ravel()
        offset = np.asarray(offset, dtype=np.float64).ravel()
        if scale.shape != offset.shape:
            raise InputError(f"Affine: scale has {scale.size} values but offset has {offset.size}")
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset))):
            raise InputError("Affine: scale and offset must be finite")
        if np.any(scale == 0):
            raise InputError("Affine: scale must be non-zero (the layer must be invertible)")
        self.scale_values = scale
        self.offset_values = offset

    @property
    def units(self) -> int:
        return int(self.scale_values.size)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.units:
            raise ValueError(f"Affine '{self.name}' expects {self.units} features; got {input_shape[-1]}")
        self.scale = self.add_weight(name="scale", shape=(self.units,), initializer="ones",
                                     trainable=False)
        self.offset = self.add_weight(name="offset", shape=(self.units,), initializer="zeros",
                                      trainable=False)
        self.scale.assign(self.scale_values.astype(self.scale.dtype))
        self.offset.assign(self.offset_values.astype(self.offset.dtype))

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        return x * self.scale + self.offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def inverse(self, name: str | None = None) -> "Affine":
        """The layer undoing this one: x = (y - offset) / scale."""
        return Affine(1.0 / self.scale_values, -self.offset_values / self.scale_values, name=name)

    def get_config(self):
        config = super().get_config()
        config.update(scale=[float(v) for v in self.scale_values],
                      offset=[float(v) for v in self.offset_values])
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class Columns(keras.layers.Layer):
    """Columns start:stop of a 2D input (splits one packed input into its parts)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, inputs):
        return inputs[:, self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.stop - self.start)

    def get_config(self):
        config = super().get_config()
        config.update(start=self.start, stop=self.stop)
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class Gather(keras.layers.Layer):
    """Columns of a 2D input in a fixed order (a symmetry image of a design, or of properties)."""

    def __init__(self, indices, **kwargs):
        super().__init__(**kwargs)
        self.indices = [int(i) for i in indices]

    def call(self, inputs):
        return ops.take(inputs, ops.convert_to_tensor(np.asarray(self.indices, dtype="int32")), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.indices))

    def get_config(self):
        config = super().get_config()
        config.update(indices=self.indices)
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class Sampling(keras.layers.Layer):
    """Reparameterisation trick: z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (seeded)."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mean, log_var = inputs
        eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class KLDivergence(keras.layers.Layer):
    """Per-sample KL(N(mean, exp(log_var)) || N(0, I)), summed over the latent dimensions: (N, 1)."""

    def call(self, inputs):
        mean, log_var = inputs
        kl = -0.5 * (1.0 + log_var - ops.square(mean) - ops.exp(log_var))
        return ops.sum(kl, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)


@keras.saving.register_keras_serializable(package="deepdram")
class Homogenization(keras.layers.Layer):
    """(N, 42) designs -> (N, 12) periodic-homogenisation features (`deepdram.homogenize`).

    The same FE computation as `homogenize.features` in backend ops (assembly as one matrix
    product, a batched 25 x 25 solve), so a saved model computes its own physics features
    (relative difference to the float64 NumPy reference ~1e-5). No weights: the tables come from
    the geometry and material constants.
    """

    def build(self, input_shape):
        from deepdram import homogenize as H

        # Constants, converted once here rather than on every call.
        self._tables = ops.convert_to_tensor(H.beam_tables(), "float32")
        self._opposite = ops.convert_to_tensor(H.OPPOSITE.astype("int32"))
        self._perimeter = ops.convert_to_tensor(H.ON_PERIMETER)
        self._norm = H.NORM

    def call(self, inputs):
        from deepdram import homogenize as H

        x = ops.cast(inputs, "float32")
        union = ops.maximum(x, ops.take(x, self._opposite, axis=1))
        w = ops.where(self._perimeter, 0.5 * union, x)
        # Assembly in float32 (weights are 0, 0.5, 1: exact; float64 products are ~40x slower on
        # CPU); the solve and the Schur complement, where terms cancel, in float64.
        k = ops.matmul(w, self._tables)
        k = ops.reshape(ops.cast(k, "float64"), (-1, H.N_DOF, H.N_DOF))
        lo, hi = int(H.KEPT[0]), H.N_FREE
        kwe = k[:, lo:hi, hi:]
        sol = ops.solve(k[:, lo:hi, lo:hi], kwe)
        c = k[:, hi:, hi:] - ops.matmul(ops.transpose(kwe, (0, 2, 1)), sol)
        c = 0.5 * (c + ops.transpose(c, (0, 2, 1))) * self._norm
        s = ops.inv(c)
        e1, e2 = 1.0 / s[:, 0, 0], 1.0 / s[:, 1, 1]
        f = ops.stack([c[:, 0, 0], c[:, 1, 1], c[:, 0, 1], c[:, 0, 2], c[:, 1, 2], c[:, 2, 2],
                       e1, e2, -s[:, 0, 1] * e1, -s[:, 0, 1] * e2, s[:, 0, 2] * e1, s[:, 1, 2] * e2], axis=1)
        return ops.cast(f, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        from deepdram.homogenize import N_FEATURES

        return (input_shape[0], N_FEATURES)


# --- Architecture helpers --------------------------------------------------------------------------


def hidden_widths(n_layers: int, first: int, shape: str = "triangle", n_out: int = N_PROPS) -> list[int]:
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


def minmax_scaling(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) mapping each column's [min, max] to [0, 1] (sklearn MinMaxScaler; a
    constant column gets scale 1)."""
    y = np.asarray(y, dtype=np.float64)
    lo, hi = y.min(axis=0), y.max(axis=0)
    span = hi - lo
    span[span == 0] = 1.0
    return 1.0 / span, -lo / span


def feature_scaling(n_in: int, scaling: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) of the model inputs: bits stay 0/1; d1, d2 (size-agnostic layout) go to
    [0, 1] by their known range D_MIN..D_MAX when scaling is "minmax"."""
    scale, offset = np.ones(n_in), np.zeros(n_in)
    if n_in == N_BEAMS:
        return scale, offset
    if n_in == N_SIZE_AGNOSTIC_IN:
        if scaling == "minmax":
            scale[N_BEAMS:] = 1.0 / (D_MAX - D_MIN)
            offset[N_BEAMS:] = -D_MIN / (D_MAX - D_MIN)
        return scale, offset
    raise InputError(f"model inputs must have {N_BEAMS} columns (b00..b41) or {N_SIZE_AGNOSTIC_IN} "
                     f"(b00..b41, d1, d2); got {n_in}")


def _optimizer(name: str, lr: float, schedule: str = "constant", steps: int = 1):
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, int(steps)))
    elif schedule != "constant":
        raise InputError(f"lr_schedule must be one of {LR_SCHEDULES}; got {schedule!r}")
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    raise InputError(f"optimizer must be one of {OPTIMIZERS}; got {name!r}")


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


# --- Forward regressors ----------------------------------------------------------------------------


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


def _mlp(n_in: int, widths: Sequence[int], n_out: int, activation: str, output_activation: str,
         batch_norm: bool, name: str, input_name: str = "scaled_input", output_bias=None):
    """Dense stack: hidden layers (optionally each followed by batch norm), then the output layer
    (its bias initialised to `output_bias` when given, else zeros)."""
    inp = keras.Input((n_in,), name=input_name)
    h = inp
    for i, w in enumerate(widths):
        h = keras.layers.Dense(int(w), activation=ACTIVATIONS[activation], name=f"hidden_{i + 1}")(h)
        if batch_norm:
            h = keras.layers.BatchNormalization(name=f"batch_norm_{i + 1}")(h)
    bias_init = "zeros" if output_bias is None else keras.initializers.Constant(
        np.asarray(output_bias, dtype=np.float64).reshape(n_out).tolist())
    out = keras.layers.Dense(n_out, activation=ACTIVATIONS[output_activation], bias_initializer=bias_init,
                             name="output")(h)
    return keras.Model(inp, out, name=name)


def build_regressor(n_in: int, n_out: int, cfg: RegressorConfig, x_scale=None, x_offset=None,
                    y_scale=None, y_offset=None, name: str | None = None, output_bias=None,
                    feature_stats=None):
    """(core, full): `core` maps scaled inputs to scaled targets; `full` = input ->
    Affine(x_scale, x_offset) -> core -> inverse of Affine(y_scale, y_offset), in physical units.

    The scales and offsets are the FORWARD scalings (scaled = raw * scale + offset); missing ones
    are the identity. `output_bias` (n_out,) initialises the output layer's bias (default zeros).
    With cfg.features == "homogenized" the core also takes the 12 `Homogenization` features of the
    design bits, standardised by `feature_stats` = (mean, std) (default 0, 1), after the scaled
    inputs: `full` computes them itself, so callers still pass bits (and sizes) only.
    """
    ones = lambda n: np.ones(n)  # noqa: E731
    zeros = lambda n: np.zeros(n)  # noqa: E731
    x_scale = ones(n_in) if x_scale is None else x_scale
    x_offset = zeros(n_in) if x_offset is None else x_offset
    y_scale = ones(n_out) if y_scale is None else y_scale
    y_offset = zeros(n_out) if y_offset is None else y_offset
    widths = hidden_widths(cfg.hidden_layers, cfg.first_width, cfg.shape, n_out)
    physics = cfg.features == "homogenized"
    n_core = n_in + (N_HOMOGENIZED if physics else 0)
    core = _mlp(n_core, widths, n_out, cfg.activation, cfg.output_activation, cfg.batch_norm, "core",
                output_bias=output_bias)
    if name is None:
        name = "size_agnostic" if n_in == N_SIZE_AGNOSTIC_IN else "forward"
    x = keras.Input((n_in,), name="features")
    h = Affine(x_scale, x_offset, name="x_scaler")(x)
    if physics:
        mean, std = feature_stats if feature_stats is not None else (np.zeros(N_HOMOGENIZED), np.ones(N_HOMOGENIZED))
        f = Homogenization(name="homogenization")(Columns(0, N_BEAMS, name="design_bits")(x))
        f = Affine(1.0 / np.asarray(std), -np.asarray(mean) / np.asarray(std), name="feature_scaler")(f)
        h = keras.layers.Concatenate(name="core_inputs")([h, f])
    h = core(h)
    y = Affine(y_scale, y_offset).inverse(name="y_unscaler")(h)
    return core, keras.Model(x, y, name=name)


def _as_2d(a, cols: int | None, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or (cols is not None and a.shape[1] != cols):
        raise InputError(f"{what} must be a 2D array{'' if cols is None else f' with {cols} columns'}; "
                         f"got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contains non-finite values")
    return a


def _check_splits(x_tr, y_tr, x_va, y_va, n_in: int | None, n_out: int):
    """Checked 2D float arrays of the train (and, if given, validation) split, and whether there is one."""
    x_tr = _as_2d(x_tr, n_in, "x_train")
    y_tr = _as_2d(y_tr, n_out, "y_train")
    if len(x_tr) != len(y_tr) or len(x_tr) == 0:
        raise InputError(f"x_train and y_train need the same, non-zero number of rows; got {len(x_tr)}, {len(y_tr)}")
    has_val = x_va is not None and y_va is not None
    if has_val:
        x_va = _as_2d(x_va, x_tr.shape[1], "x_val")
        y_va = _as_2d(y_va, n_out, "y_val")
        if len(x_va) != len(y_va):
            raise InputError(f"x_val and y_val row counts differ: {len(x_va)}, {len(y_va)}")
    return x_tr, y_tr, x_va, y_va, has_val


def _history(h) -> dict[str, list[float]]:
    return {k: [float(v) for v in vals] for k, vals in h.history.items()}


def _callbacks(patience: int, has_val: bool, callbacks) -> list:
    cbs = list(callbacks or ())
    if patience > 0:
        if not has_val:
            raise InputError("patience > 0 (early stopping) needs a validation split")
        cbs.insert(0, keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                    restore_best_weights=True))
    return cbs


def homogenized_inputs(x: np.ndarray, stats=None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(standardised Homogenization features of the design bits in x[:, :42], (mean, std)); the
    mean and std are fitted on x unless `stats` is given."""
    from deepdram.homogenize import features

    f = features(np.asarray(x)[:, :N_BEAMS].astype(np.uint8), validate=False)
    if stats is None:
        std = f.std(axis=0)
        stats = (f.mean(axis=0), np.where(std > 0, std, 1.0))
    return (f - stats[0]) / stats[1], stats


def output_weights(y_scaled: np.ndarray) -> np.ndarray:
    """(n_out,) weights 1 / variance of each scaled target, normalised to mean 1."""
    var = np.var(np.asarray(y_scaled, dtype=np.float64), axis=0)
    inv = 1.0 / np.where(var > 0, var, 1.0)
    return inv / inv.mean()


def _regression_loss(name: str, y_scaled: np.ndarray):
    if name == "mse":
        return "mse"
    weights = ops.convert_to_tensor(output_weights(y_scaled).astype(np.float32))

    def balanced_mse(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred) * weights, axis=-1)

    return balanced_mse


def train_regressor(x_tr, y_tr, x_va=None, y_va=None, cfg: RegressorConfig | None = None,
                    n_out: int = N_PROPS, callbacks: Sequence = (), verbose: int = 0):
    """Train a forward model; returns (full_model, history).

    x: (N, 42) designs or (N, 44) designs + d1, d2 (raw); y: (N, n_out) physical targets.
    The target MinMax scaler is fitted on the TRAIN split only (cfg.scaling == "minmax"). The
    core is trained with MSE on scaled targets by `model.fit` (seeded by cfg.seed; early stopping
    on val_loss with best weights restored when cfg.patience > 0). `callbacks` are passed to
    `fit` as they are (their `model` is the core, which works in scaled units).

    history: per-epoch lists "loss" (MSE, or the balanced MSE with cfg.loss == "balanced"), "mae"
    and, with a validation split, "val_loss", "val_mae" - all in SCALED target units (MinMax:
    [0, 1] over the train range). cfg.features == "homogenized" adds the physics features
    (`build_regressor`); cfg.lr_schedule == "cosine" decays the learning rate to 0 over cfg.epochs.
    """
    cfg = cfg or RegressorConfig()
    x_tr, y_tr, x_va, y_va, has_val = _check_splits(x_tr, y_tr, x_va, y_va, None, n_out)
    n_in = x_tr.shape[1]
    keras.utils.set_random_seed(cfg.seed)
    xs, xo = feature_scaling(n_in, cfg.scaling)
    ys, yo = minmax_scaling(y_tr) if cfg.scaling == "minmax" else (np.ones(n_out), np.zeros(n_out))
    # Output bias starts at the mean scaled target: with the paper's ReLU output a zero bias lets
    # an output unit die early (stuck at the train minimum, zero gradient), which we observed.
    y_mean = np.mean(y_tr * ys + yo, axis=0)
    core_in_tr, core_in_va, stats = x_tr * xs + xo, (x_va * xs + xo if has_val else None), None
    if cfg.features == "homogenized":
        # Computed once by the compiled kernel for the core's inputs; `full` recomputes them in-graph.
        f_tr, stats = homogenized_inputs(x_tr)
        core_in_tr = np.concatenate([core_in_tr, f_tr], axis=1)
        if has_val:
            core_in_va = np.concatenate([core_in_va, homogenized_inputs(x_va, stats)[0]], axis=1)
    core, full = build_regressor(n_in, n_out, cfg, xs, xo, ys, yo, output_bias=y_mean, feature_stats=stats)
    steps = cfg.epochs * math.ceil(len(x_tr) / cfg.batch_size)
    core.compile(optimizer=_optimizer(cfg.optimizer, cfg.learning_rate, cfg.lr_schedule, steps),
                 loss=_regression_loss(cfg.loss, y_tr * ys + yo), metrics=["mae"])
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    val = (f32(core_in_va), f32(y_va * ys + yo)) if has_val else None
    h = core.fit(f32(core_in_tr), f32(y_tr * ys + yo), batch_size=cfg.batch_size, epochs=cfg.epochs,
                 validation_data=val, shuffle=True, verbose=verbose,
                 callbacks=_callbacks(cfg.patience, has_val, callbacks))
    return symmetrize(full, cfg.symmetrize), _history(h)


def symmetry_images(n_in: int, which: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input columns, output columns) of each symmetry image: model(x[:, cin])[:, cout] predicts
    the properties of x. Mirrors keep the properties; a transpose also swaps d1 <-> d2 (44 inputs)
    and maps the predicted properties back by swapping 1 <-> 2."""
    from deepdram.lattice import MIRROR_X, MIRROR_Y, SWAP_XY, transform

    _choice(which, SYMMETRIES, "symmetrize")
    ident = np.arange(N_BEAMS)[None]
    mirrors = [ident, transform(ident, MIRROR_X), transform(ident, MIRROR_Y),
               transform(transform(ident, MIRROR_X), MIRROR_Y)]
    images = [(m[0], np.arange(N_PROPS), False) for m in (mirrors if which != "none" else mirrors[:1])]
    if which == "all":
        images += [(transform(m, SWAP_XY)[0], np.asarray(SWAP_PROPS), True) for m in mirrors]
    extra = np.arange(N_BEAMS, n_in)
    return [(np.concatenate([bits, extra[::-1] if swap else extra]), out) for bits, out, swap in images]


def symmetrize(model, which: str):
    """`model` averaged over the design's symmetry images (`symmetry_images`); same inputs and
    outputs, and `model` becomes its nested layer "regressor"."""
    if which == "none":
        return model
    name = model.name
    model.name = "regressor"
    x = keras.Input((model.input_shape[-1],), name="features")
    outs = [Gather(cout, name=f"image_{k}_out")(model(Gather(cin, name=f"image_{k}_in")(x)))
            for k, (cin, cout) in enumerate(symmetry_images(model.input_shape[-1], which))]
    return keras.Model(x, keras.layers.Average(name="symmetry_average")(outs), name=name)


def _inner(model):
    """The regressor inside a symmetrised model (else the model itself)."""
    names = {layer.name for layer in model.layers}
    return model.get_layer("regressor") if "regressor" in names else model


def scalers_of(model) -> tuple[Affine, Affine]:
    """The (x_scaler, y_unscaler) Affine layers of a full forward model."""
    try:
        inner = _inner(model)
        return inner.get_layer("x_scaler"), inner.get_layer("y_unscaler")
    except ValueError:
        raise InputError(f"model '{model.name}' is not a deepdram forward model (no x_scaler / "
                         "y_unscaler layers)") from None


# --- Conditional VAE -------------------------------------------------------------------------------


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
        self.weight_mse = _positive(self.weight_mse, "weight_mse", allow_zero=True, kind=float)
        self.seed = _positive(self.seed, "seed", allow_zero=True)
        self.patience = _positive(self.patience, "patience", allow_zero=True)

    @classmethod
    def paper(cls, **overrides) -> "CVAEConfig":
        """Table 7: latent 8, 512-260 both sides, ReLU, Adam 1e-4, batch 32, 2000 epochs."""
        return cls(**overrides)


@dataclass
class CVAEParts:
    """The trained CVAE's pieces. `generator` and `encoder` work in physical units."""

    generator: Any  # (N, 4 + latent_dim) physical properties + N(0, I) values -> (N, 42) probabilities
    encoder: Any  # (N, 42 + 4) bits + physical properties -> (N, latent_dim) z_mean
    recognition: Any  # [bits, scaled properties] -> [z_mean, z_log_var]
    reconstruction: Any  # [z, scaled properties] -> (N, 42) logits
    cvae: Any  # the training model (outputs recon logits, kl, mse)
    latent_dim: int


def _bce_sum_from_logits(y_true, logits):
    """Binary cross-entropy summed over the 42 bits (per sample), from logits."""
    y_true = ops.cast(y_true, logits.dtype)
    return ops.sum(ops.binary_crossentropy(y_true, logits, from_logits=True), axis=-1)


def _value_as_loss(y_true, y_pred):
    """A loss that is the model output itself (the per-sample KL term)."""
    return ops.mean(y_pred, axis=-1)


def load_model(path):
    """Load a deepdram `.keras` model (custom layers registered by importing this module)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    return keras.saving.load_model(path, compile=False)


def save_model(model, path) -> Path:
    """Save `model` as one `.keras` file (parent folders created)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise InputError(f"model files must end in .keras; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def _frozen_copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.trainable = False
    return clone


def build_cvae(cfg: CVAEConfig, forward_model) -> CVAEParts:
    """Assemble (untrained) the CVAE around a frozen copy of `forward_model` (a full unit-cell model)."""
    fwd = _frozen_copy(forward_model)
    fwd_x, fwd_unscale = scalers_of(fwd)
    if fwd_x.units != N_BEAMS or fwd_unscale.units != N_PROPS:
        raise InputError(f"the CVAE needs a unit-cell forward model ({N_BEAMS} -> {N_PROPS}); "
                         f"got {fwd_x.units} -> {fwd_unscale.units}")
    fwd_core = _inner(fwd).get_layer("core")
    prop_scaler = fwd_unscale.inverse  # physical -> the forward model's scaled target units
    L = cfg.latent_dim
    act = ACTIVATIONS[cfg.activation]
    out_act = ACTIVATIONS[cfg.encoder_output_activation]

    bits = keras.Input((N_BEAMS,), name="bits")
    cond = keras.Input((N_PROPS,), name="scaled_properties")
    h = keras.layers.Concatenate(name="bits_and_properties")([bits, cond])
    for i, w in enumerate(cfg.encoder_hidden):
        h = keras.layers.Dense(w, activation=act, name=f"hidden_{i + 1}")(h)
    z_mean = keras.layers.Dense(L, activation=out_act, name="z_mean")(h)
    z_log_var = keras.layers.Dense(L, activation=out_act, name="z_log_var")(h)
    recognition = keras.Model([bits, cond], [z_mean, z_log_var], name="recognition")

    z_in = keras.Input((L,), name="z")
    c_in = keras.Input((N_PROPS,), name="scaled_properties")
    h = keras.layers.Concatenate(name="latent_and_properties")([z_in, c_in])
    for i, w in enumerate(cfg.decoder_hidden):
        h = keras.layers.Dense(w, activation=act, name=f"hidden_{i + 1}")(h)
    logits = keras.layers.Dense(N_BEAMS, name="logits")(h)
    reconstruction = keras.Model([z_in, c_in], logits, name="reconstruction")

    t_bits = keras.Input((N_BEAMS,), name="bits")
    t_cond = keras.Input((N_PROPS,), name="scaled_properties")
    m, lv = recognition([t_bits, t_cond])
    z = Sampling(seed=cfg.seed, name="sampling")([m, lv])
    t_logits = reconstruction([z, t_cond])
    probs = keras.layers.Activation("sigmoid", name="probabilities")(t_logits)
    pred = fwd_core(fwd_x(probs))
    outputs = {
        "recon": keras.layers.Identity(name="recon")(t_logits),
        "kl": KLDivergence(name="kl")([m, lv]),
        "mse": keras.layers.Identity(name="mse")(pred),
    }
    cvae = keras.Model([t_bits, t_cond], outputs, name="cvae")

    g_in = keras.Input((N_PROPS + L,), name="properties_and_latent")
    g_props = prop_scaler(name="property_scaler")(Columns(0, N_PROPS, name="properties")(g_in))
    g_z = Columns(N_PROPS, N_PROPS + L, name="latent")(g_in)
    g_out = keras.layers.Activation("sigmoid", name="probabilities")(reconstruction([g_z, g_props]))
    generator = keras.Model(g_in, g_out, name="generator")

    e_in = keras.Input((N_BEAMS + N_PROPS,), name="bits_and_properties")
    e_props = prop_scaler(name="property_scaler")(Columns(N_BEAMS, N_BEAMS + N_PROPS, name="properties")(e_in))
    e_mean, _ = recognition([Columns(0, N_BEAMS, name="bits")(e_in), e_props])
    encoder = keras.Model(e_in, e_mean, name="encoder")
    return CVAEParts(generator, encoder, recognition, reconstruction, cvae, L)


def train_cvae(x_tr, y_tr, x_va, y_va, forward_model, cfg: CVAEConfig | None = None,
               callbacks: Sequence = (), verbose: int = 0):
    """Train the CVAE; returns (CVAEParts, history).

    x: (N, 42) 0/1 designs; y: (N, 4) physical properties; `forward_model`: the trained unit-cell
    model (a model or the path of its .keras file). It is copied and frozen; its target scaler
    scales the CVAE's condition properties, and the MSE term compares the scaled target
    properties with its core's prediction on the reconstructed probabilities (scaled units).

    history: per-epoch "loss" (total = recon + beta_kl * kl + weight_mse * mse), and the
    UNWEIGHTED terms "recon_loss" (BCE summed over the 42 bits), "kl_loss" (KL summed over the
    latent dimensions), "mse_loss" (mean over the 4 scaled properties); "val_*" likewise when a
    validation split is given. Callbacks see the training model.
    """
    cfg = cfg or CVAEConfig()
    if isinstance(forward_model, (str, Path)):
        forward_model = load_model(forward_model)
    x_tr, y_tr, x_va, y_va, has_val = _check_splits(x_tr, y_tr, x_va, y_va, N_BEAMS, N_PROPS)
    keras.utils.set_random_seed(cfg.seed)
    parts = build_cvae(cfg, forward_model)
    _, unscale = scalers_of(forward_model)
    ps, po = 1.0 / unscale.scale_values, -unscale.offset_values / unscale.scale_values

    def data(x, y):
        x32 = np.asarray(x, dtype=np.float32)
        c32 = np.asarray(y * ps + po, dtype=np.float32)
        return [x32, c32], {"recon": x32, "kl": np.zeros((len(x), 1), np.float32), "mse": c32}

    parts.cvae.compile(
        optimizer=_optimizer(cfg.optimizer, cfg.learning_rate),
        loss={"recon": _bce_sum_from_logits, "kl": _value_as_loss, "mse": "mse"},
        loss_weights={"recon": 1.0, "kl": cfg.beta_kl, "mse": cfg.weight_mse},
    )
    x_in, y_out = data(x_tr, y_tr)
    h = parts.cvae.fit(x_in, y_out, batch_size=cfg.batch_size, epochs=cfg.epochs,
                       validation_data=data(x_va, y_va) if has_val else None, shuffle=True,
                       verbose=verbose, callbacks=_callbacks(cfg.patience, has_val, callbacks))
    return parts, _history(h)


# --- Inference helpers -----------------------------------------------------------------------------


def predict(model, x, batch_size: int = 65536) -> np.ndarray:
    """model(x) in large batches (direct calls, training=False); float32 NumPy output."""
    x = np.asarray(x, dtype=np.float32)
    outs = [ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
            for i in range(0, len(x), batch_size)]
    if not outs:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate(outs).astype(np.float32, copy=False)


def generate(generator, targets, k: int = 1, seed: int | np.random.Generator | None = 0,
             batch_size: int = 65536) -> np.ndarray:
    """(N, k, 42) probabilities: k draws of z ~ N(0, I) per target (N, 4) physical properties."""
    targets = _as_2d(targets, N_PROPS, "targets")
    latent = int(generator.input_shape[-1]) - N_PROPS
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    z = rng.standard_normal((len(targets) * k, latent))
    inp = np.concatenate([np.repeat(targets, k, axis=0), z], axis=1)
    return predict(generator, inp, batch_size).reshape(len(targets), k, N_BEAMS)


def reconstruct(generator, encoder, x, y, batch_size: int = 65536) -> np.ndarray:
    """(N, 42) reconstruction probabilities of designs x (N, 42) with physical properties y (N, 4):
    the encoder's z_mean (no sampling) decoded by the generator."""
    x = _as_2d(x, N_BEAMS, "designs")
    y = _as_2d(y, N_PROPS, "properties")
    z = predict(encoder, np.concatenate([x, y], axis=1), batch_size)
    return predict(generator, np.concatenate([y, z], axis=1), batch_size)


def designs_from_probabilities(p, rule: str = "threshold",
                               rng: int | np.random.Generator | None = None) -> np.ndarray:
    """(N, 42) uint8 designs from beam probabilities.

    "threshold": beam present where p > 0.5 (the most likely design, deterministic).
    "bernoulli": each beam drawn independently with probability p (rng: a Generator or a seed;
    None = seed 0 so results are reproducible). Either rule can give invalid (disconnected)
    designs: filter with `lattice.is_valid` before simulating.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.shape[-1] != N_BEAMS:
        raise InputError(f"probabilities must have {N_BEAMS} columns; got shape {p.shape}")
    if rule == "threshold":
        return (p > 0.5).astype(np.uint8)
    if rule == "bernoulli":
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
        return (rng.random(p.shape) < p).astype(np.uint8)
    raise InputError(f"rule must be 'threshold' or 'bernoulli'; got {rule!r}")
