"""The rescoring pipeline: ingest a survey release -> validate (table checks) -> [stop unless valid] -> cutout
(framing only: raster rows pass through undecoded unless ``write_cutouts``) -> shard -> ParallelFor score shards
on GPU nodes (each image decoded once: the per-image validation checks, the ModelSpec's framing and the forward
pass in one go; failures quarantined with their reason) -> merge (Collected) -> drift -> publish (held on drift).

Compiled to ``pipelines/rescoring.yaml``; scheduled with ``galmorph pipeline schedule rescoring`` and
started per new release by ``galmorph release watch``.
"""

from kfp import dsl

from galmorph.drift.workspace import WORKSPACE_MOUNT, WORKSPACE_PVC
from galmorph.steps.platform import data_volume, gpu_task, load_platform, mlflow_credentials
from galmorph_components.cutout.component import cutout
from galmorph_components.drift.component import drift
from galmorph_components.ingest.component import ingest
from galmorph_components.merge.component import merge
from galmorph_components.publish.component import publish
from galmorph_components.resolve_model.component import resolve_model
from galmorph_components.score.component import score
from galmorph_components.shard.component import shard
from galmorph_components.validate.component import validate

PLATFORM = load_platform()


@dsl.pipeline(name="galmorph-rescoring",
              description="Score a survey release with the champion model, monitor drift, publish the catalogue.")
def pipeline(release_uri: str = "/data/releases/latest", release: str = "latest", task: str = "chirality",
             model_alias: str = "champion", model_uri: str = "", z_min: float = 0.01, z_max: float = 0.2,
             max_failure_fraction: float = 0.05, cutout_size_px: int = 0, crop_fraction: float = 1.0,
             shard_size: int = 10000, n_workers: int = 4, batch_size: int = 64, threshold: float = 0.85,
             winding_ensemble: bool = True, winding_weight: float = -1.0, winding_min_confidence: float = -1.0,
             precision: str = "verified", decode: str = "auto", class_prior: str = "model",
             drift_reference: str = "", drift_by: str = "z_bin,survey", drift_min_group_size: int = 0, hold_on_drift: bool = True,
             publish_dir: str = "", tracking_uri: str = "", data_root: str = "", write_cutouts: bool = False,
             drift_sample_rows: int = 1000):
    """Score a survey release with the champion model, monitor drift, publish the catalogue.

    Args:
        release_uri: The release to score: a folder of images, a manifest (.parquet/.csv), a shared-data source
            name or ``sim:DIR``; resolved under ``data_root``.
        release: Name of the release, recorded with the scores, the drift report and the published catalogue.
        task: Which model family scores it: chirality, arms or lopsided.
        model_alias: Registry alias of the model that scores (champion: the promoted model).
        model_uri: A ``models:/...`` URI that overrides ``model_alias`` (empty: use the alias).
        z_min: Rows with a redshift below this are quarantined by validation.
        z_max: Rows with a redshift above this are quarantined by validation.
        max_failure_fraction: The run stops before scoring when more than this share of rows fails validation.
        cutout_size_px: Cutout size in pixels; 0 (default) takes the framing from the model's ModelSpec.
        crop_fraction: Crop at cutout time; 1.0 (default) keeps the full frame and leaves the crop to the model
            (cropping twice is refused).
        shard_size: Rows per scoring shard, the unit a retried worker resumes from.
        n_workers: Parallel scoring workers (ParallelFor; GPU nodes on a cluster).
        batch_size: Images per forward pass.
        threshold: Probability at or above which a prediction is flagged high_confidence.
        winding_ensemble: Chirality: combine the network with the winding measurement as the model recorded
            (the validated default, on: the stacker fitted on the model's validation split, else the fixed
            rule); off scores with the network alone.
        winding_weight: Weight of the winding measurement in the fixed rule; below 0 (default) the model's
            recorded ensemble (its stacker where it has one); 0 or more asks for the fixed rule.
        winding_min_confidence: Winding confidence under which only the network decides (fixed rule); below 0
            (default) the model's recorded value; 0 or more asks for the fixed rule.
        precision: Inference path: verified (default: the fastest path checked against fp32 once per model
            version and recorded on it), or fp32, auto, channels_last, bf16, onnx, int8.
        decode: JPEG decoding: auto (default: the draft decode where it agrees with the full one), full, draft.
        class_prior: Class prior applied to the probabilities: model (default: the source catalogue's prior the
            model recorded), none / as-trained, catalogue, or CLASS=F,...
        drift_reference: Drift reference features (parquet); empty (default) uses the one logged with the
            model's training run.
        drift_by: Comma-separated columns the drift report is also computed per group of.
        drift_min_group_size: Smallest group that gets its own drift verdict; 0 (default) takes params.yaml's
            ``drift:`` section.
        hold_on_drift: Hold the catalogue back (not published) when drift is detected.
        publish_dir: Where the catalogue is published (``<publish_dir>/<release>/``); empty (default) uses
            ``releases/`` in the platform's state folder.
        tracking_uri: MLflow tracking server; empty (default) uses the platform's (GALMORPH_TRACKING_URI).
        data_root: Root that relative image paths and shared-data sources resolve under; empty (default)
            uses the platform's (GALMORPH_DATA_ROOT).
        write_cutouts: Also write the cutout PNGs; off (default) raster images pass through undecoded and are
            decoded once, by scoring.
        drift_sample_rows: Rows the drift features are measured on: every row of a release up to this many, past it
            a deterministic sample of about this many (by object id), so drift costs the same whatever the size.
    """
    ing = ingest(source=release_uri, task=task, data_root=data_root)
    data_volume(ing, PLATFORM)
    # table checks here; the per-image checks run on the pixels the score step decodes (one decode per image)
    val = validate(manifest=ing.outputs["manifest"], z_min=z_min, z_max=z_max,
                   max_failure_fraction=max_failure_fraction, check_images=False, data_root=data_root)
    data_volume(val, PLATFORM)
    with dsl.If(val.outputs["Output"] == True, name="release-valid"):  # noqa: E712 - KFP condition
        model = resolve_model(task=task, model_alias=model_alias, model_uri=model_uri, tracking_uri=tracking_uri)
        model.set_caching_options(False)  # pins the version the alias points at now
        mlflow_credentials(model, PLATFORM)
        # framing from the resolved model's ModelSpec (size 0: image_size / crop); PNGs only with write_cutouts
        # (raster rows otherwise pass through undecoded; FITS rows are cut at their WCS position)
        cut = cutout(manifest=val.outputs["passed"], size_px=cutout_size_px, crop_fraction=crop_fraction,
                     model_uri=model.output, tracking_uri=tracking_uri, data_root=data_root,
                     write_images=write_cutouts)
        data_volume(cut, PLATFORM)
        mlflow_credentials(cut, PLATFORM)
        plan = shard(dataset=cut.outputs["cutouts"], model_uri=model.output, shard_size=shard_size,
                     n_workers=n_workers)
        with dsl.ParallelFor(plan.output, parallelism=8, name="score-shards") as work:
            sc = score(dataset=cut.outputs["cutouts"], work=work, batch_size=batch_size, threshold=threshold,
                       tracking_uri=tracking_uri, winding_ensemble=winding_ensemble, winding_weight=winding_weight,
                       winding_min_confidence=winding_min_confidence, precision=precision, decode=decode,
                       class_prior=class_prior, check_images=True, data_root=data_root)
            gpu_task(sc, PLATFORM)
            mlflow_credentials(sc, PLATFORM)
            sc.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0)
        mg = merge(scores=dsl.Collected(sc.outputs["scores"]), release=release, tracking_uri=tracking_uri)
        mg.set_caching_options(False)
        mlflow_credentials(mg, PLATFORM)
        dr = drift(catalogue=mg.outputs["catalogue"], dataset=cut.outputs["cutouts"], reference=drift_reference,
                   model_uri=model.output, by=drift_by, release=release,
                   mlflow_run_id=mg.outputs["run_id"], min_group_size=drift_min_group_size,
                   tracking_uri=tracking_uri, data_root=data_root, sample_rows=drift_sample_rows,
                   workspace=WORKSPACE_MOUNT if PLATFORM.kubernetes else "")
        if PLATFORM.kubernetes:  # the Evidently UI's workspace volume (chart: evidently.workspace)
            from kfp import kubernetes

            kubernetes.mount_pvc(dr, pvc_name=WORKSPACE_PVC, mount_path=WORKSPACE_MOUNT)
        mlflow_credentials(dr, PLATFORM)
        dr.set_caching_options(False)
        pub = publish(catalogue=mg.outputs["catalogue"], verdict=dr.outputs["verdict"], release=release,
                      publish_dir=publish_dir, hold_on_drift=hold_on_drift, mlflow_run_id=mg.outputs["run_id"],
                      tracking_uri=tracking_uri)
        mlflow_credentials(pub, PLATFORM)
        pub.set_caching_options(False)
