"""The tiny pipeline the end-to-end tests share: one git + DVC copy of the working tree per session.

`tiny_repo` is that copy, with the TINY profile merged into its params.yaml and the curated data
pulled; nothing has run in it yet. The modules that use it run in this order (their file names)
and build on each other's work, so the whole tiny pipeline runs once per session, not once per
module:

1. `test_composite_e2e.py`: `dvc repro composite_design` in the untouched copy (only the composite
   stages run); run after another module it makes its own copy (`fresh_tiny_repo`).
2. `test_pipeline_e2e.py`: a SIGKILL mid-`cells`, then the whole pipeline.
3. `test_pipeline_faults.py`: SIGKILLs mid-tilings, -design and -training, and the reruns; each
   test first brings its upstream stages up to date itself (a no-op after 2).

Every test still stands alone: a fixture or test brings the stages it needs up to date itself.
Under pytest-xdist one worker runs the three modules, in this order (WORKER_GROUPS, tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = {
    "dask": {"n_workers": 1},
    "cells": {"per_zg": 4000, "shard_size": 400},  # 50 shards
    "tilings": {"cells": 120, "sizes_per_cell": 2, "shard_size": 20},  # 12 shards
    # the default profile's training options (symmetrised models, physics features, cosine), tiny
    "train_forward": {"augment": "mirrors",
                      "model": {"epochs": 3, "batch_size": 256, "learning_rate": 0.001, "patience": 0,
                                "lr_schedule": "cosine", "symmetrize": "all"}},
    "train_size_agnostic": {"augment": "all",
                            "model": {"epochs": 3, "batch_size": 64, "learning_rate": 0.001, "patience": 0,
                                      "features": "homogenized", "symmetrize": "mirrors"}},
    "train_cvae": {"max_train_rows": 2000, "model": {"epochs": 2, "batch_size": 256, "learning_rate": 0.001}},
    "evaluate": {"generator_k": 5, "generator_targets": 100, "tsne_points": 200,
                 "fresh_per_zg": 60, "fresh_tilings": 60},
    # one trial of each lattice study: the training stages only need a *_best.yaml (the search
    # itself: tests/learn/search)
    "tune_forward": {"trials": 1, "folds": 2, "rows": 300,
                     "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003}, "data": {"pool_cells": 3000}},
    "tune_size_agnostic": {"trials": 1, "folds": 2, "rows": 150,
                           "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003}},
    "tune_cvae": {"trials": 1, "folds": 2, "rows": 300, "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003}},
    "design": {"n_candidates": 2000, "export_top": 1,
               "sweep_profile": {"n_candidates": 200, "sizes": [[4, 4]], "target_stride": 49}},
    # the head-to-head and the peaks demonstration, tiny (what they find: tests/design)
    "compare_methods": {"test_cells": 1, "tiling_sizes": [[4, 4]], "requests": ["fig5_group1"], "rare": False,
                        "n_candidates": 300, "top_k": 3, "race_seconds": 0.3, "race_fe": 8, "fe_race_time_cap": 5.0,
                        "methods": {"cvae": {}, "backprop": {"n_starts": 20, "steps": 5},
                                    "active": {"rounds": 2, "fe_per_round": 3, "proposer_starts": 10,
                                               "proposer_steps": 3, "epochs": 2},
                                    "ga": {"population": 10, "parents": 4, "generations": 3},
                                    "topopt": {"iterations": 3}, "random": {"batch": 5}}},
    "peaks_demo": {"points": 1000, "train": 800, "epochs": 3, "n_starts": 50, "steps": 20},
    # the composite: 2 of 32 cells soft, C(32, 2) = 496 designs
    "composite": {"m": 1, "ratio": 10.0, "soft_fraction": 0.0625},
    "composite_brute_force": {"shard_size": 100, "bins": 20},
    "composite_data": {"groups": [30, 120], "test": 60, "seed": 0},
    "composite_tune": {"trials": 2, "rows": 120, "fit": {"epochs": 2, "batch_size": 32, "learning_rate": 0.003},
                       "pruner": {"startup_trials": 2, "warmup_epochs": 1},
                       "space": {"hidden_layers": [2], "first_width": [8, 16]},
                       "paper": {"hidden_layers": 2, "first_width": 16}},
    "composite_train": {"model": {"epochs": 3, "batch_size": 32}},
    "composite_design": {"top_k": 5,
                         "table": {"n_starts": 100, "steps": 5, "model": {"epochs": 3, "batch_size": 32}},
                         "race": {"repeats": 1, "seconds": 0.5, "fe": 60, "fe_time_cap": 10.0,
                                  "methods": {"backprop": {"n_starts": 50, "steps": 5},
                                              "active": {"rounds": 2, "fe_per_round": 5, "proposer_starts": 20,
                                                         "proposer_steps": 3, "epochs": 2},
                                              "ga": {"population": 20, "parents": 5, "generations": 5},
                                              "topopt": {"gradient": "fd", "iterations": 2},
                                              "random": {"batch": 20}}}},
}

def _env() -> dict:
    """The environment of a `dvc` subprocess in a tiny repo: the project's Python first, no telemetry,
    nothing of the outer session's MLflow, Dask or crash-test settings."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}:{e['PATH']}"
    e.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    for key in ("DEEPDRAM_ROOT", "DEEPDRAM_DASK_SCHEDULER", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                "DEEPDRAM_TEST_PAUSE_AT", "DEEPDRAM_TEST_PAUSE_FILE"):
        e.pop(key, None)
    return e


def _make(dst: Path, repo_copy) -> Path:
    repo_copy(dst, TINY, "tiny profile")
    p = subprocess.run([sys.executable, "-m", "dvc", "pull", "-q", "data.dvc"], cwd=dst, env=_env(),
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (dst / "data/reference/paper_tables.yaml").is_file()
    return dst


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, repo_copy) -> Path:
    """The session's git + DVC copy of the working tree with the TINY profile (data pulled)."""
    return _make(tmp_path_factory.mktemp("tiny") / "repo", repo_copy)


@pytest.fixture(scope="session")
def fresh_tiny_repo(tmp_path_factory, repo_copy):
    """A function () -> a new tiny copy in which nothing has run (for a test that needs one)."""
    return lambda: _make(tmp_path_factory.mktemp("tiny-fresh") / "repo", repo_copy)
