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

        def _close_train_part(self):
            if self._t0 is None:
                return
            dt = time.perf_counter() - self._t0
            self._t0 = None
            self.epoch_seconds.append(dt)
            self.epoch_images.append(self._n)
            self.train_seconds += dt
            self.train_images += self._n

        def on_validation_epoch_start(self, trainer, pl_module):
            self._close_train_part()

        def on_train_epoch_end(self, trainer, pl_module):
            self._close_train_part()  # no validation this epoch
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
        sense (CW/ACW at chance, "other" right) scores low even while its loss looks good."""

        def on_validation_epoch_end(self, trainer, pl_module):
            import torch

            from galmorph.evaluation.metrics import macro_f1

            pairs = getattr(pl_module, "val_labels", [])
            if not pairs:
                return
            y = torch.cat([t for t, _ in pairs]).numpy()
            p = torch.cat([q for _, q in pairs]).numpy()
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
              run_id: str | None = None) -> dict[str, Any]:
    """Train one trial (one split) and evaluate it on its held-out test split.

    Returns ``metrics``, ``report`` (confusion matrix), ``history``, ``best_checkpoint``,
    ``last_checkpoint``, ``best_score``, ``epochs``, ``datamodule``, ``module`` (best weights).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from galmorph.datasets.datamodule import GalaxyDataModule
    from galmorph.models.classifier import GalaxyClassifier
    from galmorph.training.metrics import classification_metrics, predict_loader

    L.seed_everything(cfg.seed + trial, workers=True, verbose=False)
    dm = GalaxyDataModule.from_config(manifest, cfg, trial=trial, data_root=data_root)
    dm.setup()
    counts = dm.class_counts()
    log.info("trial %d: train/val/test = %d/%d/%d images; class counts %s", trial, len(dm.dataset("train")),
             len(dm.dataset("val")), len(dm.dataset("test")), counts)
    weights = tuple(dm.class_weights()) if cfg.class_weights == "balanced" else ()
    if weights:
        log.info("trial %d: class weights %s", trial, dict(zip(dm.classes, np.round(weights, 3))))
    model = GalaxyClassifier(cfg.network_params(weights))
    mode = MONITORS[cfg.monitor]
    ckpt_dir = out_dir / f"trial-{trial}" / "checkpoints"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.monitor, mode=mode, save_top_k=1,
                           save_last=True, enable_version_counter=False)
    stopper = EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience)
    epoch_logger = _epoch_logger_cls()(run_id)
    # the macro-F1 callback runs first: the checkpoint and early stopping read it at validation end
    callbacks = [_val_f1_callback_cls()(), ckpt, stopper, epoch_logger]
    if cfg.progress:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=1))
    trainer = L.Trainer(max_epochs=cfg.max_epochs, min_epochs=cfg.min_epochs, accelerator=cfg.accelerator,
                        devices=1, precision=_precision(cfg), deterministic="warn" if cfg.deterministic else False,
                        logger=False, callbacks=callbacks, enable_progress_bar=cfg.progress,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(out_dir),
                        log_every_n_steps=1)
    trainer.fit(model, datamodule=dm, ckpt_path=cfg.resume_from or None)
    best_path = ckpt.best_model_path or ckpt.last_model_path
    best = GalaxyClassifier.load_from_checkpoint(best_path, map_location="cpu", weights_only=False).eval()
    from galmorph.models.networks import with_views

    probs, y = predict_loader(with_views(best.net, cfg.tta_views), dm.test_dataloader())
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    metrics, report = classification_metrics(y, pred, dm.classes, prefix="test_")
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
    (d / "confusion_matrix.json").write_text(json.dumps(res["report"], indent=2))
    plot_confusion(res["report"], d / "confusion_matrix.png", f"{cfg.task} trial {trial} (test)")
    if len(res["history"]):
        plot_learning_curves(res["history"], d / "learning_curves.png", f"{cfg.task} trial {trial}")
        res["history"].to_csv(d / "history.csv", index=False)
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
    import mlflow

    from galmorph.catalogue.manifest import read_manifest
    from galmorph.models.io import ModelSpec, log_model, registered_name

    cfg = resolve_config(task, preset, overrides)
    if manifest is None:
        raise ValueError("train(): a manifest (path or DataFrame) is required")
    manifest_path = None
    if isinstance(manifest, pd.DataFrame):
        df = manifest
    else:
        manifest_path = Path(manifest)
        df = read_manifest(manifest_path)
    experiment = experiment or f"galmorph-{task}"
    mlflow.set_experiment(experiment)
    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"galmorph-train-{task}-"))
    work.mkdir(parents=True, exist_ok=True)
    tags = {"galmorph.task": task, "galmorph.preset": preset, "galmorph.arch": cfg.arch,
            "galmorph.chirality_equivariant": str(cfg.chirality_equivariant), **git_commit(),
            **dataset_version(manifest_path)}
    if manifest_path is not None:
        tags["galmorph.manifest"] = str(manifest_path)
    log.info("training %s/%s (%s, %d trial(s)) -> MLflow %s experiment %s", task, preset, cfg.arch, cfg.trials,
             mlflow.get_tracking_uri(), experiment)
    trial_results: list[dict] = []
    trial_run_ids: list[str] = []
    import torch

    threads_before = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    try:
        return _train_runs(cfg, task, preset, df, data_root, work, tags, register, trial_results, trial_run_ids)
    finally:
        torch.set_num_threads(threads_before)


def _train_runs(cfg: TrainConfig, task: str, preset: str, df: pd.DataFrame, data_root, work: Path, tags: dict,
                register: bool, trial_results: list[dict], trial_run_ids: list[str]) -> TrainResult:
    import mlflow

    from galmorph.models.io import ModelSpec, log_model, registered_name

    with mlflow.start_run(run_name=f"{task}-{preset}", tags=tags) as parent:
        mlflow.log_params(_flat_params(cfg))
        mlflow.log_text(config_to_yaml(cfg), "config.yaml")
        for trial in range(cfg.trials):
            with mlflow.start_run(run_name=f"trial-{trial}", nested=True,
                                  tags={**tags, "galmorph.trial": str(trial)}) as child:
                mlflow.log_params(_flat_params(cfg))
                t_fit = time.perf_counter()
                res = fit_trial(cfg, df, trial, work, data_root, run_id=child.info.run_id)
                log.info("trial %d trained and evaluated in %.1f s", trial, time.perf_counter() - t_fit)
                t_log = time.perf_counter()
                # encoder_init (+ encoder_init_note for a random start that deserves a word): the builder's tags
                mlflow.set_tags({f"{k}": v for k, v in res["init_tags"].items()})
                mlflow.log_param("encoder_init", res["init_tags"].get("encoder_init", ""))
                mlflow.log_metrics({k: v for k, v in res["metrics"].items() if math.isfinite(v)})
                _log_trial_artifacts(res, cfg, trial, work)
                log.info("trial %d artifacts logged in %.1f s", trial, time.perf_counter() - t_log)
                res.pop("trainer", None)
                trial_results.append(res)
                trial_run_ids.append(child.info.run_id)
                log.info("trial %d: %s", trial, {k: round(v, 4) for k, v in res["metrics"].items()
                                                 if k in ("test_accuracy", "test_f1_macro", f"best_{cfg.monitor}")})
        agg = _aggregate([r["metrics"] for r in trial_results])
        mlflow.log_metrics(agg)
        summary = {k[:-5]: f"{agg[k]:.4f} ± {agg[k[:-5] + '_std']:.4f}" for k in agg if k.endswith("_mean")}
        mlflow.log_dict(summary, "trials_summary.json")
        for k in ("test_accuracy", "test_f1_macro"):
            if k in summary:
                mlflow.set_tag(f"galmorph.{k}", summary[k])
        scores = np.array([r["best_score"] for r in trial_results], dtype=float)
        scores = np.where(np.isfinite(scores), scores, np.inf if MONITORS[cfg.monitor] == "min" else -np.inf)
        best_trial = int(np.argmin(scores) if MONITORS[cfg.monitor] == "min" else np.argmax(scores))
        best = trial_results[best_trial]
        from galmorph.models.networks import input_normalisation, with_views

        plain = best["module"].export_for_inference()
        mean, std = input_normalisation(plain)
        encoder_init = best["init_tags"].get("encoder_init", "")
        mlflow.set_tag("encoder_init", encoder_init)
        spec = ModelSpec(task=task, classes=list(best["datamodule"].classes), arch=cfg.arch,
                         image_size=cfg.image_size, in_chans=cfg.in_chans, crop_fraction=cfg.crop_fraction,
                         chirality_equivariant=cfg.chirality_equivariant,
                         extra={"preset": preset, "arm_merge": cfg.arm_merge, "parent_run_id": parent.info.run_id,
                                "trial": best_trial, "encoder_init": encoder_init},
                         mean=mean, std=std, encoder_init=encoder_init, tta_views=cfg.tta_views,
                         single_view_model="model_views1" if cfg.tta_views > 1 else "")
        spec.trained_prior, spec.catalogue_prior = best["datamodule"].class_priors(cfg.class_weights == "balanced")
        spec.extra.update(spec_defaults(best["datamodule"], task, tags))  # prior + ensemble scoring applies (#26)
        reg_name = registered_name(task) if register else None
        from galmorph.evaluation.calibration import temperature_from_loader  # temperature scaling (#15)

        exported = with_views(plain, cfg.tta_views)  # the logged module: its own temperature
        spec.temperature = temperature_from_loader(exported, best["datamodule"].val_dataloader())
        t_model = time.perf_counter()
        with mlflow.start_run(run_id=trial_run_ids[best_trial], nested=True):
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
            for k, v in {"task": task, "preset": preset, "arch": cfg.arch, "parent_run_id": parent.info.run_id,
                         "best_trial": str(best_trial), **{k2: v2 for k2, v2 in tags.items()
                                                             if k2.startswith("galmorph.data_version")}}.items():
                client.set_model_version_tag(reg_name, version, k, v)
        mlflow.set_tags({"galmorph.best_trial": str(best_trial), "galmorph.best_run_id": trial_run_ids[best_trial],
                         "galmorph.model_uri": model_uri})
    metrics = {**best["metrics"], **agg}
    log.info("%s %s (best trial %d of %d); test accuracy %s", "registered" if version else "logged (not registered)",
             model_uri, best_trial, cfg.trials,
             summary.get("test_accuracy"))
    return TrainResult(run_id=trial_run_ids[best_trial], parent_run_id=parent.info.run_id, model_uri=model_uri,
                       registered_name=reg_name, registered_version=version, metrics=metrics, spec=spec,
                       config=cfg, trial_run_ids=trial_run_ids, best_trial=best_trial, out_dir=work)
