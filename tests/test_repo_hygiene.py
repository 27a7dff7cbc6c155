"""Nothing a run makes is tracked by git: no database (MLflow's sqlite, label stores), no MLflow file
store, no run outputs (the state folder .galmorph/, outputs/), no caches; and .gitignore keeps them out."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: What must never be tracked: (what, pattern on a repository path).
FORBIDDEN: tuple[tuple[str, re.Pattern], ...] = (
    ("a database", re.compile(r"(^|/)[^/]+\.(db|sqlite|sqlite3)(-journal|-wal|-shm)?$|\.sqlite-")),
    ("an MLflow file store", re.compile(r"(^|/)(mlruns|mlartifacts)/")),
    ("run outputs", re.compile(r"^(\.galmorph|outputs)/|(^|/)test-artifacts/|^benchmarks/results/quick/")),
    ("a cache", re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.ruff_cache|\.mypy_cache|\.cache)/|\.py[co]$")),
)
#: One example path of each kind, which .gitignore must ignore.
EXAMPLES = ("mlflow.db", "sub/dir/labels.sqlite", "store.sqlite3", "mlruns/0/meta.yaml", "mlartifacts/1/a.txt",
            ".galmorph/mlflow/mlflow.db", ".galmorph/demo/summary.json", "outputs/sim/manifest.parquet",
            "src/galmorph/__pycache__/x.cpython-311.pyc", ".pytest_cache/v/cache/nodeids",
            "test-artifacts/shot.png", "benchmarks/results/quick/train.json")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout (or git missing): nothing to check")
    return _git("ls-files", "-z").stdout.split("\0")


def test_no_database_run_output_or_cache_is_tracked(tracked):
    bad = [f"{path} ({what})" for path in tracked if path for what, pat in FORBIDDEN if pat.search(path)]
    assert not bad, ("tracked by git, but made by runs (git rm --cached them; .gitignore keeps them out):\n"
                     + "\n".join(bad))


def test_the_patterns_tell_run_outputs_from_source():
    def hit(path):
        return any(pat.search(path) for _w, pat in FORBIDDEN)

    assert all(hit(p) for p in EXAMPLES)
    assert not any(hit(p) for p in ("tests/test_image_cache.py", "src/galmorph/datasets/images.py",
                                    "docs/results.md", "benchmarks/results/reference.json", "data/.gitignore",
                                    "src/galmorph/labelling/store.py", "dvc.lock"))


def test_gitignore_keeps_them_out(tracked):
    r = _git("check-ignore", "--no-index", *EXAMPLES)
    ignored = set(r.stdout.split())
    assert ignored == set(EXAMPLES), f".gitignore does not ignore {sorted(set(EXAMPLES) - ignored)}"
