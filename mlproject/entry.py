"""MLflow Project entry points -> the galmorph CLI.

``mlflow run`` starts a run and exports ``MLFLOW_RUN_ID`` and ``MLFLOW_TRACKING_URI``; the galmorph
commands log into it (training makes it the parent of its trial runs). The commands resolve their run
settings like every other caller (:func:`galmorph.settings.resolve_settings`: flag > ``GALMORPH_*`` >
``MLFLOW_TRACKING_URI`` > ``.env`` > default); inside an ``mlflow run`` the project run's server is
passed as ``--tracking-uri``, because the run it exported exists only there. When no manifest is
given, a small simulated, labelled set for the task is made first (seeded, under the state folder) so
that ``mlflow run mlproject -e train`` works on a fresh machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def _galmorph() -> list[str]:
    exe = Path(sys.executable).parent / "galmorph"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from galmorph.cli import main; main()"]


def _simulated(task: str, n: int) -> str:
    from galmorph.settings import resolve_settings
    from galmorph.simulate import simulate_dataset

    out = resolve_settings().state_dir / "mlproject" / f"sim-{task}-{n}"
    if not (out / "manifest.parquet").exists():
        simulate_dataset(out, n, seed=0, task=task, size=64, progress=False)
    return str(out / "manifest.parquet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="entry.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--task", required=True)
    t.add_argument("--preset", default="tiny")
    t.add_argument("--manifest", default="")
    t.add_argument("--n-sim", type=float, default=48)
    t.add_argument("--register", default="true")
    t.add_argument("--devices", type=float, default=1)
    t.add_argument("--num-nodes", type=float, default=1)
    t.add_argument("--accelerator", default="auto")
    e = sub.add_parser("evaluate")
    e.add_argument("--model", required=True)
    e.add_argument("--manifest", default="")
    e.add_argument("--task", default="chirality")
    e.add_argument("--out", default="")
    s = sub.add_parser("score")
    for a in ("--model", "--manifest", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--batch-size", type=float, default=64)
    s.add_argument("--shard-size", type=float, default=10000)
    s.add_argument("--threshold", type=float, default=0.85)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        manifest = a.manifest or _simulated(a.task, int(a.n_sim))
        cmd = [*_galmorph(), "train", "--task", a.task, "--preset", a.preset, "--manifest", manifest,
               "--devices", str(int(a.devices)), "--num-nodes", str(int(a.num_nodes)), "--accelerator", a.accelerator]
        if a.register.lower() in ("false", "0", "no"):
            cmd.append("--no-register")
    elif a.cmd == "evaluate":
        manifest = a.manifest or _simulated(a.task, 30)
        cmd = [*_galmorph(), "evaluate", "--model", a.model, "--manifest", manifest]
        if a.out:
            cmd += ["--out", a.out]
    else:
        cmd = [*_galmorph(), "score", "--model", a.model, "--manifest", a.manifest, "--out", a.out,
               "--batch-size", str(int(a.batch_size)), "--shard-size", str(int(a.shard_size)),
               "--threshold", str(a.threshold), "--log-mlflow"]
    cmd += project_run_tracking_uri(os.environ)
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def project_run_tracking_uri(env: Mapping[str, str]) -> list[str]:
    """``["--tracking-uri", URI]`` inside an ``mlflow run`` (``MLFLOW_RUN_ID`` and ``MLFLOW_TRACKING_URI``
    set: the project run exists only on that server), else ``[]`` (the command resolves the URI)."""
    if env.get("MLFLOW_RUN_ID") and env.get("MLFLOW_TRACKING_URI"):
        return ["--tracking-uri", env["MLFLOW_TRACKING_URI"]]
    return []


if __name__ == "__main__":
    sys.exit(main())
