"""The shared design pipeline (deepdram.design.pipeline) with the lattice space: requests,
screening, FE verification, ranking, per-beam stresses, and the `design` stage (deepdram.jobs.design).

Tiny stand-in Keras models (conftest's `tiny_surrogates`: a generator whose beams are mostly on,
linear regressors) keep the tests fast. Truth: the screening counts against a brute-force count of
the candidates regenerated with the same seed; the FE columns against a plain assembled sparse
solve of each tiling (fem.solve_frame on geometry.tiling_geometry, per-beam von Mises by
fem.beam_von_mises), not the substructuring solvers the pipeline calls; rankings and Pareto fronts
against brute force.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from deepdram import paths  # noqa: E402
from deepdram.design import pipeline as D  # noqa: E402
from deepdram.design.objectives import mse  # noqa: E402
from deepdram.design.requests import (  # noqa: E402
    DesignGrid,
    DesignRequest,
    load_request_file,
    parse_request,
)
from deepdram.errors import DeepdramError, InputError  # noqa: E402
from deepdram.spaces.lattice import fem  # noqa: E402
from deepdram.spaces.lattice.constants import BIT_COLUMNS, PROPERTY_COLUMNS  # noqa: E402
from deepdram.spaces.lattice.design_figures import beam_stresses  # noqa: E402
from deepdram.spaces.lattice.geometry import (  # noqa: E402
    is_valid,
    sample_designs,
    tiling_geometry,
    to_keys,
)
from deepdram.spaces.lattice.space import LatticeSpace  # noqa: E402
from deepdram.spaces.lattice.tiling import solve_tilings  # noqa: E402

REQUESTS = paths.REQUESTS_DIR
SPACE = LatticeSpace()
FE_COLUMNS = list(D.fe_columns(SPACE))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_surrogates) -> dict[str, Path]:
    return tiny_surrogates(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def models(model_files) -> D.Surrogates:
    return D.load_surrogates(model_files)


def request(**kw) -> DesignRequest:
    spec = {"target": [0.03, 0.03, 0.1, 0.1], "d1": 2, "d2": 4, "n_candidates": 3000, "top_k": 12, "seed": 5}
    return parse_request({**spec, **kw})


def fe_reference(designs: np.ndarray, conditions) -> tuple[np.ndarray, np.ndarray]:
    """(properties (N, 4), peak von Mises / (Eb eps) per load case (N, 2)) of each design's d1 x d2
    tiling (None: the unit cell) by a plain assembled sparse solve of the whole frame."""
    d1, d2 = conditions if conditions is not None else (1, 1)
    props, peaks = [], []
    for d in designs:
        nodes, beams = tiling_geometry(d, d1, d2)
        p, u, _ = fem.solve_frame(nodes, beams, 3 * d1 + 1, 3 * d2 + 1, sparse=True)
        props.append(p)
        peaks.append([fem.beam_von_mises(nodes, beams, u[c]).max() for c in (0, 1)])
    return np.array(props), np.array(peaks)


# --- requests --------------------------------------------------------------------------------------


def test_shipped_requests_parse_and_the_sweep_has_196_targets_and_19_sizes():
    files = {p.stem: load_request_file(p) for p in REQUESTS.glob("*.yaml")}
    g = files.pop("fig4_sweep")
    assert isinstance(g, DesignGrid) and g.targets.shape == (196, 4) and len(g.sizes) == 19
    nu = np.round(np.arange(-1.0, 1.61, 0.2), 10)
    assert np.allclose(np.unique(g.targets[:, 2]), nu) and np.allclose(np.unique(g.targets[:, 3]), nu)
    assert (4, 4) in g.sizes and (20, 2) in g.sizes and (2, 20) not in g.sizes
    fig5 = {k: v for k, v in files.items() if k.startswith("fig5")}
    assert {(r.conditions, r.target[2], r.target[3]) for r in fig5.values()} == {
        ((4, 4), -0.2, 0.2), ((10, 4), 0.5, 0.5), ((10, 10), -0.2, -0.2)}
    t10 = {k: v for k, v in files.items() if k.startswith("table10")}
    # d1 = d2 = 1: a unit cell, the lattice's unconditioned case
    assert len(t10) == 4 and all(r.conditions is None and r.n_candidates == 100_000 for r in t10.values())
    assert all(r.mse_threshold == 0.1 for r in files.values())
    assert all((r.method, r.objective, r.space) == ("cvae", "mse", "lattice") for r in files.values())


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
    ({"method": "annealing"}, ["method must be one of", "'annealing'"]),
    ({"objective": "cost"}, ["objective must be one of", "'cost'"]),
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
    assert np.allclose(mse([[1, 2, 3, 4]], [1, 2, 3, 6]), 1.0)  # (0 + 0 + 0 + 4) / 4
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


def regenerated_candidates(models: D.Surrogates, req: DesignRequest) -> np.ndarray:
    """The request's raw candidates, regenerated with its seed through the public generation pieces
    (what the cvae method draws: every latent vector from default_rng(seed), then the rule)."""
    from deepdram.learn.generation import generate, generator_decoder, latent_size

    gen = models.models["generator"]
    return generate(generator_decoder(gen), np.asarray(req.target, np.float32)[None], req.n_candidates,
                    latent_size(gen, SPACE.n_properties), np.random.default_rng(req.seed), req.rule)


def test_screen_counts_every_distinct_valid_candidate_and_keeps_the_best(models, monkeypatch):
    from deepdram.design.methods import cvae

    base = request()
    # Brute force over ALL candidates: validity, exact duplicates, the conditioned model at (2, 4).
    raw = regenerated_candidates(models, base)
    valid = is_valid(raw)
    uniq = np.unique(raw[valid], axis=0)
    x = np.hstack([uniq, np.tile([[2, 4]], (len(uniq), 1))]).astype(np.float32)
    err = np.mean((np.asarray(models.models["conditioned"](x), np.float64) - np.asarray(base.target)) ** 2, axis=1)
    # A threshold that accepts more designs than `keep` retains, and not all of them.
    threshold = float(np.quantile(err, 0.6))
    req = request(mse_threshold=threshold)
    n_accepted = int((err <= threshold).sum())
    assert 500 < n_accepted < len(uniq)

    full = D.screen(SPACE, models, req, keep=10**6)  # nothing cut
    c = full.counts
    assert c["candidates"] == 3000 and c["valid"] == int(valid.sum()) and c["invalid"] == 3000 - int(valid.sum())
    assert c["distinct"] == len(uniq) and c["duplicates"] == c["valid"] - c["distinct"] > 0
    assert c["accepted"] == n_accepted
    assert len(full.designs) == len(uniq) and np.array_equal(np.unique(full.designs, axis=0), uniq)
    assert is_valid(full.designs).all() and len(np.unique(to_keys(full.designs))) == len(full.designs)
    pred = np.asarray(models.models["conditioned"](
        np.hstack([full.designs, np.tile([[2, 4]], (len(full.designs), 1))]).astype(np.float32)))
    np.testing.assert_allclose(full.predicted, pred, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.mse_pred, mse(pred, req.target), rtol=1e-5)
    assert np.all(np.diff(full.mse_pred) >= 0)
    np.testing.assert_allclose(full.mse_pred, np.sort(err), rtol=1e-5, atol=1e-9)
    assert c["best_mse_pred"] == pytest.approx(err.min(), rel=1e-5)

    # A small keep: the same counts (over all candidates), the kept designs exactly the best prefix.
    s = D.screen(SPACE, models, req, keep=500)
    assert s.counts == c and c["accepted"] > len(s.designs) == 500
    assert np.array_equal(s.designs, full.designs[:500])
    np.testing.assert_array_equal(s.mse_pred, full.mse_pred[:500])
    np.testing.assert_array_equal(s.predicted, full.predicted[:500])

    # In several batches (the cvae method's chunks): duplicates across batches are dropped, every
    # candidate is counted once, and the running best-500 is the same set.
    monkeypatch.setattr(cvae, "CHUNK", 700)
    chunked = D.screen(SPACE, models, req, keep=500)
    assert chunked.counts == c
    assert set(to_keys(chunked.designs)) == set(to_keys(s.designs))
    np.testing.assert_allclose(chunked.mse_pred, s.mse_pred, rtol=1e-5, atol=1e-9)
    monkeypatch.undo()

    # same seed, same designs; another seed, others
    again = D.screen(SPACE, models, req, keep=500)
    assert np.array_equal(again.designs, s.designs) and again.counts == c
    assert not np.array_equal(D.screen(SPACE, models, request(seed=6, mse_threshold=threshold), keep=500).designs,
                              s.designs)


def test_verify_and_rank_checks_by_fe_and_ranks_by_peak_stress(models):
    req = request(mse_threshold=0.02)
    r = D.design(SPACE, models, req, threads=1)
    t = r.table
    assert list(t.columns) == list(D.result_columns(SPACE))
    assert len(t) == 12 and list(t["rank"]) == list(range(1, 13))
    d = t[list(BIT_COLUMNS)].to_numpy()
    assert (t["d1"] == 2).all() and (t["d2"] == 4).all()
    props, peak = fe_reference(d, (2, 4))  # independent of the tiling solver the pipeline uses
    np.testing.assert_allclose(t[FE_COLUMNS].to_numpy(), props, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(t[["vm1", "vm2"]].to_numpy(), peak, rtol=1e-9)
    np.testing.assert_allclose(t["mse_fe"], mse(props, req.target), rtol=1e-9)
    np.testing.assert_allclose(t["vm"], np.hypot(peak[:, 0], peak[:, 1]), rtol=1e-9)
    ok = t["within_threshold"].to_numpy()
    assert np.array_equal(ok, t["mse_fe"].to_numpy() <= 0.02)
    k = ok.sum()
    assert ok[:k].all() and np.all(np.diff(t["vm"][:k]) >= 0)
    assert np.all(np.diff(t["mse_fe"][k:]) >= 0)
    assert r.summary["fe_within_threshold"] == k and r.summary["verified"] == 12
    assert t["pareto"].any() and not t["best_effort"].any()
    # the verified designs are the 12 best-predicted of the screen
    s = D.screen(SPACE, models, req)
    assert {tuple(row) for row in d} == {tuple(row) for row in s.designs[:12]}


def test_a_method_that_yields_no_candidates_gets_an_empty_answer(models):
    """A method whose budget ran out before its first batch (a time race): an empty, well-formed
    table and counts of zero, not a crash (it was a KeyError on the ranking extras)."""

    class Nothing:
        def verification_fe(self, req):
            return 0

        def candidates(self, ctx):
            return iter(())

    req = request()
    s = D.screen(SPACE, models, req, method=Nothing())
    assert s.counts["candidates"] == 0 and len(s.designs) == 0 and set(s.fe_extras) == set(SPACE.ranking_extras)
    r = D.verify_and_rank(SPACE, req, s)
    assert len(r.table) == 0 and list(r.table.columns) == list(D.result_columns(SPACE))


def test_unit_cell_requests_use_the_forward_model_and_the_cell_solver(models):
    req = request(d1=1, d2=1, top_k=5)
    assert req.conditions is None
    r = D.design(SPACE, models, req)
    d = r.table[list(BIT_COLUMNS)].to_numpy()
    assert (r.table["d1"] == 1).all() and (r.table["d2"] == 1).all()
    props, peak = fe_reference(d, None)
    np.testing.assert_allclose(r.table[FE_COLUMNS].to_numpy(), props, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.table[["vm1", "vm2"]].to_numpy(), peak, rtol=1e-9)
    np.testing.assert_allclose(r.table[list(PROPERTY_COLUMNS)].to_numpy(),
                               np.asarray(models.models["forward"](d.astype(np.float32))), rtol=1e-5)


def test_unreachable_targets_give_a_flagged_best_effort_answer(models):
    r = D.design(SPACE, models, request(target=[0.25, 0.01, 2.5, -2.5], top_k=3))
    assert r.summary["best_effort"] and r.summary["accepted"] == 0
    assert len(r.table) == 3 and r.table["best_effort"].all() and not r.table["within_threshold"].any()


@pytest.mark.parametrize("d1, d2", [(1, 1), (2, 4), (4, 2)])
def test_beam_stresses_match_the_substructuring_solver(d1, d2):
    designs = sample_designs(3.0, 3, seed=11)
    ref = solve_tilings(designs, d1, d2, stress=True, strict=False, threads=1)
    for k, d in enumerate(designs):
        nodes, beams, props, vm = beam_stresses(d, d1, d2)
        assert vm.shape == (2, len(beams))
        np.testing.assert_allclose(props, ref.properties[k], rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(vm.max(axis=1), ref.peak_vm[k], rtol=1e-6)


# --- the stage, on a temporary store -------------------------------------------------------------------


def register_champions(files: dict[str, Path], roles=("generator", "conditioned", "forward")) -> None:
    """Log, register and promote the tiny models under the names the design procedure loads."""
    import mlflow

    from deepdram.mlops import pyfuncs, registry, tracking
    from deepdram.mlops.catalogue import BY_NAME, DESIGN_ROLES

    tracking.experiment("test-design")
    for role in roles:
        name = DESIGN_ROLES["lattice"][role]
        with mlflow.start_run() as run:
            pyfuncs.log_model(BY_NAME[name].kind, files[role])
        registry.register(run.info.run_id, name)
        registry.promote(name)


def test_missing_champion_is_a_clear_error(mlflow_test_store, model_files):
    from deepdram.mlops.champions import load_champions

    register_champions(model_files, roles=("generator", "forward"))
    with pytest.raises(DeepdramError, match="no registered model 'deepdram-size-agnostic'"):
        load_champions()


def test_stage_writes_tables_plots_exports_and_registers_the_designer(mlflow_test_store, model_files, tmp_path,
                                                                      monkeypatch):
    from deepdram import params as P
    from deepdram.jobs.design import job
    from deepdram.mlops import registry, tracking

    register_champions(model_files)
    reqs = tmp_path / "requests"
    reqs.mkdir()
    for name in ("fig5_group1", "table10_II", "fig4_sweep"):
        (reqs / f"{name}.yaml").write_text((REQUESTS / f"{name}.yaml").read_text())
    base = P.read_yaml(paths.PARAMS_PATH)
    params = P.parse({**base, "design": {
        "requests": ["fig5_group1", "table10_II"], "n_candidates": 2000, "sweep": "fig4_sweep",
        "sweep_profile": {"n_candidates": 500, "sizes": [[4, 4], [10, 2]], "target_stride": 49},
        "export_top": 1, "register": True, "tolerance": 0.0,
        "objective": "mse"}})  # the scaled objective needs the training split, which this test has not
    out = tmp_path / "designs"
    monkeypatch.setattr(paths, "REQUESTS_DIR", reqs)
    monkeypatch.setattr(paths, "DESIGNS_DIR", out)
    monkeypatch.setattr(paths, "SPLITS_DIR", tmp_path / "splits")  # none: the envelope has no training data
    info = job(params)
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
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no work folder left
    assert not (out / ".models").exists()
    assert summary["designer"]["decision"] == "promoted" and info["designer_version"] == 1
    mv = tracking.client().get_model_version_by_alias("deepdram-designer", registry.CHAMPION)
    assert int(mv.version) == 1
