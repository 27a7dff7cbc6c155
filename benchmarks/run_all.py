"""Run the benchmarks (each one a script in this folder writing benchmarks/results/<name>.{json,md}).

    uv run python benchmarks/run_all.py [--quick] [--only scoring,train]

``--quick`` passes each script its smoke-test sizes (minutes, not hours; quick figures are not results).
Every speed benchmark records the load average at its start and marks itself ``quiet`` only when it was
below 0.5; run on an otherwise idle machine to get figures the README may quote.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: scripts that take --out (the others read GALMORPH_BENCH_OUT); quick runs write to results/quick/
TAKES_OUT = {"a1", "a1_injection", "data", "physical", "arms_probe"}
#: not run with --quick (no smoke-test size)
FULL_ONLY = {"winding", "physical", "containers", "arms_probe", "learning_curve"}
#: need a CUDA device: run only when named (`make bench-gpu` on a GPU machine) or for the quick CPU check
GPU_ONLY = {"gpu"}
#: name -> (script, full arguments, quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "scoring": ("bench_scoring.py", [], ["--quick"]),
    "release": ("bench_release.py", [], ["--quick"]),
    "rescoring": ("bench_rescoring.py", [], ["--quick"]),
    "train": ("bench_train.py", [], ["--quick"]),
    "ddp": ("bench_ddp.py", [], ["--quick"]),
    "gpu": ("bench_gpu.py", [], ["--quick"]),
    "data": ("bench_data.py", [], ["--n-jpeg", "40", "--n-validate", "80"]),
    "a1": ("bench_a1.py", [], ["--n", "8", "--repeats", "1"]),
    "a1_injection": ("a1_injection.py", [], ["--n", "10"]),
    "physical": ("physical_lopsided.py", [], []),
    "winding": ("winding.py", [], []),
    "reference": ("reference.py", [], ["--quick"]),
    "arms_probe": ("arms_probe.py", [], []),
    "learning_curve": ("learning_curve.py", [], []),
    "containers": ("containers.py", [], []),
    "soak_labels": ("soak_labels.py", [], ["--quick"]),
    "soak_scoring": ("soak_scoring.py", [], ["--quick"]),
    "soak_promotions": ("soak_promotions.py", [], ["--quick"]),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    a = ap.parse_args(argv)
    if a.list:
        print("\n".join(BENCHMARKS))
        return 0
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (results need < 0.5)", flush=True)
    failed = []
    env = dict(os.environ)
    if a.quick:
        out = HERE / "results" / "quick"
        out.mkdir(parents=True, exist_ok=True)
        env["GALMORPH_BENCH_OUT"] = str(out)
        print(f"quick mode: results go to {out} (smoke test, not results)", flush=True)
    for n in names:
        if a.quick and n in FULL_ONLY and not a.only:
            print(f"== {n}: full runs only, skipped in quick mode", flush=True)
            continue
        if n in GPU_ONLY and not a.quick and not a.only:
            print(f"== {n}: needs a GPU, run only by name (make bench-{n} on a GPU machine)", flush=True)
            continue
        script, full, quick = BENCHMARKS[n]
        if not (HERE / script).exists():
            print(f"== {n}: {script} missing, skipped", flush=True)
            failed.append(n)
            continue
        cmd = [sys.executable, str(HERE / script), *(quick if a.quick else full)]
        if a.quick and n in TAKES_OUT:
            cmd += ["--out", env["GALMORPH_BENCH_OUT"]]
        print(f"== {n}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent, env=env)
        print(f"== {n}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(n)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
