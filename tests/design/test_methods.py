"""Design methods (deepdram.design.methods): how to add one, and the built-in `cvae` method.

Adding a method is a subclass of `methods.base.Method` that yields batches of candidate designs,
made known by name with `methods.registry.register`; the unchanged shared pipeline
(`design.pipeline.design`) then drops duplicates and invalid designs, screens with the surrogate,
FE-verifies the best, ranks them and marks the Pareto front. The toy method here proposes random
valid designs of the space with deliberate repeats (within and across batches) and invalid ones,
so every step of the pipeline has something to do; the truth is brute force over what it proposed
and a plain assembled sparse FE solve of each tiling.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("keras")

from deepdram.design import objectives  # noqa: E402
from deepdram.design import pipeline as D  # noqa: E402
from deepdram.design.methods import registry  # noqa: E402
from deepdram.design.methods.base import Batch, Context, Method  # noqa: E402
from deepdram.design.requests import parse_request  # noqa: E402
from deepdram.errors import InputError  # noqa: E402
from deepdram.spaces.lattice import fem  # noqa: E402
from deepdram.spaces.lattice.constants import BIT_COLUMNS  # noqa: E402
from deepdram.spaces.lattice.geometry import is_valid, tiling_geometry  # noqa: E402
from deepdram.spaces.lattice.space import LatticeSpace  # noqa: E402

SPACE = LatticeSpace()
TARGET = [0.077, 0.064, 0.15, 0.30]  # about the median FE properties of Z_g = 3 cells tiled 2 x 4
INVALID = np.eye(SPACE.n_variables, dtype=np.uint8)  # one beam each: 14 nodes left alone


class ToyRandom(Method):
    """Two batches: random valid designs of the space, the all-ones design, single beams (invalid),
    repeats of earlier designs in the same batch and across batches."""

    name = "toy_random"
    summary = "random valid designs with repeats and invalid ones (test method)"
    needs = ()
    N_CANDIDATES = (200 + 40 + 20 + 1) + (150 + 30 + 1 + 10)  # what `candidates` yields
    VALID, DISTINCT = N_CANDIDATES - 30, 200 + 1 + 150

    def candidates(self, ctx: Context) -> Iterator[Batch]:
        space, rng = ctx.space, ctx.rng
        a = space.sample(200, int(rng.integers(2**32)), zg=3.0)  # 200 distinct, 24 beams each
        ones = np.ones((1, space.n_variables), np.uint8)
        first = np.concatenate([a, a[:40], INVALID[:20], ones])
        yield Batch(first[rng.permutation(len(first))], work=len(first))
        b = space.sample(150, int(rng.integers(2**32)), zg=4.0)  # 32 beams: none of them in batch 1
        second = np.concatenate([b, a[40:70], ones, INVALID[20:30]])
        yield Batch(second[rng.permutation(len(second))], work=len(second))


@pytest.fixture()
def toy_method():
    """ToyRandom registered for one test."""
    with pytest.raises(InputError, match="method must be one of"):
        parse_request({"target": TARGET, "d1": 2, "d2": 4, "method": ToyRandom.name})
    assert registry.register(ToyRandom) is ToyRandom
    try:
        yield ToyRandom
    finally:
        registry.EXTRA.pop(ToyRandom.name, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_surrogates) -> D.Surrogates:
    return D.load_surrogates(tiny_surrogates(tmp_path_factory.mktemp("tiny")))


def fe_reference(designs: np.ndarray, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """(properties (N, 4), peak von Mises per load case (N, 2)): assembled sparse solve of each tiling."""
    props, peaks = [], []
    for d in designs:
        nodes, beams = tiling_geometry(d, d1, d2)
        p, u, _ = fem.solve_frame(nodes, beams, 3 * d1 + 1, 3 * d2 + 1, sparse=True)
        props.append(p)
        peaks.append([fem.beam_von_mises(nodes, beams, u[c]).max() for c in (0, 1)])
    return np.array(props), np.array(peaks)


def test_a_registered_method_runs_through_the_shared_pipeline(models, toy_method):
    assert toy_method.name in registry.names() and isinstance(registry.get(toy_method.name), ToyRandom)
    with pytest.raises(InputError, match="built in"):
        registry.register(type("Clash", (ToyRandom,), {"name": "cvae"}))
    spec = {"target": TARGET, "d1": 2, "d2": 4, "n_candidates": ToyRandom.N_CANDIDATES, "top_k": 20, "seed": 3,
            "method": toy_method.name}
    probe = parse_request(spec)
    assert probe.method == "toy_random"

    # Brute force over what the method proposes for this seed (the pipeline's rng: default_rng(seed)).
    objective = objectives.get(probe.objective, SPACE)
    ctx = Context(SPACE, probe, models, np.random.default_rng(probe.seed), objective)
    proposed = np.concatenate([b.designs for b in ToyRandom().candidates(ctx)])
    assert len(proposed) == ToyRandom.N_CANDIDATES
    uniq = np.unique(proposed[is_valid(proposed)], axis=0)
    assert len(uniq) == ToyRandom.DISTINCT
    x = np.hstack([uniq, np.tile([[2, 4]], (len(uniq), 1))]).astype(np.float32)
    err = np.mean((np.asarray(models.models["conditioned"](x), np.float64) - TARGET) ** 2, axis=1)
    threshold = float(np.quantile(err, 0.5))  # half of the distinct valid designs are accepted
    req = parse_request({**spec, "mse_threshold": threshold})

    r = D.design(SPACE, models, req, threads=1)
    s, t = r.summary, r.table
    # dedupe and validity: every candidate counted once, repeats and invalid designs dropped
    assert (s["candidates"], s["valid"], s["invalid"]) == (ToyRandom.N_CANDIDATES, ToyRandom.VALID, 30)
    assert (s["distinct"], s["duplicates"]) == (ToyRandom.DISTINCT, ToyRandom.VALID - ToyRandom.DISTINCT)
    assert s["accepted"] == int((err <= threshold).sum()) > req.top_k
    # screening: the top_k verified designs are the best predicted of all distinct valid ones
    d = t[list(BIT_COLUMNS)].to_numpy()
    assert len(t) == 20 == s["verified"] and is_valid(d).all() and len(np.unique(d, axis=0)) == 20
    best = {tuple(row) for row in uniq[np.argsort(err, kind="stable")[:20]]}
    assert {tuple(row) for row in d} == best
    # FE columns: the space's oracle, checked against an independent assembled solve
    props, peak = fe_reference(d, 2, 4)
    np.testing.assert_allclose(t[list(D.fe_columns(SPACE))].to_numpy(), props, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(t[["vm1", "vm2"]].to_numpy(), peak, rtol=1e-9)
    np.testing.assert_allclose(t["vm"], np.hypot(peak[:, 0], peak[:, 1]), rtol=1e-9)
    np.testing.assert_allclose(t["mse_fe"], objectives.mse(props, TARGET), rtol=1e-9)
    # ranking: FE-accepted designs first by peak stress, then the rest by FE error; Pareto front
    ok = t["within_threshold"].to_numpy()
    assert np.array_equal(ok, t["mse_fe"].to_numpy() <= threshold)
    k = int(ok.sum())
    assert k > 0 and ok[:k].all() and s["fe_within_threshold"] == k
    assert np.all(np.diff(t["vm"].to_numpy()[:k]) >= 0) and np.all(np.diff(t["mse_fe"].to_numpy()[k:]) >= 0)
    assert list(t["rank"]) == list(range(1, 21))
    np.testing.assert_array_equal(t["pareto"], D.pareto_front(t["mse_fe"].to_numpy(), t["vm"].to_numpy()))
    assert not t["best_effort"].any() and not s["best_effort"]
    assert list(t.columns) == list(D.result_columns(SPACE))


@pytest.mark.parametrize("rule", ["threshold", "bernoulli"])
def test_cvae_method_reproduces_learn_generation(models, rule):
    """The built-in method proposes exactly what `learn.generation.generate` gives for the request's
    seed, and the pipeline screens exactly its distinct valid part."""
    from deepdram.learn.generation import generate, generator_decoder, latent_size

    req = parse_request({"target": [0.03, 0.03, 0.1, 0.1], "d1": 4, "d2": 4, "n_candidates": 2000, "seed": 11,
                         "rule": rule})
    assert req.method == "cvae"
    method = registry.get("cvae")
    assert method.needs == ("generator",) and method.total_work(
        Context(SPACE, req, models, np.random.default_rng(0), objectives.get("mse", SPACE))) == 2000
    objective = objectives.get(req.objective, SPACE)
    ctx = Context(SPACE, req, models, np.random.default_rng(req.seed), objective)
    batches = list(method.candidates(ctx))
    proposed = np.concatenate([b.designs for b in batches])
    assert sum(b.work for b in batches) == 2000

    gen = models.models["generator"]
    direct = generate(generator_decoder(gen), np.asarray(req.target, np.float32)[None], 2000,
                      latent_size(gen, SPACE.n_properties), np.random.default_rng(req.seed), rule)
    assert direct.shape == (2000, 42) and direct.dtype == np.uint8
    np.testing.assert_array_equal(proposed, direct)

    s = D.screen(SPACE, models, req, keep=10**6)
    valid = is_valid(direct)
    assert s.counts["candidates"] == 2000 and s.counts["valid"] == int(valid.sum())
    np.testing.assert_array_equal(np.unique(s.designs, axis=0), np.unique(direct[valid], axis=0))
    other = generate(generator_decoder(gen), np.asarray(req.target, np.float32)[None], 2000,
                     latent_size(gen, SPACE.n_properties), np.random.default_rng(req.seed + 1), rule)
    assert not np.array_equal(other, direct)
