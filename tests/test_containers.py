"""The components and the chart's services run inside the galmorph images (podman, no registry).

`make test` builds the images (`make images`) before pytest. These tests skip only where podman cannot
start a container on the machine; a missing image is a failure (the build step failed).

* a component that exits non-zero fails the run (kfp's auto-remove trap, fixed in
  galmorph.pipelines.docker_runner), and run settings reach containers explicitly, not from os.environ;
* the training and the rescoring pipelines end to end in the images against the local MLflow server;
* the chart's Deployments under ``podman kube play`` (see test_chart_pods below).
"""


import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from galmorph.container_images import APP_IMAGE, CPU_IMAGE, GPU_IMAGE

pytestmark = pytest.mark.containers


@pytest.fixture(scope="session")
def podman_ready():
    from galmorph.pipelines.docker_runner import podman_can_run, podman_env

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here (make container-tools)")
    import subprocess

    env = podman_env()
    for image in (CPU_IMAGE, GPU_IMAGE, APP_IMAGE):
        if subprocess.run(["podman", "image", "exists", image], env=env).returncode != 0:
            pytest.fail(f"image {image} is missing: `make images` (a step of `make test`) did not build it")
    ok, reason = podman_can_run(CPU_IMAGE)
    if not ok:
        pytest.skip(reason)
    return env


@pytest.fixture
def podman_service(podman_ready, tmp_path):
    from galmorph.pipelines.docker_runner import PodmanService

    with PodmanService(tmp_path / "state") as svc:
        yield svc


def _init(service, settings, root):
    from kfp import local

    from galmorph.pipelines.docker_runner import docker_runner

    cm = docker_runner(service, settings)
    runner = cm.__enter__()
    local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
    return cm


def test_failing_component_fails_the_run_and_settings_are_explicit(podman_service, tmp_path, monkeypatch):
    """A container exiting 3 fails the run (kfp alone reports SUCCESS on podman); a passing one returns
    what it saw: the explicit tracking URI (not the caller's os.environ), the data root read-only."""
    from kfp import dsl

    from galmorph.pipelines.docker_runner import container_settings

    @dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
    def exits_nonzero(code: int):
        import sys

        sys.exit(code)

    @dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
    def report_settings(data_root: str) -> str:
        import json
        import os
        from pathlib import Path

        try:
            (Path(data_root) / "probe").write_text("x")
            writable = True
        except OSError:
            writable = False
        return json.dumps({"uri": os.environ.get("MLFLOW_TRACKING_URI"), "uid": os.getuid(),
                           "data": sorted(p.name for p in Path(data_root).iterdir()),
                           "data_writable": writable, "leak": os.environ.get("GALMORPH_LEAK_PROBE")})

    data = tmp_path / "data"
    data.mkdir()
    (data / "catalogue.csv").write_text("object_id\n1\n")
    root = tmp_path / "kfp"
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://caller-environment-must-not-leak:1")
    monkeypatch.setenv("GALMORPH_LEAK_PROBE", "leaked")
    settings = container_settings({}, root, "http://127.0.0.1:5999", data)
    cm = _init(podman_service, settings, root)
    try:
        with pytest.raises(RuntimeError, match="(?i)fail"):
            exits_nonzero(code=3)
        seen = json.loads(report_settings(data_root=str(data)).output)
    finally:
        cm.__exit__(None, None, None)
    assert seen["uri"] == "http://127.0.0.1:5999" and seen["leak"] is None
    assert seen["data"] == ["catalogue.csv"] and seen["data_writable"] is False
    assert seen["uid"] == os.getuid()
    assert not (data / "probe").exists()


# ---------------------------------------------------------------------------------------------
# training and rescoring pipelines inside the images
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def container_runs(podman_ready, mlflow_server, tmp_path_factory):
    """Training, then rescoring, each component in its image, against the session's MLflow server."""
    import mlflow

    from galmorph.pipelines.docker_runner import run_local_docker
    from galmorph.simulate import simulate_dataset

    client = mlflow.MlflowClient()
    before = {v.version for v in client.search_model_versions("name='galmorph-chirality'")}
    state = tmp_path_factory.mktemp("ctr-state")
    # one pipeline root for both runs (a shared volume): the drift reference of the rescoring run is the
    # training run's split until the reference lives in MLflow (issue #13, item 4)
    root = tmp_path_factory.mktemp("ctr-kfp")
    sim = simulate_dataset(tmp_path_factory.mktemp("ctr-train-sim"), 36, seed=21, task="chirality", size=48,
                           progress=False)
    train = run_local_docker("training", {"task": "chirality", "source": f"sim:{sim['dir']}",
                                          "test_fraction": "0.34", "cutout_size_px": "32",
                                          "max_failure_fraction": "0.2"},
                             pipeline_root=root, tracking_uri=mlflow_server, state_dir=state)
    rel = simulate_dataset(tmp_path_factory.mktemp("ctr-release"), 30, seed=22, task="chirality", size=48,
                           progress=False)
    pub = tmp_path_factory.mktemp("ctr-published")
    rescore = run_local_docker("rescoring", {"release_uri": str(rel["dir"]), "release": "ctr-r22",
                                             "z_max": "0.1", "shard_size": "8", "n_workers": "2",
                                             "cutout_size_px": "32", "publish_dir": str(pub),
                                             "drift_min_group_size": "10", "hold_on_drift": "false"},
                               pipeline_root=root, tracking_uri=mlflow_server, state_dir=state)
    return {"train": train, "rescore": rescore, "before": before, "publish": pub}


def test_training_pipeline_in_containers_registers_and_sets_an_alias(container_runs):
    import mlflow

    client = mlflow.MlflowClient()
    run_dir = Path(container_runs["train"]["run_dir"])
    model_info = json.loads((run_dir / "train" / "model" / "model.json").read_text())
    versions = {v.version for v in client.search_model_versions("name='galmorph-chirality'")}
    new = versions - container_runs["before"]
    assert model_info["registered_version"] in new, "the containerised train step registered no new version"
    decision = json.loads((run_dir / "promote" / "record").read_text())
    assert decision["candidate_version"] == model_info["registered_version"]
    champion = client.get_model_version_by_alias("galmorph-chirality", "champion")
    assert champion.version in versions
    if decision["passed"]:
        assert champion.version == model_info["registered_version"]
    # files written by the containers belong to the caller (runner user) and the split is disjoint
    from galmorph.manifest import read_manifest
    from galmorph.pipelines.artifacts import open_dataset

    assert (run_dir / "split").stat().st_uid == os.getuid()
    tr = read_manifest(open_dataset(run_dir / "split" / "train"))
    te = read_manifest(open_dataset(run_dir / "split" / "test"))
    assert len(tr) + len(te) == 36 and not set(tr["object_id"]) & set(te["object_id"])


def test_rescoring_pipeline_in_containers_scores_and_publishes(container_runs, tmp_path):
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("galmorph-scoring")
    runs = client.search_runs([exp.experiment_id], "tags.`galmorph.release` = 'ctr-r22'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["n_scored"] + run.data.metrics["n_quarantined"] == 30
    assert run.data.tags.get("galmorph.publish") == "published"
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="catalogue/catalogue.parquet",
                                                dst_path=str(tmp_path))
    cat = pd.read_parquet(local)
    assert len(cat) == run.data.metrics["n_scored"] and cat["object_id"].is_unique
    assert set(cat["model_version"]) == {run.data.tags["galmorph.model_version"]}
    assert set(cat["shard"]) == set(range(4))  # 30 rows / 8 per shard, two scoring containers in parallel
    pub = container_runs["publish"]
    summary = json.loads((pub / "ctr-r22" / "summary.json").read_text())
    assert summary["n_rows"] == 30
    assert pd.read_parquet(pub / "ctr-r22" / "catalogue.parquet").equals(cat)
