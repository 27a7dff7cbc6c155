"""Tiny presets train on simulator data against a real MLflow server; the registered model loads back
(mlflow.pytorch.load_model and galmorph.models.io.load_for_inference); resume from a checkpoint."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from galmorph.models.io import load_for_inference
from galmorph.training import train


@pytest.fixture(scope="module")
def chirality_run(mlflow_server, sim_chirality, tmp_path_factory):
    return train("chirality", "tiny", {"progress": False}, manifest=sim_chirality["manifest"],
                 tracking_uri=mlflow_server, out_dir=tmp_path_factory.mktemp("train-chirality"))


def test_tiny_chirality_registers_a_loadable_model(chirality_run):
    res = chirality_run
    assert res.registered_name == "galmorph-chirality" and res.registered_version is not None
    assert res.model_uri == f"models:/galmorph-chirality/{res.registered_version}"
    module = mlflow.pytorch.load_model(res.model_uri)
    x = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        logits = module(x)
    assert logits.shape == (5, 3)
    lm = load_for_inference(res.model_uri)
    assert lm.spec.classes == ["CW", "ACW", "other"] and lm.spec.image_size == 32
    assert lm.run_id == res.run_id and lm.version == res.registered_version
    p = lm.predict_proba(x)
    assert p.shape == (5, 3) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(p, torch.softmax(logits / lm.spec.temperature, 1).numpy(), atol=1e-5)  # calibrated (#15)


def test_runs_carry_params_metrics_tags_and_artifacts(chirality_run):
    res = chirality_run
    client = mlflow.MlflowClient()
    child, parent = client.get_run(res.run_id), client.get_run(res.parent_run_id)
    assert child.data.tags["mlflow.parentRunId"] == res.parent_run_id
    for run in (child, parent):
        assert run.data.params["arch"] == "resnet18" and run.data.params["flips"] == "False"
        assert run.data.tags["galmorph.git_commit"]
        src = run.data.tags["galmorph.data_version_source"]
        assert run.data.tags["galmorph.data_version"].startswith("manifest-sha256:") or src.startswith("dvc")
    from galmorph.dvcops import data_version  # the data engineer's DVC md5 of the manifest

    assert child.data.tags["galmorph.data_version"] == data_version(child.data.tags["galmorph.manifest"])
    hist = client.get_metric_history(res.run_id, "val_loss")
    assert sorted(m.step for m in hist) == [0, 1]  # one value per epoch (2 epochs)
    assert len(client.get_metric_history(res.run_id, "train_acc")) == 2
    assert "test_accuracy" in child.data.metrics and "test_f1_CW" in child.data.metrics
    assert "test_accuracy_mean" in parent.data.metrics and "test_accuracy_std" in parent.data.metrics
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"config.yaml", "learning_curves.png", "confusion_matrix.png", "confusion_matrix.json",
            "test_predictions.csv", "splits.parquet", "excluded.parquet", "checkpoints"} <= arts
    assert mlflow.models.get_model_info(res.model_uri).run_id == res.run_id  # logged model of the best trial
    assert [a.path for a in client.list_artifacts(res.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    mv = client.get_model_version("galmorph-chirality", res.registered_version)
    assert mv.run_id == res.run_id and mv.tags["parent_run_id"] == res.parent_run_id
    assert res.metrics["test_n"] > 0 and 0 <= res.metrics["test_accuracy"] <= 1


def test_resume_from_checkpoint_continues_training(mlflow_server, sim_chirality, tmp_path):
    first = train("chirality", "tiny", {"progress": False, "max_epochs": 1}, manifest=sim_chirality["manifest"],
                  tracking_uri=mlflow_server, out_dir=tmp_path / "a", register=False)
    last = tmp_path / "a" / "trial-0" / "checkpoints" / "last.ckpt"
    assert last.is_file() and first.registered_version is None and first.model_uri.startswith(("runs:/", "models:/"))
    resumed = train("chirality", "tiny", {"progress": False, "max_epochs": 2, "resume_from": str(last)},
                    manifest=sim_chirality["manifest"], tracking_uri=mlflow_server, out_dir=tmp_path / "b",
                    register=False)
    assert first.metrics["epochs"] == 1 and resumed.metrics["epochs"] == 2
    assert resumed.metrics["global_step"] == 2 * first.metrics["global_step"]
