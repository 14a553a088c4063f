"""The peaks space: two continuous variables in [-3, 3]^2 and MATLAB's `peaks` function as the oracle.

The GIDN seed's demonstration problem (supporting information, Fig. S1 and S10): a smooth
function with three maxima, three minima and the global minimum -6.5511 at (0.2283, -1.6255).
It is the smallest space that exercises every seam: continuous variables, no conditions, no
symmetries, an exact gradient, validity as "inside the box".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from deepdram.errors import InputError
from deepdram.spaces.base import DesignSpace, Evaluation, Progress, Rule

LOW, HIGH = -3.0, 3.0
GLOBAL_MINIMUM = (0.2283, -1.6255)  # MATLAB peaks, to 4 decimals
GLOBAL_MINIMUM_VALUE = -6.5511


def peaks(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MATLAB's peaks(x, y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return (3 * (1 - x) ** 2 * np.exp(-x**2 - (y + 1) ** 2)
            - 10 * (x / 5 - x**3 - y**5) * np.exp(-x**2 - y**2)
            - np.exp(-(x + 1) ** 2 - y**2) / 3)


def peaks_gradient(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dz/dx, dz/dy) of peaks, analytic."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    a = np.exp(-x**2 - (y + 1) ** 2)
    b = np.exp(-x**2 - y**2)
    c = np.exp(-(x + 1) ** 2 - y**2)
    p = x / 5 - x**3 - y**5
    dx = (-6 * (1 - x) * a - 6 * x * (1 - x) ** 2 * a
          - 10 * (0.2 - 3 * x**2) * b + 20 * x * p * b + 2 * (x + 1) * c / 3)
    dy = (-6 * (1 - x) ** 2 * (y + 1) * a
          + 50 * y**4 * b + 20 * y * p * b + 2 * y * c / 3)
    return dx, dy


class PeaksSpace(DesignSpace):
    """(x, y) in [-3, 3]^2 -> z = peaks(x, y)."""

    name: ClassVar[str] = "peaks"
    description: ClassVar[str] = "MATLAB peaks on [-3, 3]^2 (the GIDN demonstration; minimise z)"
    variables: ClassVar[tuple[str, ...]] = ("x", "y")
    properties: ClassVar[tuple[str, ...]] = ("z",)
    property_bounds: ClassVar[dict] = {"z": (-7.0, 9.0)}
    binary: ClassVar[bool] = False
    variable_bounds: ClassVar[tuple[float, float]] = (LOW, HIGH)
    validity_rule: ClassVar[str] = f"x and y must lie in [{LOW:g}, {HIGH:g}]"
    has_gradient: ClassVar[bool] = True
    relaxed_init: ClassVar[float] = 0.0
    needs_target: ClassVar[bool] = False
    default_objective: ClassVar[str] = "min-z"
    noun: ClassVar[str] = "the peaks function"

    def sample(self, n: int, seed: int | Sequence[int], **options) -> np.ndarray:
        """n points uniform in the box."""
        if options:
            raise InputError(f"the peaks space takes no sampling options; got {sorted(options)}")
        if n < 0:
            raise InputError(f"n must be >= 0; got {n}")
        return np.random.default_rng(seed).uniform(LOW, HIGH, size=(n, 2))

    def is_valid(self, designs: np.ndarray) -> np.ndarray:
        d = np.asarray(designs, float)
        return np.all(np.isfinite(d) & (d >= LOW) & (d <= HIGH), axis=1)

    def evaluate(self, designs, conditions=None, *, extras: Sequence[str] = (), progress: Progress = None,
                 threads: int | None = None, validate: bool = True) -> Evaluation:
        if conditions is not None:
            raise InputError("the peaks space takes no conditions")
        if extras:
            raise InputError(f"the peaks space has no oracle extras; got {list(extras)}")
        d = self.check_designs(designs, require_valid=validate)
        z = peaks(d[:, 0], d[:, 1])[:, None]
        if progress is not None:
            progress(len(d))
        return Evaluation(z)

    def relaxed_properties(self, x: np.ndarray, conditions=None, **options) -> np.ndarray:
        """z of (N, 2) points (the oracle itself: the variables are continuous)."""
        d = self.check_designs(x, require_valid=False)
        return peaks(d[:, 0], d[:, 1])[:, None]

    def gradient(self, x: np.ndarray, conditions=None, **options) -> tuple[np.ndarray, np.ndarray]:
        """(z (N, 1), dz/d(x, y) (N, 1, 2))."""
        d = self.check_designs(x, require_valid=False)
        gx, gy = peaks_gradient(d[:, 0], d[:, 1])
        return peaks(d[:, 0], d[:, 1])[:, None], np.stack([gx, gy], axis=1)[:, None, :]

    def validation_rules(self, kind: str) -> list[Rule]:
        from deepdram.data import validation

        if kind != "points":
            raise InputError(f"unknown peaks dataset kind {kind!r}; known: points")
        cols = self.expected_columns(kind)
        r = validation.schema_rules(cols, (), {c: "float64" for c in cols}, ", ".join(cols))
        for c in self.variables:
            r += validation.range_rules(c, LOW, HIGH)
        return r + validation.range_rules("z", *self.property_bounds["z"])

    def expected_columns(self, kind: str) -> tuple[str, ...]:
        return (*self.variables, *self.properties)
