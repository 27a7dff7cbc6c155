"""The components and the chart's services run inside the galmorph images (podman, no registry).

`make test` builds the images (`make images`) before pytest. These tests skip only where podman cannot
start a container on the machine; a missing image is a failure (the build step failed).

* a component that exits non-zero fails the run (kfp's auto-remove trap, fixed in
  galmorph.ops.docker_runner), and run settings reach containers explicitly, not from os.environ;
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
    from galmorph.ops.docker_runner import podman_can_run, podman_env

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
    from galmorph.ops.docker_runner import PodmanService

    with PodmanService(tmp_path / "state") as svc:
        yield svc


def _init(service, settings, root):
    from kfp import local

    from galmorph.ops.docker_runner import docker_runner

    cm = docker_runner(service, settings)
    runner = cm.__enter__()
    local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
    return cm


def test_failing_component_fails_the_run_and_settings_are_explicit(podman_service, tmp_path, monkeypatch):
    """A container exiting 3 fails the run (kfp alone reports SUCCESS on podman); a passing one returns
    what it saw: the explicit tracking URI (not the caller's os.environ), the data root read-only."""
    from kfp import dsl

    from galmorph.ops.docker_runner import container_settings

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

    from galmorph.ops.docker_runner import run_local_docker
    from galmorph.simulate import simulate_dataset

    client = mlflow.MlflowClient()
    before = {v.version for v in client.search_model_versions("name='galmorph-chirality'")}
    state = tmp_path_factory.mktemp("ctr-state")
    # nothing shared between the runs but MLflow (as between pods): separate pipeline roots, so the
    # rescoring drift step cannot read the training split and must fetch the reference from MLflow; each
    # container has its own /tmp and state folder; the promotion lock is the shared one of GALMORPH_LOCK_URL
    root_train, root_rescore = tmp_path_factory.mktemp("ctr-kfp-train"), tmp_path_factory.mktemp("ctr-kfp-rescore")
    lock_dir = tmp_path_factory.mktemp("ctr-shared-lock")
    sim = simulate_dataset(tmp_path_factory.mktemp("ctr-train-sim"), 36, seed=21, task="chirality", size=48,
                           progress=False)
    train = run_local_docker("training", {"task": "chirality", "source": f"sim:{sim['dir']}",
                                          "test_fraction": "0.34", "cutout_size_px": "32",
                                          "max_failure_fraction": "0.2",
                                          # 36 tiny galaxies cannot clear the quality floor (a margin over
                                          # the majority-class predictor); this test is about the steps in
                                          # their images, not the model's quality: margin -1 passes always
                                          "policy_json": '{"min_margin_over_majority": -1.0}',
                                          # a path parameter mounts its folder: the shared lock folder
                                          "audit_log": str(lock_dir / "audit.jsonl")},
                             pipeline_root=root_train, tracking_uri=mlflow_server, state_dir=state,
                             extra_env={"GALMORPH_LOCK_URL": f"file://{lock_dir / 'locks'}"})
    rel = simulate_dataset(tmp_path_factory.mktemp("ctr-release"), 30, seed=22, task="chirality", size=48,
                           progress=False)
    pub = tmp_path_factory.mktemp("ctr-published")
    rescore = run_local_docker("rescoring", {"release_uri": str(rel["dir"]), "release": "ctr-r22",
                                             "z_max": "0.1", "shard_size": "8", "n_workers": "2",
                                             "cutout_size_px": "32", "publish_dir": str(pub),
                                             "drift_min_group_size": "10", "hold_on_drift": "false"},
                               pipeline_root=root_rescore, tracking_uri=mlflow_server, state_dir=state)
    return {"train": train, "rescore": rescore, "before": before, "publish": pub, "lock_dir": lock_dir}


def test_training_pipeline_in_containers_registers_and_sets_an_alias(container_runs):
    import mlflow

    client = mlflow.MlflowClient()
    run_dir = Path(container_runs["train"]["run_dir"])
    model_info = json.loads((run_dir / "train" / "model" / "model.json").read_text())
    versions = {v.version for v in client.search_model_versions("name='galmorph-chirality'")}
    new = versions - container_runs["before"]
    assert model_info["registered_version"] in new, "the containerised train step registered no new version"
    decision = json.loads((run_dir / "promote" / "record").read_text())
    assert decision["passed"], decision
    champion = client.get_model_version_by_alias("galmorph-chirality", "champion")
    assert champion.version == model_info["registered_version"]
    # files written by the containers belong to the caller (runner user) and the split is disjoint
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.steps.artifacts import open_dataset

    assert (run_dir / "split").stat().st_uid == os.getuid()
    tr = read_manifest(open_dataset(run_dir / "split" / "train"))
    te = read_manifest(open_dataset(run_dir / "split" / "test"))
    assert len(tr) + len(te) == 36 and not set(tr["object_id"]) & set(te["object_id"])
    # item 4: the promotion took the lock named by GALMORPH_LOCK_URL (a folder every container mounts),
    # not a file in its own /tmp, and its audit record is in MLflow, where every pod and a person read it
    from galmorph.promotion.registry import read_mlflow_audit

    assert (container_runs["lock_dir"] / "locks" / ".galmorph-chirality.promotion.lock").exists()
    audit = [r for r in read_mlflow_audit("galmorph-chirality")
             if r.get("candidate_version") == model_info["registered_version"]]
    assert len(audit) == 1 and audit[0]["decision"] == decision["decision"]
    tags = client.get_model_version("galmorph-chirality", model_info["registered_version"]).tags
    assert tags["galmorph.decision_audit_run"] == audit[0]["audit_run_id"]
    # and the drift reference of this version was logged to MLflow by the train container
    assert tags["galmorph.drift_reference"].endswith("drift_reference/features.parquet")


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
    # item 4: the drift step ran in its own container with its own pipeline root: its reference came from
    # MLflow (the champion's training run), not from the training run's files
    rescore_dir = Path(container_runs["rescore"]["run_dir"])
    train_dir = Path(container_runs["train"]["run_dir"])
    assert not rescore_dir.is_relative_to(train_dir.parent)
    ref = json.loads((rescore_dir / "drift" / "summary" / "reference.json").read_text())
    assert ref["reference_source"].startswith("mlflow:models:/galmorph-chirality/")


# ---------------------------------------------------------------------------------------------
# the chart's Deployments under `podman kube play`
# ---------------------------------------------------------------------------------------------
PLAYABLE = {"Deployment", "PersistentVolumeClaim"}  # kube play takes no StatefulSet/Job/CronJob/NetworkPolicy


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, auth: tuple[str, str] | None = None, headers: dict | None = None) -> int:
    import requests

    try:
        return requests.get(url, auth=auth, headers=headers or {}, timeout=60).status_code
    except requests.RequestException:
        return -1


def _secret(name: str, data: dict[str, str]) -> dict:
    import base64

    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


@pytest.fixture(scope="module")
def chart_pods(podman_ready, tmp_path_factory):
    """The chart rendered with test values (sqlite backends in the pods' /tmp, local artifacts, test
    Secrets as manifests), its Deployments, PVCs and the Secrets played as pods on the host network."""
    import base64
    import subprocess

    import yaml

    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev group) is not installed")
    from galmorph.labelling.queue import sample_queue, write_queue
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.steps.runtime import subset_dataset
    from galmorph.simulate import simulate_dataset

    tmp = tmp_path_factory.mktemp("kube-play")
    ports = {"mlflow": _free_port(), "evidently": _free_port(), "labelling": _free_port()}
    values = yaml.safe_load((Path(__file__).resolve().parents[1] / "infra" / "podman" / "kube-play-values.yaml").read_text())
    for component, port in ports.items():
        values.setdefault(component, {})["port"] = port
    with helm.Chart.load(str(Path(__file__).resolve().parents[1] / "charts" / "galmorph")) as chart:
        files = chart.render(values, name="play", namespace="default")
    docs = [d for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d and d.get("kind") in PLAYABLE]
    claims = {v["persistentVolumeClaim"]["claimName"] for d in docs if d["kind"] == "Deployment"
              for v in d["spec"]["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    docs = [d for d in docs if d["kind"] != "PersistentVolumeClaim" or d["metadata"]["name"] in claims]
    probes: dict[str, str] = {}
    for d in docs:
        if d["kind"] == "Deployment":  # reach the pods from the test process: the host's network
            spec = d["spec"]["template"]["spec"]
            spec["hostNetwork"] = True
            for c in spec["containers"]:
                # no port mappings on the host network; podman 4.3 crashes on probes without systemd, so
                # the test checks the chart's readiness probes itself (same paths and ports)
                named = {p["name"]: p["containerPort"] for p in c.pop("ports", []) if "name" in p}
                get = c["readinessProbe"]["httpGet"]
                probes[d["metadata"]["name"]] = (f"http://127.0.0.1:{named.get(get['port'], get['port'])}"
                                                 f"{get['path']}")
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    c.pop(probe, None)
    token = "test-labeller-token-0123456789abcdef"
    admin_pw = "test-admin-password-0123"
    docs += [
        _secret("galmorph-mlflow-db", {"uri": "sqlite:////tmp/mlflow.db"}),
        _secret("galmorph-mlflow-s3", {"AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"}),
        _secret("galmorph-mlflow-auth", {
            "basic_auth.ini": "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:////tmp/auth.db\n"
                              "admin_username = admin\nadmin_password = " + admin_pw + "\n"
                              "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
            "admin-password": admin_pw, "flask-secret-key": "test-flask-secret-0123456789"}),
        _secret("galmorph-label-db", {"url": "sqlite:////tmp/labels.db"}),
        _secret("galmorph-label-tokens", {"tokens": f"labeller-1:{token}\n"}),
    ]
    # podman 4.3's kube play crashes on any Secret reference (nil secrets manager), so the test Secret
    # manifests are resolved here: secret volumes become read-only files (hostPath), secretKeyRef values
    # literal env values; mount paths, file names and contents stay what the chart asks for
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    docs = [d for d in docs if d["kind"] != "Secret"]
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        spec = d["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                data = secrets[v["secret"]["secretName"]]["data"]
                folder = tmp / "secrets" / d["metadata"]["name"] / v["name"]
                folder.mkdir(parents=True)
                for item in v["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                    (folder / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
                    (folder / item["path"]).chmod(0o444)
                folder.chmod(0o555)
                del v["secret"]
                v["hostPath"] = {"path": str(folder), "type": "Directory"}
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    e["value"] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
                    del e["valueFrom"]
    play = tmp / "play.yaml"
    play.write_text(yaml.safe_dump_all(docs))
    # the labelling queue PVC holds a small queue (manifest + images, relative URIs)
    sim = simulate_dataset(tmp / "sim", 8, seed=5, size=32, progress=False)  # no task: unlabelled
    queue = tmp / "queue"
    subset_dataset(sim["dir"], queue)
    chosen, summary = sample_queue(read_manifest(queue / "manifest.parquet"), per_bin=2)
    write_queue(chosen, queue / "queue.parquet", summary)
    env = podman_ready

    def podman(*args, check=True):
        return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, check=check)

    def down():
        podman("kube", "down", str(play), check=False)
        pods = podman("pod", "ps", "-q", "--filter", "name=play-galmorph-", check=False).stdout.split()
        if pods:
            podman("pod", "rm", "-f", *pods, check=False)
        podman("volume", "rm", "-f", *claims, check=False)

    down()
    podman("volume", "create", "galmorph-label-queue")
    subprocess.run(["tar", "-C", str(queue), "-cf", str(tmp / "queue.tar"), "."], check=True)
    podman("volume", "import", "galmorph-label-queue", str(tmp / "queue.tar"))
    res = podman("kube", "play", str(play), check=False)
    if res.returncode != 0:
        down()
        pytest.fail(f"podman kube play failed: {res.stderr[-2000:]}")
    try:
        yield {"ports": ports, "token": token, "admin": ("admin", admin_pw), "podman": podman, "probes": probes}
    finally:
        down()


def _wait(url: str, timeout_s: float = 300.0, **kw) -> int:
    import time

    deadline = time.monotonic() + timeout_s
    code = -1
    while time.monotonic() < deadline:
        code = _http(url, **kw)
        if code == 200:
            return code
        time.sleep(2)
    return code


def test_chart_pods_answer_health_checks_and_mlflow_refuses_anonymous(chart_pods):
    p = chart_pods["ports"]
    assert len(chart_pods["probes"]) == 3
    for deployment, url in chart_pods["probes"].items():  # the chart's readiness probes
        assert _wait(url) == 200, f"{deployment}: {url} does not answer"
    api = f"http://127.0.0.1:{p['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http(api) == 401
    assert _http(api, auth=("admin", "wrong-password")) == 401
    assert _http(api, auth=chart_pods["admin"]) == 200


def test_chart_pods_run_non_root_with_a_read_only_root(chart_pods):
    podman = chart_pods["podman"]
    names = [n for n in podman("ps", "--format", "{{.Names}}").stdout.split()
             if n.startswith("play-galmorph-") and "infra" not in n]
    kinds = {k for n in names for k in ("mlflow", "evidently", "labelling") if k in n}
    assert kinds == {"mlflow", "evidently", "labelling"}, names
    for name in names:
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001", name
        ro = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip()
        assert ro == "true", name
        write = podman("exec", name, "touch", "/opt/galmorph/probe", check=False)
        assert write.returncode != 0, f"{name}: the root filesystem is writable"


# ---------------------------------------------------------------------------------------------
# run settings -> container settings (no podman needed)
# ---------------------------------------------------------------------------------------------
def test_container_settings_come_from_arguments_only(tmp_path, monkeypatch):
    from galmorph.ops.docker_runner import ContainerRunError, container_settings, host_mounts_for_params

    root = tmp_path / "kfp"
    (root / "sub").mkdir(parents=True)
    src, data = tmp_path / "sim", tmp_path / "data"
    src.mkdir()
    data.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://caller:1")
    monkeypatch.setenv("GALMORPH_DATA_ROOT", "/caller/data")
    params = {"source": f"sim:{src}", "label_db_url": f"sqlite:///{tmp_path / 'db' / 'labels.db'}",
              "audit_log": str(tmp_path / "audit.jsonl"), "inside_root": str(root / "sub"), "task": "arms",
              "n": 3}
    (tmp_path / "db").mkdir()
    s = container_settings(params, root, "http://127.0.0.1:5055", data, user="1000:1000")
    assert s.environment["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5055"
    assert s.environment["GALMORPH_DATA_ROOT"] == str(data.resolve())
    assert s.mounts == {str(src.resolve()): "rw", str((tmp_path / "db").resolve()): "rw",
                        str(tmp_path.resolve()): "rw", str(data.resolve()): "ro"}
    args = s.run_args()
    assert args["network_mode"] == "host" and args["user"] == "1000:1000" and args["cap_drop"] == ["ALL"]
    bare = container_settings({}, root, None, None)
    assert "MLFLOW_TRACKING_URI" not in bare.environment and bare.mounts == {}
    with pytest.raises(ContainerRunError, match="cannot mount"):
        host_mounts_for_params({"publish_dir": "/nonexistent-galmorph/out/x"}, root)
