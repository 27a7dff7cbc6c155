"""KFP component: train a task's model with a preset, tracked and registered in MLflow (GPU step)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from galmorph.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(task: str, dataset: Input[Dataset], model: Output[Model], metrics: Output[Metrics], preset: str = "tiny",
          overrides_json: str = "{}", experiment: str = "", register: bool = True,
          tracking_uri: str = "") -> NamedTuple("TrainOutputs", [("model_uri", str), ("registered_version", str),
                                                                 ("run_id", str)]):
    """galmorph.training.train on the dataset; the model is registered as ``galmorph-<task>``.

    ``overrides_json`` holds ``--set`` style overrides as a JSON object, e.g. ``{"max_epochs": 2}``."""
    import json
    from collections import namedtuple
    from pathlib import Path

    from galmorph.pipelines.runtime import as_dir, flat_metrics, open_dataset, setup, write_json
    from galmorph.training import train as train_model

    uri, root = setup(tracking_uri)
    out = as_dir(model.path)
    # keep the training manifest with the model artifact: it is the drift reference of rescoring runs
    manifest = open_dataset(dataset.path, work_dir=out / "train_manifest")
    res = train_model(task, preset=preset, overrides=json.loads(overrides_json or "{}"), manifest=manifest,
                      tracking_uri=uri, experiment=experiment or None, register=register, data_root=root,
                      out_dir=Path(out) / "work")
    info = {"model_uri": res.model_uri, "registered_name": res.registered_name,
            "registered_version": res.registered_version, "run_id": res.run_id, "parent_run_id": res.parent_run_id,
            "tracking_uri": uri, "train_manifest": str(manifest)}
    write_json(out / "model.json", info)
    model.metadata.update(info)
    for k, v in flat_metrics(res.metrics).items():
        metrics.log_metric(k, v)
    return namedtuple("TrainOutputs", ["model_uri", "registered_version", "run_id"])(
        res.model_uri, str(res.registered_version or ""), res.run_id)
