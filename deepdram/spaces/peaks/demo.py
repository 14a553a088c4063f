"""The GIDN seed's peaks demonstration (supporting information, Fig. S1 and S10), on deepdram's seams.

A predictor (4 hidden ReLU layers of 64, dropout 0.5) learns MATLAB's peaks from 8,000 of 10,000
random points (the other 2,000 test it; the seed reports test MSE 0.00085); the `backprop`
method then runs Adam through it from 1,000 starts drawn from N(0, 1.5^2), and the shared
pipeline verifies the best proposals with the true function. The solution paths are the seed's
Fig. S1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepdram.spaces.peaks.space import GLOBAL_MINIMUM, GLOBAL_MINIMUM_VALUE, PeaksSpace, peaks

SEED_TEST_MSE = 0.00085  # the seed's test error of its predictor (Fig. S10)
SEED_TRAIN_MSE = 0.00083


@dataclass
class DemoResult:
    """The predictor, its errors, the designer's best design and the solution paths."""

    model: object
    train_mse: float
    test_mse: float
    best: np.ndarray  # (2,) the top-ranked design (verified by the true function)
    best_z: float
    distance: float  # from the global minimum (0.2283, -1.6255)
    paths: np.ndarray  # (steps + 1, n_starts, 2)
    table: object  # the pipeline's ranked designs


def train_predictor(n_points: int = 10_000, n_train: int = 8_000, *, epochs: int = 300, batch_size: int = 100,
                    learning_rate: float = 1e-3, dropout: float = 0.5, seed: int = 0):
    """(model, train MSE, test MSE): the seed's predictor on random points of the box."""
    from deepdram.learn.configs import RegressorConfig
    from deepdram.learn.models import predict, train_regressor

    space = PeaksSpace()
    x = space.sample(n_points, seed)
    y = space.evaluate(x).properties
    cfg = RegressorConfig(hidden_layers=4, first_width=64, shape="rectangle", activation="relu",
                          output_activation="none", dropout=dropout, epochs=epochs, batch_size=batch_size,
                          learning_rate=learning_rate, lr_schedule="cosine", seed=seed)
    model, _ = train_regressor(x[:n_train], y[:n_train], None, None, cfg, space=space)
    err = lambda a, b: float(np.mean((predict(model, a).astype(float) - b) ** 2))  # noqa: E731
    return model, err(x[:n_train], y[:n_train]), err(x[n_train:], y[n_train:])


def design_minimum(model, *, n_starts: int = 1000, sd: float = 1.5, steps: int = 300, lr: float = 0.01,
                   top_k: int = 20, seed: int = 0):
    """The backprop designer through `model` with the pipeline's verification by the true function."""
    from deepdram.design.pipeline import Surrogates, design
    from deepdram.design.requests import parse_request

    space = PeaksSpace()
    req = parse_request({"space": "peaks", "objective": "min-z", "method": "backprop", "top_k": top_k, "seed": seed,
                         "options": {"n_starts": n_starts, "sd": sd, "steps": steps, "lr": lr, "record_paths": True}})
    return design(space, Surrogates({"forward": model}), req)


def run(n_points: int = 10_000, n_train: int = 8_000, *, epochs: int = 300, batch_size: int = 100,
        learning_rate: float = 1e-3, dropout: float = 0.5, n_starts: int = 1000, sd: float = 1.5, steps: int = 300,
        lr: float = 0.01, seed: int = 0) -> DemoResult:
    """Train the predictor, design from Gaussian starts, verify: the whole demonstration."""
    model, train_mse, test_mse = train_predictor(n_points, n_train, epochs=epochs, batch_size=batch_size,
                                                 learning_rate=learning_rate, dropout=dropout, seed=seed)
    r = design_minimum(model, n_starts=n_starts, sd=sd, steps=steps, lr=lr, seed=seed)
    best = r.table[["x", "y"]].to_numpy()[0]
    paths = next(rec["paths"] for rec in r.records if "paths" in rec)
    return DemoResult(model, train_mse, test_mse, best, float(peaks(*best)),
                      float(np.hypot(*(best - np.asarray(GLOBAL_MINIMUM)))), paths, r.table)


def plot_paths(result: DemoResult, path: Path, n_shown: int = 60) -> Path:
    """The seed's Fig. S1: solution paths over the contours of peaks, the global minimum marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from deepdram.data.atomic import save_png

    g = np.linspace(-3, 3, 241)
    gx, gy = np.meshgrid(g, g)
    fig = Figure(figsize=(6.2, 5.4))
    ax = fig.subplots()
    cs = ax.contourf(gx, gy, peaks(gx, gy), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="z = peaks(x, y)")
    for k in range(min(n_shown, result.paths.shape[1])):
        p = result.paths[:, k]
        ax.plot(p[:, 0], p[:, 1], "-", color="w", lw=0.6, alpha=0.7)
        ax.plot(p[-1, 0], p[-1, 1], ".", color="r", ms=3)
    ax.plot(*GLOBAL_MINIMUM, "k*", ms=12, label=f"global minimum {GLOBAL_MINIMUM_VALUE}")
    ax.plot(*result.best, "r+", ms=14, mew=2, label=f"best design, z = {result.best_z:.4f}")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"backprop through the predictor: {n_shown} of {result.paths.shape[1]} solution paths")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_png(path, fig)
