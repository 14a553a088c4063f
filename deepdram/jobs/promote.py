"""Stage `promote`: move `champion` to each challenger whose test metric is at least as good (within
tolerance); a champion from another test split is first scored again on the challenger's."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("promote", "evaluate")


def reevaluator(key: str, evaluate):
    """Scores a registered version of model `key` on the current test split (for `registry.promote`),
    as the evaluate stage scores a new model (`evaluate`: that stage's params section)."""

    def score(version) -> float:
        from deepdram.data.splits import split_rows
        from deepdram.jobs.runner import read_table
        from deepdram.learn.evaluation import generator_value
        from deepdram.learn.metrics import r2_overall
        from deepdram.learn.models import load_model, predict
        from deepdram.learn.training import xy
        from deepdram.mlops import registry
        from deepdram.mlops.catalogue import CHAMPION
        from deepdram.paths import MODELS_DIR, SPLITS_DIR, TILINGS_PATH
        from deepdram.spaces.lattice.space import LatticeSpace

        print(f"{version.name}: re-evaluating {CHAMPION} version {version.version} on the current test split")
        model = registry.keras_model(version.name, version.version)
        space = LatticeSpace()
        if key == "forward":
            x, y = xy(space, read_table(SPLITS_DIR / "test.parquet"))
            return r2_overall(y, predict(model, x))
        if key == "size_agnostic":
            x, y = xy(space, split_rows(read_table(TILINGS_PATH), "test"), conditions=True)
            return r2_overall(y, predict(model, x))
        _, y = xy(space, read_table(SPLITS_DIR / "test.parquet"))
        return generator_value(space, model, load_model(MODELS_DIR / "forward.keras", space), y, evaluate.tsne_points,
                               evaluate.generator_targets, evaluate.generator_k, evaluate.seed)

    return score


def job(params) -> dict:
    from deepdram.data.atomic import write_json
    from deepdram.mlops import registry
    from deepdram.mlops.catalogue import CHALLENGER, CHAMPION, LATTICE_MODELS
    from deepdram.paths import EVALUATION_DIR

    sec = params.promote
    out = {}
    for model in LATTICE_MODELS:
        if registry.alias_version(model.name, CHALLENGER) is None:
            # Already decided (e.g. only the evaluation reran): nothing new to promote.
            champion = registry.alias_version(model.name, CHAMPION)
            decision = {"model": model.name, "decision": "unchanged", "champion_after": champion,
                        "reason": f"no {CHALLENGER}: {CHAMPION} stays at version {champion}"}
            print(f"{model.name}: {decision['reason']}")
        else:
            decision = registry.promote(model.name, metric=model.metric, tolerance=sec.tolerance, force=sec.force,
                                        reevaluate=reevaluator(model.key, params.evaluate))
            print(registry.format_decision(decision))
        out[model.key] = decision
    write_json(out, EVALUATION_DIR / "promotion.json")
    return {f"{k}_promoted": v.get("decision") == "promoted" for k, v in out.items()}


def main() -> int:
    return run("promote", job)
