"""`galmorph demo`: the whole platform end to end on this machine.

stack up -> simulate a training set per task -> the training pipeline per task (kfp local runner,
tiny preset) -> guarded promotion (inside the pipeline) -> a new simulated survey release -> the
rescoring pipeline (sharded scoring, merge, drift, publish) -> where everything is.

``galmorph demo --real`` (:func:`run_real_demo`): the same stack and pipelines on the public data --
the chirality ``reference`` preset on GZ1 (all CW/ACW + a seeded sample of "other"), promotion, then
the DECaLS images rescored as a new survey release (no redshifts: z bin "unknown"), whose survey
change the drift monitor should flag and publishing hold.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.models.io import registered_name
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


def _stack_up(settings: Settings, steps: list[DemoStep], echo) -> str:
    """Start the local MLflow + Evidently stack; returns (and sets) the tracking URI."""
    import mlflow

    from galmorph.ops.stack import stack_up

    with _Timer(steps, "stack up (MLflow tracking server, Evidently UI)", echo) as d:
        res = stack_up(settings, ("mlflow", "evidently"))
        d["services"] = {r["service"]: r["url"] for r in res}
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    return uri


def run_demo(settings: Settings, out_dir: str | Path, tasks: tuple[str, ...] = DEMO_TASKS, preset: str = "tiny",
             release_n: int = 40, seed: int = 0, echo=print) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``out_dir/summary.json``) the steps with timings and the
    locations of everything produced."""
    import mlflow

    from galmorph.ops.run import run_local
    from galmorph.simulate import simulate_dataset

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "kfp"
    steps: list[DemoStep] = []
    t_all = time.perf_counter()
    uri = _stack_up(settings, steps, echo)
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
            champ = client.get_model_version_by_alias(registered_name(task), "champion")
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


# ------------------------------------------------------------------------------------------------
# galmorph demo --real
# ------------------------------------------------------------------------------------------------
#: "Other" GZ1 galaxies sampled beside all CW/ACW (the reference preset's per-class cap).
REAL_N_OTHER = 500
REAL_TASK, REAL_PRESET, REAL_RELEASE = "chirality", "reference", "decals"


@dataclass
class RealDemoPlan:
    """What ``galmorph demo --real`` submits: the selected GZ1 training manifest and both pipelines'
    parameters (the training run's ``source`` is that manifest; the rescoring run ingests DECaLS)."""
    training_manifest: Path
    labels: dict[str, int]
    training_params: dict[str, Any]
    rescoring_params: dict[str, Any]


def select_real_training_set(manifest: pd.DataFrame, n_other: int = REAL_N_OTHER, seed: int = 0) -> pd.DataFrame:
    """All CW and ACW rows of a chirality manifest plus ``n_other`` "other" rows drawn with ``seed``
    (all of them when fewer); rows keep the manifest's order."""
    if "label" not in manifest.columns:
        raise ValueError("real demo: the GZ1 manifest has no 'label' column")
    if n_other < 0:
        raise ValueError(f"real demo: n_other must be >= 0, got {n_other}")
    labels = manifest["label"].astype("string")
    spiral = labels.isin(["CW", "ACW"]).fillna(False).to_numpy()
    other_idx = np.flatnonzero((labels == "other").fillna(False).to_numpy())
    if not spiral.any():
        raise ValueError("real demo: the GZ1 manifest has no CW/ACW galaxies")
    rng = np.random.default_rng(seed)
    take = rng.choice(other_idx, size=min(n_other, len(other_idx)), replace=False) if len(other_idx) else other_idx
    keep = spiral.copy()
    keep[take] = True
    return manifest.iloc[np.flatnonzero(keep)].reset_index(drop=True)


def plan_real_demo(data_root: str | Path, out_dir: str | Path, n_other: int = REAL_N_OTHER, seed: int = 0,
                   max_epochs: int | None = None, publish_dir: str | Path | None = None) -> RealDemoPlan:
    """Ingest GZ1 from ``data_root``, write the selected training manifest under ``out_dir`` and return
    the pipeline parameters (nothing is trained). ``max_epochs`` overrides the preset (smoke runs)."""
    from galmorph.catalogue.ingest import load_source
    from galmorph.catalogue.manifest import write_manifest

    root = Path(data_root)
    if not (root / "gz1_chirality").is_dir() or not (root / "decals").is_dir():
        raise FileNotFoundError(f"real demo: {root} needs gz1_chirality/ and decals/ (the shared data)")
    out = Path(out_dir).resolve()
    gz1, _q, _kind = load_source("gz1_chirality", root)
    sel = select_real_training_set(gz1, n_other=n_other, seed=seed)
    path = write_manifest(sel, out / "inputs" / f"gz1_chirality_cw_acw_other{n_other}_seed{seed}.parquet",
                          kind="gz1_chirality",
                          extra_meta={"selection": f"all CW/ACW + {n_other} other (seed {seed})"})
    overrides = {"max_epochs": int(max_epochs)} if max_epochs else {}
    training = {"task": REAL_TASK, "source": str(path), "preset": REAL_PRESET,
                "overrides_json": json.dumps(overrides), "test_fraction": 0.25, "split_seed": seed,
                "max_failure_fraction": 0.05}
    rescoring = {"release_uri": REAL_RELEASE, "release": REAL_RELEASE, "task": REAL_TASK,
                 "model_alias": "champion", "shard_size": 200, "n_workers": 2, "drift_by": "z_bin,survey",
                 "hold_on_drift": True, "publish_dir": str(Path(publish_dir) if publish_dir else out / "published"),
                 "max_failure_fraction": 0.05}
    labels = {str(k): int(v) for k, v in sel["label"].value_counts().items()}
    return RealDemoPlan(Path(path), labels, training, rescoring)


def run_real_demo(settings: Settings, out_dir: str | Path, n_other: int = REAL_N_OTHER, seed: int = 0,
                  max_epochs: int | None = None, echo=print) -> dict[str, Any]:
    """``galmorph demo --real``: stack up -> the training pipeline (chirality ``reference`` preset on
    public GZ1) with promotion -> the rescoring pipeline on DECaLS as a new survey release -> the drift
    verdict and where the model, the held catalogue and the drift dashboard are. Writes
    ``out_dir/summary.json``."""
    import mlflow

    from galmorph.ops.run import run_local

    if settings.data_root is None or not Path(settings.data_root).is_dir():
        raise RuntimeError(f"the real demo needs the shared data (data root {settings.data_root} is missing); "
                           "set GALMORPH_DATA_ROOT")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "kfp"
    steps: list[DemoStep] = []
    t_all = time.perf_counter()
    with _Timer(steps, f"select GZ1: all CW/ACW + {n_other} other (seed {seed})", echo) as d:
        plan = plan_real_demo(settings.data_root, out, n_other=n_other, seed=seed, max_epochs=max_epochs)
        d.update(manifest=str(plan.training_manifest), labels=plan.labels)
        echo(f"    {plan.labels}")
    uri = _stack_up(settings, steps, echo)
    client = mlflow.MlflowClient()
    model_name = registered_name(REAL_TASK)
    with _Timer(steps, f"training pipeline: {REAL_TASK} ({REAL_PRESET} preset, GZ1) -> evaluate -> promote",
                echo) as d:
        r = run_local("training", plan.training_params, pipeline_root=root, tracking_uri=uri,
                      data_root=settings.data_root, log_file=out / "logs" / "training-real.log")
        run_dir = Path(r["run_dir"])
        decision = json.loads((run_dir / "promote" / "record").read_text())
        try:
            champ = client.get_model_version_by_alias(model_name, "champion").version
        except Exception:  # noqa: BLE001 - no champion (the quality floor refused the first model)
            champ = None
        d.update(run_dir=str(run_dir), decision=decision["decision"], candidate=decision["candidate_version"],
                 champion=champ)
        echo(f"    promotion: {decision['decision']} (candidate v{decision['candidate_version']}, "
             f"champion now {'v' + str(champ) if champ else 'none'})")
    if champ is None:
        raise RuntimeError(f"no {model_name} champion after training (promotion: {decision['decision']}); "
                           f"see {run_dir / 'promote'}")
    with _Timer(steps, f"rescoring pipeline: {REAL_RELEASE} (new survey) with {model_name}@champion", echo) as d:
        r = run_local("rescoring", plan.rescoring_params, pipeline_root=root, tracking_uri=uri,
                      data_root=settings.data_root, log_file=out / "logs" / f"rescoring-{REAL_RELEASE}.log")
        rdir = Path(r["run_dir"])
        summary = json.loads((rdir / "merge" / "catalogue" / "summary.json").read_text())
        verdict_f = rdir / "drift" / "summary" / "verdict.txt"
        pub = Path(plan.rescoring_params["publish_dir"]) / REAL_RELEASE
        d.update(run_dir=str(rdir), catalogue=str(rdir / "merge" / "catalogue" / "catalogue.parquet"),
                 n_scored=summary["n_scored"], n_quarantined=summary["n_quarantined"],
                 drift=verdict_f.read_text().strip() if verdict_f.exists() else None,
                 drift_report=str(rdir / "drift" / "report"),
                 publish="held" if (pub / "HELD").exists() else ("published" if (pub / "PUBLISHED").exists()
                                                                 else "unknown"),
                 publish_dir=str(pub))
    res = steps[-1].detail
    total = time.perf_counter() - t_all
    evidently = f"http://{settings.host}:{settings.evidently_port}"
    result = {"mlflow_ui": uri, "evidently_ui": evidently, "model_uri": f"models:/{model_name}/{champ}",
              "model_ui": f"{uri.rstrip('/')}/#/models/{model_name}/versions/{champ}",
              "drift": res["drift"], "publish": res["publish"], "catalogue": res["catalogue"],
              "drift_report": res["drift_report"], "published_dir": res["publish_dir"], "outputs": str(out),
              "pipeline_root": str(root), "total_seconds": total, "plan": asdict(plan),
              "steps": [{"name": s.name, "seconds": round(s.seconds, 1), **s.detail} for s in steps]}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    echo("")
    echo(f"real demo finished in {total / 60:.1f} min")
    for s in steps:
        echo(f"  {s.seconds:7.0f} s  {s.name}")
    echo(f"drift verdict: {res['drift']}  ->  publishing {res['publish']}"
         + ("  (the survey change was flagged)" if res["drift"] == "drift" else ""))
    echo(f"model:        {result['model_uri']}   MLflow UI: {result['model_ui']}")
    echo(f"catalogue:    {res['catalogue']}   ({res['publish']}: {res['publish_dir']})")
    echo(f"drift:        dashboard {evidently} (project galmorph-drift); report {res['drift_report']}")
    echo(f"summary:      {out / 'summary.json'}   (task logs under {out / 'logs'})")
    return result
