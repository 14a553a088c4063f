"""The DVC dependencies that cannot go stale: each stage's static import closure and params sections.

A stage runs `pipelines/<stage>.py`, which imports `deepdram.jobs.<stage>`, which imports what it
needs. The closure is every deepdram source file reachable by `import` statements, counting
imports inside functions (they run when the stage calls them) and the `__init__.py` of every
package on the way, but not imports under `if TYPE_CHECKING:` (they never run). `dvc.yaml` lists
exactly these files as the stage's code deps, and its `params` are the sections the job module
declares in `SECTIONS` (minus execution-only ones, which never change a result).

    python -m deepdram.jobs.deps          # check dvc.yaml (exit 1 and list what is missing or stale)
    python -m deepdram.jobs.deps --write  # rewrite the code deps and params of every stage in dvc.yaml
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE = "deepdram"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names a module's source imports (from ... import x gives both 'pkg' and 'pkg.x')."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return out


def module_file(root: Path, name: str) -> Path | None:
    """The source file of a deepdram module (package: its __init__.py), or None if it is not one."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    rel = Path(*name.split("."))
    for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(root: Path, path: Path) -> str:
    """The dotted name of a source file under root."""
    rel = path.resolve().relative_to(root.resolve()).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@lru_cache(maxsize=None)
def _direct(root: Path, path: Path) -> frozenset[Path]:
    """Files a file imports directly (deepdram modules only), with their parent packages."""
    name = module_name(root, path) if path.is_relative_to(root / PACKAGE) else path.stem
    deps: set[Path] = set()
    for imported in imported_names(path.read_text(), name, path.name == "__init__.py"):
        f = module_file(root, imported)
        if f is None:
            continue
        deps.add(f)
        for parent in _parents(imported):
            p = module_file(root, parent)
            if p is not None:
                deps.add(p)
    return frozenset(deps - {path})


def closure(root: Path, entry: Path) -> set[Path]:
    """Every file the entry script reaches by imports (itself included)."""
    seen: set[Path] = set()
    todo = [entry.resolve()]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(_direct(root.resolve(), f))
    return seen


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the deepdram modules it imports (parent packages excluded: they run first, not in between)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        name = module_name(root, path)
        targets = set()
        for imported in imported_names(path.read_text(), name, path.name == "__init__.py"):
            f = module_file(root, imported)
            if f is not None:
                targets.add(module_name(root, f))
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a module graph (each as a list of modules, first repeated at the end)."""
    found, index, low, stack, on, counter = [], {}, {}, [], set(), [0]

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp) + [sorted(comp)[0]])

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


# --- dvc.yaml ----------------------------------------------------------------------------------------


def _code(path: str) -> bool:
    return path.endswith(".py") and (path.startswith(f"{PACKAGE}/") or path.startswith("pipelines/"))


def stage_code_deps(root: Path, stage: str) -> list[str]:
    """The sorted repository-relative files of a stage's import closure."""
    entry = root / "pipelines" / f"{stage}.py"
    return sorted(p.relative_to(root.resolve()).as_posix() for p in closure(root, entry))


def stage_sections(stage: str) -> tuple[str, ...]:
    """The params sections a stage's job module declares (SECTIONS)."""
    import importlib

    return tuple(importlib.import_module(f"{PACKAGE}.jobs.{stage}").SECTIONS)


def expected_params(stage: str) -> list[str]:
    """The params sections dvc.yaml must list for a stage (execution-only sections left out)."""
    from deepdram.params import EXECUTION_SECTIONS

    return [s for s in stage_sections(stage) if s not in EXECUTION_SECTIONS]


def problems(root: Path) -> list[str]:
    """What dvc.yaml gets wrong: code files a stage runs but does not depend on, listed code files it
    does not run, params sections it reads but does not list (or lists but does not read)."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    out = []
    for stage, body in spec["stages"].items():
        listed = [d for d in body.get("deps", []) if isinstance(d, str)]
        code = set(stage_code_deps(root, stage))
        listed_code = {d for d in listed if _code(d)}
        for f in sorted(code - listed_code):
            out.append(f"{stage}: runs {f} but does not list it in deps")
        for f in sorted(listed_code - code):
            out.append(f"{stage}: lists {f} in deps but does not import it")
        params = {p if isinstance(p, str) else next(iter(p)) for p in body.get("params", [])}
        want = set(expected_params(stage))
        for s in sorted(want - params):
            out.append(f"{stage}: reads params section '{s}' but does not list it")
        for s in sorted(params - want):
            out.append(f"{stage}: lists params section '{s}' but its job does not read it")
    return out


def write(root: Path) -> None:
    """Rewrite each stage's code deps and params in dvc.yaml (comments and data deps kept)."""
    from ruamel.yaml import YAML

    y = YAML()
    y.preserve_quotes = True
    y.width = 120
    path = root / "dvc.yaml"
    spec = y.load(path.read_text())
    for stage, body in spec["stages"].items():
        data = [d for d in body.get("deps", []) if not (isinstance(d, str) and _code(d))]
        body["deps"] = [*stage_code_deps(root, stage), *data]
        params = expected_params(stage)
        if params:
            body["params"] = params
        elif "params" in body:
            del body["params"]
    with path.open("w") as fh:
        y.dump(spec, fh)


def main(argv: Iterable[str] | None = None) -> int:
    """Check (default) or --write the dvc.yaml code deps and params; exit 1 on a problem."""
    from deepdram.paths import REPO_ROOT

    args = list(sys.argv[1:] if argv is None else argv)
    if "--write" in args:
        write(REPO_ROOT)
    found = problems(REPO_ROOT)
    for line in found:
        print(line)
    loops = cycles(import_graph(REPO_ROOT))
    for loop in loops:
        print("import cycle: " + " -> ".join(loop))
    return 1 if found or loops else 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- what a params change reruns ---------------------------------------------------------------------


def stage_graph(root: Path) -> dict[str, set[str]]:
    """Stage -> the stages whose outputs it depends on (from dvc.yaml deps and outs)."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def paths(entries) -> list[str]:
        return [e if isinstance(e, str) else next(iter(e)) for e in entries or ()]

    outs = {s: paths(b.get("outs")) + paths(b.get("metrics")) + paths(b.get("plots")) for s, b in spec.items()}
    graph = {}
    for stage, body in spec.items():
        graph[stage] = {other for other, produced in outs.items() if other != stage
                        for dep in paths(body.get("deps")) for out in produced
                        if dep == out or dep.startswith(out.rstrip("/") + "/")}
    return graph


def rerun_plan(root: Path, sections: Iterable[str]) -> list[str]:
    """The stages that rerun when these params sections change: the ones that list a section, and
    every stage downstream of them, in dvc.yaml order."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    changed = set(sections)
    hit = {s for s, b in spec.items()
           if changed & {p if isinstance(p, str) else next(iter(p)) for p in b.get("params", [])}}
    graph = stage_graph(root)
    grew = True
    while grew:
        new = {s for s, ups in graph.items() if ups & hit} - hit
        hit |= new
        grew = bool(new)
    return [s for s in spec if s in hit]
