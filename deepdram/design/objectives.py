"""Objectives of a design request: what is minimised, in the units of the space's properties.

- `mse` (the default for target requests): the paper's Eq. 1, the plain mean over the properties
  of the squared errors to the target in their own dimensionless units (E/Eb and Poisson's ratios
  for the lattice), unweighted; the paper accepts designs with MSE <= 0.1, an RMS error of 0.32
  over the four, which the Poisson's ratios dominate (E/Eb of 0.03 can contribute ~1e-3 at most).
- `scaled`: each property's squared error divided by that property's variance over the training
  split, averaged: moduli and Poisson's ratios weigh evenly.
- `max-<property>` / `min-<property>` for requests without a target: the composite's
  `max-toughness`, the peaks demonstration's `min-z`.

Every objective is "lower is better" as a value; `quadratic_form` writes it as
mean w (p - t)^2 + s . p, the form the gradient designers' traced graph takes. The engineer's
acceptance test (`tolerance_mask`) is separate: each property group within its tolerance (the
lattice: both moduli within 10 % relative, both Poisson's ratios within 0.05 absolute by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deepdram.errors import InputError
from deepdram.spaces.base import DesignSpace


@dataclass(frozen=True)
class Objective:
    """A per-design value to minimise, from (N, P) properties (and the request's target)."""

    name: str
    kind: str  # "mse", "scaled", "max" or "min"
    weights: tuple[float, ...] | None = None  # scaled: 1 / variance per property
    index: int = 0  # max / min: the property

    @property
    def needs_target(self) -> bool:
        return self.kind in ("mse", "scaled")

    def __call__(self, props: np.ndarray, target=None) -> np.ndarray:
        """(N,) values, lower is better."""
        p = np.asarray(props, float)
        if self.kind == "mse":
            return mse(p, target)
        if self.kind == "scaled":
            return np.mean((p - np.asarray(target, float)) ** 2 * np.asarray(self.weights), axis=-1)
        return -p[..., self.index] if self.kind == "max" else p[..., self.index]

    def quadratic_form(self, n_properties: int, target=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, w, s), each (P,) float32, with value = mean_j w_j (p_j - t_j)^2 + sum_j s_j p_j: every
        objective in one form, so a traced gradient takes them as inputs instead of retracing."""
        zeros = np.zeros(n_properties, np.float32)
        if self.kind in ("mse", "scaled"):
            w = np.ones(n_properties) if self.kind == "mse" else np.asarray(self.weights, float)
            return np.asarray(target, np.float32), w.astype(np.float32), zeros
        s = zeros.copy()
        s[self.index] = -1.0 if self.kind == "max" else 1.0
        return zeros, zeros.copy(), s


def mse(pred: np.ndarray, target) -> np.ndarray:
    """Per-row mean over the properties of squared errors, physical units (paper Eq. 1)."""
    return np.mean((np.asarray(pred, float) - np.asarray(target, float)) ** 2, axis=-1)


def names(space: DesignSpace) -> list[str]:
    """The objectives a space offers."""
    return ["mse", "scaled", *[f"{d}-{p}" for p in space.properties for d in ("max", "min")]]


def check_objective(name: str, space: DesignSpace, target, where: str = "objective") -> None:
    """InputError unless `name` is an objective this space and request can use."""
    known = names(space)
    if name not in known:
        raise InputError(f"{where} must be one of {known}; got {name!r}")
    if name in ("mse", "scaled") and target is None:
        raise InputError(f"{where} {name!r} needs a target (the properties to match)")
    if name not in ("mse", "scaled") and target is not None:
        raise InputError(f"{where} {name!r} takes no target; use mse or scaled to match properties")


def get(name: str, space: DesignSpace, variances: Sequence[float] | None = None) -> Objective:
    """The objective `name` of a space; `scaled` needs the train split's property variances."""
    check_objective(name, space, target=True if name in ("mse", "scaled") else None)
    if name == "mse":
        return Objective("mse", "mse")
    if name == "scaled":
        if variances is None:
            raise InputError("the scaled objective needs the training split's property variances")
        v = np.asarray(variances, float)
        if v.shape != (space.n_properties,) or not np.all(v > 0):
            raise InputError(f"variances must be {space.n_properties} positive numbers; got {variances!r}")
        return Objective("scaled", "scaled", tuple(1.0 / v))
    direction, prop = name.split("-", 1)
    return Objective(name, direction, index=space.properties.index(prop))


def tolerance_mask(space: DesignSpace, props: np.ndarray, target, tolerances: Mapping[str, float] | None = None
                   ) -> np.ndarray | None:
    """(N,) True where every property group is within its tolerance of the target (the space's
    `tolerance_groups`: relative or absolute), or None when the space or request has none."""
    groups = space.tolerance_groups
    if not groups or target is None:
        return None
    p, t = np.asarray(props, float), np.asarray(target, float)
    ok = np.ones(len(p), bool)
    tolerances = {**{g: d for g, (_, _, d) in groups.items()}, **(tolerances or {})}
    for group, (columns, mode, _) in groups.items():
        idx = [space.properties.index(c) for c in columns]
        err = np.abs(p[:, idx] - t[idx])
        if mode == "relative":
            err = err / np.abs(t[idx])
        ok &= np.all(err <= tolerances[group], axis=1)
    return ok


def check_tolerances(space: DesignSpace, tolerances: Mapping, where: str = "tolerance") -> dict[str, float]:
    """Checked tolerances by group name (InputError naming an unknown group or a bad value)."""
    from deepdram.errors import check_number

    groups = space.tolerance_groups
    out = {}
    for k, v in dict(tolerances or {}).items():
        if k not in groups:
            raise InputError(f"{where}: unknown group {k!r}; the {space.name} space has "
                             f"{', '.join(groups) or 'no tolerance groups'}")
        x = check_number(v, f"{where}.{k}")
        if x <= 0:
            raise InputError(f"{where}.{k} must be > 0; got {x:g}")
        out[k] = x
    return out
