"""The pipeline steps: one function per Kubeflow component (``galmorph_components.<name>``), so that a
component's body is a single call of ``galmorph.steps.<name>``.

A step takes the local paths KFP hands the component, its parameters, and the ``metadata`` dicts of
its output artifacts (filled in place: row counts, verdicts, metrics); it returns the component's
outputs (a named tuple with the component's output names, or a single value). Nothing here imports kfp.

The step library sits below the components and pipelines and above the area packages: it never imports
``galmorph.ops``, ``galmorph_components`` or ``galmorph_pipelines``. Its helpers: :mod:`~galmorph.steps.runtime`
(settings of a step), :mod:`~galmorph.steps.artifacts` (dataset folders), :mod:`~galmorph.steps.platform`
(Kubernetes placement, applied by the pipeline definitions).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

import pandas as pd

from galmorph.catalogue.manifest import read_manifest
from galmorph.steps.artifacts import open_dataset

log = logging.getLogger(__name__)

IngestOutputs = namedtuple("IngestOutputs", ["rows_in", "rows_out", "rows_quarantined"])
CutoutOutputs = namedtuple("CutoutOutputs", ["rows_out", "rows_quarantined"])
A1Outputs = namedtuple("A1Outputs", ["rows_out", "finite_a1"])
WindingOutputs = namedtuple("WindingOutputs", ["rows_out", "decided"])
SplitOutputs = namedtuple("SplitOutputs", ["n_train", "n_test"])
TrainOutputs = namedtuple("TrainOutputs", ["model_uri", "registered_version", "run_id"])
EvaluateOutputs = namedtuple("EvaluateOutputs", ["accuracy", "f1_macro", "run_id"])
PromoteOutputs = namedtuple("PromoteOutputs", ["decision", "passed", "champion"])
ScoreOutputs = namedtuple("ScoreOutputs", ["n_scored", "n_quarantined"])
MergeOutputs = namedtuple("MergeOutputs", ["n_scored", "n_quarantined", "run_id", "cvs"])
DriftOutputs = namedtuple("DriftOutputs", ["verdict", "n_drifted_groups"])
PublishOutputs = namedtuple("PublishOutputs", ["status"])
SampleOutputs = namedtuple("SampleOutputs", ["rows"])
QueueOutputs = namedtuple("QueueOutputs", ["registered"])
ExportOutputs = namedtuple("ExportOutputs", ["n_labelled"])


def _fill(metadata: dict | None, values: dict[str, Any]) -> None:
    """Add ``values`` to an output artifact's metadata (``None``: the caller keeps none)."""
    if metadata is not None:
        metadata.update(values)


def _log_metrics(metrics: dict | None, values: dict[str, Any]) -> None:
    """Finite numeric leaves of ``values`` into a KFP ``Metrics`` artifact's metadata (names: the keys
    joined with ``.``)."""
    from galmorph.evaluation.metrics import flatten_numbers

    if metrics is not None:
        metrics.update(flatten_numbers(values, sep=".", clean=False, finite=True))


# --------------------------------------------------------------------------------------------
# data: ingest, validate, cutout, A1, split
# --------------------------------------------------------------------------------------------
def ingest(source: str, manifest_path: str | Path, quarantine_path: str | Path, task: str = "", data_root: str = "",
           manifest_metadata: dict | None = None, quarantine_metadata: dict | None = None) -> IngestOutputs:
    """:func:`galmorph.steps.artifacts.ingest_source` of ``source`` (catalogue name, ``sim:<dir>``,
    release folder or manifest) into ``manifest_path`` + ``quarantine_path``."""
    from galmorph.steps.artifacts import ingest_source
    from galmorph.steps.runtime import setup

    _, root = setup(data_root=data_root)
    res = ingest_source(source, manifest_path, quarantine_path, task=task or None, data_root=root)
    _fill(manifest_metadata, {"rows": res["rows_out"], "source": source})
    _fill(quarantine_metadata, {"rows": res["rows_quarantined"]})
    return IngestOutputs(res["rows_in"], res["rows_out"], res["rows_quarantined"])


def validate(manifest_path: str | Path, passed_path: str | Path, quarantine_path: str | Path,
             report_path: str | Path, z_min: float = 0.01, z_max: float = 0.1, max_failure_fraction: float = 0.05,
             check_images: bool = True, data_root: str = "", metrics: dict | None = None) -> bool:
    """:func:`galmorph.catalogue.validation.validate_manifest`: passed rows to ``passed_path``, failed rows to
    ``quarantine_path``, the report to ``report_path``; row counts into ``metrics``. Returns success."""
    from galmorph.catalogue.manifest import carried_metadata, write_manifest
    from galmorph.steps.runtime import setup
    from galmorph.catalogue.validation import ValidationConfig, validate_manifest

    _, root = setup(data_root=data_root)
    cfg = ValidationConfig(z_min=z_min, z_max=z_max, max_failure_fraction=max_failure_fraction,
                           check_images=check_images)
    res = validate_manifest(manifest_path, cfg, data_root=root, out_manifest=passed_path,
                            quarantine_path=quarantine_path, report_path=report_path, log_to_mlflow=False,
                            progress=False)
    if res.out_manifest is None:  # schema errors: still a valid output (the passed rows of a frame, else none)
        passed = res.passed_manifest if res.passed_manifest is not None else pd.DataFrame(columns=["object_id"])
        write_manifest(passed, passed_path, kind="validated", extra_meta=carried_metadata(manifest_path))
    _fill(metrics, {"rows": float(res.rows), "passed": float(res.passed), "quarantined": float(res.n_quarantined),
                    "failure_fraction": float(res.failure_fraction), "success": float(res.success)})
    return bool(res.success)


def model_input_framing(task: str = "", preset: str = "", overrides_json: str = "{}",
                        model_uri: str = "") -> tuple[int, float, str] | None:
    """``(image_size, crop_fraction, source)`` of the model the cutouts are for: the resolved model's
    ModelSpec (``model_uri``, rescoring) or the training preset (``task`` + ``preset``); None for neither."""
    if model_uri:
        from galmorph.models.io import model_spec

        spec = model_spec(model_uri)  # the framing only: no weights loaded
        return int(spec.image_size), float(spec.crop_fraction), f"model {model_uri}"
    if task and preset:
        from galmorph.training.config import resolve_config

        cfg = resolve_config(task, preset, json.loads(overrides_json or "{}"))
        return int(cfg.image_size), float(cfg.crop_fraction), f"preset {task}/{preset}"
    return None


def cutout(manifest_path: str | Path, cutouts_dir: str | Path, quarantine_path: str | Path, size_px: int = 64,
           crop_fraction: float = 1.0, greyscale: bool = False, size_r90: float = 0.0, data_root: str = "",
           task: str = "", preset: str = "", overrides_json: str = "{}", model_uri: str = "",
           min_extent_px: float = 40.0, tracking_uri: str = "", write_images: bool = True,
           cutouts_metadata: dict | None = None) -> CutoutOutputs:
    """:func:`galmorph.catalogue.cutout.make_cutouts` into the dataset folder ``cutouts_dir`` (png/ +
    manifest.parquet, image URIs relative to the folder); failed rows to ``quarantine_path``.

    Framing: with ``model_uri`` (the resolved model's ModelSpec) or ``task`` + ``preset`` (training) the
    model crops, so the cutouts keep the full frame (a ``crop_fraction`` < 1 as well is refused: cropped
    twice) at :func:`galmorph.catalogue.cutout.model_framing`'s size unless ``size_px`` > 0; galaxies smaller than
    ``min_extent_px`` in the model's input are counted (``n_small_extent`` in the metadata, a warning).
    ``write_images`` False (the rescoring pipeline's default): raster rows are not decoded or written, they pass
    through with their own images for the scoring pass to decode once and frame from the ModelSpec (FITS rows
    are still cut at their WCS position); the framing is recorded all the same (drift measures at it)."""
    from galmorph.catalogue.cutout import CutoutConfig, check_framing, make_cutouts, model_framing
    from galmorph.steps.artifacts import relativize_images
    from galmorph.steps.runtime import as_dir, setup

    _, root = setup(tracking_uri=tracking_uri, data_root=data_root)
    framing = model_input_framing(task, preset, overrides_json, model_uri)
    extra: dict = {}
    if framing is not None:
        image_size, model_crop, source = framing
        check_framing(crop_fraction, model_crop, f"cutouts for {source}")
        size_px = size_px if size_px > 0 else model_framing(image_size, model_crop)[0]
        extra = {"model_image_size": image_size, "model_crop_fraction": model_crop, "min_extent_px": min_extent_px}
        log.info("cutouts framed for %s: %d px, crop %g (the model crops %g to %d px)", source, size_px,
                 crop_fraction, model_crop, image_size)
    elif size_px <= 0:
        raise ValueError("cutout size_px must be > 0 when neither a model nor a preset gives the framing")
    cfg = CutoutConfig(size_px=size_px, crop_fraction=crop_fraction, greyscale=greyscale, size_r90=size_r90 or None,
                       raster_passthrough=not write_images and crop_fraction >= 1 and not greyscale, **extra)
    out = as_dir(cutouts_dir)
    res = make_cutouts(open_dataset(manifest_path), out, cfg, data_root=root, progress=False)
    relativize_images(out)
    shutil.copyfile(res.quarantine_path, quarantine_path)
    meta = {"rows": res.n_out, "size_px": size_px, "crop_fraction": crop_fraction,
            "images_written": not cfg.raster_passthrough}
    if framing is not None:
        meta.update(n_small_extent=res.n_small_extent, model_image_size=framing[0], model_crop_fraction=framing[1])
        if res.n_small_extent:
            meta["warning"] = (f"{res.n_small_extent} of {res.n_out} galaxies are smaller than {min_extent_px:g} px "
                               f"across in the model's input")
    _fill(cutouts_metadata, meta)
    return CutoutOutputs(res.n_out, res.n_quarantined)


def dataset_framing_check(dataset: str | Path, model_crop_fraction: float, what: str) -> int:
    """Refuse a dataset whose cutouts were cropped already (manifest metadata ``cutout.crop_fraction``)
    for a model that crops again; returns the dataset's ``n_small_extent`` (0 when not measured)."""
    from galmorph.catalogue.cutout import check_framing
    from galmorph.catalogue.manifest import manifest_metadata
    from galmorph.steps.artifacts import dataset_manifest_path

    meta = manifest_metadata(dataset_manifest_path(dataset))
    crop = float((meta.get("cutout") or {}).get("crop_fraction", 1.0) or 1.0)
    check_framing(crop, model_crop_fraction, what)
    return int(meta.get("n_small_extent", 0) or 0)


def a1(manifest_path: str | Path, measured_path: str | Path, quarantine_path: str | Path, pixel_scale: float = 0.396,
       data_root: str = "", workers: int = 1, measured_metadata: dict | None = None) -> A1Outputs:
    """:func:`galmorph.catalogue.a1.measure_a1_manifest`: the manifest with the A1 columns to ``measured_path``."""
    from galmorph.catalogue.a1 import measure_a1_manifest
    from galmorph.steps.runtime import setup

    _, root = setup(data_root=data_root)
    res = measure_a1_manifest(open_dataset(manifest_path), measured_path, quarantine_path=quarantine_path,
                              data_root=root, pixel_scale=pixel_scale, progress=False, workers=workers)
    _fill(measured_metadata, {"rows": res["rows_out"], "finite_a1": res["finite_a1"]})
    return A1Outputs(res["rows_out"], res["finite_a1"])


def winding(manifest_path: str | Path, measured_path: str | Path, quarantine_path: str | Path,
            min_confidence: float = 2.0, options_json: str = "{}", data_root: str = "", workers: int = 1,
            measured_metadata: dict | None = None) -> WindingOutputs:
    """:func:`galmorph.catalogue.winding.write_winding_manifest`: the manifest with the winding columns
    (``winding`` CW/ACW/None, ``winding_score``, ``winding_z``, ``winding_confidence``, the annulus) to
    ``measured_path``; unreadable images to ``quarantine_path``. ``options_json``: further
    :class:`~galmorph.imaging.winding.WindingOptions` fields."""
    from galmorph.catalogue.winding import write_winding_manifest
    from galmorph.imaging.winding import WindingOptions
    from galmorph.steps.runtime import setup

    _, root = setup(data_root=data_root)
    opts = WindingOptions.from_dict({**json.loads(options_json or "{}"), "min_confidence": float(min_confidence)})
    res = write_winding_manifest(open_dataset(manifest_path), measured_path, quarantine_path=quarantine_path,
                                 data_root=root, options=opts, workers=workers)
    _fill(measured_metadata, {"rows": res["rows_out"], "decided": res["decided"],
                              "quarantined": res["quarantined"]})
    return WindingOutputs(res["rows_out"], res["decided"])


def split(dataset: str | Path, train_dir: str | Path, test_dir: str | Path, test_fraction: float = 0.25,
          seed: int = 0, train_metadata: dict | None = None, test_metadata: dict | None = None) -> SplitOutputs:
    """:func:`galmorph.steps.artifacts.holdout_split` of ``dataset``; both parts are written as
    self-contained dataset folders (``train_dir``, ``test_dir``)."""
    from galmorph.steps.artifacts import holdout_split
    from galmorph.steps.runtime import setup, subset_dataset

    setup()
    tmp = Path(tempfile.mkdtemp(prefix="split-"))
    opened = open_dataset(dataset, work_dir=tmp / "all")
    counts = holdout_split(opened, tmp / "train.parquet", tmp / "test.parquet", test_fraction, seed)
    subset_dataset(opened, train_dir, manifest_path=tmp / "train.parquet")
    subset_dataset(opened, test_dir, manifest_path=tmp / "test.parquet")
    _fill(train_metadata, {"rows": counts["train"]})
    _fill(test_metadata, {"rows": counts["test"]})
    return SplitOutputs(counts["train"], counts["test"])


# --------------------------------------------------------------------------------------------
# models: train, evaluate, promote
# --------------------------------------------------------------------------------------------
def train(task: str, dataset: str | Path, model_dir: str | Path, preset: str = "tiny", overrides_json: str = "{}",
          experiment: str = "", register: bool = True, tracking_uri: str = "", workers: int = 1,
          gpus_per_worker: int = 1, model_metadata: dict | None = None, metrics: dict | None = None,
          devices: int = 1, accelerator: str = "auto") -> TrainOutputs:
    """:func:`galmorph.training.train` on ``dataset``; ``model_dir`` receives ``model.json`` and the
    training manifest (``train_manifest/``). The drift features of the training manifest are logged to
    MLflow with the model version (:func:`galmorph.drift.reference.log_drift_reference`): the drift
    reference of rescoring runs, fetched from MLflow by any pod.

    ``workers > 1``: data-parallel training on Kubeflow Trainer instead of in this process: a TrainJob of
    ``workers`` nodes x ``gpus_per_worker`` GPUs (0: CPU nodes), submitted and watched from here
    (:func:`galmorph.steps.trainjob.train_on_trainjob`); the outputs are those of the model it registered.
    ``devices > 1`` (one pod): Lightning DDP over that many processes of this pod (its GPUs with
    ``accelerator="gpu"``), launched by the training library; ``accelerator``: ``auto``, ``cpu`` or ``gpu``."""
    from galmorph.steps.runtime import as_dir, setup, write_json
    from galmorph.training import train as train_model

    if workers > 1 and devices != 1:
        raise ValueError(f"devices={devices} with workers={workers}: the processes of each TrainJob node are "
                         "gpus_per_worker; devices is for a training in this pod (workers=1)")
    uri, root = setup(tracking_uri=tracking_uri)
    out = as_dir(model_dir)
    framing = model_input_framing(task, preset, overrides_json)
    n_small = dataset_framing_check(dataset, framing[1], f"training {task}/{preset}") if framing else 0
    manifest = open_dataset(dataset, work_dir=out / "train_manifest")
    if workers > 1:  # data-parallel on Kubeflow Trainer (#28): this pod submits and watches a TrainJob
        from galmorph.steps.trainjob import train_on_trainjob

        res = train_on_trainjob(task, dataset, preset, json.loads(overrides_json or "{}"), experiment, register,
                                uri, workers, gpus_per_worker)
    else:
        overrides = json.loads(overrides_json or "{}")
        if devices != 1:  # data-parallel in this pod (#28)
            overrides["devices"] = devices
        if accelerator != "auto":
            overrides["accelerator"] = accelerator
        res = train_model(task, preset=preset, overrides=overrides, manifest=manifest,
                          tracking_uri=uri, experiment=experiment or None, register=register, data_root=root,
                          out_dir=out / "work")
    if res.run_id:  # the framing warning, on the training run
        import mlflow

        client = mlflow.MlflowClient()
        client.log_metric(res.run_id, "n_small_extent", n_small)
        if n_small:
            client.set_tag(res.run_id, "galmorph.warning.small_extent",
                           f"{n_small} training galaxies are smaller than 40 px across in the model's input")
    reference_uri = ""
    if res.run_id:  # the drift reference, with the model version in MLflow (not a path in this pod)
        from galmorph.drift.reference import log_training_reference

        reference_uri = log_training_reference(res.run_id, manifest, root, res.registered_name,
                                               res.registered_version)
    info = {"model_uri": res.model_uri, "registered_name": res.registered_name,
            "registered_version": res.registered_version, "run_id": res.run_id, "parent_run_id": res.parent_run_id,
            "tracking_uri": uri, "train_manifest": str(manifest), "drift_reference": reference_uri}
    write_json(out / "model.json", info)
    _fill(model_metadata, info)
    _log_metrics(metrics, res.metrics)
    return TrainOutputs(res.model_uri, str(res.registered_version or ""), res.run_id)


def evaluate(model_uri: str, dataset: str | Path, report_path: str | Path, predictions_path: str | Path,
             tracking_uri: str = "", metrics: dict | None = None) -> EvaluateOutputs:
    """:func:`galmorph.evaluation.core.evaluate` (logged to MLflow); copies its HTML report and predictions."""
    from galmorph.evaluation.core import evaluate as evaluate_model
    from galmorph.steps.runtime import setup

    _, root = setup(tracking_uri=tracking_uri)
    work = tempfile.mkdtemp(prefix="evaluate-")
    res = evaluate_model(model_uri, open_dataset(dataset), work, data_root=root, rotation_max_objects=200)
    shutil.copyfile(res.report_html, report_path)
    shutil.copyfile(res.predictions_path, predictions_path)
    _log_metrics(metrics, {k: v for k, v in res.metrics.items() if not isinstance(v, dict)})
    return EvaluateOutputs(float(res.metrics.get("accuracy", math.nan)), float(res.metrics.get("f1_macro", math.nan)),
                           str(res.run_id or ""))


def promote(task: str, version: str, dataset: str | Path, record_path: str | Path, policy_json: str = "{}",
            audit_log: str = "", tracking_uri: str = "", record_metadata: dict | None = None) -> PromoteOutputs:
    """:func:`galmorph.promotion.registry.promote` of ``version`` against ``@champion`` on ``dataset`` under the
    policy (params.yaml ``promotion:``, overridden by ``policy_json``); the audit record is appended to
    ``audit_log`` (default: the platform state folder) and written to ``record_path``."""
    from galmorph.steps.runtime import setup, write_json
    from galmorph.promotion.policy import PromotionPolicy
    from galmorph.promotion.registry import promote as promote_version
    from galmorph.settings import resolve_settings

    _, root = setup(tracking_uri=tracking_uri)
    s = resolve_settings(tracking_uri=tracking_uri, audit_log=audit_log)
    # a params file named by GALMORPH_PARAMS_FILE must exist; the default one may be absent (default policy)
    policy = PromotionPolicy.from_params(s.params_file, missing_ok="params_file" not in s.model_fields_set,
                                         **json.loads(policy_json or "{}"))
    dec = promote_version(task, version or None, eval_manifest=open_dataset(dataset), audit_log=s.audit_log,
                          policy=policy, data_root=root, lock_url=s.lock_url)
    write_json(record_path, dec.to_dict())
    _fill(record_metadata, {"decision": dec.decision, "champion": dec.champion_after, "reasons": dec.reasons})
    log.info("%s", dec.summary())
    return PromoteOutputs(dec.decision, bool(dec.passed), str(dec.champion_after or ""))


# --------------------------------------------------------------------------------------------
# rescoring: resolve the model, shard, score, merge, drift, publish
# --------------------------------------------------------------------------------------------
def resolve_model(task: str, model_alias: str = "champion", model_uri: str = "", tracking_uri: str = "") -> str:
    """:func:`galmorph.promotion.registry.pinned_model_uri` of ``model_uri`` (default
    ``models:/galmorph-<task>@<model_alias>``): ``models:/NAME/VERSION``."""
    from galmorph.steps.runtime import setup
    from galmorph.promotion.registry import model_uri as task_model_uri, pinned_model_uri

    setup(tracking_uri=tracking_uri)
    return pinned_model_uri(model_uri or task_model_uri(task, model_alias))


def shard(dataset: str | Path, model_uri: str, shard_size: int = 10000, n_workers: int = 4) -> list[str]:
    """:func:`galmorph.scoring.batch.plan_work`: one JSON work item per scoring worker."""
    from galmorph.steps.artifacts import dataset_manifest_path
    from galmorph.steps.runtime import setup
    from galmorph.scoring.batch import manifest_rows, plan_work

    setup()
    return plan_work(manifest_rows(dataset_manifest_path(dataset)), shard_size, n_workers, model_uri)


def score(dataset: str | Path, work: str, scores_dir: str | Path, batch_size: int = 64, num_workers: int = 2,
          threshold: float = 0.85, device: str = "auto", tracking_uri: str = "", winding_ensemble: bool = True,
          winding_weight: float = -1.0, winding_min_confidence: float = -1.0, precision: str = "verified",
          decode: str = "auto", class_prior: str = "model", check_images: bool = True, data_root: str = "",
          scores_metadata: dict | None = None) -> ScoreOutputs:
    """:func:`galmorph.scoring.run.run_scoring` of the shards of the work item ``work`` into ``scores_dir``
    (resumable); the dataset's framing is checked against the model's (never cropped twice);
    ``winding_ensemble`` True (default): combine the chirality network with the winding measurement as the model
    recorded (:func:`galmorph.scoring.ensemble.ensemble_for`; off for a model that recorded none); False: off.
    ``winding_weight``/``winding_min_confidence`` below 0: the model's recorded values (its stacker where it
    recorded one); 0 or more: the fixed rule with those values. ``precision``/``decode``:
    the inference path (:mod:`galmorph.scoring.accel`; an accelerated path only where it agrees with fp32, recorded
    in the shard summaries and, through the merge, in MLflow). ``class_prior``: move the probabilities to the
    release's class prior (default ``model``: the prior the model recorded; ``none``/``as-trained``/empty: as
    trained; ``catalogue`` or ``CLASS=F,...``; :func:`galmorph.models.io.parse_class_prior`). What was applied
    is recorded in the summary, the catalogue metadata and MLflow (``applied_class_prior``, ``applied_ensemble``).
    ``check_images`` (default True): the validation's per-image checks run on the pixels scoring decodes
    (:func:`galmorph.scoring.release_path.image_check_for`), so the release is decoded once; a failing row is
    quarantined with the check's reason (stage ``score``).

    The worker computes with :func:`~galmorph.scoring.batch.cpus_per_worker` CPUs (its pod's CPU limit, else
    this machine's CPUs shared by the work items of the plan): that many torch threads and at most that many
    image-decoding processes (``num_workers``), so workers side by side do not oversubscribe the cores."""
    import torch

    from galmorph.steps.runtime import setup
    from galmorph.scoring.batch import cpus_per_worker, parse_work_item

    _, root = setup(tracking_uri=tracking_uri, data_root=data_root)
    item = parse_work_item(work)
    cpus = cpus_per_worker(item["n_items"])
    threads_before = torch.get_num_threads()
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(cpus)
    num_workers = min(int(num_workers), cpus)
    log.info("score worker %s: %d CPU(s) of the plan's %d work item(s): %d torch thread(s), %d decoding "
             "process(es)", item["shard_range"], cpus, item["n_items"], torch.get_num_threads(), num_workers)
    try:
        res = _score_item(item, dataset, scores_dir, root, batch_size, num_workers, threshold, device, precision,
                          decode, class_prior, check_images, winding_ensemble, winding_weight, winding_min_confidence)
    finally:  # a caller in the same process (a test, a notebook) keeps its own threads
        torch.set_num_threads(threads_before)
    _fill(scores_metadata, {"shards": item["shard_range"], "n_scored": res.n_scored,
                            "images_per_s": res.images_per_s, "precision": res.precision, "cpus": cpus,
                            "decoding_processes": num_workers})
    return ScoreOutputs(res.n_scored, res.n_quarantined)


def _score_item(item: dict, dataset, scores_dir, root, batch_size: int, num_workers: int, threshold: float,
                device: str, precision: str, decode: str, class_prior: str, check_images: bool,
                winding_ensemble: bool, winding_weight: float, winding_min_confidence: float):
    """:func:`score`'s scoring of one work item (:func:`galmorph.scoring.run.run_scoring`)."""
    from galmorph.steps.runtime import as_dir
    from galmorph.scoring.run import ScoringJob, run_scoring

    def framing(model) -> None:  # the dataset's framing must be the model's (never cropped twice)
        dataset_framing_check(dataset, model.spec.crop_fraction, f"scoring with {item['model_uri']}")

    res = run_scoring(ScoringJob(
        model=item["model_uri"], manifest=open_dataset(dataset), out_dir=as_dir(scores_dir), batch_size=batch_size,
        num_workers=num_workers, shard_size=item["shard_size"], threshold=threshold, shards=item["shards"],
        data_root=root, device=device, precision=precision, decode=decode, class_prior=class_prior or "none",
        check_model=framing, winding_ensemble=None if winding_ensemble else False, image_check=_image_check(check_images),
        winding_weight=winding_weight if winding_weight >= 0 else None,
        winding_min_confidence=winding_min_confidence if winding_min_confidence >= 0 else None,
        progress=False, merge=False)).scoring
    return res


def _image_check(check_images: bool):
    """The validation's per-image checks (default :class:`~galmorph.catalogue.validation.ValidationConfig`) for
    the scoring pass, or None."""
    if not check_images:
        return None
    from galmorph.catalogue.validation import ValidationConfig
    from galmorph.scoring.release_path import image_check_for

    return image_check_for(ValidationConfig())


def merge(score_dirs: list[str | Path], catalogue_dir: str | Path, release: str = "", log_mlflow: bool = True,
          tracking_uri: str = "", catalogue_metadata: dict | None = None,
          metrics: dict | None = None) -> MergeOutputs:
    """:func:`galmorph.scoring.run.merge_and_log`: the shards merged into ``catalogue_dir`` (catalogue.parquet,
    quarantine.parquet, summary.json), logged as an MLflow run tagged with the release when ``log_mlflow``."""
    from galmorph.steps.runtime import as_dir, setup
    from galmorph.scoring.run import merge_and_log

    uri, _ = setup(tracking_uri=tracking_uri)
    m, run_id = merge_and_log(list(score_dirs), as_dir(catalogue_dir), release=release or None,
                              log_mlflow=log_mlflow, tracking_uri=uri)
    run_id = run_id or ""
    _log_metrics(metrics, {k: v for k, v in m.summary_data.items() if k != "shards_missing"})
    _fill(catalogue_metadata, {"rows": m.n_scored, "release": release, "mlflow_run_id": run_id})
    cvs = float((m.summary_data.get("cvs") or {}).get("cvs", math.nan))
    return MergeOutputs(m.n_scored, m.n_quarantined, run_id, cvs)


def drift(catalogue_dir: str | Path, dataset: str | Path, summary_dir: str | Path, report_html: str | Path,
          reference: str = "", model_uri: str = "", by: str = "z_bin,survey", release: str = "",
          mlflow_run_id: str = "", workspace: str = "", min_group_size: int = 0, tracking_uri: str = "",
          data_root: str = "", sample_rows: int = 0, summary_metadata: dict | None = None) -> DriftOutputs:
    """:func:`drift_for_release` after resolving the tracking URI and data root; ``verdict`` is ``drift``
    or ``no_drift``. ``sample_rows`` > 0: measured on a deterministic sample past that many rows."""
    from galmorph.steps.runtime import as_dir, setup

    _, root = setup(tracking_uri=tracking_uri, data_root=data_root)
    res = drift_for_release(catalogue_dir, dataset, as_dir(summary_dir), report_html, reference=reference,
                            model_uri=model_uri, by=by, release=release, mlflow_run_id=mlflow_run_id,
                            workspace=workspace, data_root=root, min_group_size=min_group_size or None,
                            sample_rows=sample_rows)
    _fill(summary_metadata, {"verdict": res["verdict"], "drifted_groups": res["drifted_groups"],
                             "reference_source": res.get("reference_source", ""), "drift_rows": res["drift_rows"],
                             "release_rows": res["release_rows"]})
    return DriftOutputs(res["verdict"], len(res["drifted_groups"]))


def publish(catalogue_dir: str | Path, verdict: str, release: str, published_path: str | Path,
            publish_dir: str = "", hold_on_drift: bool = True, mlflow_run_id: str = "", tracking_uri: str = "",
            published_metadata: dict | None = None) -> PublishOutputs:
    """:func:`galmorph.steps.artifacts.publish_release` into ``publish_dir/<release>/`` (default: the
    state folder's releases/), held on drift when ``hold_on_drift``; the status is tagged on the MLflow
    run ``mlflow_run_id`` and written to ``published_path``."""
    from galmorph.steps.artifacts import publish_release
    from galmorph.steps.runtime import setup, write_json
    from galmorph.settings import resolve_settings

    setup(tracking_uri=tracking_uri)
    dest = Path(publish_dir) if publish_dir else resolve_settings().state_dir / "releases"
    cat = Path(catalogue_dir)
    res = publish_release(cat / "catalogue.parquet", cat / "summary.json", dest, release or "release", verdict,
                          hold_on_drift)
    if mlflow_run_id:
        import mlflow

        mlflow.MlflowClient().set_tag(mlflow_run_id, "galmorph.publish", res["status"])
    write_json(published_path, res)
    _fill(published_metadata, res)
    return PublishOutputs(res["status"])


# --------------------------------------------------------------------------------------------
# labelling: sample a queue, register it, export the labels
# --------------------------------------------------------------------------------------------
def label_sample(manifest_path: str | Path, queue_path: str | Path, per_bin: int = 250, n_bins: int = 4,
                 z_min: float = 0.01, z_max: float = 0.1, seed: int = 0, task: str = "lopsided",
                 label_db_url: str = "", queue_metadata: dict | None = None) -> SampleOutputs:
    """:func:`galmorph.labelling.queue.sample_queue` (objects already labelled in the label database
    excluded) written to ``queue_path``."""
    from galmorph.labelling.queue import sample_queue, write_queue
    from galmorph.labelling.store import LabelStore
    from galmorph.steps.runtime import setup
    from galmorph.settings import resolve_settings

    setup()
    store = LabelStore(resolve_settings(label_db_url=label_db_url).label_db_url)
    q, summary = sample_queue(read_manifest(open_dataset(manifest_path)), per_bin=per_bin, n_bins=n_bins,
                              z_min=z_min, z_max=z_max, seed=seed, task=task, exclude_ids=store.labelled_ids(task))
    write_queue(q, queue_path, summary)
    _fill(queue_metadata, {"rows": len(q), "chosen": summary["chosen"]})
    return SampleOutputs(len(q))


def label_queue(queue_path: str | Path, exported_path: str | Path, label_db_url: str = "", queue_name: str = "",
                exported_metadata: dict | None = None) -> QueueOutputs:
    """:meth:`galmorph.labelling.store.LabelStore.register_queue` of the queue (in ``queue_position``
    order); the queue is copied to ``exported_path``."""
    from galmorph.labelling.store import LabelStore
    from galmorph.steps.runtime import setup
    from galmorph.settings import resolve_settings

    setup()
    url = resolve_settings(label_db_url=label_db_url).label_db_url
    q = read_manifest(queue_path)
    if "queue_position" in q.columns:
        q = q.sort_values("queue_position")
    n = LabelStore(url).register_queue(q, queue_name or None)
    shutil.copyfile(queue_path, exported_path)
    _fill(exported_metadata, {"rows": n, "label_db": url})
    return QueueOutputs(n)


def label_export(labelled_path: str | Path, quarantine_path: str | Path, task: str = "lopsided",
                 policy: str = "majority", label_db_url: str = "",
                 labelled_metadata: dict | None = None) -> ExportOutputs:
    """:func:`galmorph.labelling.export.export_labels` to ``labelled_path`` (objects with only 'unsure'
    votes to ``quarantine_path``)."""
    from galmorph.labelling.export import export_labels
    from galmorph.labelling.store import LabelStore
    from galmorph.steps.runtime import setup
    from galmorph.settings import resolve_settings

    setup()
    store = LabelStore(resolve_settings(label_db_url=label_db_url).label_db_url)
    res = export_labels(store, labelled_path, task=task, policy=policy, quarantine_path=quarantine_path)
    _fill(labelled_metadata, {"rows": res["n_labelled"], "counts": res["counts"]})
    return ExportOutputs(res["n_labelled"])


# --------------------------------------------------------------------------------------------
# drift glue
# --------------------------------------------------------------------------------------------
#: drift sets up to this many rows are measured in the step's own process (a pool's start costs more than it saves)
MAX_ROWS_WITHOUT_A_POOL = 64


def _drift_workers(n_rows: int) -> int:
    """Processes measuring the images of a drift set of ``n_rows`` (the drift step, whether the release kept its
    source images or has cutouts): ``settings.num_workers``, else up to 2 of the step's CPUs; 0 (this process)
    for small sets."""
    from galmorph.settings import resolve_settings

    n = resolve_settings().num_workers or min(2, os.cpu_count() or 1)
    return n if n > 1 and n_rows > MAX_ROWS_WITHOUT_A_POOL else 0


def _framed_drift_set(current: pd.DataFrame, dataset: str | Path, data_root) -> pd.DataFrame:
    """``current`` as it goes to the drift run: unchanged for cutouts; for a dataset whose raster rows kept their
    source images (the rescoring pipeline's single pass, ``cutout.raster_passthrough``) its drift features,
    measured on the images resized to the cutouts' framing (``cutout.size_px``), as the reference's were."""
    from galmorph.catalogue.manifest import manifest_metadata
    from galmorph.steps.artifacts import dataset_manifest_path

    cut = manifest_metadata(dataset_manifest_path(dataset)).get("cutout") or {}
    if not cut.get("raster_passthrough") or not cut.get("size_px") or current.empty:
        return current
    from galmorph.drift.features import compute_drift_features

    res = compute_drift_features(current, data_root=data_root, progress=False, frame_size=int(cut["size_px"]),
                                 num_workers=_drift_workers(len(current)))
    if len(res.quarantine):
        log.warning("drift: %d row(s) without drift features (first: %s)", len(res.quarantine),
                    res.quarantine["reason"].iloc[0])
    return res.features


def _drift_rows(catalogue: Path, dataset: str | Path, sample_rows: int) -> tuple[pd.DataFrame, int, str | None]:
    """The scored rows drift is measured on, with their manifest columns and scores, read chunk by chunk: every
    row, or past ``sample_rows`` the deterministic sample of about that many
    (:func:`galmorph.drift.features.drift_sample`), so only the sample is ever held. Returns ``(rows, rows
    of the release's catalogue, its model version)``."""
    import pyarrow.parquet as pq

    from galmorph.catalogue import manifest as manifest_module
    from galmorph.catalogue.manifest import iter_manifest, manifest_metadata, manifest_num_rows
    from galmorph.drift.features import drift_sample
    from galmorph.steps.artifacts import absolute_image_uri, dataset_manifest_path

    names = pq.ParquetFile(catalogue).schema_arrow.names
    pcols = list(dict.fromkeys([c for c in names if c.startswith("p_")]
                               + [c for c in ("pred", "p_pred", "high_confidence", "model_version") if c in names]))
    n_release = manifest_num_rows(catalogue)
    scored = []
    for chunk in manifest_module.stream_parquet(catalogue).iter_batches(batch_size=manifest_module.CHUNK_ROWS,
                                                                        columns=["object_id", *pcols]):
        df = chunk.to_pandas()
        scored.append(df[drift_sample(df["object_id"], sample_rows, n_rows=n_release)] if sample_rows else df)
    scored_df = pd.concat(scored, ignore_index=True) if scored else pd.DataFrame(columns=["object_id", *pcols])
    model_version = str(scored_df["model_version"].iloc[0]) if len(scored_df) and "model_version" in pcols else None
    wanted = set(scored_df["object_id"].astype(str))
    m = dataset_manifest_path(dataset)
    base = m.parent.resolve() if manifest_metadata(m).get("relative_images") else None
    rows = [df[df["object_id"].astype(str).isin(wanted).to_numpy()] for df in iter_manifest(m)]
    man = pd.concat(rows, ignore_index=True)
    if base is not None:  # a dataset folder's relative image paths are under the folder
        man["image_uri"] = [absolute_image_uri(u, base) for u in man["image_uri"]]
    return man.merge(scored_df, on="object_id", how="inner"), n_release, model_version


def drift_for_release(catalogue_dir: str | Path, dataset: str | Path, summary_dir: str | Path,
                      report_html: str | Path, reference: str = "", model_uri: str = "", by: str = "z_bin,survey",
                      release: str = "", mlflow_run_id: str = "", workspace: str = "",
                      data_root: str | Path | None = None, params_file: str | Path | None = None,
                      min_group_size: int | None = None, sample_rows: int = 0) -> dict[str, Any]:
    """Drift of a scored release (its catalogue joined with the images of ``dataset``) against
    ``reference`` (default: the drift reference logged in MLflow with the model version ``model_uri``,
    :func:`galmorph.drift.reference.fetch_drift_reference`). Writes the per-group reports and summary
    to ``summary_dir``, the overall report to ``report_html``; returns the summary dict. ``sample_rows`` > 0:
    drift measured on every row up to that many, past it on a deterministic sample of at least that many rows
    (:func:`galmorph.drift.features.drift_sample`; ``drift_rows``/``release_rows`` in the summary)."""
    from galmorph.drift.config import DriftConfig
    from galmorph.drift.reference import DriftReferenceError, fetch_drift_reference
    from galmorph.drift.report import run_drift
    from galmorph.drift.workspace import step_workspace
    from galmorph.settings import resolve_settings

    s = resolve_settings()
    if not reference:
        if not model_uri:
            raise DriftReferenceError("no drift reference: pass `reference` or the scored `model_uri` (whose "
                                      "training run logged drift_reference/features.parquet)")
        reference = str(fetch_drift_reference(model_uri, tempfile.mkdtemp(prefix="drift-reference-")))
        source = f"mlflow:{model_uri}"  # the artifact logged with the model version, not a path of another pod
    elif not Path(reference).exists():
        raise DriftReferenceError(f"drift reference {reference!r} does not exist")
    else:
        source = str(reference)
    ref_path = open_dataset(reference) if Path(reference).is_dir() else Path(reference)
    current, n_release, model_version = _drift_rows(Path(catalogue_dir) / "catalogue.parquet", dataset, sample_rows)
    n_measured = len(current)
    current = _framed_drift_set(current, dataset, data_root)
    cfg = DriftConfig.from_params(params_file or s.params_file, min_group_size=min_group_size)
    by_cols = tuple(b.strip() for b in by.split(",") if b.strip())
    res = run_drift(ref_path, current, by=by_cols, config=cfg, out_dir=summary_dir, release=release or None,
                    model_version=model_version,
                    workspace=step_workspace(workspace, s.evidently_workspace), mlflow_run_id=mlflow_run_id or None,
                    data_root=data_root, progress=False,
                    num_workers=_drift_workers(n_measured))
    overall = res.per_group.get("overall") or next(iter(res.per_group.values()), None)
    if overall is not None and overall.report_html:
        shutil.copyfile(overall.report_html, report_html)
    else:
        from datetime import datetime, timezone

        from galmorph.evaluation.templating import template_env

        Path(report_html).write_text(template_env().get_template("text_page.html.j2").render(
            title=f"Drift: {res.verdict}", text=res.table(), generator="galmorph.steps.drift_for_release",
            generated=datetime.now(timezone.utc).isoformat(timespec="seconds")), encoding="utf-8")
    # where the reference came from, beside the summary (a person or a test can check it was not a local path)
    (Path(summary_dir) / "reference.json").write_text(json.dumps({"reference_source": source, "drift_rows": n_measured,
                                                                  "release_rows": n_release}))
    return {**res.to_dict(), "reference_source": source, "drift_rows": n_measured, "release_rows": n_release}
