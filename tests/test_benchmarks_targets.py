"""`make benchmarks` and its one-target-per-benchmark rules agree with benchmarks/run_all.py (#14.4)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _make_names() -> list[str]:
    text = (REPO / "Makefile").read_text()
    m = re.search(r"^BENCH_NAMES\s*=\s*(.+)$", text, re.M)
    assert m, "Makefile has no BENCH_NAMES"
    return m.group(1).split()


def test_every_benchmark_has_a_make_target_and_a_script():
    listed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--list"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(_make_names()) == sorted(listed)
    scripts = subprocess.run([sys.executable, "-c", "import run_all; print(' '.join(s for s, _f, _q in "
                              "run_all.BENCHMARKS.values()))"], cwd=REPO / "benchmarks", capture_output=True,
                             text=True, check=True).stdout.split()
    assert len(scripts) == len(listed)
    for script in scripts:
        assert (REPO / "benchmarks" / script).is_file(), f"{script} missing"

def test_make_bench_target_dry_run_calls_run_all_with_only():
    out = subprocess.run(["make", "-n", "bench-train", "QUICK=1"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "benchmarks/run_all.py --quick --only train" in out


def test_unknown_benchmark_is_refused_by_name():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--only", "nosuch"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "nosuch" in r.stderr
