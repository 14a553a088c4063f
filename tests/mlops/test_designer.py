"""deepdram.mlops.designer, served: REAL `mlflow models serve` of `models:/deepdram-designer@champion`.

Tiny stand-in models (conftest's `tiny_surrogates`) are bundled by `designer.log_designer`,
registered and promoted in a temporary store; the server answers requests with ranked,
FE-verified designs that match the in-process procedure (`design.pipeline.design`), and refuses bad
requests with 400 naming the problem.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("keras")

import mlflow  # noqa: E402

from deepdram.design.pipeline import design, load_surrogates  # noqa: E402
from deepdram.design.requests import parse_request  # noqa: E402
from deepdram.mlops import designer, registry, tracking  # noqa: E402
from deepdram.mlops.catalogue import DESIGNER  # noqa: E402
from deepdram.spaces.lattice.constants import BIT_COLUMNS  # noqa: E402
from deepdram.spaces.lattice.space import LatticeSpace  # noqa: E402

pytestmark = pytest.mark.slow

COLUMNS = ["E11", "E22", "nu12", "nu21", "d1", "d2"]
SPACE = LatticeSpace()


@pytest.fixture(scope="module")
def served(mlflow_store, tiny_surrogates, model_server):
    root = mlflow_store
    files = tiny_surrogates(root)
    tracking.experiment("test-designer")
    with mlflow.start_run() as run:
        mlflow.log_metric("design_success_rate", 1.0)
        designer.log_designer(files)
    assert designer.NAME == DESIGNER.name == "deepdram-designer"
    assert registry.register(run.info.run_id, designer.NAME, artifact="designer") == 1
    assert registry.promote(designer.NAME, metric=DESIGNER.metric)["decision"] == "promoted"
    server = model_server.Server(f"models:/{designer.NAME}@champion", root / "server.log",
                                 model_server.env(tracking.configure()))
    try:
        server.wait(120)
        yield {"server": server, "models": load_surrogates(files), "http": model_server}
    finally:
        server.stop()


def test_served_designs_match_the_in_process_procedure(served):
    url, post = served["server"].url, served["http"].post
    rows = [[0.03, 0.03, 0.1, 0.1, 4, 4], [0.03, 0.03, 0.1, 0.1, 1, 1]]
    status, body = post(url, {"dataframe_split": {"columns": COLUMNS, "data": rows},
                              "params": {"n_candidates": 2000, "top_k": 5, "seed": 3}})
    assert status == 200, body
    out = body["predictions"]
    assert [r["request"] for r in out] == [0] * 5 + [1] * 5
    assert [r["rank"] for r in out[:5]] == [1, 2, 3, 4, 5]
    for i, (d1, d2) in enumerate(((4, 4), (1, 1))):
        req = parse_request({"target": rows[i][:4], "d1": d1, "d2": d2, "n_candidates": 2000, "top_k": 5,
                             "seed": 3})
        ref = design(SPACE, served["models"], req).table
        got = [r for r in out if r["request"] == i]
        np.testing.assert_array_equal(np.array([[r[c] for c in BIT_COLUMNS] for r in got]),
                                      ref[list(BIT_COLUMNS)].to_numpy())
        np.testing.assert_allclose([r["mse_fe"] for r in got], ref["mse_fe"], rtol=1e-6)
        np.testing.assert_allclose([r["vm1"] for r in got], ref["vm1"], rtol=1e-6)
        assert all(r["candidates"] == 2000 and not r["best_effort"] for r in got)
    # a per-row override beats the params; unreachable-but-physical target: flagged best effort
    status, body = post(url, {"dataframe_records": [{"E11": 0.25, "E22": 0.01, "nu12": 2.5, "nu21": -2.5,
                                                     "d1": 2, "d2": 2, "top_k": 2}],
                              "params": {"n_candidates": 1000}})
    assert status == 200, body
    assert len(body["predictions"]) == 2 and all(r["best_effort"] for r in body["predictions"])


@pytest.mark.parametrize("payload, needles", [
    ({"dataframe_split": {"columns": COLUMNS[:5], "data": [[0.03, 0.03, 0.1, 0.1, 4]]}},
     ["missing input column", "d2"]),
    ({"dataframe_split": {"columns": COLUMNS, "data": [[0.03, "abc", 0.1, 0.1, 4, 4]]}},
     ["row 0", "E22", "'abc'"]),
    ({"dataframe_split": {"columns": COLUMNS, "data": [[0.03, 0.03, 0.1, 0.1, 4, 4], [0.03, 0.03, 0.1, 0.1, 3, 4]]}},
     ["row 1", "d1 must be an even integer", "got 3"]),
    ({"dataframe_split": {"columns": COLUMNS, "data": [[0.03, 0.03, 0.1, 0.1, 4, 24]]}},
     ["row 0", "d2", "24"]),
    ({"dataframe_split": {"columns": COLUMNS, "data": [[0.03, 0.03, 0.1, 0.1, 4, 4]]},
      "params": {"n_candidates": 10**7}}, ["n_candidates", "above the cap of 200000"]),
    ({"dataframe_split": {"columns": COLUMNS, "data": [[0.9, 0.03, 0.1, 0.1, 4, 4]]}},
     ["row 0", "E11 = 0.9", "physically reachable"]),
    ({"dataframe_split": {"columns": COLUMNS, "data": [[0.03, 0.03, None, 0.1, 4, 4]]}},
     ["row 0", "nu12", "missing"]),
])
def test_bad_requests_get_400_naming_the_problem(served, payload, needles):
    url, http = served["server"].url, served["http"]
    status, body = http.post(url, payload)
    assert status == 400, (status, body)
    for n in needles:
        assert n in body["message"], (n, body["message"])
    assert http.get(url + "/ping")[0] == 200
