"""DVC stage deps cover the code each stage runs, derived from the stage script's import closure.

``dvc repro`` re-runs a stage only when one of its deps changes. A stage whose script imports a module that
no dep covers silently keeps stale outputs when that module changes (editing the demo renderer used not to
re-render the demo). For every ``python -m pipelines.X`` stage this test follows the script's imports of
``slidemil.*`` and ``pipelines.*`` statically (``ast``: every import statement, including those inside
functions, plus the package ``__init__`` files Python runs on the way) and requires each module file to be
covered by a dep: the file itself or a folder above it.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"slidemil": ROOT / "src", "pipelines": ROOT}
DEMO = "src/slidemil/demo"
STAGES: dict[str, dict] = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file that defines project module ``name`` (a package's ``__init__.py``), or None if not ours."""
    parts = name.split(".")
    base = PROJECT_PACKAGES.get(parts[0])
    if base is None:
        return None
    path = base.joinpath(*parts)
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(name: str) -> set[str]:
    """Project modules that importing ``name`` runs directly: its imports and their parent packages."""
    path = module_file(name)
    assert path is not None, name
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # names may be submodules
    modules = set()
    for candidate in found:
        parts = candidate.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            prefix = ".".join(parts[:i])
            if module_file(prefix) is not None:
                modules.add(prefix)
    modules.discard(name)
    return modules


def import_closure(start: str) -> dict[str, list[str]]:
    """Every project module reachable from ``start`` -> the import chain that reaches it."""
    chains = {start: [start]}
    for parent in range(1, start.count(".") + 1):
        pkg = start.rsplit(".", parent)[0]
        chains[pkg] = [start, pkg]
    todo = deque(chains)
    while todo:
        current = todo.popleft()
        for imported in sorted(imported_modules(current)):
            if imported not in chains:
                chains[imported] = [*chains[current], imported]
                todo.append(imported)
    return chains


def stage_module(stage: dict) -> str:
    match = re.fullmatch(r"python -m (pipelines\.\w+)", stage["cmd"].strip())
    assert match, f"stage cmd {stage['cmd']!r} is not `python -m pipelines.X`"
    return match.group(1)


def code_deps(stage: dict) -> list[str]:
    """Deps that are project paths (data deps such as ``${tile.tiles_dir}`` are left out)."""
    return [d.rstrip("/") for d in stage.get("deps", []) if "${" not in d]


def covered(rel: str, deps: list[str]) -> bool:
    return any(rel == dep or rel.startswith(dep + "/") for dep in deps)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("stage_name", sorted(STAGES))
def test_stage_deps_cover_its_import_closure(stage_name):
    stage = STAGES[stage_name]
    deps = code_deps(stage)
    missing_paths = [d for d in deps if not (ROOT / d).exists()]
    assert not missing_paths, f"stage {stage_name!r}: deps that do not exist: {missing_paths}"
    uncovered = []
    for module, chain in sorted(import_closure(stage_module(stage)).items()):
        path = rel(module_file(module))
        if not covered(path, deps):
            uncovered.append(f"  {path}  (imported via {' -> '.join(chain)})")
    assert not uncovered, (
        f"stage {stage_name!r} runs project code that none of its deps in dvc.yaml covers, so changing it "
        "would not re-run the stage; add the file or a folder above it to the stage's deps:\n"
        + "\n".join(uncovered)
    )


def test_synthesize_depends_on_the_whole_demo_package():
    deps = code_deps(STAGES["synthesize"])
    demo_files = sorted(rel(p) for p in (ROOT / DEMO).rglob("*.py"))
    assert len(demo_files) >= 8
    assert [f for f in demo_files if not covered(f, deps)] == []
    closure = {rel(module_file(m)) for m in import_closure(stage_module(STAGES["synthesize"]))}
    assert f"{DEMO}/render.py" in closure and f"{DEMO}/svs_writer.py" in closure


def test_tile_does_not_depend_on_the_demo():
    stage = STAGES["tile"]
    closure = {rel(module_file(m)) for m in import_closure(stage_module(stage))}
    assert "src/slidemil/slides/backends/factory.py" in closure  # the closure does reach slide reading
    assert not [f for f in closure if f.startswith(DEMO + "/")]
    demo_files = [rel(p) for p in (ROOT / DEMO).rglob("*.py")]
    assert not [f for f in demo_files if covered(f, code_deps(stage))], "a tile dep covers demo code"


def test_closure_follows_imports_inside_functions_and_package_inits():
    chains = import_closure("pipelines.heatmaps")
    # pipelines.heatmaps imports slidemil.slides.backends at module level; its __init__ imports the factory
    assert chains["slidemil.slides.backends.factory"][-2] == "slidemil.slides.backends"
    assert "slidemil.slides" in chains and "slidemil" in chains
    # slidemil.data.validation imports open_slide inside a function
    assert "slidemil.slides.backends" in imported_modules("slidemil.data.validation")
