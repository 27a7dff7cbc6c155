"""The MLflow Project: `mlflow run mlproject -e train -P task=chirality -P preset=tiny --env-manager local`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mlflow_run_train_entry_point(mlflow_server, tmp_path):
    import mlflow

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "GALMORPH_STATE_DIR": str(tmp_path / "state")}
    # mlflow.set_experiment() in earlier tests exports MLFLOW_EXPERIMENT_ID, which `mlflow run` would
    # read as a second experiment option next to --experiment-name
    for var in ("GALMORPH_MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    r = subprocess.run([str(mlflow_exe), "run", str(REPO / "mlproject"), "-e", "train", "-P", "task=chirality",
                        "-P", "preset=tiny", "-P", "n_sim=30", "--env-manager", "local",
                        "--experiment-name", "galmorph-chirality"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("galmorph-chirality")
    runs = client.search_runs([exp.experiment_id], "tags.`mlflow.project.entryPoint` = 'train'")
    assert runs, "the project run was not recorded"
    project_run = runs[0]
    assert project_run.info.status == "FINISHED"
    # the training logged into the project run (params) and registered a model version from it or a child
    versions = client.search_model_versions("name='galmorph-chirality'")
    run_ids = {project_run.info.run_id} | {r.info.run_id for r in client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{project_run.info.run_id}'")}
    assert any(v.run_id in run_ids for v in versions)
