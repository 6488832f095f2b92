"""Import layering: the import-linter contracts in pyproject.toml hold, and they do catch a broken layer.

The contracts (layers, no cycles, the library never importing pipelines/serving/dashboard, slide reading
never importing the demo) are checked by ``lint-imports`` on the source tree, so imports inside functions
count too. The second test copies the tree, plants one violation per contract and expects every contract
to break, naming the planted import: a contract that cannot fail checks nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_ROOTS = {
    "slidemil": ROOT / "src" / "slidemil",
    **{p: ROOT / p for p in ("pipelines", "serving", "dashboard")},
}


def _lint_imports(src_root: Path, code_root: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` with this project's contracts on the packages under the given roots."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src_root), str(code_root)]),
        "COLUMNS": "400",  # one line per contract in the report, whatever the terminal
    }
    cmd = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        str(ROOT / "pyproject.toml"),
        "--no-cache",
    ]
    return subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True, timeout=300)


def _contract_names() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [c["name"] for c in config["contracts"]]


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT / "src", ROOT)
    report = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"import-linter contracts broken (see pyproject.toml [tool.importlinter]):\n{report}"
    )
    names = _contract_names()
    assert len(names) == 5
    for name in names:
        assert f"{name} KEPT" in report, f"contract {name!r} not reported as kept:\n{report}"


PLANTED = {
    # file (relative to its code root) -> (statement planted inside a function, how the report names it)
    "slidemil/slides/geometry.py": (
        "import slidemil.demo.scene",
        "slidemil.slides.geometry -> slidemil.demo.scene",  # layers, slides-not-demo
    ),
    "slidemil/encoders/catalog.py": (
        "from slidemil.encoders import registry",
        ".catalog -> .registry",  # acyclic: a cycle inside slidemil.encoders
    ),
    "slidemil/utils/hashing.py": (
        "import dashboard.data_access",
        "slidemil.utils.hashing -> dashboard.data_access",  # library-standalone
    ),
    "serving/settings.py": (
        "import pipelines.common",
        "serving.settings -> pipelines.common",  # apps-not-pipelines
    ),
}


def test_contracts_catch_planted_violations(tmp_path):
    src, code = tmp_path / "src", tmp_path / "code"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(CODE_ROOTS["slidemil"], src / "slidemil", ignore=ignore)
    for name in ("pipelines", "serving", "dashboard"):
        shutil.copytree(CODE_ROOTS[name], code / name, ignore=ignore)
    for rel, (statement, _) in PLANTED.items():
        target = (src if rel.startswith("slidemil/") else code) / rel
        target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {statement}\n")

    result = _lint_imports(src, code)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    for name in _contract_names():
        assert f"{name} BROKEN" in report, f"contract {name!r} did not catch its planted import:\n{report}"
    for statement, named in PLANTED.values():
        assert named in report, f"planted {statement!r} not named as {named!r}:\n{report}"
