"""A small version of the scale benchmark (benchmarks/bench_mlflow_scale.py): a 60-trial study in one
worker on sqlite (Optuna and MLflow), through the real tuning code.

The space has 4 configurations and nothing is pruned (the pruner's and the sampler's start-up
phase covers the study), so all but 4 trials are repeats answered from the study, without training:
the test is about the records. Every trial must be exactly one nested child run with the study's
tags and name; the parent run must carry the study's summary (counts, best trial, the leaderboard
table); search_runs must find every child through its pages.
"""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from deepdram.learn.search.study import tune  # noqa: E402
from deepdram.learn.search.trials import (  # noqa: E402
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    experiment_name,
)
from deepdram.mlops import tracking  # noqa: E402

TRIALS = 60
SPACE = {"first_width": [4, 8], "activation": ["relu", "tanh"]}
PAPER = {"first_width": 8, "activation": "relu"}


def _all_children(c, exp: str, parent: str, page: int) -> tuple[list, int]:
    runs, token, pages = [], None, 0
    while True:
        res = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=page, page_token=token)
        runs, token, pages = runs + list(res), res.token, pages + 1
        if not token:
            return runs, pages


def test_every_trial_of_a_60_trial_study_is_a_nested_run(mlflow_test_store, tuning_kit):
    import optuna

    from deepdram.learn.search.optuna_backend import default_storage
    from deepdram.learn.training import xy
    from deepdram.spaces.lattice.space import LatticeSpace

    store = mlflow_test_store
    params = tuning_kit.params(trials=TRIALS, folds=2, rows=120, space=SPACE, paper=PAPER,
                               fit={**tuning_kit.fit, "epochs": 1}, pruner={"startup_trials": TRIALS, "warmup_epochs": 1})
    cfg = tuning_kit.config(params, "forward", store / "tuning")
    space = LatticeSpace()
    out = tune(cfg, {"": xy(space, tuning_kit.cells(24))}, progress=False, space=space)

    trials = optuna.load_study(study_name=cfg.study_name, storage=default_storage(cfg)).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == TRIALS and out["trials_run"] == len(trials)
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment_name()).experiment_id
    parent_id = out["parent_run_id"]
    children, pages = _all_children(c, exp, parent_id, page=25)
    assert pages == -(-len(trials) // 25)  # paginated: the page token carries on to the last page
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in children) == [t.number for t in trials]
    states = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    by_number = {int(r.data.tags[TAG_TRIAL]): r for r in children}
    for t in trials:
        r = by_number[t.number]
        assert r.info.run_name == f"trial-{t.number:04d}"
        assert r.data.tags[TAG_STUDY] == cfg.study_name and r.data.tags[TAG_ROLE] == "trial"
        assert r.data.tags[TAG_STATE] == states[t.state.name]
        assert r.data.tags["deepdram.kind"] == "forward" and r.data.tags["deepdram.worker"].startswith("0@")
        assert r.info.status == ("FAILED" if t.state.name == "FAIL" else "FINISHED")
        assert r.data.params == {k: str(v) for k, v in t.params.items()}
    repeats = [r for r in children if "deepdram.duplicate_of" in r.data.tags]
    assert len(repeats) == len(trials) - len({tuple(sorted(t.params.items())) for t in trials}) >= TRIALS - 4

    # the parent's summary: counts, the best trial (and its child run), the leaderboard table
    parent = c.get_run(parent_id)
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number))
    assert parent.data.metrics["trials"] == len(trials)
    assert parent.data.tags["deepdram.best_trial"] == str(best.number)
    assert parent.data.tags["deepdram.best_run"] == f"trial-{best.number:04d}"
    assert parent.data.tags["deepdram.best_run_id"] == by_number[best.number].info.run_id
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"optuna study {cfg.study_name}: one nested run per trial. {len(trials)} trials:")
    assert f"| 1 | trial-{best.number:04d} |" in note
    local = c.download_artifacts(parent_id, "study/leaderboard.csv", str(store / "download"))
    with open(local) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(trials) and rows[0]["run"] == f"trial-{best.number:04d}" and rows[0]["rank"] == "1"
    assert {r["state"] for r in rows} <= set(states.values())
    assert sorted(int(r["trial"]) for r in rows) == [t.number for t in trials]
