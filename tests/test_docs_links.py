"""The repository cites its own ``docs/``, never a file outside it: every ``docs/NAME.md`` that a
module, config, test, result or doc names exists, every heading quoted beside it
(``docs/flare.md, "Hyperparameters"``) is a heading of that doc, and every relative link
between the docs resolves."""

import re
import subprocess
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DOC_REF = re.compile(r"docs/([A-Za-z0-9_]+\.md)")
# a heading quoted right after the doc name, possibly on the next line of a docstring/comment
HEADING_REF = re.compile(r"docs/([A-Za-z0-9_]+\.md)[,:]?\s*(?:#:?\s*)?[\"'“]([^\"'”\n]{3,80})[\"'”]")
LINK = re.compile(r"\]\(([A-Za-z0-9_./-]+\.md)(?:#[^)]*)?\)")


_NOT_SOURCES = {".git", ".venv", "runs", ".hypothesis", ".pytest_cache", "__pycache__"}


def _files() -> list[str]:
    """The tracked files; outside a git checkout (an unpacked sdist), every file of the tree
    but the virtualenv, run outputs and caches."""
    try:
        return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                if p.is_file() and not _NOT_SOURCES & set(p.relative_to(REPO).parts)]


def _tracked_texts():
    for name in _files():
        path = REPO / name
        # this file names the patterns it looks for
        if (name.endswith((".py", ".toml", ".md", ".json")) and not name.startswith("tests/golden/")
                and path != Path(__file__).resolve()):
            yield path


def _headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip().lower() for line in doc.read_text().splitlines()
            if line.startswith("#")]


def test_no_reference_to_files_outside_the_repository():
    offenders = [str(p.relative_to(REPO)) for p in _tracked_texts()
                 if "ALGORITHMS.md" in p.read_text(errors="replace")]
    assert not offenders, f"cite docs/ (or the paper) instead of ALGORITHMS.md in {offenders}"


def test_cited_docs_and_headings_exist():
    missing = []
    for path in _tracked_texts():
        text = path.read_text(errors="replace")
        for name in set(DOC_REF.findall(text)):
            if not (REPO / "docs" / name).is_file():
                missing.append(f"{path.relative_to(REPO)}: docs/{name}")
        for name, heading in HEADING_REF.findall(text):
            doc = REPO / "docs" / name
            if doc.is_file() and not any(heading.lower() in h for h in _headings(doc)):
                missing.append(f"{path.relative_to(REPO)}: docs/{name} has no heading {heading!r}")
    assert not missing, "\n".join(missing)


def test_links_between_docs_resolve():
    broken = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        for target in LINK.findall(doc.read_text()):
            if not target.startswith(("http", "/")) and not (doc.parent / target).resolve().is_file():
                broken.append(f"{doc.name} -> {target}")
    assert not broken, broken
