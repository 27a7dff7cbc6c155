"""docs/results.md is generated from the committed results files (benchmarks/make_results_page.py): it is
current, every results file is on it with the command that made it, and the README quotes no benchmark
number by hand but links to it. The generator runs in the benchmarks folder by subprocess, as the other
benchmark tests do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "make_results_page.py"
RESULTS = REPO / "benchmarks" / "results"
PAGE = REPO / "docs" / "results.md"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO / "benchmarks", capture_output=True,
                          text=True, timeout=120)


def test_results_page_is_current():
    r = _run("--check")
    assert r.returncode == 0, f"{r.stderr}{r.stdout}\ndocs/results.md is stale: run `make results-page`"


def test_every_results_file_is_on_the_page_with_its_command():
    text = PAGE.read_text()
    for md in sorted(RESULTS.glob("*.md")):
        line = next((ln for ln in text.splitlines() if f"`benchmarks/results/{md.name}`" in ln), None)
        assert line is not None, f"{md.name} is not on docs/results.md"
        assert "Made by" in line and "benchmarks/" in line.split("Made by", 1)[1], line
        # the file's numbers are on the page as the file has them
        body = [ln for ln in md.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert all(ln in text for ln in body), f"{md.name}: a line of the results file is not on the page"


def test_stale_page_and_unlisted_results_file_are_caught(tmp_path):
    page = tmp_path / "results.md"
    assert _run("--out", str(page)).returncode == 0
    assert _run("--check", "--out", str(page)).returncode == 0
    page.write_text(page.read_text().replace("| 0.", "| 9.", 1))  # a number edited by hand
    r = _run("--check", "--out", str(page))
    assert r.returncode == 1 and "stale" in r.stderr

    results = tmp_path / "results"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("*.parquet"))
    (results / "new_benchmark.md").write_text("# new\n\n| a | 1.0 |\n")
    r = _run("--results", str(results), "--out", str(tmp_path / "p.md"))
    assert r.returncode == 2 and "new_benchmark.md has no entry" in r.stderr
    (results / "new_benchmark.md").unlink()
    (results / "train.md").unlink()
    r = _run("--results", str(results), "--out", str(tmp_path / "p.md"))
    assert r.returncode == 2 and "train.md does not exist" in r.stderr


def _prose_decimals(text: str) -> set[str]:
    """Decimal numbers outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text))


def test_readme_links_the_results_page_and_quotes_no_benchmark_number():
    readme = (REPO / "README.md").read_text()
    assert "docs/results.md" in readme
    assert len(readme.splitlines()) <= 200, "the README is for users: at most 200 lines"
    # a measured figure quoted by hand is a decimal of a results file in the README's prose (task ranges
    # such as 0.01 <= z <= 0.1 and version numbers are not measurements)
    allowed = {"0.01", "0.1", "3.11"}
    quoted = (_prose_decimals(readme) & _prose_decimals(PAGE.read_text())) - allowed
    assert not quoted, f"numbers of the results files quoted in the README (link docs/results.md instead): {quoted}"
