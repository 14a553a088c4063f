"""DVC dependencies that cannot go stale: each stage's import closure and params sections are in
dvc.yaml, and the closure/cycle analysis itself is checked on a toy package."""

from __future__ import annotations

import ast
import importlib
import textwrap
from pathlib import Path

import pytest
import yaml

from deepdram.jobs import deps
from deepdram.params import EXECUTION_SECTIONS, SECTIONS
from deepdram.paths import REPO_ROOT

STAGES = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])


def _toy(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return tmp_path


def test_closure_counts_imports_inside_functions_and_packages_but_not_type_checking(tmp_path):
    root = _toy(tmp_path, {
        "deepdram/__init__.py": "",
        "deepdram/a.py": """
            from typing import TYPE_CHECKING
            import numpy as np
            if TYPE_CHECKING:
                from deepdram import d
            def f():
                from deepdram.sub import c
                return c
            """,
        "deepdram/b.py": "X = 1\n",
        "deepdram/d.py": "import deepdram.b\n",
        "deepdram/sub/__init__.py": "",
        "deepdram/sub/c.py": "from deepdram.b import X\n",
        "deepdram/unused.py": "",
        "pipelines/stage.py": "from deepdram.a import f\n",
    })
    got = {p.relative_to(root).as_posix() for p in deps.closure(root, root / "pipelines/stage.py")}
    assert got == {"pipelines/stage.py", "deepdram/__init__.py", "deepdram/a.py", "deepdram/sub/__init__.py",
                   "deepdram/sub/c.py", "deepdram/b.py"}


def test_cycle_finder_finds_a_cycle_through_a_function_import(tmp_path):
    root = _toy(tmp_path, {
        "deepdram/__init__.py": "",
        "deepdram/x.py": "def f():\n    from deepdram import y\n",
        "deepdram/y.py": "import deepdram.z\n",
        "deepdram/z.py": "from deepdram.x import f\n",
        "deepdram/w.py": "import deepdram.x\n",
    })
    found = deps.cycles(deps.import_graph(root))
    assert found == [["deepdram.x", "deepdram.y", "deepdram.z", "deepdram.x"]]


def test_no_import_cycle_inside_deepdram():
    found = deps.cycles(deps.import_graph(REPO_ROOT))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_every_stage_depends_on_the_code_it_runs_and_the_sections_it_reads():
    """`python -m deepdram.jobs.deps --write` fixes what this finds."""
    assert deps.problems(REPO_ROOT) == []


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_job_reads_exactly_its_declared_sections(stage):
    """Every `params.<section>` in jobs/<stage>.py is declared in SECTIONS (and vice versa)."""
    module = importlib.import_module(f"deepdram.jobs.{stage}")
    tree = ast.parse(Path(module.__file__).read_text())
    read = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "params" and n.attr in SECTIONS}
    assert read == set(module.SECTIONS)
    assert set(module.SECTIONS) <= set(SECTIONS)


def test_helpers_of_the_jobs_never_take_the_whole_params():
    """Only a stage's own module reads params sections; shared job helpers get sections passed in."""
    stage_files = {f"{s}.py" for s in STAGES}
    for path in sorted((REPO_ROOT / "deepdram" / "jobs").glob("*.py")):
        if path.name in stage_files:
            continue
        tree = ast.parse(path.read_text())
        bad = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "params" and n.attr in SECTIONS]
        assert not bad, f"{path.name} reads params sections {bad}"


def test_execution_sections_are_not_stage_params():
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for stage, body in spec.items():
        assert not set(body.get("params", [])) & set(EXECUTION_SECTIONS), stage


@pytest.mark.parametrize("package", ["spaces", "data", "learn", "design"])
def test_library_code_knows_no_project_paths(package):
    """Paths are the jobs' and the CLI's business: library subpackages never import deepdram.paths."""
    graph = deps.import_graph(REPO_ROOT)
    offenders = sorted(m for m, targets in graph.items()
                       if m.startswith(f"deepdram.{package}") and "deepdram.paths" in targets)
    assert not offenders


def test_rerun_plan_follows_the_dag():
    """A change to `tilings` reruns it and everything downstream, and nothing upstream."""
    plan = deps.rerun_plan(REPO_ROOT, ["tilings"])
    assert plan[0] == "tilings"
    assert "cells" not in plan and "resample" not in plan and "train_forward" not in plan
    assert {"validate_tilings", "train_size_agnostic", "evaluate", "promote", "design"} <= set(plan)
    assert deps.rerun_plan(REPO_ROOT, []) == []
