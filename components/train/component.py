"""KFP component: train a task's model with a preset, tracked and registered in MLflow (GPU step)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from galmorph.container_images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(task: str, dataset: Input[Dataset], model: Output[Model], metrics: Output[Metrics], preset: str = "tiny",
          overrides_json: str = "{}", experiment: str = "", register: bool = True, tracking_uri: str = "",
          workers: int = 1, gpus_per_worker: int = 1, devices: int = 1,
          accelerator: str = "auto") -> NamedTuple("TrainOutputs", [("model_uri", str), ("registered_version", str),
                                                                   ("run_id", str)]):
    """galmorph.training.train on the dataset; the model is registered as ``galmorph-<task>``.

    ``overrides_json`` holds ``--set`` style overrides as a JSON object, e.g. ``{"max_epochs": 2}``.
    ``workers > 1`` trains data-parallel on Kubeflow Trainer instead: this step submits a TrainJob of
    ``workers`` nodes x ``gpus_per_worker`` GPUs (0: CPU nodes) and waits for it. ``devices > 1`` (with
    ``workers = 1``) trains data-parallel in this pod: Lightning DDP over ``devices`` processes (its GPUs with
    ``accelerator="gpu"``; ``auto``, ``cpu`` or ``gpu``)."""
    from galmorph import steps

    return steps.train(task, dataset.path, model.path, preset=preset, overrides_json=overrides_json,
                       experiment=experiment, register=register, tracking_uri=tracking_uri, workers=workers,
                       gpus_per_worker=gpus_per_worker, model_metadata=model.metadata, metrics=metrics.metadata,
                       devices=devices, accelerator=accelerator)
