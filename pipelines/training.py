"""The training pipeline: ingest -> validate -> [stop unless valid] -> cutout -> (A1 for lopsided) ->
hold-out split -> train (GPU) -> evaluate -> promote.

``workers > 1`` trains data-parallel on Kubeflow Trainer instead (#28): the train step then runs on a CPU
node and submits and watches a TrainJob of ``workers`` nodes x ``gpus_per_worker`` GPUs
(:mod:`galmorph.steps.trainjob`); evaluate and promote take whichever branch ran.

Compiled to ``pipelines/training.yaml`` by ``galmorph pipeline compile``; run locally with
``galmorph pipeline run training --local --param task=chirality --param source=sim:DIR``.
"""

from kfp import dsl

from galmorph.steps.platform import data_volume, gpu_task, load_platform, mlflow_credentials, promotion_lock
from galmorph.steps.trainjob import trainer_defaults_env
from galmorph_components.a1.component import a1
from galmorph_components.cutout.component import cutout
from galmorph_components.evaluate.component import evaluate
from galmorph_components.ingest.component import ingest
from galmorph_components.promote.component import promote
from galmorph_components.split.component import split
from galmorph_components.train.component import train
from galmorph_components.validate.component import validate

PLATFORM = load_platform()


@dsl.pipeline(name="galmorph-training",
              description="Train, evaluate and (guardedly) promote a galmorph model for one task.")
def pipeline(task: str = "chirality", source: str = "gz1_chirality", preset: str = "tiny",
             overrides_json: str = "{}", z_min: float = 0.01, z_max: float = 0.1,
             max_failure_fraction: float = 0.05, cutout_size_px: int = 0, crop_fraction: float = 1.0,
             test_fraction: float = 0.25, split_seed: int = 0, policy_json: str = "{}", audit_log: str = "",
             tracking_uri: str = "", data_root: str = "", workers: int = 1, gpus_per_worker: int = 1):
    """Train, evaluate and (guardedly) promote a galmorph model for one task.

    Args:
        task: What the model learns: chirality (CW/ACW/other), arms (GZ2 arm number) or lopsided.
        source: Labelled images to train on: a shared-data source name (gz1_chirality, gz2_arms, lopsided,
            ...), ``sim:DIR`` (simulated galaxies) or ``folder:DIR``; resolved under ``data_root``.
        preset: Training preset of the task: tiny (default: a minutes-long smoke model), reference (the
            validated settings with pretrained weights), paper, or a named architecture preset.
        overrides_json: Preset fields to override, as a JSON object (e.g. {"max_epochs": 20}).
        z_min: Rows with a redshift below this are quarantined by validation.
        z_max: Rows with a redshift above this are quarantined by validation.
        max_failure_fraction: The run stops before training when more than this share of rows fails
            validation.
        cutout_size_px: Cutout size in pixels; 0 (default) takes the framing from the preset.
        crop_fraction: Crop at cutout time; 1.0 (default) keeps the full frame and leaves the crop to the
            model (cropping twice is refused).
        test_fraction: Share of each class held out from training for evaluation and promotion.
        split_seed: Seed of the stratified hold-out split.
        policy_json: Promotion policy fields overriding params.yaml's ``promotion:`` section, as a JSON object.
        audit_log: Promotion audit log (JSON lines); empty (default) uses the platform's state folder.
        tracking_uri: MLflow tracking server; empty (default) uses the platform's (GALMORPH_TRACKING_URI).
        data_root: Root that relative image paths and shared-data sources resolve under; empty (default)
            uses the platform's (GALMORPH_DATA_ROOT).
        workers: Training nodes; 1 (default) trains in this pipeline's GPU step, more submits a Kubeflow
            Trainer TrainJob of that many nodes.
        gpus_per_worker: GPUs per training node of a TrainJob (0: CPU nodes).
    """
    ing = ingest(source=source, task=task, data_root=data_root)
    data_volume(ing, PLATFORM)
    val = validate(manifest=ing.outputs["manifest"], z_min=z_min, z_max=z_max,
                   max_failure_fraction=max_failure_fraction, data_root=data_root)
    data_volume(val, PLATFORM)
    with dsl.If(val.outputs["Output"] == True, name="data-valid"):  # noqa: E712 - KFP condition
        # framing from the preset: full-frame cutouts (size 0: image_size / crop), the model crops
        cut = cutout(manifest=val.outputs["passed"], size_px=cutout_size_px, crop_fraction=crop_fraction,
                     task=task, preset=preset, overrides_json=overrides_json, data_root=data_root)
        data_volume(cut, PLATFORM)
        with dsl.If(task == "lopsided", name="lopsided-a1"):
            # A1 on the original images (catalogue R50/R90 refer to them), kept beside the model
            meas = a1(manifest=val.outputs["passed"], data_root=data_root)
            data_volume(meas, PLATFORM)
        sp = split(dataset=cut.outputs["cutouts"], test_fraction=test_fraction, seed=split_seed)
        with dsl.If(workers <= 1, name="one-process"):
            tr = train(task=task, dataset=sp.outputs["train"], preset=preset, overrides_json=overrides_json,
                       tracking_uri=tracking_uri)
            gpu_task(tr, PLATFORM)
            mlflow_credentials(tr, PLATFORM)
            tr.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
            tr.set_caching_options(False)  # every run trains and registers a new version
        with dsl.Else(name="trainjob"):
            # a CPU pod that submits and watches the TrainJob (no GPU held while the nodes train); no retry:
            # a stopped watcher deletes its TrainJob, a failed TrainJob is kept for its logs
            tj = train(task=task, dataset=sp.outputs["train"], preset=preset, overrides_json=overrides_json,
                       tracking_uri=tracking_uri, workers=workers, gpus_per_worker=gpus_per_worker)
            tj.set_display_name("train-trainjob")
            mlflow_credentials(tj, PLATFORM)
            data_volume(tj, PLATFORM)  # the dataset is staged on the shared volume the training nodes mount
            trainer_defaults_env(tj, PLATFORM)  # the chart's trainer values (ConfigMap galmorph-trainer)
            tj.set_caching_options(False)
        model_uri = dsl.OneOf(tr.outputs["model_uri"], tj.outputs["model_uri"])
        version = dsl.OneOf(tr.outputs["registered_version"], tj.outputs["registered_version"])
        ev = evaluate(model_uri=model_uri, dataset=sp.outputs["test"], tracking_uri=tracking_uri)
        mlflow_credentials(ev, PLATFORM)
        ev.set_caching_options(False)
        pr = promote(task=task, version=version, dataset=sp.outputs["test"],
                     policy_json=policy_json, audit_log=audit_log, tracking_uri=tracking_uri)
        mlflow_credentials(pr, PLATFORM)
        promotion_lock(pr, PLATFORM)  # one lock for every promoting pod (Postgres advisory lock)
        pr.after(ev)
        pr.set_caching_options(False)  # a promotion depends on the registry's state, never cache it
