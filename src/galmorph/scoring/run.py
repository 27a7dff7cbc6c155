"""One scoring run, as `galmorph score` and the pipeline's score/merge steps run it: load the model (with the
test-time views, class prior and model check asked for), score the manifest's shards
(:func:`galmorph.scoring.batch.score_manifest`), then merge them into the release catalogue and record it
in MLflow (:func:`merge_and_log`).

:class:`ScoringJob` holds the parameters (the callers resolve their settings into it), :func:`run_scoring`
runs it and returns a :class:`ScoringRun`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galmorph.scoring.batch import DEFAULT_THRESHOLD, MergeResult, ScoreResult


@dataclass
class ScoringJob:
    """What to score, how, and what to do with the shards.

    ``model``: a model URI (already resolved by the caller: ``models:/...``, ``runs:/...``, a path) or a
    :class:`~galmorph.models.io.LoadedModel`. ``device``: a torch device or ``auto`` (a GPU when visible).
    ``tta_views``/``class_prior``: passed to :func:`galmorph.models.io.load_for_inference` (``class_prior``
    default ``"model"``: the prior the model recorded; ``"none"``/``"as-trained"``: as trained).
    ``check_model(loaded)``: raises when the model does not suit the data (e.g. the dataset's framing).
    ``winding_ensemble``: combine a chirality network with the winding measurement
    (:class:`galmorph.scoring.ensemble.WindingEnsemble` of ``winding_weight``/``winding_min_confidence``);
    None (default): as the model recorded (:func:`galmorph.models.io.model_ensemble`; off for a model that
    recorded nothing); ``winding_weight``/``winding_min_confidence`` None: the model's recorded values.
    ``merge``: merge the shards into ``out_dir`` (catalogue, quarantine, summary) and, with ``log_mlflow``,
    record the release as an MLflow run on ``tracking_uri``. ``image_check(row, image) -> reason | None`` runs on
    every decoded image (the validation's per-image checks in the scoring pass; a reason quarantines the row)."""

    model: Any
    manifest: str | Path
    out_dir: str | Path
    batch_size: int = 64
    num_workers: int = 0
    shard_size: int = 10_000
    threshold: float = DEFAULT_THRESHOLD
    shards: Sequence[int] | None = None
    data_root: str | Path | None = None
    device: str = "cpu"
    precision: str = "fp32"
    decode: str = "full"
    tta_views: int | None = None
    class_prior: str | dict | None = "model"
    check_model: Callable[[Any], None] | None = None
    winding_ensemble: bool | None = None
    winding_weight: float | None = None
    winding_min_confidence: float | None = None
    image_check: Callable[[Any, Any], str | None] | None = None
    overwrite: bool = False
    progress: bool = True
    merge: bool = True
    release: str | None = None
    log_mlflow: bool = True
    tracking_uri: str | None = None


@dataclass
class ScoringRun:
    """The outcome of :func:`run_scoring`: the shards' result, and the merge's (None without merging)."""

    scoring: ScoreResult
    merged: MergeResult | None = None
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict:
        """``{"scoring": ..., "catalogue": ..., "summary": ..., "mlflow_run_id": ...}`` (what `galmorph score
        --json` prints; the merge and MLflow keys only when they happened)."""
        out: dict = {"scoring": self.scoring.to_dict()}
        if self.merged is not None:
            out["catalogue"] = self.merged.catalogue
            out["summary"] = self.merged.summary_data
            if self.mlflow_run_id is not None:
                out["mlflow_run_id"] = self.mlflow_run_id
        return out


def _model(job: ScoringJob, device: str):
    """The model to score with (loaded here: its recorded defaults decide the class prior and the ensemble);
    a :class:`~galmorph.models.io.LoadedModel` passed in is used as it is."""
    model = job.model
    if isinstance(model, (str, Path)):
        from galmorph.models.io import load_for_inference

        model = load_for_inference(str(model), device=device,
                                   tta_views=int(job.tta_views) if job.tta_views is not None else None,
                                   class_prior=job.class_prior)
    if job.check_model is not None:
        job.check_model(model)
    return model


def _ensemble(job: ScoringJob, model=None):
    """The :class:`~galmorph.scoring.ensemble.WindingEnsemble` of the job (None when off): the job's
    ``winding_ensemble`` flag, else the one the model recorded (:func:`galmorph.models.io.model_ensemble`)."""
    from galmorph.scoring.ensemble import ensemble_for

    spec = getattr(model, "spec", None)
    return ensemble_for(spec, job.winding_ensemble, job.winding_weight, job.winding_min_confidence)


def merge_and_log(score_dirs: Sequence[str | Path], out_dir: str | Path, release: str | None = None,
                  log_mlflow: bool = True, tracking_uri: str | None = None) -> tuple[MergeResult, str | None]:
    """:func:`~galmorph.scoring.batch.merge_scores` of ``score_dirs`` into ``out_dir``, then, with ``log_mlflow``,
    :func:`~galmorph.scoring.batch.log_scoring_to_mlflow` on ``tracking_uri``: ``(merge result, run id or None)``."""
    from galmorph.scoring.batch import ScoringError, log_scoring_to_mlflow, merge_scores

    m = merge_scores(list(score_dirs), out_dir, release=release)
    if not log_mlflow:
        return m, None
    try:
        run_id = log_scoring_to_mlflow(m.summary_data, m.catalogue, tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - the server went away (MlflowException, requests, OSError): say what is kept
        import mlflow

        uri = tracking_uri or mlflow.get_tracking_uri()
        reason = " ".join(str(exc).split())[:300]
        raise ScoringError(f"the release is scored and merged into {m.catalogue}, but recording it in MLflow at {uri} "
                           f"failed ({type(exc).__name__}: {reason}); nothing is lost: run the same command again "
                           "once the server answers (the scored shards are reused) to record it") from exc
    return m, run_id


def run_scoring(job: ScoringJob) -> ScoringRun:
    """Score ``job.manifest`` into ``job.out_dir`` (resumable), then merge and record it (see :class:`ScoringJob`)."""
    from galmorph.scoring.batch import pick_device, score_manifest

    device = pick_device(job.device)
    model = _model(job, device)
    res = score_manifest(model, job.manifest, job.out_dir, batch_size=job.batch_size,
                         num_workers=job.num_workers, shard_size=job.shard_size, threshold=job.threshold,
                         shards=job.shards, data_root=job.data_root, device=device, overwrite=job.overwrite,
                         progress=job.progress, precision=job.precision, decode=job.decode,
                         winding_ensemble=_ensemble(job, model), image_check=job.image_check)
    run = ScoringRun(scoring=res)
    if job.merge:
        run.merged, run.mlflow_run_id = merge_and_log([job.out_dir], job.out_dir, release=job.release,
                                                      log_mlflow=job.log_mlflow, tracking_uri=job.tracking_uri)
    return run
