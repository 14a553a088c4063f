"""The sweep's fast screening (deepdram.design.screening) and the Fig. 4 sweep built on it.

Truth: the prediction cache against a plain dict of what was added (emptied when the cache must
start afresh); `screen_batch` against `space.distinct_valid` and a direct call of the predictor;
the split regressor against the Keras model it was split from, on small real deepdram
size-agnostic models (homogenisation features, MinMax scalers, ReLU / tanh cores) saved and
loaded as the pipeline does; `sweep` against the pre-screening procedure (per target and size:
`distinct_valid`, then `Surrogates.predict` with the Keras model), written out here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepdram.design import pipeline as D
from deepdram.design import screening as S
from deepdram.design.objectives import mse
from deepdram.design.requests import DesignGrid
from deepdram.spaces.lattice.geometry import sample_designs
from deepdram.spaces.lattice.space import LatticeSpace

SPACE = LatticeSpace()
SIZES = [(2, 2), (4, 4), (10, 2), (20, 20)]
RTOL = 1e-4


def close(a, b, rtol: float = RTOL) -> bool:
    """|a - b| <= rtol * (1 + |b|) everywhere (NaN where both are NaN)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    ok = ~np.isnan(b)
    return bool(np.all(np.abs(a[ok] - b[ok]) <= rtol * (1 + np.abs(b[ok]))))


# --- models ------------------------------------------------------------------------------------------


def valid_designs(n_per_zg: int, seed: int = 0) -> np.ndarray:
    """Distinct valid designs of every Z_g."""
    return np.concatenate([sample_designs(z, n_per_zg, [seed, i]) for i, z in enumerate((2.5, 3.0, 3.5, 4.0, 4.5))])


def save_agnostic(path: Path, activation: str = "relu", symmetrize: str = "none", seed: int = 3) -> Path:
    """A small untrained deepdram size-agnostic regressor (homogenised features, the pipeline's
    scalers, a ReLU output with a positive bias so no output is dead) saved as a .keras file."""
    from deepdram.learn.models import (
        RegressorConfig,
        build_regressor,
        feature_scaling,
        save_model,
    )
    from deepdram.learn.models import symmetrize as symmetrized

    keras.utils.set_random_seed(seed)
    fset = SPACE.feature_set("homogenized")
    f = fset.numpy(valid_designs(40, seed))
    cfg = RegressorConfig(hidden_layers=3, first_width=48, activation=activation, features="homogenized")
    xs, xo = feature_scaling(SPACE, SPACE.n_variables + SPACE.n_conditions)
    _, full = build_regressor(SPACE.n_variables + SPACE.n_conditions, 4, cfg, xs, xo, np.array([5.0, 5.0, 1.0, 1.0]),
                              np.array([0.0, 0.0, 0.5, 0.5]), output_bias=[0.5] * 4,
                              feature_stats=(f.mean(0), f.std(0) + 1e-9), features=fset,
                              n_variables=SPACE.n_variables)
    return save_model(symmetrized(full, SPACE, symmetrize), path)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_surrogates) -> dict[str, Path]:
    """The tiny stand-ins (generator, linear conditioned and forward) and real size-agnostic models."""
    folder = tmp_path_factory.mktemp("screening-models")
    files = tiny_surrogates(folder)
    files["agnostic_relu"] = save_agnostic(folder / "agnostic_relu.keras")
    files["agnostic_tanh"] = save_agnostic(folder / "agnostic_tanh.keras", activation="tanh", seed=4)
    files["agnostic_mirrors"] = save_agnostic(folder / "agnostic_mirrors.keras", symmetrize="mirrors", seed=5)
    return files


@pytest.fixture(scope="module")
def loaded(model_files) -> dict:
    return {k: D.load_surrogates({k: p}, SPACE).models[k] for k, p in model_files.items()}


def surrogates(loaded: dict, conditioned: str) -> D.Surrogates:
    """The tiny generator and forward model with the named conditioned model."""
    return D.Surrogates({"generator": loaded["generator"], "forward": loaded["forward"],
                         "conditioned": loaded[conditioned]})


# --- PredictionCache -----------------------------------------------------------------------------------


def add_new(cache: S.PredictionCache, ref: dict, keys: np.ndarray, rng) -> None:
    """Add the keys the cache does not hold (as `screen_batch` does), mirrored in `ref`."""
    cache.reserve(len(keys))
    if cache.size == 0:
        ref.clear()  # started afresh
    new = keys[cache.find(keys) < 0]
    valid = rng.random(len(new)) < 0.7
    pred = rng.normal(size=(len(new), cache.n_conditions, cache.n_properties)).astype(np.float32)
    rows = cache.add(new, valid, pred)
    assert np.array_equal(rows, np.arange(cache.size - len(new), cache.size))
    for k, v, p in zip(new.tolist(), valid, pred):
        ref[k] = (bool(v), p)


def assert_matches(cache: S.PredictionCache, ref: dict, probe: np.ndarray) -> None:
    rows = cache.find(probe)
    assert cache.size == len(ref)
    for k, r in zip(probe.tolist(), rows):
        if k not in ref:
            assert r == -1
            continue
        assert 0 <= r < cache.size
        assert cache.valid[r] == ref[k][0]
        assert np.array_equal(cache.pred[r], ref[k][1])


def test_cache_finds_exactly_what_was_added():
    rng = np.random.default_rng(0)
    pool = np.unique(np.concatenate([rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2),
                                     np.array([0, 2**64 - 1, 2**63], np.uint64)]))
    cache, ref = S.PredictionCache(3, 4, max_rows=10_000), {}
    for _ in range(6):  # batches that overlap the earlier ones
        batch = np.unique(rng.choice(pool, 600))
        add_new(cache, ref, batch, rng)
        assert_matches(cache, ref, np.concatenate([pool, rng.integers(0, 2**64 - 1, 50, dtype=np.uint64)]))
    assert len(cache.valid) >= cache.size > 1024  # grown past its first capacity, contents kept
    cache.clear()
    assert_matches(cache, {}, pool)


def test_cache_starts_afresh_when_full():
    rng = np.random.default_rng(1)
    cache, ref = S.PredictionCache(2, 4, max_rows=50), {}
    pool = np.arange(1000, dtype=np.uint64) * np.uint64(7919)
    fresh_starts = 0
    for i in range(12):
        batch = pool[rng.choice(len(pool), 20, replace=False)]
        before = dict(ref)
        add_new(cache, ref, batch, rng)
        if not set(before) <= set(ref):
            fresh_starts += 1
            assert len(before) + 20 > 50 and set(ref) == set(batch.tolist())  # only this batch survives
        assert cache.size <= 50
        assert_matches(cache, ref, pool)
    assert fresh_starts >= 3


# --- screen_batch -----------------------------------------------------------------------------------


def batch_of(rng, shared: np.ndarray) -> np.ndarray:
    """Candidates: valid designs (some from `shared`), random bit strings (mostly invalid), repeats."""
    own = valid_designs(30, int(rng.integers(1 << 30)))
    junk = (rng.random((200, SPACE.n_variables)) < 0.6).astype(np.uint8)
    d = np.concatenate([own, shared[rng.choice(len(shared), 150)], junk])
    return d[rng.choice(len(d), 2 * len(d))]  # duplicates


class Linear:
    """A deterministic (N, V) -> (N, S, P) predictor that records how many designs it was asked."""

    def __init__(self, n_conditions: int, seed: int = 0):
        # integer weights: the products are exact, whatever the summation order
        self.w = np.random.default_rng(seed).integers(-5, 6, (n_conditions, SPACE.n_variables, SPACE.n_properties))
        self.rows = 0

    def __call__(self, d: np.ndarray) -> np.ndarray:
        assert SPACE.is_valid(d).all()  # only valid designs are predicted
        self.rows += len(d)
        return np.einsum("nv,svp->nsp", np.asarray(d, float), self.w).astype(np.float32)


@pytest.mark.parametrize("max_rows", [S.CACHE_ROWS, 1000], ids=["roomy", "starts-afresh"])
def test_screen_batch_equals_distinct_valid_and_a_direct_prediction(max_rows):
    rng = np.random.default_rng(2)
    shared = valid_designs(20, 99)
    batches = [batch_of(rng, shared) for _ in range(3)]
    cached, cold = Linear(3), Linear(3)
    cache = S.PredictionCache(3, SPACE.n_properties, max_rows=max_rows)
    seen, sizes = set(), []
    for raw in batches:
        d, keys, n_valid, n_distinct = SPACE.distinct_valid(raw)
        want = cold(d) if len(d) else np.zeros((0, 3, SPACE.n_properties), np.float32)
        for sc in (S.screen_batch(SPACE, raw, cached, cache, 3), S.screen_batch(SPACE, raw, Linear(3), None, 3)):
            assert np.array_equal(sc.designs, d) and np.array_equal(sc.keys, keys)
            assert (sc.n_valid, sc.n_distinct) == (n_valid, n_distinct)
            assert sc.pred.dtype == np.float32 and sc.pred.shape == (len(d), 3, SPACE.n_properties)
            assert np.array_equal(sc.pred, want)
        seen |= set(keys.tolist())
        sizes.append(cache.size)
    if max_rows < S.CACHE_ROWS:
        assert sizes != sorted(sizes)  # the cache started afresh between batches
    else:  # each distinct valid design predicted once over all batches
        assert cached.rows == len(seen) < cold.rows


def test_screen_batch_counts_new_designs_and_handles_empty_and_all_invalid_batches():
    cache = S.PredictionCache(2, SPACE.n_properties)
    f = Linear(2)
    empty = S.screen_batch(SPACE, np.zeros((0, SPACE.n_variables), np.uint8), f, cache, 2)
    assert (len(empty.designs), empty.n_valid, empty.n_distinct, empty.n_new) == (0, 0, 0, 0)
    invalid = np.zeros((5, SPACE.n_variables), np.uint8)  # no beams
    sc = S.screen_batch(SPACE, invalid, f, cache, 2)
    assert (len(sc.designs), sc.n_valid, sc.n_distinct, sc.n_new, f.rows) == (0, 0, 0, 1, 0)
    d = valid_designs(4)
    first = S.screen_batch(SPACE, np.concatenate([d, d, invalid]), f, cache, 2)
    again = S.screen_batch(SPACE, d[::-1], f, cache, 2)
    assert (first.n_new, first.n_valid, first.n_distinct) == (len(d), 2 * len(d), len(d))
    assert again.n_new == 0 and f.rows == len(d) and np.array_equal(again.pred, first.pred)


def test_screen_batch_without_integer_keys_predicts_each_batch_afresh():
    from deepdram.spaces.registry import get

    peaks = get("peaks")
    rng = np.random.default_rng(3)
    raw = rng.uniform(-5, 5, (50, peaks.n_variables))  # some outside the bounds
    raw = np.concatenate([raw, raw[:10]])
    cache = S.PredictionCache(1, peaks.n_properties)
    calls = []

    def predict(d):
        calls.append(len(d))
        return d.sum(axis=1, keepdims=True)[:, None, :].repeat(peaks.n_properties, 2).astype(np.float32)

    for _ in range(2):
        sc = S.screen_batch(peaks, raw, predict, cache, 1)
        d, _, n_valid, n_distinct = peaks.distinct_valid(raw)
        assert np.array_equal(sc.designs, d) and (sc.n_valid, sc.n_distinct) == (n_valid, n_distinct)
        assert np.allclose(sc.pred[:, 0, 0], d.sum(axis=1))
    assert calls == [n_distinct, n_distinct] and cache.size == 0


# --- the split regressor -------------------------------------------------------------------------


def test_run_dense_drops_dead_units_exactly():
    rng = np.random.default_rng(4)
    relu = lambda h: np.maximum(h, 0)
    layers = [(rng.normal(size=(30, 20)).astype(np.float32), rng.normal(size=20).astype(np.float32), relu, True),
              (rng.normal(size=(20, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32), lambda h: h, False)]
    h = np.maximum(rng.normal(size=(64, 30)), 0).astype(np.float32)
    h[:, :12] = 0  # dead units
    want = np.maximum(h @ layers[0][0] + layers[0][1], 0) @ layers[1][0] + layers[1][1]
    assert np.allclose(S.run_dense(h.copy(), layers, relu_in=True), want, rtol=1e-5, atol=1e-5)
    assert np.allclose(S.run_dense(h.copy(), layers, relu_in=False), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["agnostic_relu", "agnostic_tanh"])
def test_split_regressor_agrees_with_the_keras_model(loaded, name):
    s = surrogates(loaded, name)
    d = valid_designs(60, 7)
    split = S.split_regressor(loaded[name], SPACE.n_variables, SPACE.n_conditions)
    assert split is not None
    for c in SIZES:
        assert close(split.at(split.base(d), c), s.predict(SPACE, d, c))
    conds = [*SIZES, None]  # None: the unit cell, by the forward model
    p = S.PredictorAtConditions.build(SPACE, s, conds)
    assert p.uses_split
    got = p(d)
    assert p.uses_split and p.checked and p.mismatch <= S.CHECK_RTOL
    ref = S.keras_at_conditions(SPACE, s, d, conds)
    assert got.shape == (len(d), len(conds), SPACE.n_properties) and close(got, ref)
    assert np.ptp(ref, axis=0).min() > 1e-3  # a model whose predictions vary with the design
    assert np.ptp(ref, axis=1).max() > 1e-3  # and with the size


@pytest.mark.parametrize("name", ["agnostic_relu", "conditioned"])
def test_keras_at_conditions_is_the_model_at_each_condition(loaded, name, monkeypatch):
    s = surrogates(loaded, name)
    d = valid_designs(8, 11)
    conds = [SIZES[0], None, *SIZES[1:]]
    want = np.stack([s.predict(SPACE, d, c) for c in conds], axis=1)
    monkeypatch.setattr(S, "STACK_ROWS", 2 * len(d) + 1)  # two conditions per Keras call
    assert close(S.keras_at_conditions(SPACE, s, d, conds), want, 1e-6)
    assert S.keras_at_conditions(SPACE, s, d[:0], conds).shape == (0, len(conds), SPACE.n_properties)


def test_the_split_spans_blocks(loaded, monkeypatch):
    monkeypatch.setattr(S, "BLOCK", 37)
    s = surrogates(loaded, "agnostic_relu")
    d = valid_designs(30, 8)
    p = S.PredictorAtConditions.build(SPACE, s, SIZES[:2])
    assert close(p(d), S.keras_at_conditions(SPACE, s, d, SIZES[:2])) and p.uses_split


@pytest.mark.parametrize("name", ["agnostic_mirrors", "conditioned"], ids=["symmetrised", "plain-linear"])
def test_models_the_split_does_not_apply_to_use_keras(loaded, name):
    s = surrogates(loaded, name)
    assert S.split_regressor(loaded[name], SPACE.n_variables, SPACE.n_conditions) is None
    p = S.PredictorAtConditions.build(SPACE, s, SIZES)
    d = valid_designs(10, 9)
    assert not p.uses_split
    assert np.array_equal(p(d), S.keras_at_conditions(SPACE, s, d, SIZES))


def test_a_split_that_disagrees_with_keras_is_dropped(loaded):
    s = surrogates(loaded, "agnostic_relu")
    p = S.PredictorAtConditions.build(SPACE, s, SIZES)
    p.split.y_offset = p.split.y_offset + np.float32(0.01)  # a wrong split
    d = valid_designs(10, 10)
    got = p(d)
    assert not p.uses_split and p.mismatch > S.CHECK_RTOL
    assert np.array_equal(got, S.keras_at_conditions(SPACE, s, d, SIZES))


# --- the sweep -------------------------------------------------------------------------------------


def old_sweep(space, s: D.Surrogates, grid: DesignGrid, keep_designs: int = 50, single_image: bool = False):
    """The sweep before `design.screening`: per target, distinct_valid; per size, the Keras model."""
    from deepdram.learn.generation import generate, generator_decoder, latent_size
    from deepdram.learn.models import inner_regressor

    if single_image:
        s = D.Surrogates({k: (inner_regressor(m) if k != "generator" else m) for k, m in s.models.items()})
    gen = s.models["generator"]
    rows, envelope = [], []
    for t_idx, target in enumerate(grid.targets):
        rng = np.random.default_rng([grid.seed, t_idx])
        raw = generate(generator_decoder(gen, grid.n_candidates), np.asarray(target, np.float32)[None],
                       grid.n_candidates, latent_size(gen, space.n_properties), rng, grid.rule)
        d, keys, n_valid, n_distinct = space.distinct_valid(raw)
        envelope.append(d[rng.permutation(len(d))[:keep_designs]])
        for size in grid.sizes:
            cond = space.parse_conditions(dict(zip(space.conditions, size)), "sweep")
            err = mse(s.predict(space, d, cond), target)
            b = int(np.argmin(err))
            rows.append({"valid": n_valid, "distinct": n_distinct, "best_key": int(keys[b]),
                         "best_mse_pred": float(err[b]), "pred": s.predict(space, d[b:b + 1], cond)[0],
                         "err": err})
    return rows, np.concatenate(envelope)


@pytest.mark.parametrize("conditioned, single_image", [("conditioned", False), ("agnostic_relu", False),
                                                       ("agnostic_mirrors", True)],
                         ids=["keras-path", "split", "single-image-split"])
def test_sweep_equals_the_per_size_procedure(loaded, conditioned, single_image):
    s = surrogates(loaded, conditioned)
    targets = np.array([[0.03, 0.03, 0.1, 0.1], [0.05, 0.02, 0.3, -0.2], [0.03, 0.03, 0.1, 0.1]])  # a repeat
    grid = DesignGrid("tiny", targets, ((1, 1), (2, 2), (10, 2), (20, 20)), n_candidates=400, seed=3)
    table, env = D.sweep(SPACE, s, grid, keep_designs=20, single_image=single_image)
    ref, ref_env = old_sweep(SPACE, s, grid, keep_designs=20, single_image=single_image)
    assert len(table) == len(ref) == 3 * 4 and np.array_equal(env, ref_env)
    assert list(zip(table.d1, table.d2)) == [sz for _ in targets for sz in grid.sizes]
    for row, want in zip(table.to_dict("records"), ref):
        assert (row["valid"], row["distinct"]) == (want["valid"], want["distinct"]) and want["distinct"] > 50
        assert row["best_key"] == want["best_key"]
        assert close(row["best_mse_pred"], want["best_mse_pred"])
        assert close([row[f"pred_{c}"] for c in SPACE.properties], want["pred"])
        assert row["accepted"] == int((want["err"] <= grid.mse_threshold).sum())
