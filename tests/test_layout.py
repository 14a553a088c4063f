"""The layout rules the seams rely on: package __init__ files hold no code (importing a module never
drags in its siblings, so the stages' import closures stay tight), the tests mirror the packages
and no test module imports another (shared fixtures live in tests/conftest.py)."""

from __future__ import annotations

import ast

from deepdram.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "deepdram"
TESTS = REPO_ROOT / "tests"


def test_package_init_files_hold_only_a_docstring():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert not code, f"{init.relative_to(REPO_ROOT)} runs code on import"
        assert body, f"{init.relative_to(REPO_ROOT)} is empty: give the package a one-line docstring"


def test_no_test_module_imports_another():
    names = {p.stem for p in TESTS.rglob("test_*.py")} | {"conftest"}
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module.split(".")
            elif isinstance(node, ast.Import):
                mod = [part for alias in node.names for part in alias.name.split(".")]
            else:
                continue
            assert mod[0] != "tests" and not (set(mod) & names), f"{path.relative_to(REPO_ROOT)} imports {mod}"


def test_tests_mirror_the_packages():
    """Every test folder that holds tests is a deepdram subpackage (data folders such as golden/ or a
    fuzz corpus need not be)."""
    for folder in sorted(p for p in TESTS.rglob("*") if p.is_dir() and any(p.glob("test_*.py"))):
        rel = folder.relative_to(TESTS)
        assert (PACKAGE / rel).is_dir(), f"tests/{rel} has no deepdram/{rel} to mirror"
