"""The seed's experiments on the composite: the designer keeps the soft fraction (binarised by
ranking) through the shared pipeline and finds the optimum of a surrogate it can climb; Table
S2's statistics; the table next to the seed's; the head-to-head summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepdram.spaces.composite import experiment as ex
from deepdram.spaces.composite.space import CompositeSpace

K = 4


def test_top_share_means_and_designer_stats():
    v = np.arange(1, 201, dtype=float)  # 1..200
    s = ex.designer_stats(v)
    assert s["max"] == 200 and s["mean"] == pytest.approx(100.5)
    assert s["top1"] == pytest.approx(199.5)  # mean of the best 2
    assert s["top10"] == pytest.approx(190.5)  # mean of the best 20
    assert ex.top_share_mean([3.0], 0.01) == 3.0  # at least one value


def test_table_lays_ours_next_to_the_seeds_with_shares_of_the_optimum():
    rows = [{"group": 100, "train_max": 1.5, "train_mean": 1.1, "design_max": 2.0, "design_top1": 1.9,
             "design_top10": 1.8, "design_mean": 1.5, "found_optimum": True},
            {"group": 1000, "train_max": 1.6, "train_mean": 1.1, "design_max": 1.9, "design_top1": 1.8,
             "design_top10": 1.7, "design_mean": 1.4, "found_optimum": False}]
    t = ex.table_s1_s2(rows, optimum=2.0)
    assert list(t["statistic"]) == ["max", "mean", "max", "top1", "top10", "mean", "found optimum"]
    row = t[(t["table"] == "S2 designer") & (t["statistic"] == "max")].iloc[0]
    assert row["ours 100"] == 2.0 and row["ours/opt 100"] == 1.0
    assert row["seed 100"] == 65.13 and row["seed/opt 100"] == pytest.approx(65.13 / 69.42)
    found = t[t["statistic"] == "found optimum"].iloc[0]
    assert found["ours 100"] is True and found["ours 1,000"] is False
    assert found["seed 100"] is False and found["seed 1,000"] is True
    assert "| S2 designer | found optimum |" in ex.markdown(t)


@pytest.fixture(scope="module")
def linear_surrogate():
    """A Keras model w . x (no hidden layer) with K cells of negative weight: under the fixed soft
    count its best design has exactly those soft, which the designer must find."""
    import keras

    rng = np.random.default_rng(0)
    w = np.linspace(0.2, 1.0, 32)[rng.permutation(32)]
    w[rng.choice(32, K, replace=False)] = -1.0
    inp = keras.Input((32,))
    out = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(w[:, None]),
                             bias_initializer="zeros")(inp)
    best = np.zeros(32, np.uint8)
    best[np.argsort(-w)[: 32 - K]] = 1
    return keras.Model(inp, out), best


def test_backprop_keeps_the_soft_fraction_and_finds_the_surrogates_optimum(linear_surrogate):
    from deepdram.design.pipeline import Surrogates
    from deepdram.design.requests import parse_request

    model, best = linear_surrogate
    space = CompositeSpace()
    req = parse_request({"space": "composite", "objective": "max-toughness", "soft_fraction": K / 32,
                         "method": "backprop", "options": {"n_starts": 64, "steps": 60, "lr": 0.2},
                         "top_k": 64, "seed": 0}, space=space)
    result, proposed, values = ex.run_designer(space, Surrogates({"forward": model}), req)
    assert proposed.shape == (64, 32)  # one design per start, repeats kept
    assert ((proposed == 0).sum(axis=1) == K).all()  # the soft fraction, by ranking
    assert (proposed == best).all(axis=1).mean() > 0.9, (proposed != best).sum(axis=1)
    np.testing.assert_allclose(values, space.evaluate(proposed).properties[:, 0])
    t = result.table
    assert len(t) == len(np.unique(space.keys(proposed)))  # every distinct design verified by FE
    assert (t[list(space.variables)].to_numpy() == best).all(axis=1).any()


def test_race_table_reports_the_share_of_the_optimum():
    results = pd.DataFrame({"race": ["fe"] * 4, "method": ["ga", "ga", "random", "random"],
                            "target": ["s0", "s1", "s0", "s1"], "best_fe_toughness": [2.0, 1.8, 1.5, 1.7],
                            "fe_calls": [100, 100, 100, 100], "surrogate_calls": [0, 0, 0, 0],
                            "seconds": [1.0, 2.0, 0.5, 0.5]})
    t = ex.race_table(results, optimum=2.0)
    ga = t[t["method"] == "ga"].iloc[0]
    assert ga["found_optimum"] == 0.5 and ga["median_best_toughness"] == pytest.approx(1.9)
    assert ga["median_share_of_optimum"] == pytest.approx(0.95) and ga["best_toughness"] == 2.0


def test_topopt_fd_at_the_bounds_stays_inside_them_and_matches_one_sided_differences():
    """The seed's central differences (h = 1e-5) from the all-stiff start (densities at 1): each
    step that would leave [0, 1] is one-sided (the FE oracle refuses 1 + h), and the gradient
    equals (f(x) - f(x - 2h)) / 2h there and the central difference inside, computed directly."""
    from deepdram.design.methods.base import Context
    from deepdram.design.methods.topopt import TopOptMethod
    from deepdram.design.pipeline import Surrogates, design, objective_for
    from deepdram.design.requests import parse_request

    space = CompositeSpace()
    req = parse_request({"space": "composite", "objective": "max-toughness", "soft_fraction": K / 32,
                         "method": "topopt", "top_k": 4, "seed": 0,
                         "options": {"gradient": "fd", "init": 1.0, "iterations": 2}}, space=space)
    r = design(space, Surrogates({}), req)  # raised on a density of 1.00001 before
    assert len(r.table) >= 1 and r.summary["fe_calls"] >= 2 * 65

    method = TopOptMethod()
    ctx = Context(space, req, Surrogates({}), np.random.default_rng(0), objective_for(space, req, None))
    x = np.ones((1, 32))
    x[0, 3], x[0, 7] = 0.5, 0.0
    opts = method.check_options(req.options)
    _, grad = method._gradient(ctx, x, opts)
    f = lambda z: ctx.objective(space.relaxed_properties(z, None, penalty=opts["penalty"]), ctx.target)[0]  # noqa: E731
    h = 1e-5
    for j, (up, down) in {0: (0.0, -2 * h), 3: (h, -h), 7: (2 * h, 0.0)}.items():
        hi, lo = x.copy(), x.copy()
        hi[0, j] += up
        lo[0, j] += down
        assert grad[0, j] == pytest.approx((f(hi) - f(lo)) / (2 * h), rel=1e-6), j  # FE round-off over 2h
