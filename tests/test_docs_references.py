"""Docs that cannot go stale: every repository path and every ``galmorph.*`` name that the README, the
docs and the component READMEs quote in backticks exists in the file tree / resolves in the library
(compared with the tree and the code, not with what a generator wrote)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = ("src", "infra", "components", "pipelines", "charts", "docs", "benchmarks", "tests", "monitoring",
       "mlproject", ".ci")
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "components").glob("*/README.md"),
               *(REPO / "monitoring").glob("*.md"), *(REPO / "charts").rglob("README.md")])
TICKED = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^(?:\.\./)?(?:%s)/[\w./-]*$" % "|".join(re.escape(t) for t in TOP))
NAME = re.compile(r"^galmorph(?:\.[A-Za-z_]\w*)+$")


#: Modules of the flat library root that moved into area packages (#29): a doc naming one is stale.
RETIRED = {"pipelines", "data", "inference", "accel", "ensemble", "release_path", "release", "demo",
           "stack", "registry", "lineage", "ingest", "validation", "cutout", "crossmatch", "sdss_query", "dvcops",
           "manifest"}


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _quoted(doc: Path) -> list[tuple[int, str]]:
    return [(i, m.group(1).strip()) for i, line in enumerate(doc.read_text().splitlines(), 1)
            for m in TICKED.finditer(line)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_paths_exist(doc):
    missing = []
    for line, text in _quoted(doc):
        text = text.split()[0].rstrip(":,.;)")
        if not PATH.match(text) or any(c in text for c in "<*{$"):
            continue
        target = (doc.parent if text.startswith("../") else REPO) / text
        if not target.exists():
            missing.append(f"{doc.relative_to(REPO)}:{line}: {text}")
    assert not missing, "paths quoted in the docs that are not in the tree:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_library_names_resolve(doc):
    stale = []
    for line, text in _quoted(doc):
        for word in re.findall(r"(?<![\w.-])galmorph(?:\.\w+)+", text):
            area = ".".join(word.split(".")[:2])
            if _is_module(area) and not _resolves(word) or word.split(".")[1] in RETIRED:
                stale.append(f"{doc.relative_to(REPO)}:{line}: {word}")
            # any other galmorph.<key>... is an MLflow tag / metadata key (galmorph.release, galmorph.audit.<t>)
    assert not stale, "library names quoted in the docs that do not resolve:\n" + "\n".join(stale)


def test_the_checks_catch_a_stale_path_and_name(tmp_path, monkeypatch):
    assert PATH.match("infra/docker/gpu/") and not (REPO / "infra/docker/gpu").exists()
    assert not _resolves("galmorph.pipelines.steps") and not _resolves("galmorph.scoring.batch.nope")
    assert "pipelines" in RETIRED and not _is_module("galmorph.pipelines")
    assert _resolves("galmorph.steps.score") and _resolves("galmorph.scoring.batch")
