"""Stage `composite_tune`: the seed's 28-structure study of the composite predictor (depths x
widths, 3-fold CV on the largest training group), as an Optuna study in MLflow; every
configuration of the list-valued space is tried first when `grid` is set, as the seed did."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("composite", "composite_tune")


def grid_configs(space: dict) -> list[dict]:
    """Every combination of the list-valued search parameters (ranges left to the sampler)."""
    import itertools

    lists = {k: v for k, v in space.items() if isinstance(v, list)}
    return [dict(zip(lists, combo)) for combo in itertools.product(*lists.values())]


def job(params) -> dict:
    from deepdram.jobs.composite_common import GROUPS_PATH, TUNING_DIR, read, space_of, xy
    from deepdram.learn.search.config import tune_config
    from deepdram.learn.search.optuna_backend import open_study
    from deepdram.learn.search.study import tune
    from deepdram.learn.training import subsample

    sec = params.composite_tune
    space = space_of(params.composite)
    import os

    from deepdram.data.shards import fingerprint

    x, y = xy(space, read(GROUPS_PATH))
    cfg = tune_config(sec, "forward", TUNING_DIR)
    # the study's name covers the data too: new designs or another system is a new study
    cfg.data = {**cfg.data, "composite": params.composite.model_dump(), "groups": fingerprint(files=[GROUPS_PATH])}
    os.environ.setdefault("DEEPDRAM_TUNING_EXPERIMENT", "deepdram-composite-tuning")
    data = {"": subsample(x, y, cfg.rows, cfg.seed)}
    enqueue = []
    if sec.grid and cfg.backend == "optuna":
        study = open_study(cfg)  # tried (or queued) configurations are not queued again
        seen = [t.params for t in study.get_trials(deepcopy=False)] + [cfg.paper]
        enqueue = [c for c in grid_configs(cfg.space) if not any(all(s.get(k) == v for k, v in c.items()) for s in seen)]
    summary = tune(cfg, data, enqueue=enqueue, space=space)
    import yaml

    best = yaml.safe_load((TUNING_DIR / "forward_best.yaml").read_text())
    print(f"composite study {summary['study']}: {summary['trials_total']} trials ({summary['complete']} complete, "
          f"{summary['pruned']} pruned); best {best['model']} with CV R2 {summary['best_cv_r2']:.4f}")
    return {**summary, "rows": len(data[""][0]), "best_hidden_layers": best["model"].get("hidden_layers"),
            "best_first_width": best["model"].get("first_width")}


def main() -> int:
    return run("composite_tune", job)
