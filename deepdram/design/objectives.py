"""Objectives of a design request: what is minimised, in the units of the space's properties.

`mse` is the paper's Eq. 1: the plain mean over the properties of the squared errors to the
target, in their own dimensionless units (E/Eb and Poisson's ratios for the lattice), unweighted
and unscaled; its acceptance threshold is the request's `mse_threshold` (paper: 0.1, an RMS error
of 0.32 over the four, dominated by the Poisson's ratios).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from deepdram.errors import InputError
from deepdram.spaces.base import DesignSpace


class Objective(ABC):
    """A per-design error to minimise (lower is better) given predicted or FE properties."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_target: ClassVar[bool] = True

    @abstractmethod
    def __call__(self, props: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        """(N,) error of (N, P) properties."""


class MSE(Objective):
    """Mean over the properties of the squared errors, physical units (paper Eq. 1)."""

    name = "mse"
    description = "the paper's unweighted mean squared error over the properties (Eq. 1)"

    def __call__(self, props, target):
        return mse(props, target)


def mse(pred: np.ndarray, target) -> np.ndarray:
    """Per-row mean over the properties of squared errors, physical units (paper Eq. 1)."""
    return np.mean((np.asarray(pred, float) - np.asarray(target, float)) ** 2, axis=-1)


OBJECTIVES: dict[str, type[Objective]] = {"mse": MSE}


def check_objective(name: str, space: DesignSpace, target, where: str = "objective") -> None:
    """InputError unless `name` is an objective this space and request can use."""
    if name not in OBJECTIVES:
        raise InputError(f"{where} must be one of {sorted(OBJECTIVES)}; got {name!r}")
    if OBJECTIVES[name].needs_target and target is None:
        raise InputError(f"{where} {name!r} needs a target")


def get(name: str, **context) -> Objective:
    """The objective `name` (context: e.g. the train-split variances a scaled objective needs)."""
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](**context)
