"""Tiny presets train on simulator data against a real MLflow server; the registered model loads back
(mlflow.pytorch.load_model and galmorph.models.io.load_for_inference); resume from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from galmorph.models.io import load_for_inference
from galmorph.training import train


@pytest.fixture(scope="module")
def chirality_run(mlflow_server, sim_chirality, tmp_path_factory):
    # head dropout (#15.2): the real chirality network carries it through training, export and loading
    return train("chirality", "tiny", {"progress": False, "classifier_dropout": 0.2}, manifest=sim_chirality["manifest"],
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
    from galmorph.catalogue.dvcops import data_version  # the data engineer's DVC md5 of the manifest

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


def test_real_run_temperature_dropout_card_and_lineage(chirality_run, sim_chirality, tmp_path):
    """On the real tiny run (#15): the ModelSpec temperature is the one fitted on that trial's validation
    split; the logged network keeps its head dropout (MC spread > 0); evaluation writes a model card with
    the run's training data, DVC version, class counts and encoder origin; `lineage` links the data
    version, the training run and the registered version."""
    import pandas as pd

    from galmorph.datasets.images import ManifestImageDataset
    from galmorph.evaluation import evaluate
    from galmorph.evaluation.calibration import fit_temperature
    from galmorph.evaluation.chirality import has_dropout, mc_dropout_predictive
    from galmorph.promotion.lineage import lineage
    from galmorph.catalogue.manifest import read_manifest

    res = chirality_run
    lm = load_for_inference(res.model_uri)
    splits = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=res.run_id, artifact_path="splits.parquet",
                                                                 dst_path=str(tmp_path)))
    man = read_manifest(sim_chirality["manifest"])
    val = man[man["object_id"].isin(splits.loc[splits["split"] == "val", "object_id"])].reset_index(drop=True)
    ds = ManifestImageDataset(val, lm.spec.image_size, lm.spec.in_chans, lm.spec.crop_fraction,
                              classes=lm.spec.classes)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = np.array([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        logits = lm.module(x).numpy()
    assert lm.spec.temperature != 1.0
    assert lm.spec.temperature == pytest.approx(fit_temperature(logits, y), rel=1e-3)
    assert has_dropout(lm.module) and mc_dropout_predictive(lm.module, x[:6], n_passes=6)["spread"] > 0

    ev = evaluate(res.model_uri, sim_chirality["manifest"], tmp_path / "ev", rotation_passes=2, rotation_angles=2,
                  rotation_max_objects=8, sweep_realisations=2, explain=False)
    card = ev.report["model_card"]
    child = mlflow.MlflowClient().get_run(res.run_id)
    assert card["training"]["run_id"] == res.run_id and card["training"]["manifest"] == str(sim_chirality["manifest"])
    assert card["training"]["data_version"]["data_version"] == child.data.tags["galmorph.data_version"]
    counts = mlflow.artifacts.load_dict(f"runs:/{res.run_id}/class_counts.json")
    assert card["training"]["class_counts"] == counts and set(counts) == {"train", "val", "test"}
    assert card["model"]["encoder_init"] == "random" and card["calibration"]["temperature"] == round(
        lm.spec.temperature, 4)
    assert any("mirror test" in f for f in card["failure_modes"])  # a plain CNN, not chirality-equivariant
    assert card["intended_use"] and set(card["evaluation"]["redshift_bins"])
    mv = mlflow.MlflowClient().get_model_version("galmorph-chirality", res.registered_version)
    assert mv.description == card["summary"] and "chirality classifier (resnet18" in mv.description
    chain = lineage(res.model_uri)
    assert chain["data"]["manifest"] == str(sim_chirality["manifest"])
    assert chain["data"]["data_version"] == child.data.tags["galmorph.data_version"]
    assert chain["training"]["run_id"] == res.run_id and chain["training"]["parent_run_id"] == res.parent_run_id
    assert chain["model"]["version"] == res.registered_version and chain["model"]["card_run_id"] == ev.run_id


def test_no_test_split_trains_on_every_row_and_the_reference_presets_keep_none(mlflow_server, sim_chirality,
                                                                                tmp_path):
    """test_fraction 0 (#26.4): every labelled row trains or validates, no test split is drawn or scored,
    and the model is still registered; the reference presets hold out nothing inside training (the
    benchmark's test quarter and the pipeline's split are the held-out galaxies)."""
    from galmorph.training import resolve_config

    for task in ("chirality", "arms", "lopsided"):
        assert resolve_config(task, "reference", {}).test_fraction == 0, task
    res = train("chirality", "tiny", {"progress": False, "test_fraction": 0.0, "max_epochs": 1},
                manifest=sim_chirality["manifest"], tracking_uri=mlflow_server, out_dir=tmp_path)
    assert res.registered_version is not None
    assert not any(k.startswith("test_") for k in res.metrics), res.metrics
    client = mlflow.MlflowClient(mlflow_server)
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert "test_predictions.csv" not in arts and "confusion_matrix.json" not in arts and "splits.parquet" in arts
    counts = json.loads(Path(client.download_artifacts(res.run_id, "class_counts.json", str(tmp_path))).read_text())
    assert sum(counts["test"].values()) == 0
    n = len(pd.read_parquet(sim_chirality["manifest"]))
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == n
