"""The drift reference of a model version, kept in MLflow so that any pod can fetch it.

At training time :func:`log_drift_reference` computes the drift features of the training manifest
(:func:`~galmorph.drift.features.compute_drift_features`) and logs them as the artifact
``drift_reference/features.parquet`` of the training run that holds the registered model version.
At rescoring time :func:`fetch_drift_reference` resolves the model version (``models:/NAME@alias``
or ``models:/NAME/VERSION``), finds its run and downloads that artifact
(``mlflow.artifacts.download_artifacts``): nothing depends on a path in the training step's pod.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

#: Artifact path of the reference feature table in the training run of a model version.
REFERENCE_ARTIFACT = "drift_reference/features.parquet"
#: Model-version / run tag pointing at the artifact (``runs:/<run_id>/drift_reference/features.parquet``).
REFERENCE_TAG = "galmorph.drift_reference"


class DriftReferenceError(FileNotFoundError):
    """A model version has no drift reference in MLflow (the message names the version, run and artifact)."""


def reference_features(manifest: str | Path | pd.DataFrame, data_root: str | Path | None = None,
                       num_workers: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drift features of a training manifest (path or frame): ``(features, quarantine)``."""
    from galmorph.drift.features import compute_drift_features
    from galmorph.catalogue.manifest import read_manifest

    df = read_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
    res = compute_drift_features(df, data_root=data_root, num_workers=num_workers, progress=False)
    if len(res.features) == 0:
        raise DriftReferenceError(f"training manifest {manifest if isinstance(manifest, (str, Path)) else '<frame>'}: "
                                  f"no row has usable drift features ({len(res.quarantine)} quarantined)")
    return res.features, res.quarantine


def log_drift_reference(run_id: str, features: pd.DataFrame, model_name: str | None = None,
                        model_version: str | None = None, client=None) -> str:
    """Log ``features`` as ``drift_reference/features.parquet`` of run ``run_id`` and tag the run (and the
    model version when given) with its ``runs:/`` URI. Returns that URI."""
    import mlflow

    c = client or mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="drift-reference-") as tmp:
        p = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        features.to_parquet(p, index=False)
        c.log_artifact(run_id, str(p), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
    uri = f"runs:/{run_id}/{REFERENCE_ARTIFACT}"
    c.set_tag(run_id, REFERENCE_TAG, uri)
    if model_name and model_version:
        c.set_model_version_tag(model_name, str(model_version), REFERENCE_TAG, uri)
    log.info("drift reference (%d rows) logged to %s", len(features), uri)
    return uri


def log_training_reference(run_id: str, manifest: str | Path | pd.DataFrame, data_root: str | Path | None = None,
                           model_name: str | None = None, model_version: str | int | None = None) -> str:
    """The drift reference of a training run: :func:`reference_features` of its training manifest, logged with
    :func:`log_drift_reference` on ``run_id`` (and the model version when registered). Every training entry
    point calls it (``galmorph train``, the training pipeline's train step), so any version a user promotes
    can be rescored with drift monitoring. Returns the reference's ``runs:/`` URI."""
    features, _ = reference_features(manifest, data_root=data_root)
    return log_drift_reference(run_id, features, model_name if model_version else None,
                               str(model_version) if model_version else None)


def fetch_drift_reference(model_uri: str, dst_dir: str | Path | None = None, client=None) -> Path:
    """Download the drift reference of the model version ``model_uri`` from MLflow (the version's run, or
    its parent run); :class:`DriftReferenceError` when no run holds it."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    from galmorph.promotion.registry import ModelRefError, resolve_model_version

    c = client or mlflow.MlflowClient()
    try:
        name, version = resolve_model_version(model_uri, c)  # the one resolver of registered versions
    except ModelRefError as exc:
        raise DriftReferenceError(f"drift reference: {exc}") from exc
    try:
        mv = c.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001
        raise DriftReferenceError(f"drift reference: {name} version {version} not in the registry: {exc}") from exc
    candidates = [mv.run_id] if mv.run_id else []
    if mv.run_id:
        parent = c.get_run(mv.run_id).data.tags.get("mlflow.parentRunId")
        if parent:
            candidates.append(parent)
    dst = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="drift-reference-"))
    dst.mkdir(parents=True, exist_ok=True)
    for run_id in candidates:
        names = {Path(a.path).name for a in c.list_artifacts(run_id, str(Path(REFERENCE_ARTIFACT).parent))}
        if Path(REFERENCE_ARTIFACT).name in names:
            path = Path(download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=str(dst)))
            log.info("drift reference of %s v%s fetched from run %s", name, version, run_id)
            return path
    raise DriftReferenceError(
        f"no drift reference for {name} version {version}: none of its runs {candidates or '(none)'} holds the "
        f"artifact {REFERENCE_ARTIFACT!r} (train it with the pipeline's train step, which logs it, or pass "
        "`reference` explicitly)")
