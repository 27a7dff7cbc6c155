"""`galmorph demo`: the whole platform end to end on this machine.

stack up -> simulate a training set per task -> the training pipeline per task (kfp local runner)
-> guarded promotion (inside the pipeline) -> a new simulated survey release -> the rescoring pipeline
(sharded scoring, merge, drift, publish) -> where everything is.

The simulator is the known truth: the demo's simulated sets and training settings (:class:`DemoConfig`,
``params.yaml`` section ``demo:``) make every task learnable well above the promotion policy's quality
floor, seeded and deterministic. A candidate that the policy rejects and that leaves a task without a
champion is a decision: :class:`DemoRejected` carries every such decision with its reasons (the CLI
prints them and exits with :data:`EXIT_REJECTED`).

``galmorph demo --real`` (:func:`run_real_demo`): the same stack and pipelines on the public data --
the chirality ``reference`` preset on GZ1 (all CW/ACW + a seeded sample of "other"), promotion, then
the DECaLS images rescored as a new survey release (no redshifts: z bin "unknown"), whose survey
change the drift monitor should flag and publishing hold.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.models.io import registered_name
from galmorph.settings import Settings

log = logging.getLogger(__name__)

DEMO_TASKS: tuple[str, ...] = ("chirality", "arms", "lopsided")
#: Exit code of ``galmorph demo`` when a task ends without a champion (as ``galmorph promote --fail-on-reject``).
EXIT_REJECTED = 3


@dataclass(frozen=True)
class DemoTask:
    """One task of the demo: its simulated training set and how it is trained."""

    n: int                  # simulated galaxies (classes balanced)
    size: int               # simulated image side [px]
    preset: str             # training preset ...
    overrides: dict[str, Any] = field(default_factory=dict)  # ... with these training config overrides
    z_max: float = 0.03     # redshifts drawn in [0.01, z_max]: nearby galaxies are bright and resolved


#: Training settings shared by the demo's tasks: the pretrained EfficientNet-Lite0 of the ``reference``
#: presets at the simulator's scale (64 px, the whole frame: simulated galaxies fill it), batches of 16,
#: every epoch run (patience 20: the validation macro-F1 of a few dozen galaxies is noisy, and stopping at
#: its first dip stopped arms half-learnt) and the best epoch kept, one intra-op thread (the demo's steps
#: share two cores).
_DEMO_TRAINING: dict[str, Any] = {"image_size": 64, "crop_fraction": 1.0, "batch_size": 16, "min_epochs": 0,
                                  "patience": 20, "max_per_class": 0, "val_fraction": 0.2, "test_fraction": 0.1,
                                  "torch_threads": 1, "progress": False}


@dataclass(frozen=True)
class DemoConfig:
    """What ``galmorph demo`` simulates and trains (``params.yaml`` section ``demo:``; these are the
    defaults when the file or the section is absent)."""

    seed: int = 0
    test_fraction: float = 0.3      # held-out share of each training set: evaluation and promotion
    cutout_size_px: int = 64
    release_n: int = 40             # galaxies of the simulated survey release that gets rescored
    release_task: str = "chirality"  # the task whose champion rescores it
    # the tasks a plain `galmorph demo` trains (--task picks others). Lopsided is not among them: the
    # simulator's m = 1 perturbation (A1 0.15-0.3 among spiral arms) is not learnt from its renderings at
    # demo scale (docs/pipelines.md), and a model at chance is what the quality floor exists to reject.
    run: tuple[str, ...] = ("chirality", "arms")
    tasks: dict[str, DemoTask] = field(default_factory=lambda: {
        # one test-time view (the preset's 8 multiply the evaluation's and the promotion's forward passes)
        "chirality": DemoTask(240, 64, "reference", {**_DEMO_TRAINING, "max_epochs": 6, "tta_views": 1}),
        "arms": DemoTask(400, 64, "reference", {**_DEMO_TRAINING, "max_epochs": 10, "include_cant_tell": False}),
        "lopsided": DemoTask(240, 64, "reference", {**_DEMO_TRAINING, "max_epochs": 10}),
    })

    @classmethod
    def from_params(cls, params: str | Path | dict | None) -> "DemoConfig":
        """The ``demo:`` section of a params file (path or loaded dict) over the defaults; a missing file
        or section gives the defaults. Unknown keys are refused by name."""
        import yaml

        if isinstance(params, (str, Path)):
            p = Path(params)
            params = (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}
        section = dict((params or {}).get("demo") or {})
        base = cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"params.yaml demo: unknown key(s) {unknown}; known: {sorted(known)}")
        tasks = dict(base.tasks)
        for task, spec in (section.pop("tasks", None) or {}).items():
            if task not in DEMO_TASKS:
                raise ValueError(f"params.yaml demo.tasks: unknown task {task!r}; expected one of {list(DEMO_TASKS)}")
            spec = dict(spec or {})
            bad = sorted(set(spec) - {f.name for f in fields(DemoTask)})
            if bad:
                raise ValueError(f"params.yaml demo.tasks.{task}: unknown key(s) {bad}")
            tasks[task] = replace(tasks[task], **spec)
        if "run" in section:
            run = section["run"]
            section["run"] = tuple([run] if isinstance(run, str) else run)
            bad = sorted(set(section["run"]) - set(DEMO_TASKS))
            if bad:
                raise ValueError(f"params.yaml demo.run: unknown task(s) {bad}; expected some of {list(DEMO_TASKS)}")
        return replace(base, **section, tasks=tasks)

    def with_options(self, preset: str | None = None, release_n: int | None = None,
                     seed: int | None = None) -> "DemoConfig":
        """The command line's options over this config: ``preset`` trains every task with that preset and
        without the demo's overrides; ``release_n`` and ``seed`` replace the config's when given."""
        cfg = self
        if preset:
            cfg = replace(cfg, tasks={t: replace(spec, preset=preset, overrides={}) for t, spec in cfg.tasks.items()})
        return replace(cfg, release_n=cfg.release_n if release_n is None else release_n,
                       seed=cfg.seed if seed is None else seed)

    def check(self, tasks: tuple[str, ...]) -> None:
        """Every training configuration resolves (unknown keys and bad values named) before anything runs."""
        from galmorph.training.config import resolve_config

        for task in tasks:
            t = self.tasks[task]
            resolve_config(task, t.preset, t.overrides)


class DemoRejected(RuntimeError):
    """The promotion policy left one or more tasks without a champion; ``decisions`` holds each promotion
    record (decision, candidate version, reasons)."""

    def __init__(self, decisions: dict[str, dict[str, Any]], summary: Path | None = None):
        self.decisions, self.summary = decisions, summary
        parts = []
        for task, d in decisions.items():
            reasons = "; ".join(d.get("reasons") or []) or "no reason recorded"
            parts.append(f"{d.get('model_name', registered_name(task))} v{d.get('candidate_version')} was "
                         f"{d.get('decision')} by the promotion policy and the task has no champion: {reasons}")
        super().__init__("\n".join(parts) + (f"\n(summary: {summary})" if summary else ""))


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
    from galmorph.ops.stack import stack_up
    from galmorph.tracking import use_platform_uri

    with _Timer(steps, "stack up (MLflow tracking server, Evidently UI)", echo) as d:
        res = stack_up(settings, ("mlflow", "evidently"))
        d["services"] = {r["service"]: r["url"] for r in res}
    return use_platform_uri(settings.mlflow_tracking_uri)  # the demo's registry is its own server's


def default_out_dir(settings: Settings) -> Path:
    """Where ``galmorph demo`` writes by default: ``<state folder>/demo``."""
    return Path(settings.state_dir) / "demo"


def _write_summary(out: Path, uri: str, settings: Settings, root: Path, steps: list[DemoStep], t_all: float,
                   **extra) -> dict[str, Any]:
    result = {
        "mlflow_ui": uri, "evidently_ui": f"http://{settings.host}:{settings.evidently_port}",
        "outputs": str(out), "pipeline_root": str(root), "total_seconds": time.perf_counter() - t_all, **extra,
        "steps": [{"name": s.name, "seconds": round(s.seconds, 1), **s.detail} for s in steps],
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def run_demo(settings: Settings, out_dir: str | Path | None = None, tasks: tuple[str, ...] | None = None,
             config: DemoConfig | None = None, preset: str | None = None, release_n: int | None = None,
             seed: int | None = None, echo=print) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``out_dir/summary.json``) the steps with timings and the
    locations of everything produced. ``config`` defaults to ``params.yaml``'s ``demo:`` section;
    ``preset`` trains every task with that preset instead (without the demo's overrides); ``release_n``
    and ``seed`` override the config's. Raises :class:`DemoRejected` when a task ends without a champion
    (after every task was trained; nothing is rescored then)."""
    import mlflow

    cfg = (config or DemoConfig.from_params(settings.params_file)).with_options(preset, release_n, seed)
    tasks = tuple(tasks or cfg.run)
    cfg.check(tasks)
    out = Path(out_dir or default_out_dir(settings)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "kfp"
    steps: list[DemoStep] = []
    t_all = time.perf_counter()
    uri = _stack_up(settings, steps, echo)
    client = mlflow.MlflowClient()
    decisions = {task: _train_task(task, cfg, settings, out, uri, client, steps, echo) for task in tasks}
    no_champion = {t: d for t, d in decisions.items() if d["champion_after"] is None}
    if no_champion:
        _write_summary(out, uri, settings, root, steps, t_all, config=asdict(cfg), decisions=decisions,
                       rejected=sorted(no_champion))
        raise DemoRejected(no_champion, out / "summary.json")
    res = _rescore_release(cfg, cfg.release_task if cfg.release_task in tasks else tasks[0], settings, out, uri,
                           steps, echo)
    result = _write_summary(out, uri, settings, root, steps, t_all, config=asdict(cfg), decisions=decisions,
                            champions={t: decisions[t].get("champion_after") for t in tasks},
                            drift=res["drift"], publish=res["publish"], published=res["published"])
    echo("")
    echo(f"demo finished in {result['total_seconds'] / 60:.1f} min")
    for s in steps:
        echo(f"  {s.seconds:7.0f} s  {s.name}")
    echo("champions:    " + ", ".join(f"{registered_name(t)} v{decisions[t].get('champion_after')}" for t in tasks))
    echo(f"release:      {res['n_scored']} scored, drift verdict {res['drift']}, catalogue {res['publish']} "
         f"({res['published']})")
    echo(f"MLflow UI:    {uri}   (models galmorph-<task>, alias @champion; experiment galmorph-scoring)")
    echo(f"Evidently UI: {result['evidently_ui']}   (project galmorph-drift)")
    echo(f"outputs:      {out}  (pipeline runs under {root}, published catalogue under {out / 'published'})")
    echo(f"summary:      {out / 'summary.json'}   (task logs under {out / 'logs'})")
    return result


def _train_task(task: str, cfg: DemoConfig, settings: Settings, out: Path, uri: str, client,
                steps: list[DemoStep], echo) -> dict[str, Any]:
    """Simulate the task's training set and run the training pipeline on it; returns the promotion record
    with ``champion_after`` checked against the registry (None: the task has no champion)."""
    from galmorph.ops.run import run_local
    from galmorph.simulate import simulate_dataset

    spec = cfg.tasks[task]
    with _Timer(steps, f"simulate {spec.n} {task} galaxies ({spec.size} px)", echo) as d:
        sim = simulate_dataset(out / "sim" / task, spec.n, seed=cfg.seed + DEMO_TASKS.index(task), task=task,
                               size=spec.size, z_range=(0.01, spec.z_max), progress=False)
        d["dir"] = str(sim["dir"])
    with _Timer(steps, f"training pipeline: {task} ({spec.preset} preset) -> evaluate -> promote", echo) as d:
        r = run_local("training", {"task": task, "source": f"sim:{sim['dir']}", "preset": spec.preset,
                                   "overrides_json": json.dumps(spec.overrides, sort_keys=True),
                                   "test_fraction": cfg.test_fraction, "split_seed": cfg.seed,
                                   "cutout_size_px": cfg.cutout_size_px, "max_failure_fraction": 0.2},
                      pipeline_root=out / "kfp", tracking_uri=uri, data_root=settings.data_root,
                      log_file=out / "logs" / f"training-{task}.log")
        run_dir = Path(r["run_dir"])
        decision = json.loads((run_dir / "promote" / "record").read_text())
        decision["champion_after"] = champion = _champion(client, task, decision)
        metrics = decision.get("candidate_metrics") or {}
        d.update(run_dir=str(run_dir), decision=decision["decision"], candidate=decision["candidate_version"],
                 champion=champion, reasons=decision.get("reasons") or [],
                 f1_macro=metrics.get("f1_macro"), baseline_f1_macro=metrics.get("baseline_f1_macro"))
        echo(f"    promotion: {decision['decision']} (candidate v{decision['candidate_version']}, macro-F1 "
             f"{_num(metrics.get('f1_macro'))} vs majority-class {_num(metrics.get('baseline_f1_macro'))}; "
             f"champion {'v' + str(champion) if champion else 'none'})")
        for reason in decision.get("reasons") or []:
            echo(f"      - {reason}")
    return decision


def _rescore_release(cfg: DemoConfig, task: str, settings: Settings, out: Path, uri: str, steps: list[DemoStep],
                     echo) -> dict[str, Any]:
    """Simulate a new survey release and run the rescoring pipeline on it with ``galmorph-<task>@champion``;
    returns the rescoring step's detail (catalogue, counts, drift verdict, publish state)."""
    from galmorph.ops.run import run_local
    from galmorph.simulate import simulate_dataset

    release = f"sim-release-{cfg.seed + 100}"
    with _Timer(steps, f"simulate a new survey release ({cfg.release_n} galaxies)", echo) as d:
        rel_dir = out / "releases" / release
        simulate_dataset(rel_dir, cfg.release_n, seed=cfg.seed + 100, task=task, size=cfg.tasks[task].size,
                         z_range=(0.01, cfg.tasks[task].z_max), progress=False, survey="sim-release")
        d["dir"] = str(rel_dir)
    with _Timer(steps, f"rescoring pipeline: {release} with galmorph-{task}@champion", echo) as d:
        r = run_local("rescoring", {"release_uri": str(rel_dir), "release": release, "task": task,
                                    "z_max": 0.1, "shard_size": 16, "n_workers": 2,
                                    "cutout_size_px": cfg.cutout_size_px,
                                    "publish_dir": str(out / "published"), "drift_min_group_size": 10,
                                    "max_failure_fraction": 0.2},
                      pipeline_root=out / "kfp", tracking_uri=uri, data_root=settings.data_root,
                      log_file=out / "logs" / f"rescoring-{release}.log")
        run_dir = Path(r["run_dir"])
        summary = json.loads((run_dir / "merge" / "catalogue" / "summary.json").read_text())
        drift = (run_dir / "drift" / "summary" / "verdict.txt")
        pub = out / "published" / release
        d.update(run_dir=str(run_dir), catalogue=str(run_dir / "merge" / "catalogue" / "catalogue.parquet"),
                 n_scored=summary["n_scored"], n_quarantined=summary["n_quarantined"], cvs=summary.get("cvs"),
                 drift=drift.read_text().strip() if drift.exists() else None, published=str(pub),
                 publish="held" if (pub / "HELD").exists() else ("published" if (pub / "PUBLISHED").exists()
                                                                 else "unknown"))
    return d


def _num(x) -> str:
    return "?" if x is None else f"{float(x):.3f}"


def _champion(client, task: str, decision: dict[str, Any]) -> str | None:
    """The task's champion version after the promotion step: the registry's ``@champion`` alias (None
    when there is none), which the decision record's ``champion_after`` must agree with."""
    from mlflow.exceptions import MlflowException

    try:
        version = str(client.get_model_version_by_alias(registered_name(task), "champion").version)
    except MlflowException:
        version = None
    recorded = decision.get("champion_after")
    if recorded is not None and str(recorded) != version:
        raise RuntimeError(f"{registered_name(task)}: the promotion record says champion v{recorded}, the registry "
                           f"says {'v' + version if version else 'none'}")
    return version


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
    from galmorph.training.defaults import CATALOGUE_COUNTS_KEY

    root = Path(data_root)
    if not (root / "gz1_chirality").is_dir() or not (root / "decals").is_dir():
        raise FileNotFoundError(f"real demo: {root} needs gz1_chirality/ and decals/ (the shared data)")
    out = Path(out_dir).resolve()
    gz1, _q, _kind = load_source("gz1_chirality", root)
    sel = select_real_training_set(gz1, n_other=n_other, seed=seed)
    # the catalogue the selection was drawn from: the model records its prior, not the selection's (#26.2)
    catalogue = {str(k): int(v) for k, v in gz1["label"].dropna().astype(str).value_counts().items()}
    path = write_manifest(sel, out / "inputs" / f"gz1_chirality_cw_acw_other{n_other}_seed{seed}.parquet",
                          kind="gz1_chirality",
                          extra_meta={"selection": f"all CW/ACW + {n_other} other (seed {seed})",
                                      CATALOGUE_COUNTS_KEY: catalogue})
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
        champ = _champion(client, REAL_TASK, decision)
        d.update(run_dir=str(run_dir), decision=decision["decision"], candidate=decision["candidate_version"],
                 champion=champ, reasons=decision.get("reasons") or [])
        echo(f"    promotion: {decision['decision']} (candidate v{decision['candidate_version']}, "
             f"champion now {'v' + str(champ) if champ else 'none'})")
        for reason in decision.get("reasons") or []:
            echo(f"      - {reason}")
    if champ is None:
        _write_summary(out, uri, settings, root, steps, t_all, decisions={REAL_TASK: decision}, rejected=[REAL_TASK])
        raise DemoRejected({REAL_TASK: decision}, out / "summary.json")
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
