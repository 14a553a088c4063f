"""Design procedure: requests, screening, FE verification, ranking, per-beam stresses, the stage.

Tiny stand-in Keras models (a generator whose beams are mostly on, linear regressors) keep the
tests fast; FE results are checked against the independent solvers (tiling.solve_tilings,
fem.solve_cells), rankings and Pareto fronts against brute force.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from deepdram import design as D  # noqa: E402
from deepdram.constants import BIT_COLUMNS, DATA_DIR, PROPERTY_COLUMNS  # noqa: E402
from deepdram.errors import DeepdramError, InputError  # noqa: E402
from deepdram.fem import solve_cells  # noqa: E402
from deepdram.lattice import is_valid, sample_designs, to_keys  # noqa: E402
from deepdram.tiling import solve_tilings  # noqa: E402

REQUESTS = DATA_DIR / "requests"


def tiny_models(folder: Path) -> dict[str, Path]:
    """Generator 12 -> 42 (beams on with p ~ 0.85, varying with z), regressors 44/42 -> 4."""
    keras.utils.set_random_seed(7)
    paths = {}
    inp = keras.Input((12,))
    gen = keras.layers.Dense(42, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(0, 0.9),
                             bias_initializer=keras.initializers.Constant(1.8))(inp)
    paths["generator"] = folder / "generator.keras"
    keras.Model(inp, gen).save(paths["generator"])
    for kind, n_in in (("size_agnostic", 44), ("forward", 42)):
        inp = keras.Input((n_in,))
        out = keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(0, 0.01),
                                 bias_initializer=keras.initializers.Constant(0.05))(inp)
        paths[kind] = folder / f"{kind}.keras"
        keras.Model(inp, out).save(paths[kind])
    return paths


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    return tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def models(model_files) -> D.DesignModels:
    return D.load_keras_models(model_files)


def request(**kw) -> D.DesignRequest:
    spec = {"target": [0.03, 0.03, 0.1, 0.1], "d1": 2, "d2": 4, "n_candidates": 3000, "top_k": 12, "seed": 5}
    return D.parse_request({**spec, **kw})


# --- requests --------------------------------------------------------------------------------------


def test_shipped_requests_parse_and_the_sweep_has_196_targets_and_19_sizes():
    files = {p.stem: D.load_request_file(p) for p in REQUESTS.glob("*.yaml")}
    g = files.pop("fig4_sweep")
    assert isinstance(g, D.DesignGrid) and g.targets.shape == (196, 4) and len(g.sizes) == 19
    nu = np.round(np.arange(-1.0, 1.61, 0.2), 10)
    assert np.allclose(np.unique(g.targets[:, 2]), nu) and np.allclose(np.unique(g.targets[:, 3]), nu)
    assert (4, 4) in g.sizes and (20, 2) in g.sizes and (2, 20) not in g.sizes
    fig5 = {k: v for k, v in files.items() if k.startswith("fig5")}
    assert {(r.d1, r.d2, r.target[2], r.target[3]) for r in fig5.values()} == {
        (4, 4, -0.2, 0.2), (10, 4, 0.5, 0.5), (10, 10, -0.2, -0.2)}
    t10 = {k: v for k, v in files.items() if k.startswith("table10")}
    assert len(t10) == 4 and all(r.unit_cell and r.n_candidates == 100_000 for r in t10.values())
    assert all(r.mse_threshold == 0.1 for r in files.values())


@pytest.mark.parametrize("change, needles", [
    ({"d1": 3}, ["d1 must be an even integer", "got 3"]),
    ({"d2": 22}, ["d2", "[1, 20]", "22"]),
    ({"d1": 1, "d2": 4}, ["d1 must be an even integer"]),
    ({"n_candidates": 10**9}, ["n_candidates", "above the cap"]),
    ({"target": [0.03, 0.03, 0.1]}, ["need 4 values"]),
    ({"target": {"E11": 0.03, "E22": 0.03, "nu12": 0.1}}, ["missing nu21"]),
    ({"target": [0.03, "x", 0.1, 0.1]}, ["target.E22 must be a number", "'x'"]),
    ({"target": [0.5, 0.03, 0.1, 0.1]}, ["E11 = 0.5", "physically reachable"]),
    ({"target": [0.03, 0.03, 0.1, -4]}, ["nu21 = -4", "physically reachable"]),
    ({"top_k": -1}, ["top_k"]),
    ({"mse_threshold": 0}, ["mse_threshold must be > 0"]),
    ({"rule": "coin"}, ["rule must be one of"]),
    ({"colour": 1}, ["unknown key", "colour"]),
])
def test_bad_requests_are_refused_naming_the_problem(change, needles):
    with pytest.raises(InputError) as err:
        request(**change)
    for n in needles:
        assert n in str(err.value), (n, str(err.value))


# --- pure helpers ------------------------------------------------------------------------------------


def test_mse_rank_and_pareto_against_brute_force():
    rng = np.random.default_rng(0)
    err, peak = rng.random(60) * 0.2, rng.random(60) * 3
    err[5], peak[5] = err[7], peak[7]  # a tie
    assert np.allclose(D.mse([[1, 2, 3, 4]], [1, 2, 3, 6]), 1.0)  # (0 + 0 + 0 + 4) / 4
    front = D.pareto_front(err, peak)
    brute = np.array([not np.any((err <= err[i]) & (peak <= peak[i]) & ((err < err[i]) | (peak < peak[i])))
                      for i in range(60)])
    assert np.array_equal(front, brute) and front.any()
    order = D.rank_order(err, peak, 0.1)
    assert sorted(order) == list(range(60))
    ok = err[order] <= 0.1
    k = ok.sum()
    assert ok[:k].all() and not ok[k:].any()
    assert np.all(np.diff(peak[order][:k]) >= 0) and np.all(np.diff(err[order][k:]) >= 0)
    assert D.stress_spread([1.0, 3.1, 2.0]) == pytest.approx(210.0)


# --- screening and verification ------------------------------------------------------------------------


def test_screen_keeps_distinct_valid_designs_sorted_by_their_predicted_mse(models):
    req = request()
    s = D.screen(models, req, keep=500)
    c = s.counts
    assert c["candidates"] == 3000 and c["valid"] + c["invalid"] == 3000
    assert 0 < c["distinct"] <= c["valid"] and c["duplicates"] == c["valid"] - c["distinct"]
    assert is_valid(s.designs).all() and len(np.unique(to_keys(s.designs))) == len(s.designs)
    x = np.hstack([s.designs, np.tile([[2, 4]], (len(s.designs), 1))]).astype(np.float32)
    pred = np.asarray(models.size_agnostic(x))
    np.testing.assert_allclose(s.predicted, pred, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.mse_pred, D.mse(pred, req.target), rtol=1e-5)
    assert np.all(np.diff(s.mse_pred) >= 0)
    assert c["accepted"] == int((D.mse(pred, req.target) <= 0.1).sum()) or len(s.designs) == 500
    # same seed, same designs; another seed, others
    again = D.screen(models, req, keep=500)
    assert np.array_equal(again.designs, s.designs) and again.counts == c
    assert not np.array_equal(D.screen(models, request(seed=6), keep=500).designs, s.designs)


def test_verify_and_rank_uses_the_fe_solver_and_ranks_by_peak_stress(models):
    req = request(mse_threshold=0.02)
    r = D.design(models, req, threads=1)
    t = r.table
    assert len(t) == 12 and list(t["rank"]) == list(range(1, 13))
    d = t[list(BIT_COLUMNS)].to_numpy()
    fe = solve_tilings(d, 2, 4, stress=True, threads=1)
    np.testing.assert_allclose(t[list(D.FE_COLUMNS)].to_numpy(), fe.properties, rtol=1e-9)
    np.testing.assert_allclose(t[["vm1", "vm2"]].to_numpy(), fe.peak_vm, rtol=1e-9)
    np.testing.assert_allclose(t["mse_fe"], D.mse(fe.properties, req.target), rtol=1e-12)
    np.testing.assert_allclose(t["vm"], np.hypot(fe.peak_vm[:, 0], fe.peak_vm[:, 1]))
    ok = t["within_threshold"].to_numpy()
    assert np.array_equal(ok, t["mse_fe"].to_numpy() <= 0.02)
    k = ok.sum()
    assert ok[:k].all() and np.all(np.diff(t["vm"][:k]) >= 0)
    assert r.summary["fe_within_threshold"] == k and r.summary["verified"] == 12
    assert t["pareto"].any() and not t["best_effort"].any()


def test_unit_cell_requests_use_the_forward_model_and_the_cell_solver(models):
    req = request(d1=1, d2=1, top_k=5)
    r = D.design(models, req)
    d = r.table[list(BIT_COLUMNS)].to_numpy()
    cells = solve_cells(d, stress=True)
    np.testing.assert_allclose(r.table[list(D.FE_COLUMNS)].to_numpy(), cells.properties, rtol=1e-9)
    np.testing.assert_allclose(r.table[["vm1", "vm2"]].to_numpy(), cells.peak_vm, rtol=1e-9)
    np.testing.assert_allclose(r.table[list(PROPERTY_COLUMNS)].to_numpy(),
                               np.asarray(models.forward(d.astype(np.float32))), rtol=1e-5)


def test_unreachable_targets_give_a_flagged_best_effort_answer(models):
    r = D.design(models, request(target=[0.25, 0.01, 2.5, -2.5], top_k=3))
    assert r.summary["best_effort"] and r.summary["accepted"] == 0
    assert len(r.table) == 3 and r.table["best_effort"].all() and not r.table["within_threshold"].any()


@pytest.mark.parametrize("d1, d2", [(1, 1), (2, 4), (4, 2)])
def test_beam_stresses_match_the_substructuring_solver(d1, d2):
    designs = sample_designs(3.0, 3, seed=11)
    ref = solve_tilings(designs, d1, d2, stress=True, strict=False, threads=1)
    for k, d in enumerate(designs):
        nodes, beams, props, vm = D.beam_stresses(d, d1, d2)
        assert vm.shape == (2, len(beams))
        np.testing.assert_allclose(props, ref.properties[k], rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(vm.max(axis=1), ref.peak_vm[k], rtol=1e-6)


# --- the stage, on a temporary store -------------------------------------------------------------------


@pytest.fixture()
def store(tmp_path, monkeypatch):
    from deepdram import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    tracking.reset()
    tracking.configure()
    yield tmp_path
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking.reset()


def register_champions(files: dict[str, Path], kinds=("generator", "size_agnostic", "forward")) -> None:
    import mlflow

    from deepdram import registry, serving, tracking

    tracking.experiment("test-design")
    for kind in kinds:
        with mlflow.start_run() as run:
            serving.log_model(kind, files[kind])
        registry.register(run.info.run_id, D.MODEL_NAMES[kind])
        registry.promote(D.MODEL_NAMES[kind])


def test_missing_champion_is_a_clear_error(store, model_files):
    register_champions(model_files, kinds=("generator", "forward"))
    with pytest.raises(DeepdramError, match="no registered model 'deepdram-size-agnostic'"):
        D.load_champions()


def test_stage_writes_tables_plots_exports_and_registers_the_designer(store, model_files, tmp_path):
    from deepdram import registry, tracking

    register_champions(model_files)
    reqs = tmp_path / "requests"
    reqs.mkdir()
    for name in ("fig5_group1", "table10_II", "fig4_sweep"):
        (reqs / f"{name}.yaml").write_text((REQUESTS / f"{name}.yaml").read_text())
    params = {"design": {"requests": ["fig5_group1", "table10_II"], "n_candidates": 2000, "sweep": "fig4_sweep",
                         "sweep_profile": {"n_candidates": 500, "sizes": [[4, 4], [10, 2]], "target_stride": 49},
                         "export_top": 1, "register": True, "tolerance": 0.0}}
    out = tmp_path / "designs"
    info = D.run_stage(params, reqs, out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["requests"]) == {"fig5_group1", "table10_II"}
    s = summary["requests"]["fig5_group1"]
    assert s["candidates"] == 2000 and info["fig5_group1.candidates"] == 2000
    t = pd.read_csv(out / "fig5_group1.csv")
    assert len(t) == s["verified"] and {"mse_pred", "mse_fe", "vm1", "vm2", "fe_E11", "d1"} <= set(t.columns)
    sweep = pd.read_csv(out / "fig4_sweep.csv")
    assert len(sweep) == 4 * 2 and set(zip(sweep.d1, sweep.d2)) == {(4, 4), (10, 2)}
    for png in ("fig4b_mse_heatmaps", "fig2b_envelope", "fig5b_peak_stress", "fig5c_drawings"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
    assert (out / "export" / "fig5_group1_rank1.stl").exists() and (out / "export" / "fig5_group1_rank1.svg").exists()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir() if p.name != ".models")
    assert summary["designer"]["decision"] == "promoted" and info["designer_version"] == 1
    mv = tracking.client().get_model_version_by_alias("deepdram-designer", registry.CHAMPION)
    assert int(mv.version) == 1
