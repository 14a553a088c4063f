"""The typed params schema: strict keys and types with messages that name them; params-paper.yaml
is valid as it is, and what it reruns is what DVC itself says."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepdram import params as P
from deepdram.errors import InputError
from deepdram.paths import REPO_ROOT
from deepdram.spaces.lattice import constants as LC

BASE = P.read_yaml(REPO_ROOT / "params.yaml")


def _bad(change) -> str:
    d = copy.deepcopy(BASE)
    change(d)
    with pytest.raises(InputError) as e:
        P.parse(d)
    return str(e.value)


def test_the_shipped_params_are_valid_and_typed():
    p = P.load(REPO_ROOT / "params.yaml")
    assert p.cells.per_zg == BASE["cells"]["per_zg"] and p.tilings.sizes == sorted(BASE["tilings"]["sizes"])
    assert p.design.register_designer is BASE["design"]["register"]
    assert set(P.SECTIONS) == set(BASE)


def test_the_schema_uses_the_space_constants():
    assert P.ZG_VALUES == LC.ZG_VALUES and P.TILING_SIZES == LC.TILING_SIZES


@pytest.mark.parametrize("section", [s for s in BASE if isinstance(BASE[s], dict)])
def test_an_unknown_key_in_any_section_is_named_with_its_section(section):
    msg = _bad(lambda d: d[section].update(typo_key=1))
    assert f"unknown key '{section}.typo_key' in section '{section}'" in msg


def test_an_unknown_nested_key_and_an_unknown_section_are_named():
    assert "unknown key 'resample.under.max_per_grp' in section 'resample.under'" in _bad(
        lambda d: d["resample"]["under"].update(max_per_grp=3))
    assert "unknown key 'cellz' in the file" in _bad(lambda d: d.update(cellz={}))
    assert "'train_forward.model.epoch' is not a RegressorConfig setting" in _bad(
        lambda d: d["train_forward"]["model"].update(epoch=3))


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["cells"].update(per_zg=-5), "'cells.per_zg' must be an integer >= 1; got -5"),
    (lambda d: d["cells"].update(per_zg="100"), "'cells.per_zg' must be an integer; got '100'"),
    (lambda d: d["cells"].update(per_zg=True), "'cells.per_zg' must be an integer; got True"),
    (lambda d: d["cells"].update(zg=[2.5, 2.7]), "'cells.zg' has unknown Z_g 2.7"),
    (lambda d: d["tilings"].update(sizes=[3]), "'tilings.sizes' has size 3; sizes must be even integers in [2, 20]"),
    (lambda d: d["resample"].update(method="sideways"), "'resample.method' must be one of 'under', 'over' or 'none'"),
    (lambda d: d["resample"]["split"].update(train=0.7), "'resample.split' fractions must sum to 1"),
    (lambda d: d["design"].update(register="yes"), "'design.register' must be true or false; got 'yes'"),
    (lambda d: d["promote"].update(tolerance=-1), "'promote.tolerance' must be a number >= 0.0; got -1"),
    (lambda d: d["tune_forward"]["fit"].update(epochs=1.5), "'tune_forward.fit.epochs' must be an integer; got 1.5"),
    (lambda d: d["tune_forward"]["space"].update(first_width={"low": 5, "high": 1}),
     "'tune_forward.space.first_width' needs low <= high"),
    (lambda d: d["train_forward"]["model"].update(epochs="x"), "'train_forward.model.epochs' must be a number; got 'x'"),
    (lambda d: d["train_forward"].update(augment=False), "'train_forward.augment' must be one of"),
    (lambda d: d.pop("evaluate"), "missing key 'evaluate'"),
])
def test_a_wrong_value_names_the_key_the_value_and_what_was_expected(change, needle):
    assert needle in _bad(change)


def test_params_paper_sets_only_valid_keys():
    p = P.check_overrides(REPO_ROOT / "params.yaml", REPO_ROOT / "params-paper.yaml")
    assert p.tilings.sizes_per_cell == 100 and p.tune_cvae.score == "loss"
    assert "batch_size" in p.tune_size_agnostic.space and p.tune_forward.heartbeat.grace == 300


def test_a_bad_key_in_an_overrides_file_is_named(tmp_path):
    f = tmp_path / "over.yaml"
    f.write_text("tilings:\n  celz: 3\n")
    with pytest.raises(InputError, match=r"over.yaml \(applied to params.yaml\): unknown key 'tilings.celz'"):
        P.check_overrides(REPO_ROOT / "params.yaml", f)


def test_exp_run_arguments_apply_every_leaf_of_the_overrides():
    args = P.exp_run_args(REPO_ROOT / "params.yaml", REPO_ROOT / "params-paper.yaml")
    assert args[::2] == ["-S"] * (len(args) // 2)
    flat = P.flat_overrides(P.read_yaml(REPO_ROOT / "params-paper.yaml"))
    sets = dict(a.lstrip("+").split("=", 1) for a in args[1::2])
    assert set(sets) == set(flat)
    assert sets["tilings.sizes_per_cell"] == "100" and sets["tune_size_agnostic.space.batch_size"] == "[32,64,128,256]"
    # keys new to params.yaml need Hydra's append marker, others must not have it
    assert "+tune_size_agnostic.space.batch_size=[32,64,128,256]" in args and "+tilings.cells=1000000" not in args


def _dvc_status_params(repo: Path) -> dict[str, set[str]]:
    """Stage -> params keys `dvc status --json` reports changed."""
    import json

    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    changed: dict[str, set[str]] = {}
    for stage, entries in json.loads(out.stdout or "{}").items():
        for e in entries:
            deps = e.get("changed deps", {}) if isinstance(e, dict) else {}
            for dep, what in deps.items():
                if dep.startswith("params.yaml") and isinstance(what, dict):
                    changed.setdefault(stage, set()).update(what)
    return changed


def test_the_rerun_plan_of_params_paper_matches_dvc(tmp_path, worktree_copier):
    """`deepdram params plan` names the stages DVC itself finds changed by params-paper.yaml's values,
    plus everything downstream of them."""
    from deepdram.jobs.deps import rerun_plan

    repo = worktree_copier(tmp_path / "repo")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    # The copy's lock records the params.yaml values of its current params, so that DVC reports only
    # what params-paper.yaml changes, whether or not the checkout's own lock is up to date.
    current = P.read_yaml(repo / "params.yaml")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        recorded = stage.get("params", {}).get("params.yaml", {})
        for key in recorded:
            recorded[key] = current[key]
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    assert _dvc_status_params(repo) == {}
    merged = P.merge(current, P.read_yaml(repo / "params-paper.yaml"))
    (repo / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    hit = set(_dvc_status_params(repo))
    sections = P.changed_sections(BASE, P.read_yaml(REPO_ROOT / "params-paper.yaml"))
    plan = rerun_plan(REPO_ROOT, sections)
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    reading = {s for s, b in spec.items() if set(b.get("params", [])) & set(sections)}
    assert hit and reading == hit  # the stages DVC finds changed are the ones the plan starts from
    assert hit <= set(plan) and "cells" not in plan and "design" in plan


def test_params_cli_check_plan_and_dry_exp(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "deepdram.cli.main", "params", *a], cwd=REPO_ROOT,  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=120)
    ok = run("check")
    assert ok.returncode == 0 and "sections valid" in ok.stdout
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "cells": {**BASE["cells"], "per_zg": 0}}))
    out = run("check", str(bad))
    assert out.returncode == 2 and "'cells.per_zg' must be an integer >= 1; got 0" in out.stderr
    dry = run("exp", "params-paper.yaml", "--dry")
    assert dry.returncode == 0, dry.stderr
    assert "stages that would rerun" in dry.stdout and "tilings" in dry.stdout
    assert "dvc exp run --name params-paper -S" in dry.stdout
