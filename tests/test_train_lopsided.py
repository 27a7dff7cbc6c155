"""Lopsided tiny preset (Zoobot ConvNeXt-nano, 2 trials) against a real MLflow server: trials are child
runs of one parent carrying mean and standard deviation; the best trial's model is registered."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from galmorph.training import train


def test_lopsided_zoobot_trials_are_children_of_one_parent(mlflow_server, sim_lopsided, tmp_path):
    res = train("lopsided", "tiny", {"progress": False}, manifest=sim_lopsided["manifest"],
                tracking_uri=mlflow_server, out_dir=tmp_path)
    client = mlflow.MlflowClient()
    parent = client.get_run(res.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    assert len(children) == 2 and {c.info.run_id for c in children} == set(res.trial_run_ids)
    accs = [c.data.metrics["test_accuracy"] for c in children]
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert parent.data.metrics["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    assert "±" in parent.data.tags["galmorph.test_accuracy"]
    assert all(c.data.tags["encoder_init"] == "random" for c in children)  # no Zoobot weights given
    assert parent.data.tags["galmorph.best_run_id"] == res.run_id
    assert res.registered_name == "galmorph-lopsided"
    out = mlflow.pytorch.load_model(res.model_uri)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 2)
