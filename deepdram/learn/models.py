"""The Deep-DRAM networks in Keras 3: forward regressors (unit cell, size-agnostic) and the CVAE.

Every model this module hands out works in PHYSICAL units: the MinMax scalers are `Affine`
layers inside the model, so one `.keras` file is all a caller needs (`save_model` /
`load_model`). The code only uses `keras.ops` / `keras.random`, so it runs on any Keras 3
backend. Sizes (variables, properties, conditions), symmetries and physics feature sets come
from the design space the model is for.

Models and their layouts (the lattice space's names)
------------------------------------------------------
- Forward model ("unit cell elastic properties model", paper section 2.1):
  (N, n_variables) designs -> (N, n_properties), e.g. b00..b41 -> [E11/Eb, E22/Eb, nu12, nu21].
- Size-agnostic model (section 2.4): (N, n_variables + n_conditions) = designs followed by the
  space's conditions (raw; the lattice's d1, d2, even in 2..20) -> (N, n_properties).
- Both are `full` models: input -> Affine (`x_scaler`) -> `core` MLP -> Affine (`y_unscaler`).
  `core` maps scaled inputs to scaled targets and is what `fit` trains (MSE). Binary design
  variables are left as 0/1, continuous ones and conditions are mapped to [0, 1] by their known
  bounds; targets are MinMax-scaled to [0, 1] by the TRAIN split's min and max.
- CVAE (section 2.2, Eq. 3-5): recognition network (design + scaled properties -> z_mean,
  z_log_var), reparameterised sample, reconstruction network (z + scaled properties -> logits
  -> sigmoid). The properties are scaled by the forward model's own target scaler.
  Trained with  L = BCE (summed over the design variables) + beta_kl * KL(q(z|x,y) || N(0, I))
  + weight_mse * MSE(y_scaled, frozen forward core(reconstructed probabilities)); with
  `kl_free_bits` > 0 each latent dimension's KL counts as at least that many nats (free bits).
  Exported pieces: `generator` ((N, n_properties + latent_dim) = physical properties followed by
  standard-normal latent values -> (N, n_variables) probabilities) and `encoder` (design followed
  by physical properties -> (N, latent_dim) z_mean, for the t-SNE plot).

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
  the paper's ReLU output a zero start let an output unit die in the first steps (on tilings,
  nu12 stuck at the train minimum); the architecture is unchanged.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras imports TensorFlow: no C++ log noise

import keras
import numpy as np
from keras import ops

from deepdram.errors import InputError
from deepdram.learn.backend import set_seed
from deepdram.learn.configs import (  # noqa: F401  (re-exported: the configs travel with the models)
    ACTIVATIONS,
    FEATURES,
    LOSSES,
    LR_SCHEDULES,
    OPTIMIZERS,
    SCALINGS,
    SHAPES,
    SYMMETRIES,
    CVAEConfig,
    RegressorConfig,
    _choice,
    hidden_widths,
)
from deepdram.learn.layers import Affine, Columns, Gather, KLDivergence, Sampling

if TYPE_CHECKING:
    from deepdram.spaces.base import DesignSpace
    from deepdram.spaces.base import FeatureSet

# --- Scaling -----------------------------------------------------------------------------------------


def minmax_scaling(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) mapping each column's [min, max] to [0, 1] (sklearn MinMaxScaler; a
    constant column gets scale 1)."""
    y = np.asarray(y, dtype=np.float64)
    lo, hi = y.min(axis=0), y.max(axis=0)
    span = hi - lo
    span[span == 0] = 1.0
    return 1.0 / span, -lo / span


def feature_scaling(space: DesignSpace, n_in: int, scaling: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) of the model inputs: binary design variables stay 0/1; continuous ones and
    the conditions (e.g. d1, d2) go to [0, 1] by their known bounds when scaling is "minmax"."""
    nv, nc = space.n_variables, space.n_conditions
    if n_in not in (nv, nv + nc):
        raise InputError(f"model inputs must have {nv} columns ({space.variables_text})"
                         + (f" or {nv + nc} ({space.variables_text}, {', '.join(space.conditions)})" if nc else "")
                         + f"; got {n_in}")
    scale, offset = np.ones(n_in), np.zeros(n_in)
    if scaling != "minmax":
        return scale, offset
    if not space.binary:
        lo, hi = space.variable_bounds
        scale[:nv], offset[:nv] = 1.0 / (hi - lo), -lo / (hi - lo)
    for j, (lo, hi) in enumerate(space.condition_bounds[: n_in - nv]):
        scale[nv + j] = 1.0 / (hi - lo)
        offset[nv + j] = -lo / (hi - lo)
    return scale, offset


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


# --- Forward regressors ----------------------------------------------------------------------------


def _mlp(n_in: int, widths: Sequence[int], n_out: int, activation: str, output_activation: str,
         batch_norm: bool, name: str, input_name: str = "scaled_input", output_bias=None, dropout: float = 0.0):
    """Dense stack: hidden layers (optionally each followed by batch norm), then the output layer
    (its bias initialised to `output_bias` when given, else zeros)."""
    inp = keras.Input((n_in,), name=input_name)
    h = inp
    for i, w in enumerate(widths):
        h = keras.layers.Dense(int(w), activation=ACTIVATIONS[activation], name=f"hidden_{i + 1}")(h)
        if batch_norm:
            h = keras.layers.BatchNormalization(name=f"batch_norm_{i + 1}")(h)
        if dropout > 0:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i + 1}")(h)
    bias_init = "zeros" if output_bias is None else keras.initializers.Constant(
        np.asarray(output_bias, dtype=np.float64).reshape(n_out).tolist())
    out = keras.layers.Dense(n_out, activation=ACTIVATIONS[output_activation], bias_initializer=bias_init,
                             name="output")(h)
    return keras.Model(inp, out, name=name)


def build_regressor(n_in: int, n_out: int, cfg: RegressorConfig, x_scale=None, x_offset=None,
                    y_scale=None, y_offset=None, name: str | None = None, output_bias=None,
                    feature_stats=None, features: FeatureSet | None = None, n_variables: int | None = None):
    """(core, full): `core` maps scaled inputs to scaled targets; `full` = input ->
    Affine(x_scale, x_offset) -> core -> inverse of Affine(y_scale, y_offset), in physical units.

    The scales and offsets are the FORWARD scalings (scaled = raw * scale + offset); missing ones
    are the identity. `output_bias` (n_out,) initialises the output layer's bias (default zeros).
    With a feature set (`features`, e.g. the lattice's "homogenized") the core also takes its
    features of the first `n_variables` inputs (the design), standardised by `feature_stats` =
    (mean, std) (default 0, 1), after the scaled inputs: `full` computes them itself, so callers
    still pass designs (and conditions) only.
    """
    ones = lambda n: np.ones(n)  # noqa: E731
    zeros = lambda n: np.zeros(n)  # noqa: E731
    x_scale = ones(n_in) if x_scale is None else x_scale
    x_offset = zeros(n_in) if x_offset is None else x_offset
    y_scale = ones(n_out) if y_scale is None else y_scale
    y_offset = zeros(n_out) if y_offset is None else y_offset
    widths = hidden_widths(cfg.hidden_layers, cfg.first_width, cfg.shape, n_out)
    physics = features is not None
    n_feat = features.n_features if physics else 0
    n_core = n_in + n_feat
    core = _mlp(n_core, widths, n_out, cfg.activation, cfg.output_activation, cfg.batch_norm, "core",
                output_bias=output_bias, dropout=cfg.dropout)
    n_variables = n_in if n_variables is None else int(n_variables)
    if name is None:
        name = "forward" if n_in == n_variables else "size_agnostic"
    x = keras.Input((n_in,), name="features")
    h = Affine(x_scale, x_offset, name="x_scaler")(x)
    if physics:
        mean, std = feature_stats if feature_stats is not None else (np.zeros(n_feat), np.ones(n_feat))
        f = features.layer(name=features.layer_name)(Columns(0, n_variables, name="design_bits")(x))
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


def feature_inputs(features: FeatureSet, x: np.ndarray, n_variables: int, stats=None
                   ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(standardised features of the designs in x[:, :n_variables], (mean, std)); the mean and
    std are fitted on x unless `stats` is given."""
    f = features.numpy(np.asarray(x)[:, :n_variables])
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


def train_regressor(x_tr, y_tr, x_va=None, y_va=None, cfg: RegressorConfig | None = None, *,
                    space: DesignSpace, callbacks: Sequence = (), verbose: int = 0):
    """Train a forward model of `space`; returns (full_model, history).

    x: (N, n_variables) designs, or designs followed by the space's conditions (raw, e.g. the
    lattice's d1, d2); y: (N, n_properties) physical targets.
    The target MinMax scaler is fitted on the TRAIN split only (cfg.scaling == "minmax"). The
    core is trained with MSE on scaled targets by `model.fit` (seeded by cfg.seed; early stopping
    on val_loss with best weights restored when cfg.patience > 0). `callbacks` are passed to
    `fit` as they are (their `model` is the core, which works in scaled units).

    history: per-epoch lists "loss" (MSE, or the balanced MSE with cfg.loss == "balanced"), "mae"
    and, with a validation split, "val_loss", "val_mae" - all in SCALED target units (MinMax:
    [0, 1] over the train range). cfg.features names a feature set of the space (the lattice's
    "homogenized": `build_regressor`); cfg.lr_schedule == "cosine" decays the learning rate to 0
    over cfg.epochs.
    """
    cfg = cfg or RegressorConfig()
    n_out = space.n_properties
    x_tr, y_tr, x_va, y_va, has_val = _check_splits(x_tr, y_tr, x_va, y_va, None, n_out)
    n_in = x_tr.shape[1]
    set_seed(cfg.seed)
    xs, xo = feature_scaling(space, n_in, cfg.scaling)
    ys, yo = minmax_scaling(y_tr) if cfg.scaling == "minmax" else (np.ones(n_out), np.zeros(n_out))
    # Output bias starts at the mean scaled target: with the paper's ReLU output a zero bias lets
    # an output unit die early (stuck at the train minimum, zero gradient), which we observed.
    y_mean = np.mean(y_tr * ys + yo, axis=0)
    core_in_tr, core_in_va, stats = x_tr * xs + xo, (x_va * xs + xo if has_val else None), None
    features = space.feature_set(cfg.features)
    nv = space.n_variables
    if features is not None:
        # Computed once by the compiled kernel for the core's inputs; `full` recomputes them in-graph.
        f_tr, stats = feature_inputs(features, x_tr, nv)
        core_in_tr = np.concatenate([core_in_tr, f_tr], axis=1)
        if has_val:
            core_in_va = np.concatenate([core_in_va, feature_inputs(features, x_va, nv, stats)[0]], axis=1)
    core, full = build_regressor(n_in, n_out, cfg, xs, xo, ys, yo, output_bias=y_mean, feature_stats=stats,
                                 features=features, n_variables=nv)
    steps = cfg.epochs * math.ceil(len(x_tr) / cfg.batch_size)
    core.compile(optimizer=_optimizer(cfg.optimizer, cfg.learning_rate, cfg.lr_schedule, steps),
                 loss=_regression_loss(cfg.loss, y_tr * ys + yo), metrics=["mae"])
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    val = (f32(core_in_va), f32(y_va * ys + yo)) if has_val else None
    h = core.fit(f32(core_in_tr), f32(y_tr * ys + yo), batch_size=cfg.batch_size, epochs=cfg.epochs,
                 validation_data=val, shuffle=True, verbose=verbose,
                 callbacks=_callbacks(cfg.patience, has_val, callbacks))
    return symmetrize(full, space, cfg.symmetrize), _history(h)


def symmetry_images(space: DesignSpace, n_in: int, which: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input columns, output columns) of each symmetry image of the space (`symmetry_set`):
    model(x[:, cin])[:, cout] predicts the properties of x. Inputs are the design's variables,
    followed by its conditions when n_in says so."""
    _choice(which, SYMMETRIES, "symmetrize")
    nv = space.n_variables
    with_conditions = n_in == nv + space.n_conditions and space.n_conditions > 0
    if n_in != nv and not with_conditions:
        raise InputError(f"{space.name} model inputs must have {nv} columns ({space.variables_text}) or "
                         f"{nv + space.n_conditions} (with {', '.join(space.conditions)}); got {n_in}")
    return [(np.concatenate([s.variables, nv + s.conditions]) if with_conditions else np.asarray(s.variables),
             np.asarray(s.properties)) for s in space.symmetry_set(which)]


def symmetrize(model, space: DesignSpace, which: str):
    """`model` averaged over the space's symmetry images (`symmetry_images`); same inputs and
    outputs, and `model` becomes its nested layer "regressor"."""
    if which == "none":
        return model
    name = model.name
    model.name = "regressor"
    x = keras.Input((model.input_shape[-1],), name="features")
    outs = [Gather(cout, name=f"image_{k}_out")(model(Gather(cin, name=f"image_{k}_in")(x)))
            for k, (cin, cout) in enumerate(symmetry_images(space, model.input_shape[-1], which))]
    return keras.Model(x, keras.layers.Average(name="symmetry_average")(outs), name=name)


def inner_regressor(model):
    """The regressor inside a symmetrised model (else the model itself)."""
    names = {layer.name for layer in model.layers}
    return model.get_layer("regressor") if "regressor" in names else model


def scalers_of(model) -> tuple[Affine, Affine]:
    """The (x_scaler, y_unscaler) Affine layers of a full forward model."""
    try:
        inner = inner_regressor(model)
        return inner.get_layer("x_scaler"), inner.get_layer("y_unscaler")
    except ValueError:
        raise InputError(f"model '{model.name}' is not a deepdram forward model (no x_scaler / "
                         "y_unscaler layers)") from None


# --- Conditional VAE -------------------------------------------------------------------------------


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


def load_model(path, space: DesignSpace | None = None):
    """Load a deepdram `.keras` model: deepdram's generic layers are registered by this module, the
    space's own layers (the lattice's Homogenization) come from `space.keras_objects()`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    return keras.saving.load_model(path, compile=False, custom_objects=space.keras_objects() if space else None)


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
    # The design and property sizes are the forward model's: its inputs are designs only.
    N_BEAMS, N_PROPS = fwd_x.units, fwd_unscale.units  # noqa: N806
    if int(fwd.input_shape[-1]) != N_BEAMS:
        raise InputError(f"the CVAE needs a forward model on designs only; got {fwd.input_shape[-1]} inputs")
    fwd_core = inner_regressor(fwd).get_layer("core")
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
        "kl": KLDivergence(cfg.kl_free_bits, name="kl")([m, lv]),
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
               callbacks: Sequence = (), verbose: int = 0, space: DesignSpace | None = None):
    """Train the CVAE; returns (CVAEParts, history).

    x: (N, 42) 0/1 designs; y: (N, 4) physical properties; `forward_model`: the trained unit-cell
    model (a model, or the path of its .keras file: `space` then registers the space's layers). It
    is copied and frozen; its target scaler
    scales the CVAE's condition properties, and the MSE term compares the scaled target
    properties with its core's prediction on the reconstructed probabilities (scaled units).

    history: per-epoch "loss" (total = recon + beta_kl * kl + weight_mse * mse), and the
    UNWEIGHTED terms "recon_loss" (BCE summed over the 42 bits), "kl_loss" (KL summed over the
    latent dimensions, each at least cfg.kl_free_bits), "mse_loss" (mean over the 4 scaled
    properties); "val_*" likewise when a validation split is given. Callbacks see the training model.
    """
    cfg = cfg or CVAEConfig()
    if isinstance(forward_model, (str, Path)):
        forward_model = load_model(forward_model, space)
    fwd_x, fwd_unscale = scalers_of(forward_model)
    x_tr, y_tr, x_va, y_va, has_val = _check_splits(x_tr, y_tr, x_va, y_va, fwd_x.units, fwd_unscale.units)
    set_seed(cfg.seed)
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
    n_vars = int(generator.output_shape[-1])
    targets = _as_2d(targets, None, "targets")
    latent = int(generator.input_shape[-1]) - targets.shape[1]
    if latent < 1:
        raise InputError(f"the generator takes {generator.input_shape[-1]} inputs: fewer than the "
                         f"{targets.shape[1]} target properties plus a latent vector")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    z = rng.standard_normal((len(targets) * k, latent))
    inp = np.concatenate([np.repeat(targets, k, axis=0), z], axis=1)
    return predict(generator, inp, batch_size).reshape(len(targets), k, n_vars)


def reconstruct(generator, encoder, x, y, batch_size: int = 65536) -> np.ndarray:
    """(N, 42) reconstruction probabilities of designs x (N, 42) with physical properties y (N, 4):
    the encoder's z_mean (no sampling) decoded by the generator."""
    x = _as_2d(x, None, "designs")
    y = _as_2d(y, None, "properties")
    z = predict(encoder, np.concatenate([x, y], axis=1), batch_size)
    return predict(generator, np.concatenate([y, z], axis=1), batch_size)


def designs_from_probabilities(p, rule: str = "threshold",
                               rng: int | np.random.Generator | None = None) -> np.ndarray:
    """(N, 42) uint8 designs from beam probabilities.

    "threshold": beam present where p > 0.5 (the most likely design, deterministic).
    "bernoulli": each beam drawn independently with probability p (rng: a Generator or a seed;
    None = seed 0 so results are reproducible). Either rule can give invalid (disconnected)
    designs: filter with the space's `is_valid` before simulating.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 1:
        raise InputError(f"probabilities must have one column per design variable; got shape {p.shape}")
    if rule == "threshold":
        return (p > 0.5).astype(np.uint8)
    if rule == "bernoulli":
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
        return (rng.random(p.shape) < p).astype(np.uint8)
    raise InputError(f"rule must be 'threshold' or 'bernoulli'; got {rule!r}")
