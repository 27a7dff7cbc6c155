"""``galmorph trainjob``: data-parallel training on Kubeflow Trainer (#28), as a TrainJob to review and apply."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import fail, main
from galmorph.cli.options import task_option, tracking_uri_option


@main.group("trainjob")
def trainjob_group() -> None:
    """Data-parallel training on Kubeflow Trainer: the TrainJob that runs `galmorph train` on several nodes
    (the training pipeline submits one itself when its `workers` parameter is above 1)."""


@trainjob_group.command("render")
@task_option(required=True)
@click.option("--preset", default="tiny", show_default=True, help="Preset of the task (as `galmorph train`).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Training nodes (the TrainJob's numNodes).")
@click.option("--gpus-per-worker", type=click.IntRange(0), default=1, show_default=True,
              help="GPUs, and processes, per node; 0: CPU nodes with one process each.")
@click.option("--image", default=None, help="Image of the training nodes (default: the project image, "
                                             "galmorph.container_images).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a training config key (type-checked as by `galmorph train`). Repeatable.")
@click.option("--manifest", default=None, metavar="PATH",
              help="Training manifest as the training pods see it, on the shared data volume "
                   "(default: <staging dir>/<name>/manifest.parquet).")
@click.option("--name", default=None, help="TrainJob name (default: galmorph-<task>-<random>).")
@click.option("--namespace", default=None, help="Namespace of the TrainJob (default: none in the YAML).")
@click.option("--runtime", default=None, help="ClusterTrainingRuntime (default: the trainer defaults' runtime, "
                                               "torch-distributed).")
@click.option("--experiment", default=None, help="MLflow experiment (default galmorph-<task>).")
@click.option("--no-register", is_flag=True, help="Log the model but do not register it.")
@click.option("--trainer-defaults", "defaults_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="JSON/YAML trainer defaults, as the chart's galmorph-trainer ConfigMap holds them "
                                 "(trainer.json: runtime, node_selector, tolerations, resources, ...).")
@tracking_uri_option()
def render_cmd(task: str, preset: str, workers: int, gpus_per_worker: int, image: str | None,
               sets: tuple[str, ...], manifest: str | None, name: str | None, namespace: str | None,
               runtime: str | None, experiment: str | None, no_register: bool, defaults_file: Path | None,
               tracking_uri: str | None) -> None:
    """Print the Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1) that would train TASK with PRESET
    on WORKERS nodes, as YAML, for review and `kubectl apply -f -`. Nothing is submitted.

    The training manifest and its images must be on the shared data volume first (the path --manifest
    names); the pipeline's train step stages them itself."""
    from galmorph.settings import resolve_settings
    from galmorph.steps.trainjob import STAGING_DIR, default_image, placement, read_trainer_defaults
    from galmorph.training.config import ConfigError, parse_set_items, resolve_config
    from galmorph.training.trainjob import TrainJobError, TrainJobRequest, build_trainjob, to_yaml, trainjob_name

    try:
        overrides = parse_set_items(sets)
        resolve_config(task, preset, overrides)  # the nodes would refuse it: refuse it here
    except ConfigError as exc:
        fail(str(exc))
    try:
        defaults = read_trainer_defaults(defaults_file.read_text() if defaults_file else "")
        if runtime:
            defaults["runtime"] = runtime
        name = name or trainjob_name(task)
        staging = Path(str(defaults.get("staging_dir") or STAGING_DIR)) / name
        req = TrainJobRequest(name=name, task=task, manifest=manifest or str(staging / "manifest.parquet"),
                              preset=preset, workers=workers, gpus_per_worker=gpus_per_worker, overrides=overrides,
                              image=image or str(defaults.get("image") or default_image(gpus_per_worker)),
                              tracking_uri=resolve_settings(tracking_uri=tracking_uri).mlflow_tracking_uri,
                              experiment=experiment or "", register=not no_register,
                              out_dir=str(staging / "work"), namespace=namespace or "")
        body = build_trainjob(req, placement(defaults))
    except TrainJobError as exc:
        fail(str(exc))
    click.echo(to_yaml(body), nl=False)
