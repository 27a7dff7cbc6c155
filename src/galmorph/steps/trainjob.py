"""The step side of data-parallel training (#28): the train step with ``workers > 1`` stages its dataset on
the shared data volume, submits a Kubeflow Trainer ``TrainJob`` (:mod:`galmorph.training.trainjob`) and
waits for it, then reads back the model that rank 0 registered.

Placement comes from three places, later ones winning: ``infra/gpu-defaults.yaml`` (as for the one-process
GPU step), the chart's ``trainer`` values (the ConfigMap :data:`TRAINER_CONFIGMAP`, key
:data:`TRAINER_CONFIGMAP_KEY`, which the training pipeline injects into the step as the environment variable
:data:`TRAINER_DEFAULTS_ENV`; optional), and the platform's fixed names (MLflow credentials Secret, data
PVC, client pod label: :mod:`galmorph.steps.platform`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from galmorph.steps.platform import (CLIENT_POD_LABEL, DATA_MOUNT, DATA_PVC, MLFLOW_SECRET, MLFLOW_SECRET_KEYS,
                                     Platform, load_platform)
from galmorph.training.trainjob import (Placement, TrainJobError, TrainJobRequest, TrainJobResult, build_trainjob,
                                        current_namespace, find_trainjob_result, run_trainjob, trainjob_name)

log = logging.getLogger(__name__)

#: ConfigMap the chart renders with ``trainer.enabled`` (in the pipelines' namespace) and its key.
TRAINER_CONFIGMAP = "galmorph-trainer"
TRAINER_CONFIGMAP_KEY = "trainer.json"
#: Environment variable of the train step holding that key's JSON.
TRAINER_DEFAULTS_ENV = "GALMORPH_TRAINER_DEFAULTS"
#: Where datasets are staged for the training nodes (default; ``staging_dir`` in the trainer defaults).
STAGING_DIR = f"{DATA_MOUNT}/trainjobs"


def trainer_defaults_env(task, platform: Platform):
    """Pipeline-definition helper: give the train step the chart's trainer defaults (optional ConfigMap)."""
    if platform.kubernetes:
        from kfp import kubernetes

        kubernetes.use_config_map_as_env(task, config_map_name=TRAINER_CONFIGMAP,
                                         config_map_key_to_env={TRAINER_CONFIGMAP_KEY: TRAINER_DEFAULTS_ENV},
                                         optional=True)
    return task


def read_trainer_defaults(text: str | None = None) -> dict[str, Any]:
    """The trainer defaults: ``text`` (JSON, or YAML from a file), else :data:`TRAINER_DEFAULTS_ENV`,
    else ``{}``."""
    raw = text if text is not None else os.environ.get(TRAINER_DEFAULTS_ENV, "")
    if not raw.strip():
        return {}
    try:
        import yaml

        value = yaml.safe_load(raw)  # JSON is YAML
    except Exception as exc:  # noqa: BLE001 - reported as a clear error below
        raise TrainJobError(f"trainer defaults ({TRAINER_DEFAULTS_ENV} / ConfigMap {TRAINER_CONFIGMAP}) are not "
                            f"JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TrainJobError(f"trainer defaults must be a JSON object, got {type(value).__name__}")
    return value


def placement(defaults: dict[str, Any] | None = None, platform: Platform | None = None) -> Placement:
    """The TrainJob placement of this platform: GPU defaults, then the trainer ``defaults``, then the
    platform's Secret, data volume and client label."""
    platform = platform or load_platform()
    return Placement.from_defaults(platform.gpu, read_trainer_defaults() if defaults is None else defaults,
                                   credentials_secret=MLFLOW_SECRET, credentials_env=dict(MLFLOW_SECRET_KEYS),
                                   data_pvc=DATA_PVC, data_mount=DATA_MOUNT,
                                   pod_labels={CLIENT_POD_LABEL[0]: CLIENT_POD_LABEL[1]})


def default_image(gpus_per_worker: int) -> str:
    from galmorph.container_images import CPU_IMAGE, GPU_IMAGE

    return GPU_IMAGE if gpus_per_worker > 0 else CPU_IMAGE


def train_on_trainjob(task: str, dataset: str | Path, preset: str, overrides: dict[str, Any], experiment: str,
                      register: bool, tracking_uri: str, workers: int, gpus_per_worker: int,
                      api=None, timeout_s: float | None = None) -> TrainJobResult:
    """Train ``task`` on ``dataset`` with a TrainJob of ``workers`` nodes x ``gpus_per_worker`` GPUs and
    return what rank 0 logged and registered.

    The dataset (manifest + images) is copied to ``<staging_dir>/<job name>/`` on the shared data volume,
    which the training nodes mount at the same path; the copy is removed once the job has completed (kept
    when it failed, beside the job's logs)."""
    from galmorph.steps.artifacts import open_dataset
    from galmorph.steps.runtime import subset_dataset

    defaults = read_trainer_defaults()
    namespace = str(defaults.get("namespace") or current_namespace())
    if not namespace:
        raise TrainJobError("cannot tell which namespace to submit the TrainJob to: not in a pod, and the trainer "
                            f"defaults ({TRAINER_DEFAULTS_ENV}) name no namespace")
    name = trainjob_name(task)
    staging = Path(str(defaults.get("staging_dir") or STAGING_DIR)) / name
    log.info("TrainJob %s: staging the training dataset in %s (shared data volume %s)", name, staging, DATA_PVC)
    subset_dataset(dataset, staging)
    manifest = open_dataset(staging, work_dir=staging / "opened")  # absolute image paths under the mount
    req = TrainJobRequest(name=name, task=task, manifest=str(manifest), preset=preset, workers=workers,
                          gpus_per_worker=gpus_per_worker, overrides=dict(overrides),
                          image=str(defaults.get("image") or default_image(gpus_per_worker)),
                          tracking_uri=tracking_uri, experiment=experiment, register=register,
                          out_dir=str(staging / "work"), namespace=namespace)
    body = build_trainjob(req, placement(defaults))
    run_trainjob(body, namespace, api=api,
                 timeout_s=timeout_s if timeout_s is not None else (defaults.get("timeout_s") or None))
    result = find_trainjob_result(name, experiment or f"galmorph-{task}")
    log.info("TrainJob %s/%s: %s (run %s)", namespace, name, result.model_uri, result.run_id)
    shutil.rmtree(staging, ignore_errors=True)
    return result


__all__ = ["STAGING_DIR", "TRAINER_CONFIGMAP", "TRAINER_CONFIGMAP_KEY", "TRAINER_DEFAULTS_ENV", "default_image",
           "placement", "read_trainer_defaults", "train_on_trainjob", "trainer_defaults_env"]
