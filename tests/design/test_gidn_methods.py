"""The GIDN methods on tiny models and budgets: the GA's operators, backprop through the surrogate,
topology optimisation on the exact oracle, active learning improving its surrogate, budgets, the
scaled objective and the tolerance test, and the peaks demonstration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepdram.design import objectives  # noqa: E402
from deepdram.design import pipeline as P  # noqa: E402
from deepdram.design.methods import ga  # noqa: E402
from deepdram.design.methods.backprop import binarise  # noqa: E402
from deepdram.design.methods.registry import NAMES, method_class  # noqa: E402
from deepdram.design.methods.topopt import normalised, objective_gradient  # noqa: E402
from deepdram.design.requests import parse_request  # noqa: E402
from deepdram.errors import InputError  # noqa: E402
from deepdram.spaces.lattice.fem import solve_cells  # noqa: E402
from deepdram.spaces.lattice.space import LatticeSpace  # noqa: E402
from deepdram.spaces.peaks.space import GLOBAL_MINIMUM, GLOBAL_MINIMUM_VALUE, PeaksSpace, peaks  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "models"
SPACE = LatticeSpace()
TARGET = [0.04, 0.05, 0.2, 0.1]


@pytest.fixture(scope="module")
def surrogates():
    """The golden fixture models, with a unit-cell model trained well enough to have useful gradients."""
    from deepdram.learn.configs import RegressorConfig
    from deepdram.learn.models import train_regressor

    d = np.concatenate([SPACE.sample(600, 1, zg=z) for z in (2.5, 3.0, 3.5, 4.0, 4.5)])
    fwd, _ = train_regressor(d, SPACE.evaluate(d).properties, None, None,
                             RegressorConfig(hidden_layers=2, first_width=64, output_activation="none", epochs=25,
                                             batch_size=128, learning_rate=3e-3, lr_schedule="cosine"), space=SPACE)
    s = P.load_surrogates({"generator": GOLDEN / "generator.keras", "conditioned": GOLDEN / "size_agnostic.keras"}, SPACE)
    s.models["forward"] = fwd
    return s


def request(**kw):
    return parse_request({"target": TARGET, "d1": 1, "d2": 1, "n_candidates": 2000, "top_k": 6, "seed": 3, **kw})


# --- the GA's operators ---------------------------------------------------------------------------


def test_centre_crossover_takes_the_halves_of_its_parents():
    a, b = np.zeros((3, 42), np.uint8), np.ones((3, 42), np.uint8)
    kids = ga.centre_crossover(a, b)
    assert (kids[:, :21] == 0).all() and (kids[:, 21:] == 1).all()
    assert ga.centre_crossover(np.arange(6)[None], np.arange(6, 12)[None]).tolist() == [[0, 1, 2, 9, 10, 11]]


def test_mutation_flips_genes_at_its_rate():
    rng = np.random.default_rng(0)
    x = np.zeros((2000, 42), np.uint8)
    for rate in (0.01, 0.1):
        flipped = ga.mutate(x, rate, rng).mean()
        assert abs(flipped - rate) < 4 * np.sqrt(rate * (1 - rate) / x.size)
    assert np.array_equal(ga.mutate(x, 0.0, rng), x) and np.array_equal(ga.mutate(x, 1.0, rng), 1 - x)


def test_parents_are_the_fittest():
    assert ga.select_parents(np.array([3.0, 1.0, np.inf, 0.5, 1.0]), 3).tolist() == [3, 1, 4]


def test_the_ga_on_fe_keeps_its_budget_and_never_re_evaluates(surrogates):
    req = request(method="ga", budget_fe=150, options={"population": 60, "parents": 12, "generations": 30})
    s = P.screen(SPACE, surrogates, req)
    assert s.context.counters["fe_calls"] <= 150
    assert s.known[: req.top_k].all()  # the best were evaluated by the GA itself
    r = P.verify_and_rank(SPACE, req, s)
    assert r.summary["fe_calls"] == s.context.counters["fe_calls"]  # verification reused them
    fe = solve_cells(r.table[list(SPACE.variables)].to_numpy()).properties
    np.testing.assert_allclose(r.table[list(P.fe_columns(SPACE))].to_numpy(), fe, rtol=1e-12)


def test_a_ga_beats_its_own_first_generation(surrogates):
    req = request(method="ga", options={"population": 80, "parents": 16, "generations": 15, "mutation": 0.05})
    s = P.screen(SPACE, surrogates, req)
    trace = [v for _, _, v in s.context.trace]
    assert trace[-1] < trace[0]


# --- backprop -------------------------------------------------------------------------------------


def test_binarise_by_threshold_and_by_ranking():
    x = np.array([[0.9, 0.2, 0.6, 0.51, 0.1]])
    assert binarise(x).tolist() == [[1, 0, 1, 1, 0]]
    assert binarise(x, 2).tolist() == [[1, 0, 1, 0, 0]] and binarise(x, 0).sum() == 0
    with pytest.raises(InputError):
        binarise(x, 6)


def test_backprop_lowers_the_surrogate_objective_from_its_starts(surrogates):
    """The designs after Adam are predicted much closer to the target than the binarised starts."""
    from deepdram.design.methods.backprop import BackpropMethod
    from deepdram.design.methods.base import Context

    def designs(steps):
        req = request(method="backprop", options={"n_starts": 200, "steps": steps, "lr": 0.2, "tau_end": 0.2})
        ctx = Context(SPACE, req, surrogates, np.random.default_rng(3), objectives.get("mse", SPACE))
        d = next(BackpropMethod().candidates(ctx)).designs
        return d[SPACE.is_valid(d)]

    err = lambda d: objectives.mse(surrogates.predict(SPACE, d, None), TARGET)  # noqa: E731
    assert np.median(err(designs(60))) < 0.5 * np.median(err(designs(0)))


def test_backprop_ranking_keeps_the_beam_count(surrogates):
    req = request(method="backprop", options={"n_starts": 100, "steps": 20, "n_ones": 28})
    s = P.screen(SPACE, surrogates, req)
    assert (s.designs.sum(axis=1) == 28).all() and len(s.designs)


# --- topology optimisation --------------------------------------------------------------------------


def test_objective_gradient_matches_differences_of_the_objective():
    rng = np.random.default_rng(1)
    p, jac, t = rng.random((3, 4)), rng.random((3, 4, 42)), rng.random(4)
    for obj in (objectives.get("mse", SPACE), objectives.get("scaled", SPACE, [0.1, 0.2, 0.3, 0.4])):
        g = objective_gradient(obj, p, jac, t)
        dp = np.zeros_like(p)
        for k in range(4):
            e = np.zeros(4)
            e[k] = 1e-6
            dp[:, k] = (obj(p + e, t) - obj(p - e, t)) / 2e-6
        np.testing.assert_allclose(g, np.einsum("np,npv->nv", dp, jac), rtol=1e-6)


def test_the_seed_normalisation_has_zero_mean_and_unit_range():
    g = normalised(np.array([[1.0, 3.0, 2.0, -5.0]]))
    assert abs(g.mean()) < 1e-12 and np.isclose(g.max() - g.min(), 1.0)


def test_topopt_with_the_adjoint_reaches_a_target_and_counts_its_fe_calls(surrogates):
    """Aim at a real cell's properties: the binarised result is near it by FE."""
    design = SPACE.sample(1, 5, zg=3.5)
    target = solve_cells(design).properties[0].tolist()
    req = parse_request({"target": target, "d1": 1, "d2": 1, "method": "topopt", "top_k": 6, "seed": 1,
                         "options": {"iterations": 80, "step": 0.02}})
    r = P.design(SPACE, surrogates, req)
    # one FE call per iteration (adjoint), then one per valid distinct binarised design
    assert 1 <= r.summary["candidates"] <= len(SPACE.binarised_counts(np.full((1, 42), 0.5)))
    assert r.summary["fe_calls"] == 80 + r.summary["candidates"]
    start = objectives.mse(solve_cells(np.ones((1, 42))).properties, target)[0]
    assert r.table["mse_fe"].min() < 0.5 * start


def test_topopt_fd_gradient_on_peaks_descends_to_a_minimum():
    req = parse_request({"space": "peaks", "objective": "min-z", "method": "topopt", "top_k": 1,
                         "options": {"iterations": 200, "update": "adam", "lr": 0.05, "gradient": "fd", "init": 0.3}})
    r = P.design(PeaksSpace(), P.Surrogates({}), req)
    x, y = r.table[["x", "y"]].to_numpy()[0]
    grad = np.array([peaks(x + 1e-5, y) - peaks(x - 1e-5, y), peaks(x, y + 1e-5) - peaks(x, y - 1e-5)]) / 2e-5
    assert np.linalg.norm(grad) < 0.05 and r.table["fe_z"].iloc[0] < peaks(0.3, 0.3)


# --- active learning ----------------------------------------------------------------------------------


def test_active_learning_improves_its_surrogate_on_the_acquired_rows_and_leaves_the_champion(surrogates):
    before = [w.copy() for w in surrogates.models["forward"].get_weights()]
    req = request(method="active", options={"rounds": 3, "fe_per_round": 12, "proposer_starts": 60,
                                            "proposer_steps": 20, "epochs": 40, "lr": 3e-3})
    r = P.design(SPACE, surrogates, req)
    assert [rec["round"] for rec in r.records] == [1, 2, 3]
    for rec in r.records:  # every update lowers the copy's error on all rows acquired so far
        assert rec["surrogate_mse_acquired_after_update"] < rec["surrogate_mse_acquired_before_update"]
    assert r.acquired is not None and len(r.acquired) == sum(rec["new_rows"] for rec in r.records)
    fe = solve_cells(r.acquired[list(SPACE.variables)].to_numpy()).properties
    np.testing.assert_allclose(r.acquired[list(SPACE.properties)].to_numpy(), fe, rtol=1e-12)
    after = surrogates.models["forward"].get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    # the next request starts from the champion again (its copy is reset, not the updated one reused)
    again = P.design(SPACE, surrogates, req)
    def facts(records):
        return [{k: v for k, v in rec.items() if k != "seconds"} for rec in records]

    assert facts(again.records) == facts(r.records)
    assert again.acquired.equals(r.acquired)


def test_active_learning_keeps_a_wall_time_budget_across_its_rounds(surrogates):
    # unbounded, these options take far longer than the budget (3 rounds of 400 starts x 300 steps
    # and 500 epochs each): the rounds share the budget out instead of overrunning it
    req = request(method="active", budget_seconds=3.0, top_k=5,
                  options={"rounds": 3, "fe_per_round": 10, "proposer_starts": 400, "proposer_steps": 300,
                           "epochs": 500})
    r = P.design(SPACE, surrogates, req)
    assert 1 <= len(r.records) <= 3 and r.acquired is not None
    assert r.summary["seconds"] < 3.0 + 1.0, r.summary["seconds"]  # + the verification of top_k
    # a round that starts in time finishes its FE of a few cells (tens of ms) before it stops
    assert all(rec["seconds"] <= 3.0 + 0.3 for rec in r.records), [(rec["round"], rec["seconds"]) for rec in r.records]


# --- objectives, tolerance, budgets -------------------------------------------------------------------


def test_the_scaled_objective_weighs_properties_by_their_variance():
    obj = objectives.get("scaled", SPACE, [1e-4, 1e-4, 1e-2, 1e-2])
    p = np.array([[0.05, 0.05, 0.2, 0.1], [0.04, 0.05, 0.3, 0.1]])
    assert np.allclose(obj(p, TARGET), [(0.01**2 / 1e-4) / 4, (0.1**2 / 1e-2) / 4])
    with pytest.raises(InputError, match="variances"):
        objectives.get("scaled", SPACE)


def test_the_tolerance_test_is_relative_for_moduli_and_absolute_for_poisson():
    p = np.array([[0.0439, 0.0451, 0.249, 0.149], [0.0445, 0.05, 0.2, 0.1], [0.04, 0.05, 0.26, 0.1]])
    assert objectives.tolerance_mask(SPACE, p, TARGET).tolist() == [True, False, False]
    assert objectives.tolerance_mask(SPACE, p, TARGET, {"E": 0.2, "nu": 0.1}).tolist() == [True, True, True]
    with pytest.raises(InputError, match="unknown group 'G'"):
        objectives.check_tolerances(SPACE, {"G": 0.1})


@pytest.mark.parametrize("bad, needle", [
    ({"method": "annealing"}, "request.method must be one of"),
    ({"method": "ga", "options": {"populaton": 10}}, "unknown option(s) ['populaton'] for method 'ga'"),
    ({"method": "ga", "options": {"oracle": "oracle"}}, "oracle must be 'fe' or 'surrogate'"),
    ({"objective": "max-toughness"}, "request.objective must be one of"),
    ({"budget_fe": 0}, "budget_fe must be an integer >= 1"),
    ({"budget_seconds": -1}, "budget_seconds must be > 0"),
    ({"tolerance": {"E": -0.1}}, "tolerance.E must be > 0"),
])
def test_bad_method_objective_budget_or_tolerance_is_named(bad, needle):
    with pytest.raises(InputError) as e:
        parse_request({"target": TARGET, "d1": 1, "d2": 1, **bad})
    assert needle in str(e.value)


def test_a_time_budget_stops_a_method(surrogates):
    req = request(method="random", n_candidates=10**6, budget_seconds=0.5)
    r = P.design(SPACE, surrogates, req)
    assert r.summary["seconds"] < 5 and 0 < r.summary["fe_calls"] < 10**6


def test_every_method_runs_and_the_cli_help_documents_its_options(surrogates):
    for name in NAMES:
        for option in method_class(name).defaults:
            assert name in DESIGN_HELP and option in DESIGN_HELP, (name, option)


DESIGN_HELP = subprocess.run([sys.executable, "-m", "deepdram.cli.main", "design", "--help"], capture_output=True,
                             text=True, env={**os.environ, "COLUMNS": "100"}).stdout


# --- the peaks demonstration ----------------------------------------------------------------------------


def test_the_peaks_demonstration_finds_the_global_minimum(tmp_path):
    """The seed's predictor (4 x 64 ReLU) and backprop from 1,000 Gaussian starts (sd 1.5)."""
    from deepdram.spaces.peaks import demo

    r = demo.run(epochs=100, dropout=0.0, learning_rate=3e-3, steps=300)
    assert r.test_mse < 0.01
    assert r.distance < 0.05 and abs(r.best_z - GLOBAL_MINIMUM_VALUE) < 0.04
    assert np.hypot(*(r.best - np.asarray(GLOBAL_MINIMUM))) == pytest.approx(r.distance)
    png = demo.plot_paths(r, tmp_path / "paths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
