"""The docs stay true to the repo: every ``methods.md section X`` pointer in the code names a real heading of
docs/methods.md, and every link or quoted repo path in the Markdown files points at a file that exists."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods.md"

#: folders never scanned: environments, generated data, run stores, caches
SKIP_DIRS = {".git", ".venv", "data", "mlruns", "bentoml_home", ".dvc", ".dvcstore", "__pycache__",
             ".pytest_cache", ".ruff_cache", "node_modules"}
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".cfg", ".md"}
#: top-level folders whose paths a Markdown file may quote in backticks and which must then exist
CHECKED_PATH_ROOTS = {"src", "pipelines", "serving", "dashboard", "benchmarks", "tests", "docs", "config",
                      ".ci", ".github"}

# "methods.md section A", "methods.md, section A", "methods.md A:", "methods.md section A.3",
# "methods.md section A, "Baselines"". Section ids are one digit or capital letter.
POINTER = re.compile(
    r"methods\.md,?\s+(?:section\s+)?(?P<section>[0-9A-Z])(?:\.(?P<sub>\d+))?\b"
    r"(?:,\s*\"(?P<name>[^\"]+)\")?"
)
FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.M | re.S)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_PATH = re.compile(r"`([^`\s]+)`")


@dataclass
class Section:
    title: str
    subheadings: list[str] = field(default_factory=list)


def _walk(suffixes: set[str], names: frozenset[str] = frozenset()) -> list[Path]:
    """Files with one of ``suffixes`` or ``names`` under the repo, never descending into SKIP_DIRS."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        out += [Path(folder) / f for f in files if Path(f).suffix in suffixes or f in names]
    return sorted(out)


def _strip_fences(markdown: str) -> str:
    return FENCE.sub("", markdown)


def parse_sections(markdown: str) -> dict[str, Section]:
    """``## X. Title`` headings by their id X, each with the titles of the deeper headings below it."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    for m in HEADING.finditer(_strip_fences(markdown)):
        level, title = len(m.group(1)), m.group(2)
        if level == 2:
            ident = re.match(r"([0-9A-Z])\.\s", title)
            current = Section(title) if ident else None
            if ident:
                sections[ident.group(1)] = current
        elif level > 2 and current is not None:
            current.subheadings.append(title)
    return sections


def pointer_errors(text: str, sections: dict[str, Section]) -> list[str]:
    """Each pointer in ``text`` that names a section, numbered subsection or quoted heading that is missing."""
    errors = []
    for m in POINTER.finditer(text):
        sec, sub, name = m.group("section"), m.group("sub"), m.group("name")
        if sec not in sections:
            errors.append(f"{m.group(0)!r}: no '## {sec}.' heading")
            continue
        subs = sections[sec].subheadings
        if sub is not None and not any(re.match(rf"{sec}\.{sub}\s", h) for h in subs):
            errors.append(f"{m.group(0)!r}: no '{sec}.{sub}' heading under section {sec}")
        if name is not None and not any(name.lower() in h.lower() for h in subs):
            errors.append(f"{m.group(0)!r}: no heading containing {name!r} under section {sec}")
    return errors


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    title = re.sub(r"[`*_]{1,2}(.+?)[`*_]{1,2}", r"\1", title)
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(_strip_fences(markdown)):
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_errors(md_path: Path, root: Path = ROOT) -> list[str]:
    """Relative links (and their #anchors into Markdown files) and backticked repo paths that do not resolve."""
    text = _strip_fences(md_path.read_text(encoding="utf-8"))
    errors = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (md_path.parent / file_part).resolve() if file_part else md_path
        if not dest.exists():
            errors.append(f"link {target!r}: {file_part} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            errors.append(f"link {target!r}: no heading with anchor #{anchor} in {dest.name}")
    for m in INLINE_PATH.finditer(text):
        token = m.group(1)
        first = token.split("/", 1)[0]
        if "/" not in token or first not in CHECKED_PATH_ROOTS or re.search(r"[<>{}*$:=]", token):
            continue
        if not ((root / token).exists() or (md_path.parent / token).exists()):
            errors.append(f"path `{token}` does not exist")
    return errors


@pytest.fixture(scope="module")
def sections() -> dict[str, Section]:
    return parse_sections(METHODS.read_text(encoding="utf-8"))


def test_methods_has_the_shared_section_and_four_families(sections):
    assert set("0ABCD") <= set(sections), sorted(sections)


def test_every_methods_pointer_in_the_repo_resolves(sections):
    found, errors = 0, []
    for path in _walk(CODE_SUFFIXES, frozenset({"Makefile"})):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += len(POINTER.findall(text))
        errors += [f"{path.relative_to(ROOT)}: {e}" for e in pointer_errors(text, sections)]
    assert found >= 10, f"only {found} pointers found: the pattern no longer matches how the code cites"
    assert not errors, "\n".join(errors)


def test_pointer_check_catches_missing_sections_and_headings(sections):
    doc = "methods" + ".md"
    assert pointer_errors(f'see {doc} section A, "Baselines" and {doc} A: lr', sections) == []
    bad = pointer_errors(f'{doc} section E; {doc} section A.99; {doc} section A, "No such heading"', sections)
    assert len(bad) == 3, bad


@pytest.mark.parametrize(
    "md_path",
    _walk({".md"}),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_markdown_links_and_paths_exist(md_path):
    assert not link_errors(md_path), "\n".join(link_errors(md_path))


def test_link_check_catches_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text("# Title\n\n## 0. Shared pipeline\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/real.md#0-shared-pipeline) [gone](docs/gone.md) [bad anchor](docs/real.md#nope)\n"
        "`docs/real.md` `docs/missing.md` `data/<slide>.h5` [web](https://example.org/x.md)\n"
        "```\n[in a code block](nowhere.md)\n```\n"
    )
    errors = link_errors(page, root=tmp_path)
    assert len(errors) == 3, errors
    assert any("gone.md" in e for e in errors) and any("#nope" in e for e in errors)
    assert any("missing.md" in e for e in errors)


def test_readme_links_the_methods_document():
    assert "](docs/methods.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
