"""Conditional generation, once for every caller: targets + N(0, I) latents -> probabilities ->
designs (threshold or Bernoulli) -> validity -> best of K by a property error.

The design stage (one target, many candidates), the evaluation (many targets, K each) and the
CVAE tuning score (the training graph's decoder) all go through `generate` and `best_of_k`;
only the `decode` callable differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from deepdram.spaces.base import DesignSpace

Decode = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (targets (M, P), z (M, L)) -> probabilities (M, V)


def generator_decoder(generator, batch_size: int | None = None) -> Decode:
    """`decode` of a saved generator model (input: properties followed by the latent values)."""
    from deepdram.learn.models import predict

    def decode(targets: np.ndarray, z: np.ndarray) -> np.ndarray:
        x = np.empty((len(z), targets.shape[1] + z.shape[1]), np.float32)
        x[:, : targets.shape[1]] = targets
        x[:, targets.shape[1]:] = z
        return predict(generator, x, batch_size=batch_size or max(1, len(x)))

    return decode


def latent_size(generator, n_properties: int) -> int:
    """The latent size a saved generator takes (its input width minus the properties)."""
    return int(generator.input_shape[-1]) - n_properties


def generate(decode: Decode, targets: np.ndarray, k: int, latent: int, rng: np.random.Generator,
             rule: str = "threshold") -> np.ndarray:
    """(N * k, V) uint8 designs: k draws of z ~ N(0, I) (float32) per target row, decoded, then `rule`.

    Rows are target-major (the k designs of target 0 first). The same rng then draws the
    Bernoulli beams when rule is "bernoulli", so one seed fixes everything."""
    from deepdram.learn.models import designs_from_probabilities

    t = np.repeat(np.asarray(targets, np.float32), k, axis=0)
    z = rng.standard_normal((len(t), latent), dtype=np.float32)
    return designs_from_probabilities(decode(t, z), rule, rng)


@dataclass
class BestOfK:
    """Generated designs of N targets (K each), their predicted properties and each target's best."""

    designs: np.ndarray  # (N * K, V)
    valid: np.ndarray  # (N * K,)
    properties: np.ndarray  # (N * K, P) predicted; NaN where invalid
    has: np.ndarray  # (N,) the target has at least one valid design
    index: np.ndarray  # (N,) index in 0..K-1 of the best valid design
    chosen: np.ndarray  # (n_has, V) the best designs of the targets that have one
    chosen_properties: np.ndarray  # (n_has, P)


def best_of_k(space: DesignSpace, designs: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
              targets: np.ndarray, k: int, weights: np.ndarray | None = None) -> BestOfK:
    """The best valid design of each target's K (by `metrics.best_of_k`: weighted MSE of the predicted
    properties, `weights` per property, default the paper's unweighted MSE)."""
    from deepdram.learn.metrics import best_of_k as pick

    targets = np.asarray(targets, np.float64)
    valid = space.is_valid(designs)
    props = np.asarray(predict(designs), np.float64)
    props = np.where(valid[:, None], props, np.nan)
    cube = props.reshape(len(targets), k, -1)
    best = pick(targets, cube, weights)
    has = np.isfinite(cube).all(axis=2).any(axis=1)
    rows = np.arange(len(targets))
    chosen = designs.reshape(len(targets), k, -1)[rows, best][has]
    return BestOfK(designs, valid, props, has, best, chosen, cube[rows, best][has])
