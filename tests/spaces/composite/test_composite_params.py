"""The composite stages' params: typed sections with errors naming the key; the default profile is
the 12.5 % system, params-paper.yaml the seed's 25 % system with its Table S1 groups; every
composite stage's job reads the shared `composite` section."""

from __future__ import annotations

import copy

import pytest

from deepdram import params as P
from deepdram.errors import InputError
from deepdram.paths import REPO_ROOT

BASE = P.read_yaml(REPO_ROOT / "params.yaml")
STAGES = ("composite_brute_force", "composite_data", "composite_tune", "composite_train", "composite_design")


def _bad(change) -> str:
    d = copy.deepcopy(BASE)
    change(d)
    with pytest.raises(InputError) as e:
        P.parse(d)
    return str(e.value)


def test_default_and_paper_profiles():
    p = P.load(REPO_ROOT / "params.yaml")
    assert p.composite.soft_fraction == 0.125 and p.composite_data.groups == [100, 1000]
    paper = P.check_overrides(REPO_ROOT / "params.yaml", REPO_ROOT / "params-paper.yaml")
    assert paper.composite.soft_fraction == 0.25
    assert paper.composite_data.groups == [100, 1000, 10000, 100000, 1000000]
    space = paper.composite_tune.space
    assert len(space["hidden_layers"]) * len(space["first_width"]) == 28 == paper.composite_tune.trials
    assert paper.composite_tune.fit.epochs == 1250 and paper.composite_design.table.n_starts == 1_000_000


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["composite"].update(soft_fraction=0.3), "'composite.soft_fraction' must be a multiple of 1/32"),
    (lambda d: d["composite"].update(ratio=0), "'composite.ratio' must be a number > 0"),
    (lambda d: d["composite_data"].update(groups=[100, 100]), "'composite_data.groups' must be a non-empty list"),
    (lambda d: d["composite_design"]["race"]["methods"].update(annealing={}),
     "'composite_design.race.methods' has unknown method 'annealing'"),
    (lambda d: d["composite_train"]["model"].update(epoch=3), "'composite_train.model.epoch' is not a RegressorConfig"),
    (lambda d: d["composite_train"].update(source="best"), "'composite_train.source' must be one of"),
])
def test_a_wrong_value_names_the_key(change, needle):
    assert needle in _bad(change)


@pytest.mark.parametrize("stage", STAGES)
def test_every_composite_stage_reads_the_shared_system(stage):
    import importlib

    assert "composite" in importlib.import_module(f"deepdram.jobs.{stage}").SECTIONS
