"""Training runs: Lightning Trainer per trial, MLflow tracking (parent run + one child run per trial),
artifacts, and registration of the best trial's model as ``galmorph-<task>``.

Run layout in MLflow (experiment ``galmorph-<task>`` unless given)::

    parent run  <task>-<preset>        params = resolved config; tags: data version, git commit;
                                       metrics: <metric>_mean / <metric>_std over trials
      child run trial-0 ... trial-N-1  per-epoch train/val loss+accuracy, held-out test metrics,
                                       artifacts: checkpoints/best.ckpt, config.yaml, learning_curves.png,
                                       confusion_matrix.png/.json, test_predictions.csv, splits.parquet,
                                       excluded.parquet; the best trial (best validation monitor value)
                                       also holds the logged model ``model`` (pt2), which is registered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.training.config import MONITORS, TrainConfig, config_to_yaml, resolve_config
from galmorph.training.defaults import spec_defaults

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training call produced (the registered model is the best trial's)."""

    run_id: str                      # MLflow run holding the logged model (best trial's child run)
    parent_run_id: str               # parent run carrying mean +- std over trials
    model_uri: str                   # models:/galmorph-<task>/<version> (or runs:/<id>/model unregistered)
    registered_name: str | None
    registered_version: str | None
    metrics: dict[str, float]        # best trial's metrics + <metric>_mean/_std over trials
    spec: Any                        # galmorph.models.io.ModelSpec
    config: TrainConfig | None = None
    trial_run_ids: list[str] = field(default_factory=list)
    best_trial: int = 0
    out_dir: Path | None = None


# ----------------------------------------------------------------------------------------------
# provenance
# ----------------------------------------------------------------------------------------------
def dataset_version(manifest_path: Path | None) -> dict[str, str]:
    """Tags for the dataset version: the DVC md5 of the manifest (:func:`galmorph.catalogue.dvcops.data_version_info`,
    with where it came from), or the manifest file's sha256 when DVC cannot hash it (tag names say which)."""
    if manifest_path is None:
        return {"galmorph.data_version_source": "in-memory manifest (no file, no version)"}
    from galmorph.catalogue.dvcops import data_version_info

    try:
        info = data_version_info(manifest_path)
    except Exception as exc:  # noqa: BLE001 - fall back, but say why
        log.warning("dvcops.data_version_info(%s) failed (%s); using the manifest sha256", manifest_path, exc)
    else:
        tags = {"galmorph.data_version": str(info.md5), "galmorph.data_version_source": f"dvc ({info.source})"}
        if info.stale_record:
            tags["galmorph.data_version_stale_record"] = str(info.stale_record)
        return tags
    h = hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()
    return {"galmorph.data_version": f"manifest-sha256:{h}",
            "galmorph.data_version_source": "manifest-sha256 (no DVC version available)",
            "galmorph.manifest_sha256": h}


def git_commit(repo: Path | None = None) -> dict[str, str]:
    from galmorph.settings import REPO_ROOT

    repo = repo or REPO_ROOT
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=20).stdout.strip() != ""
        return {"mlflow.source.git.commit": sha, "galmorph.git_commit": sha, "galmorph.git_dirty": str(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"galmorph.git_commit": "unknown (not a git checkout)"}


# ----------------------------------------------------------------------------------------------
# callbacks
# ----------------------------------------------------------------------------------------------
def _epoch_logger_cls():
    import lightning as L

    class EpochMetricsLogger(L.Callback):
        """Logs train/val loss+accuracy per epoch to an MLflow run, keeps the history and measures the
        training throughput: images over the wall time of each epoch's training part (from the epoch's
        start to its validation, so data loading, augmentation and the optimiser step are all included),
        per epoch (``train_images_per_s`` in the history) and summed."""

        def __init__(self, run_id: str | None):
            self.run_id = run_id
            self.history: list[dict[str, float]] = []
            self.train_seconds = 0.0
            self.train_images = 0
            self.epoch_seconds: list[float] = []
            self.epoch_images: list[int] = []
            self._t0: float | None = None
            self._n = 0

        def on_train_epoch_start(self, trainer, pl_module):
            self._t0, self._n = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._n += len(batch[1])

        def _close_train_part(self, trainer, pl_module):
            if self._t0 is None:
                return
            from galmorph.training.ddp import sum_over_ranks

            dt = time.perf_counter() - self._t0
            self._t0 = None
            n = int(round(sum_over_ranks(trainer, pl_module, self._n)))  # the images of all ranks (DDP)
            self.epoch_seconds.append(dt)
            self.epoch_images.append(n)
            self.train_seconds += dt
            self.train_images += n

        def on_validation_epoch_start(self, trainer, pl_module):
            self._close_train_part(trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module):
            self._close_train_part(trainer, pl_module)  # no validation this epoch
            row = {"epoch": float(trainer.current_epoch)}
            if self.epoch_seconds and self.epoch_seconds[-1] > 0:
                row["train_images_per_s"] = self.epoch_images[-1] / self.epoch_seconds[-1]
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1_macro"):
                v = trainer.callback_metrics.get(k)
                if v is not None:
                    row[k] = float(v)
            self.history.append(row)
            if self.run_id:
                import mlflow

                mlflow.MlflowClient().log_batch(self.run_id, metrics=[
                    mlflow.entities.Metric(k, v, int(time.time() * 1000), int(row["epoch"]))
                    for k, v in row.items() if k != "epoch" and math.isfinite(v)])

    return EpochMetricsLogger


def _val_f1_callback_cls():
    import lightning as L

    class ValMacroF1(L.Callback):
        """Logs ``val_f1_macro`` after each validation epoch: the project's one macro-F1
        (:func:`galmorph.evaluation.metrics.macro_f1`, classes with support) over the whole validation
        set, so early stopping and the best checkpoint can follow it. Unlike the validation loss it
        weighs a rare class as much as a common one: a chirality net that has not yet learnt the winding
        sense (CW/ACW at chance, "other" right) scores low even while its loss looks good. In a data-parallel
        run the labels of every rank's validation shard are gathered first (the same value on every rank)."""

        def on_validation_epoch_end(self, trainer, pl_module):
            import torch

            from galmorph.evaluation.metrics import macro_f1
            from galmorph.training.ddp import gather_objects, world_size_of

            pairs = getattr(pl_module, "val_labels", [])
            if not pairs and world_size_of(trainer) == 1:
                return
            local = ((torch.cat([t for t, _ in pairs]).numpy(), torch.cat([q for _, q in pairs]).numpy())
                     if pairs else (np.zeros(0, dtype=int), np.zeros(0, dtype=int)))
            parts = gather_objects(trainer, local)
            y = np.concatenate([a for a, _ in parts])
            p = np.concatenate([b for _, b in parts])
            if not len(y):
                return
            classes = list(pl_module.classes)
            f1, _ = macro_f1([classes[i] for i in y], [classes[i] for i in p], classes)
            pl_module.log("val_f1_macro", float(f1), prog_bar=True)

    return ValMacroF1


def _precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    return "16-mixed" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "32-true"


# ----------------------------------------------------------------------------------------------
# one trial
# ----------------------------------------------------------------------------------------------
def fit_trial(cfg: TrainConfig, manifest: pd.DataFrame, trial: int, out_dir: Path, data_root: Path | str | None,
              run_id: str | None = None, ckpt_path: str | None = None, rank: int = 0,
              callbacks: tuple | list = ()) -> dict[str, Any]:
    """Train one trial (one split) and evaluate it on its held-out test split.

    Returns ``metrics``, ``report`` (confusion matrix), ``history``, ``best_checkpoint``,
    ``last_checkpoint``, ``best_score``, ``epochs``, ``datamodule``, ``module`` (best weights).
    ``ckpt_path`` (default ``cfg.resume_from``): the checkpoint the fit goes on from. In a data-parallel run
    (``cfg.world_size > 1``) every rank calls this with its ``rank``; ranks > 0 return after the fit
    (``trainer``, ``datamodule``), rank 0 evaluates.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from galmorph.models.classifier import GalaxyClassifier
    from galmorph.training import ddp
    from galmorph.training.resume import RESUME_CHECKPOINT

    L.seed_everything(cfg.seed + trial, workers=True, verbose=False)
    dm = _trial_data(cfg, manifest, trial, out_dir, data_root, rank)
    weights = tuple(dm.class_weights()) if cfg.class_weights == "balanced" else ()
    if weights and rank == 0:
        log.info("trial %d: class weights %s", trial, dict(zip(dm.classes, np.round(weights, 3))))
    # DDP: epoch metrics reduced over the ranks (every rank's checkpoint/early-stopping decision is the same)
    model = (ddp.SyncedClassifier if cfg.world_size > 1 else GalaxyClassifier)(cfg.network_params(weights))
    mode = MONITORS[cfg.monitor]
    ckpt_dir = out_dir / f"trial-{trial}" / "checkpoints"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.monitor, mode=mode, save_top_k=1,
                           save_last=True, enable_version_counter=False)
    # every epoch's end (Lightning's last.ckpt is only rewritten when the best one is): what a resumed
    # training goes on from (galmorph.training.resume)
    every_epoch = ModelCheckpoint(dirpath=ckpt_dir, filename=RESUME_CHECKPOINT, monitor=None, save_top_k=1,
                                  enable_version_counter=False)
    stopper = EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience)
    epoch_logger = _epoch_logger_cls()(run_id)
    # the macro-F1 callback runs first: the checkpoint and early stopping read it at validation end
    callbacks = [_val_f1_callback_cls()(), ckpt, every_epoch, stopper, epoch_logger, *callbacks]
    if cfg.progress:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=1))
    trainer = _trainer(cfg, callbacks, out_dir)
    with ddp.global_batch_norm(cfg.world_size > 1 and cfg.sync_batchnorm):
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path or cfg.resume_from or None)
    dm.shard()  # the whole validation and test sets from here on (evaluation, calibration)
    if rank != 0:
        return {"trainer": trainer, "datamodule": dm}
    return _evaluate_trial(cfg, dm, trainer, ckpt, epoch_logger)


def _trial_data(cfg: TrainConfig, manifest: pd.DataFrame, trial: int, out_dir: Path, data_root, rank: int):
    """The trial's data module, set up, with this rank's shard of the train and validation epochs."""
    from galmorph.datasets.datamodule import GalaxyDataModule

    dm = GalaxyDataModule.from_config(manifest, cfg, trial=trial, data_root=data_root)
    dm.shard(rank, cfg.world_size, sharded=cfg.world_size > 1 or cfg.data_order == "sharded",
             record_to=Path(out_dir) / f"trial-{trial}" / "samples" if cfg.record_samples else None)
    dm.setup()  # every rank: the decoded-image cache is built once (a file lock), the others wait for it
    if rank == 0:
        log.info("trial %d: train/val/test = %d/%d/%d images; class counts %s", trial, len(dm.dataset("train")),
                 len(dm.dataset("val")), len(dm.dataset("test")), dm.class_counts())
    return dm


def _trainer(cfg: TrainConfig, callbacks: list, out_dir: Path):
    """The Lightning Trainer: one device, or DDP over ``devices`` x ``num_nodes`` processes (#28)."""
    import lightning as L

    kw: dict[str, Any] = dict(devices=1)
    if cfg.world_size > 1:
        from galmorph.training.ddp import ddp_strategy

        # the data module shards the epochs itself (no padding, nothing dropped): no DistributedSampler
        kw = dict(devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=ddp_strategy(cfg),
                  use_distributed_sampler=False)
    return L.Trainer(max_epochs=cfg.max_epochs, min_epochs=cfg.min_epochs, accelerator=cfg.accelerator,
                     precision=_precision(cfg), deterministic="warn" if cfg.deterministic else False,
                     logger=False, callbacks=callbacks, enable_progress_bar=cfg.progress,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(out_dir),
                     log_every_n_steps=1, **kw)


def _evaluate_trial(cfg: TrainConfig, dm, trainer, ckpt, epoch_logger) -> dict[str, Any]:
    """Rank 0 after the fit: the best checkpoint on the held-out test split, and the fit's figures."""
    from galmorph.models.classifier import GalaxyClassifier
    from galmorph.models.networks import with_views
    from galmorph.training.metrics import classification_metrics, predict_loader

    best_path = ckpt.best_model_path or ckpt.last_model_path
    best = GalaxyClassifier.load_from_checkpoint(best_path, map_location="cpu", weights_only=False).eval()
    if len(dm.dataset("test")):
        probs, y = predict_loader(with_views(best.net, cfg.tta_views), dm.test_dataloader())
        pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        metrics, report = classification_metrics(y, pred, dm.classes, prefix="test_")
    else:  # test_fraction 0: every labelled row trains or validates; held-out figures come from evaluate
        probs, pred = np.zeros((0, len(dm.classes))), np.zeros(0, dtype=int)
        metrics, report = {}, {}
    best_score = ckpt.best_model_score
    metrics[f"best_{cfg.monitor}"] = float(best_score) if best_score is not None else float("nan")
    metrics["epochs"] = float(trainer.current_epoch)
    metrics["global_step"] = float(trainer.global_step)
    metrics["trainable_params"] = float(best.trainable_parameters())
    if epoch_logger.train_seconds > 0:
        metrics["train_images_per_s"] = epoch_logger.train_images / epoch_logger.train_seconds
    if epoch_logger.epoch_seconds and epoch_logger.epoch_seconds[0] > 0:
        metrics["train_images_per_s_first_epoch"] = epoch_logger.epoch_images[0] / epoch_logger.epoch_seconds[0]
    later_s, later_n = sum(epoch_logger.epoch_seconds[1:]), sum(epoch_logger.epoch_images[1:])
    if later_s > 0:  # from the second epoch: the decoded-image cache is warm
        metrics["train_images_per_s_after_first_epoch"] = later_n / later_s
    test_frame = dm.split_frame("test")
    preds = pd.DataFrame({"object_id": test_frame["object_id"].astype(str).to_numpy(),
                          "label": test_frame["label"].to_numpy(),
                          "pred": [dm.classes[i] for i in pred]})
    for j, c in enumerate(dm.classes):
        preds[f"p_{c}"] = probs[:, j] if len(probs) else []
    return {"metrics": metrics, "report": report, "history": pd.DataFrame(epoch_logger.history),
            "best_checkpoint": Path(best_path), "last_checkpoint": Path(ckpt.last_model_path) if ckpt.last_model_path else None,
            "best_score": metrics[f"best_{cfg.monitor}"], "datamodule": dm, "module": best,
            "predictions": preds, "init_tags": best.init_tags, "trainer": trainer}


def _log_trial_artifacts(res: dict, cfg: TrainConfig, trial: int, work: Path) -> None:
    import mlflow

    from galmorph.catalogue.manifest import write_quarantine
    from galmorph.training.metrics import plot_confusion, plot_learning_curves

    d = work / f"trial-{trial}-artifacts"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(config_to_yaml(cfg))
    if res["report"]:  # no test split (test_fraction 0): no confusion matrix
        (d / "confusion_matrix.json").write_text(json.dumps(res["report"], indent=2))
        plot_confusion(res["report"], d / "confusion_matrix.png", f"{cfg.task} trial {trial} (test)")
    if len(res["history"]):
        plot_learning_curves(res["history"], d / "learning_curves.png", f"{cfg.task} trial {trial}")
        res["history"].to_csv(d / "history.csv", index=False)
    if len(res["predictions"]):
        res["predictions"].to_csv(d / "test_predictions.csv", index=False)
    dm = res["datamodule"]
    dm.assignments().to_parquet(d / "splits.parquet", index=False)
    write_quarantine(dm.excluded, d / "excluded.parquet")
    (d / "class_counts.json").write_text(json.dumps(dm.class_counts(), indent=2, default=int))
    mlflow.log_artifacts(str(d))
    mlflow.log_artifact(str(res["best_checkpoint"]), artifact_path="checkpoints")


def _flat_params(cfg: TrainConfig) -> dict[str, str]:
    return {k: ("" if v is None else str(v)) for k, v in cfg.to_dict().items()}


def _aggregate(trial_metrics: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    keys = [k for k in trial_metrics[0] if k.startswith("test_") or k.startswith("best_") or k == "train_images_per_s"]
    for k in keys:
        vals = np.array([m.get(k, np.nan) for m in trial_metrics], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            out[f"{k}_mean"] = float(vals.mean())
            out[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def train(task: str, preset: str = "tiny", overrides: dict[str, Any] | None = None,
          manifest: str | Path | pd.DataFrame | None = None, tracking_uri: str | None = None,
          experiment: str | None = None, register: bool = True, data_root: str | Path | None = None,
          out_dir: str | Path | None = None) -> TrainResult:
    """Train ``task`` with ``preset`` (+ ``overrides``) on ``manifest``; track everything in MLflow.

    ``cfg.trials`` repeated random splits run as child runs of one parent run; the parent carries
    ``<metric>_mean`` / ``<metric>_std``. The best trial (best validation ``monitor`` value) is exported
    (plain torch, pt2) with :func:`galmorph.models.io.log_model` into its child run and, when
    ``register``, registered as ``galmorph-<task>``.
    """
    from galmorph.tracking import using_tracking_uri

    with using_tracking_uri(tracking_uri):  # the caller's MLflow URIs are untouched afterwards
        return _train(task, preset, overrides, manifest, experiment, register, data_root, out_dir)


def _train(task: str, preset: str, overrides: dict[str, Any] | None, manifest: str | Path | pd.DataFrame | None,
           experiment: str | None, register: bool, data_root: str | Path | None,
           out_dir: str | Path | None) -> TrainResult:
    import torch

    from galmorph.catalogue.manifest import read_manifest
    from galmorph.training import ddp, resume

    cfg = resolve_config(task, preset, overrides)
    if manifest is None:
        raise ValueError("train(): a manifest (path or DataFrame) is required")
    if cfg.world_size > 1 and ddp.launched_world() is None:  # this process launches the ranks (#28)
        return _result_from_json(ddp.launch_local(cfg, task, preset, overrides, manifest, experiment, register,
                                                  data_root, out_dir), cfg)
    rank = ddp.process_rank(cfg)
    manifest_path = None if isinstance(manifest, pd.DataFrame) else Path(manifest)
    df = manifest if manifest_path is None else read_manifest(manifest_path)
    work = _work_dir(task, out_dir)
    plan = resume.plan(cfg, df, work)
    if plan.resuming and rank == 0:
        log.info("resuming the interrupted training in %s: trials %s", work, dict(enumerate(plan.trials)))
    threads_before = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    try:
        if rank != 0:  # the other ranks train; only rank 0 talks to MLflow
            return _follow(cfg, df, data_root, work, plan, rank)
        run = _Run(cfg=cfg, task=task, preset=preset, df=df, data_root=data_root, work=work,
                   tags=_run_tags(cfg, task, preset, manifest_path), register=register, plan=plan,
                   state=resume.StateWriter(work, plan))
        return _train_runs(run, experiment or f"galmorph-{task}")
    finally:
        torch.set_num_threads(threads_before)


def _work_dir(task: str, out_dir: str | Path | None) -> Path:
    """The training's working folder (checkpoints, artifacts, resume state); every rank of a launched world
    without ``out_dir`` gets the same one."""
    import os

    if out_dir:
        work = Path(out_dir)
    elif os.environ.get("TORCHELASTIC_RUN_ID"):
        work = Path(tempfile.gettempdir()) / f"galmorph-train-{task}-{os.environ['TORCHELASTIC_RUN_ID']}"
    else:
        work = Path(tempfile.mkdtemp(prefix=f"galmorph-train-{task}-"))
    work.mkdir(parents=True, exist_ok=True)
    return work


def _run_tags(cfg: TrainConfig, task: str, preset: str, manifest_path: Path | None) -> dict[str, str]:
    tags = {"galmorph.task": task, "galmorph.preset": preset, "galmorph.arch": cfg.arch,
            "galmorph.chirality_equivariant": str(cfg.chirality_equivariant),
            "galmorph.world_size": str(cfg.world_size), **git_commit(), **dataset_version(manifest_path)}
    if manifest_path is not None:
        tags["galmorph.manifest"] = str(manifest_path)
    return tags


def _follow(cfg: TrainConfig, df: pd.DataFrame, data_root, work: Path, plan, rank: int) -> TrainResult:
    """A rank > 0 of a data-parallel training: the fits of the trials rank 0 trains; nothing tracked."""
    for trial in range(cfg.trials):
        if plan.trials[trial] != "done":
            fit_trial(cfg, df, trial, work, data_root, ckpt_path=plan.checkpoint(work, trial), rank=rank)
    return TrainResult(run_id="", parent_run_id="", model_uri="", registered_name=None, registered_version=None,
                       metrics={}, spec=None, config=cfg, out_dir=work)


@dataclass
class _Run:
    """Rank 0's view of one training: what it trains, where, and what its trials gave."""

    cfg: TrainConfig
    task: str
    preset: str
    df: pd.DataFrame
    data_root: Any
    work: Path
    tags: dict[str, str]
    register: bool
    plan: Any                                  # galmorph.training.resume.ResumePlan
    state: Any                                 # galmorph.training.resume.StateWriter
    results: list[dict] = field(default_factory=list)
    run_ids: dict[int, str] = field(default_factory=dict)


def _run_params(cfg: TrainConfig) -> dict[str, str]:
    return {**_flat_params(cfg), "world_size": str(cfg.world_size)}


def _existing_run(run_id: str | None) -> str | None:
    """``run_id`` when that MLflow run exists (a resumed training logs into it), else None."""
    if not run_id:
        return None
    import mlflow

    try:
        mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - gone or unreachable: start a new run
        log.warning("MLflow run %s of the interrupted training is not there; starting a new one", run_id)
        return None
    return run_id


def _open_parent(run: _Run):
    """The parent run: the interrupted training's when resuming, else a new one with the params."""
    import mlflow

    resumed = _existing_run(run.plan.state.get("parent_run_id")) if run.plan.resuming else None
    if resumed:
        parent = mlflow.start_run(run_id=resumed)
        mlflow.set_tags({"galmorph.world_size": str(run.cfg.world_size),
                         "galmorph.resumed_attempts": str(run.state.state["attempts"] - 1)})
        return parent
    parent = mlflow.start_run(run_name=f"{run.task}-{run.preset}", tags=run.tags)
    mlflow.log_params(_run_params(run.cfg))
    mlflow.log_text(config_to_yaml(run.cfg), "config.yaml")
    return parent


def _run_trial(run: _Run, trial: int, parent_id: str) -> None:
    """Train (or go on with) trial ``trial`` in its child run; a trial done in an earlier attempt is reloaded."""
    import mlflow

    cfg = run.cfg
    if run.plan.trials[trial] == "done":
        run.results.append(_done_trial(run, trial))
        return
    child_id = _existing_run(run.plan.state.get("trial_run_ids", {}).get(str(trial))) if run.plan.resuming else None
    start = (mlflow.start_run(run_id=child_id, nested=True) if child_id else
             mlflow.start_run(run_name=f"trial-{trial}", nested=True, tags={**run.tags, "galmorph.trial": str(trial)}))
    with start as child:
        if not child_id:
            mlflow.log_params(_run_params(cfg))
        run.run_ids[trial] = child.info.run_id
        run.state.runs(parent_id, run.run_ids)
        t_fit = time.perf_counter()
        res = fit_trial(cfg, run.df, trial, run.work, run.data_root, run_id=child.info.run_id,
                        ckpt_path=run.plan.checkpoint(run.work, trial), callbacks=[_state_callback(run, trial)])
        log.info("trial %d trained and evaluated in %.1f s", trial, time.perf_counter() - t_fit)
        t_log = time.perf_counter()
        # encoder_init (+ encoder_init_note for a random start that deserves a word): the builder's tags
        mlflow.set_tags({f"{k}": v for k, v in res["init_tags"].items()})
        if not child_id:
            mlflow.log_param("encoder_init", res["init_tags"].get("encoder_init", ""))
        mlflow.log_metrics({k: v for k, v in res["metrics"].items() if math.isfinite(v)})
        _log_trial_artifacts(res, cfg, trial, run.work)
        log.info("trial %d artifacts logged in %.1f s", trial, time.perf_counter() - t_log)
        res.pop("trainer", None)
        log.info("trial %d: %s", trial, {k: round(v, 4) for k, v in res["metrics"].items()
                                         if k in ("test_accuracy", "test_f1_macro", f"best_{cfg.monitor}")})
    run.results.append(res)
    run.state.trial_done(trial, {"run_id": child.info.run_id, "best_checkpoint": str(res["best_checkpoint"]),
                                 "best_score": res["best_score"], "metrics": res["metrics"],
                                 "history": res["history"].to_dict("records")})


def _state_callback(run: _Run, trial: int):
    from galmorph.training.resume import state_callback

    return state_callback(run.state, trial)


def _done_trial(run: _Run, trial: int) -> dict[str, Any]:
    """A trial an earlier attempt finished and logged: its recorded figures and its best checkpoint."""
    from galmorph.datasets.datamodule import GalaxyDataModule
    from galmorph.models.classifier import GalaxyClassifier

    ts = run.plan.trial_state(trial)
    log.info("trial %d was done in an earlier attempt (MLflow run %s): not trained again", trial, ts["run_id"])
    dm = GalaxyDataModule.from_config(run.df, run.cfg, trial=trial, data_root=run.data_root)
    dm.setup()
    best = GalaxyClassifier.load_from_checkpoint(ts["best_checkpoint"], map_location="cpu", weights_only=False)
    run.run_ids[trial] = ts["run_id"]
    return {"metrics": ts["metrics"], "best_score": ts["best_score"], "datamodule": dm, "module": best.eval(),
            "init_tags": best.init_tags, "history": pd.DataFrame(ts.get("history", [])),
            "best_checkpoint": Path(ts["best_checkpoint"])}


def _train_runs(run: _Run, experiment: str) -> TrainResult:
    import mlflow

    cfg, task = run.cfg, run.task
    mlflow.set_experiment(experiment)
    log.info("training %s/%s (%s, %d trial(s), %d process(es)) -> MLflow %s experiment %s", task, run.preset,
             cfg.arch, cfg.trials, cfg.world_size, mlflow.get_tracking_uri(), experiment)
    with _open_parent(run) as parent:
        for trial in range(cfg.trials):
            _run_trial(run, trial, parent.info.run_id)
        trial_run_ids = [run.run_ids[t] for t in range(cfg.trials)]
        agg = _aggregate([r["metrics"] for r in run.results])
        mlflow.log_metrics(agg)
        summary = {k[:-5]: f"{agg[k]:.4f} ± {agg[k[:-5] + '_std']:.4f}" for k in agg if k.endswith("_mean")}
        mlflow.log_dict(summary, "trials_summary.json")
        for k in ("test_accuracy", "test_f1_macro"):
            if k in summary:
                mlflow.set_tag(f"galmorph.{k}", summary[k])
        scores = np.array([r["best_score"] for r in run.results], dtype=float)
        scores = np.where(np.isfinite(scores), scores, np.inf if MONITORS[cfg.monitor] == "min" else -np.inf)
        best_trial = int(np.argmin(scores) if MONITORS[cfg.monitor] == "min" else np.argmax(scores))
        best = run.results[best_trial]
        spec, reg_name, version, model_uri = _export_best(run, best, best_trial, parent.info.run_id,
                                                          trial_run_ids[best_trial])
        mlflow.set_tags({"galmorph.best_trial": str(best_trial), "galmorph.best_run_id": trial_run_ids[best_trial],
                         "galmorph.model_uri": model_uri})
    run.state.complete()
    metrics = {**best["metrics"], **agg}
    log.info("%s %s (best trial %d of %d); test accuracy %s", "registered" if version else "logged (not registered)",
             model_uri, best_trial, cfg.trials, summary.get("test_accuracy"))
    return TrainResult(run_id=trial_run_ids[best_trial], parent_run_id=parent.info.run_id, model_uri=model_uri,
                       registered_name=reg_name, registered_version=version, metrics=metrics, spec=spec,
                       config=cfg, trial_run_ids=trial_run_ids, best_trial=best_trial, out_dir=run.work)


def _export_best(run: _Run, best: dict, best_trial: int, parent_id: str, best_run_id: str):
    """Export the best trial's network (pt2, calibrated) into its run, register it; ``(spec, name, version, uri)``."""
    import mlflow

    from galmorph.models.io import ModelSpec, log_model, registered_name
    from galmorph.models.networks import input_normalisation, with_views

    cfg, task, preset, tags = run.cfg, run.task, run.preset, run.tags
    plain = best["module"].export_for_inference()
    mean, std = input_normalisation(plain)
    encoder_init = best["init_tags"].get("encoder_init", "")
    mlflow.set_tag("encoder_init", encoder_init)
    spec = ModelSpec(task=task, classes=list(best["datamodule"].classes), arch=cfg.arch,
                     image_size=cfg.image_size, in_chans=cfg.in_chans, crop_fraction=cfg.crop_fraction,
                     chirality_equivariant=cfg.chirality_equivariant,
                     extra={"preset": preset, "arm_merge": cfg.arm_merge, "parent_run_id": parent_id,
                            "trial": best_trial, "encoder_init": encoder_init, "world_size": cfg.world_size},
                     mean=mean, std=std, encoder_init=encoder_init, tta_views=cfg.tta_views,
                     single_view_model="model_views1" if cfg.tta_views > 1 else "")
    spec.trained_prior, spec.catalogue_prior = best["datamodule"].class_priors(cfg.class_weights == "balanced")
    spec.extra.update(spec_defaults(best["datamodule"], task, tags))  # prior + ensemble scoring applies (#26)
    reg_name = registered_name(task) if run.register else None
    from galmorph.evaluation.calibration import (  # temperature scaling (#15)
        fit_temperature,
        logits_from_loader,
        temperature_from_loader,
    )

    exported = with_views(plain, cfg.tta_views)  # the logged module: its own temperature
    val_logits, val_y = logits_from_loader(exported, best["datamodule"].val_dataloader())
    spec.temperature = fit_temperature(val_logits, val_y)
    if cfg.winding_stack:  # network + winding stacker, fitted on the validation split (#26)
        spec.extra["ensemble"] = _fit_winding_stack(best["datamodule"], val_logits, val_y, spec, run.data_root)
    t_model = time.perf_counter()
    with mlflow.start_run(run_id=best_run_id, nested=True):
        info = log_model(exported, spec, registered_model_name=reg_name)
        if cfg.tta_views > 1:  # the 1-view network, so that scoring can choose fewer views
            import dataclasses

            t1 = temperature_from_loader(plain, best["datamodule"].val_dataloader())
            log_model(plain, dataclasses.replace(spec, tta_views=1, single_view_model="", temperature=t1),
                      name=spec.single_view_model)
        mlflow.set_tag("galmorph.best_trial", "true")
    log.info("model exported (pt2) and logged in %.1f s", time.perf_counter() - t_model)
    version = getattr(info, "registered_model_version", None)
    version = str(version) if version is not None else None
    model_uri = f"models:/{reg_name}/{version}" if (reg_name and version) else info.model_uri
    if reg_name and version:
        client = mlflow.MlflowClient()
        for k, v in {"task": task, "preset": preset, "arch": cfg.arch, "parent_run_id": parent_id,
                     "best_trial": str(best_trial), "world_size": str(cfg.world_size),
                     **{k2: v2 for k2, v2 in tags.items() if k2.startswith("galmorph.data_version")}}.items():
            client.set_model_version_tag(reg_name, version, k, v)
    return spec, reg_name, version, model_uri


def _fit_winding_stack(dm, val_logits, val_y, spec, data_root) -> dict:
    """The ``extra["ensemble"]`` record of a model trained with ``winding_stack``: the stacker
    (:func:`galmorph.scoring.ensemble.fit_winding_stack`) fitted on the validation split's probabilities as
    trained (the temperature just fitted, no class prior) and the winding measured on the same images. When it
    cannot be fitted (too few validation galaxies of a class) the fixed rule stays, and the record says why."""
    from galmorph.evaluation.calibration import apply_temperature
    from galmorph.scoring.ensemble import EnsembleError, fit_winding_stack, measure_winding_table

    rec = dict(spec.extra.get("ensemble") or {})
    classes = [str(c) for c in spec.classes]
    val = dm.split_frame("val")
    labels = [classes[int(i)] for i in val_y]
    try:
        if len(val) != len(labels) or list(val["label"].astype(str)) != labels:
            raise EnsembleError("the validation images and their predictions are not in the same order")
        t0 = time.perf_counter()
        table = measure_winding_table(val, data_root=getattr(dm, "data_root", None) or data_root)
        z = table["winding_z"].to_numpy(dtype=float)
        probs = apply_temperature(val_logits, spec.temperature)
        stack = fit_winding_stack(probs, z, labels, classes, trained_prior=spec.trained_prior)
    except EnsembleError as exc:
        log.warning("winding stack not fitted: %s; scoring keeps the fixed winding rule", exc)
        rec["stack_skipped"] = str(exc)
        return rec
    log.info("winding stack fitted on %d validation galaxies in %.1f s: a=%s b=%s", len(val),
             time.perf_counter() - t0, [round(v, 3) for v in stack.a], [round(v, 3) for v in stack.b])
    rec.update(winding_ensemble=True, stack=stack.to_dict(), source="validation")
    return rec


def result_to_json(res: TrainResult) -> dict[str, Any]:
    """A :class:`TrainResult` as JSON (rank 0 of a local data-parallel launch hands it to the launcher)."""
    return {"run_id": res.run_id, "parent_run_id": res.parent_run_id, "model_uri": res.model_uri,
            "registered_name": res.registered_name, "registered_version": res.registered_version,
            "metrics": res.metrics, "spec": res.spec.to_dict() if res.spec is not None else None,
            "trial_run_ids": res.trial_run_ids, "best_trial": res.best_trial,
            "out_dir": str(res.out_dir) if res.out_dir else None}


def _result_from_json(d: dict[str, Any], cfg: TrainConfig) -> TrainResult:
    from galmorph.models.io import ModelSpec

    return TrainResult(run_id=d["run_id"], parent_run_id=d["parent_run_id"], model_uri=d["model_uri"],
                       registered_name=d["registered_name"], registered_version=d["registered_version"],
                       metrics=d["metrics"], spec=ModelSpec.from_dict(d["spec"]) if d["spec"] else None,
                       config=cfg, trial_run_ids=d["trial_run_ids"], best_trial=d["best_trial"],
                       out_dir=Path(d["out_dir"]) if d["out_dir"] else None)
