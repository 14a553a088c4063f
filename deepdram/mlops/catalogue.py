"""The one catalogue of registered models: names, MLflow experiments, promotion metrics, aliases."""

from __future__ import annotations

from dataclasses import dataclass

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous_champion"
DEFAULT_METRIC = "test_r2_overall"


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model: its registry name, experiment, promotion metric and pyfunc kind."""

    key: str  # the pipeline's short name (training job, outputs/models/<key>.json)
    name: str  # registered model name
    experiment: str
    metric: str = DEFAULT_METRIC
    higher_is_better: bool = True
    kind: str = ""  # pyfunc kind (see deepdram.mlops.pyfuncs)


FORWARD = RegisteredModel("forward", "deepdram-forward", "deepdram-forward", kind="forward")
SIZE_AGNOSTIC = RegisteredModel("size_agnostic", "deepdram-size-agnostic", "deepdram-size-agnostic",
                                kind="size_agnostic")
GENERATOR = RegisteredModel("cvae", "deepdram-generator", "deepdram-cvae", "test_gen_best_r2_overall",
                            kind="generator")
DESIGNER = RegisteredModel("designer", "deepdram-designer", "deepdram-designer", "design_success_rate",
                           kind="designer")
COMPOSITE_PREDICTOR = RegisteredModel("composite_predictor", "deepdram-composite-predictor",
                                      "deepdram-composite", "test_r2_overall", kind="forward")
LATTICE_MODELS = (FORWARD, SIZE_AGNOSTIC, GENERATOR)  # trained, evaluated and promoted by the pipeline
MODELS = (*LATTICE_MODELS, DESIGNER, COMPOSITE_PREDICTOR)
BY_NAME = {m.name: m for m in MODELS}
BY_KEY = {m.key: m for m in MODELS}
TUNING_EXPERIMENT = "deepdram-tuning"


def metric_of(name: str) -> str:
    """The promotion metric of a registered model name (the default for unknown names)."""
    return BY_NAME[name].metric if name in BY_NAME else DEFAULT_METRIC

# The surrogates of each space's design procedure, by role (see design.pipeline.Surrogates).
DESIGN_ROLES = {"lattice": {"generator": GENERATOR.name, "conditioned": SIZE_AGNOSTIC.name, "forward": FORWARD.name},
                "composite": {"forward": COMPOSITE_PREDICTOR.name}, "peaks": {}}
