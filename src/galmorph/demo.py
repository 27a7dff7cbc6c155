"""`galmorph demo`: the whole platform end to end on this machine.

stack up -> simulate a training set per task -> the training pipeline per task (kfp local runner,
tiny preset) -> guarded promotion (inside the pipeline) -> a new simulated survey release -> the
rescoring pipeline (sharded scoring, merge, drift, publish) -> where everything is.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galmorph.settings import Settings

log = logging.getLogger(__name__)

DEMO_TASKS: tuple[str, ...] = ("chirality", "arms", "lopsided")
#: Simulated galaxies and image size per task (small: the demo must finish in minutes on 2 cores).
DEMO_SIM: dict[str, dict[str, int]] = {
    "chirality": {"n": 48, "size": 64},
    "arms": {"n": 40, "size": 64},
    "lopsided": {"n": 40, "size": 96},
}


@dataclass
class DemoStep:
    name: str
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


class _Timer:
    def __init__(self, steps: list[DemoStep], name: str, echo):
        self.steps, self.name, self.echo = steps, name, echo

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.detail: dict[str, Any] = {}
        self.echo(f"==> {self.name} ...")
        return self.detail

    def __exit__(self, exc_type, exc, tb):
        dt = time.perf_counter() - self.t0
        self.steps.append(DemoStep(self.name, dt, self.detail))
        self.echo(f"    {self.name}: {'done' if exc is None else 'FAILED'} in {dt:.0f} s")
        return False


def run_demo(settings: Settings, out_dir: str | Path, tasks: tuple[str, ...] = DEMO_TASKS, preset: str = "tiny",
             release_n: int = 40, seed: int = 0, echo=print) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``out_dir/summary.json``) the steps with timings and the
    locations of everything produced."""
    import mlflow

    from galmorph.pipelines.run import run_local
    from galmorph.simulate import simulate_dataset
    from galmorph.stack import stack_up

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "kfp"
    steps: list[DemoStep] = []
    t_all = time.perf_counter()
    with _Timer(steps, "stack up (MLflow tracking server, Evidently UI)", echo) as d:
        res = stack_up(settings, ("mlflow", "evidently"))
        d["services"] = {r["service"]: r["url"] for r in res}
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    trained: dict[str, Any] = {}
    for i, task in enumerate(tasks):
        cfg = DEMO_SIM[task]
        with _Timer(steps, f"simulate {cfg['n']} {task} galaxies", echo) as d:
            sim = simulate_dataset(out / "sim" / task, cfg["n"], seed=seed + i, task=task, size=cfg["size"],
                                   progress=False)
            d["dir"] = str(sim["dir"])
        with _Timer(steps, f"training pipeline: {task} ({preset} preset) -> evaluate -> promote", echo) as d:
            r = run_local("training", {"task": task, "source": f"sim:{sim['dir']}", "preset": preset,
                                       "test_fraction": 0.3, "cutout_size_px": 64, "max_failure_fraction": 0.2},
                          pipeline_root=root, tracking_uri=uri, data_root=settings.data_root,
                          log_file=out / "logs" / f"training-{task}.log")
            run_dir = Path(r["run_dir"])
            decision = json.loads((run_dir / "promote" / "record").read_text())
            champ = client.get_model_version_by_alias(f"galmorph-{task}", "champion")
            d.update(run_dir=str(run_dir), decision=decision["decision"], champion=champ.version,
                     candidate=decision["candidate_version"])
            echo(f"    promotion: {decision['decision']} (candidate v{decision['candidate_version']}, "
                 f"champion now v{champ.version})")
            trained[task] = d
    rel_task = "chirality" if "chirality" in tasks else tasks[0]
    release = f"sim-release-{seed + 100}"
    with _Timer(steps, f"simulate a new survey release ({release_n} galaxies)", echo) as d:
        rel_dir = out / "releases" / release
        simulate_dataset(rel_dir, release_n, seed=seed + 100, task=rel_task, size=DEMO_SIM[rel_task]["size"],
                         progress=False, survey="sim-release")
        d["dir"] = str(rel_dir)
    with _Timer(steps, f"rescoring pipeline: {release} with galmorph-{rel_task}@champion", echo) as d:
        r = run_local("rescoring", {"release_uri": str(rel_dir), "release": release, "task": rel_task,
                                    "z_max": 0.1, "shard_size": 16, "n_workers": 2, "cutout_size_px": 64,
                                    "publish_dir": str(out / "published"), "drift_min_group_size": 10,
                                    "max_failure_fraction": 0.2},
                      pipeline_root=root, tracking_uri=uri, data_root=settings.data_root,
                      log_file=out / "logs" / f"rescoring-{release}.log")
        run_dir = Path(r["run_dir"])
        summary = json.loads((run_dir / "merge" / "catalogue" / "summary.json").read_text())
        drift = (run_dir / "drift" / "summary" / "verdict.txt")
        d.update(run_dir=str(run_dir), catalogue=str(run_dir / "merge" / "catalogue" / "catalogue.parquet"),
                 n_scored=summary["n_scored"], n_quarantined=summary["n_quarantined"], cvs=summary.get("cvs"),
                 drift=drift.read_text().strip() if drift.exists() else None,
                 published=str(out / "published" / release))
    total = time.perf_counter() - t_all
    result = {
        "mlflow_ui": uri, "evidently_ui": f"http://{settings.host}:{settings.evidently_port}",
        "outputs": str(out), "pipeline_root": str(root), "total_seconds": total,
        "steps": [{"name": s.name, "seconds": round(s.seconds, 1), **s.detail} for s in steps],
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    echo("")
    echo(f"demo finished in {total / 60:.1f} min")
    for s in steps:
        echo(f"  {s.seconds:7.0f} s  {s.name}")
    echo(f"MLflow UI:    {uri}   (models galmorph-<task>, alias @champion; experiment galmorph-scoring)")
    echo(f"Evidently UI: {result['evidently_ui']}   (project galmorph-drift)")
    echo(f"outputs:      {out}  (pipeline runs under {root}, published catalogue under {out / 'published'})")
    echo(f"summary:      {out / 'summary.json'}   (task logs under {out / 'logs'})")
    return result
