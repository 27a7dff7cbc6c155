"""What used to work only on one machine (issue 13.4), proven without a shared local folder:

* the drift step of a rescoring run fetches its reference from MLflow (logged by the train step with
  the model version), after the train step's whole pipeline root is deleted;
* promotions in separate processes with separate state folders are serialised by one shared lock, and
  every decision is readable from MLflow alone (model-version tags + an audit artifact per decision);
* the Evidently workspace PVC the drift step mounts is the one the chart's Evidently UI serves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest


# ---------------------------------------------------------------------------------------------
# (a) drift reference through MLflow
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # one tiny training run (about a minute idle, minutes on a loaded machine)
def test_drift_step_fetches_reference_from_mlflow_after_train_root_is_gone(sim_chirality, mlflow_server, tmp_path):
    import mlflow

    from galmorph.drift.features import IMAGE_FEATURES
    from galmorph.drift.reference import REFERENCE_ARTIFACT, REFERENCE_TAG
    from galmorph.catalogue.manifest import read_manifest
    from galmorph import steps

    train_root = tmp_path / "train-pod"  # everything the train step's pod has on its disk
    res = steps.train("chirality", str(sim_chirality["manifest"]), train_root / "model", preset="tiny",
                      overrides_json=json.dumps({"trials": 1, "max_epochs": 1, "image_size": 32}),
                      experiment="test-one-machine", tracking_uri=mlflow_server)
    assert res.registered_version
    client = mlflow.MlflowClient()
    mv = client.get_model_version("galmorph-chirality", res.registered_version)
    assert mv.tags[REFERENCE_TAG].endswith(REFERENCE_ARTIFACT)
    shutil.rmtree(train_root)  # a separate pod: nothing of the train step's disk is left

    model_uri = f"models:/galmorph-chirality/{res.registered_version}"
    rescore = tmp_path / "rescore-pod"
    ds = str(sim_chirality["manifest"])
    work = steps.shard(ds, model_uri, shard_size=100, n_workers=1)
    steps.score(ds, work[0], rescore / "scores", batch_size=16, num_workers=0, device="cpu",
                tracking_uri=mlflow_server)
    steps.merge([rescore / "scores"], rescore / "catalogue", release="one-machine", log_mlflow=False,
                tracking_uri=mlflow_server)
    out = steps.drift(rescore / "catalogue", ds, rescore / "summary", rescore / "report.html", model_uri=model_uri,
                      by="z_bin", min_group_size=5, workspace=str(rescore / "evidently"),
                      tracking_uri=mlflow_server)
    assert out.verdict in {"drift", "no_drift"}
    from mlflow.artifacts import download_artifacts

    ref = pd.read_parquet(download_artifacts(mv.tags[REFERENCE_TAG], dst_path=str(tmp_path / "person")))
    # the reference is the training manifest's features: the same objects, image features present
    assert set(ref["object_id"].astype(str)) <= set(read_manifest(ds)["object_id"].astype(str))
    assert len(ref) > 0 and any(c in ref.columns for c in IMAGE_FEATURES)
    summary = json.loads((rescore / "summary" / "summary.json").read_text())
    overall = next(g for g in summary["groups"] if g["key"] == "overall")
    assert overall["n_reference"] == len(ref)


def test_drift_reference_missing_is_a_clear_error(sim_chirality, mlflow_server, tmp_path):
    from galmorph.drift.reference import DriftReferenceError, fetch_drift_reference
    from test_scoring_helpers import TinyNet, register_model

    uri = register_model(TinyNet(3, seed=2), "chirality", ["CW", "ACW", "other"], "galmorph-test-no-reference")
    with pytest.raises(DriftReferenceError, match="no drift reference for galmorph-test-no-reference"):
        fetch_drift_reference(uri, tmp_path)
    with pytest.raises(DriftReferenceError, match="not a registered model URI"):
        fetch_drift_reference(str(tmp_path / "model"), tmp_path)


# ---------------------------------------------------------------------------------------------
# (c) the Evidently workspace the drift step writes is the one the Evidently UI serves
# ---------------------------------------------------------------------------------------------
def _drift_task(spec: dict) -> dict:
    """The drift task of the compiled rescoring pipeline (inside its release-valid condition)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "drift" and isinstance(v, dict) and v.get("componentRef", {}).get("name") == "comp-drift":
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert len(found) == 1, f"expected one drift task, found {len(found)}"
    return found[0]


def test_drift_step_mounts_the_workspace_the_evidently_ui_serves():
    import yaml

    pytest.importorskip("helm_python", reason="helm-python-sdk (dev group) is not installed")
    from test_charts import CHART, render

    from galmorph.drift.workspace import WORKSPACE_MOUNT, WORKSPACE_PVC

    values = yaml.safe_load((CHART / "values.yaml").read_text())["evidently"]["workspace"]
    assert (values["claimName"], values["mountPath"]) == (WORKSPACE_PVC, WORKSPACE_MOUNT)
    docs = render()
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("evidently"))
    pod = dep["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    (ui,) = [c for c in pod["containers"] if c["name"] == "evidently"]
    mounts = {m["name"]: m["mountPath"] for m in ui["volumeMounts"]}
    served = ui["args"][ui["args"].index("--workspace") + 1]
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims["workspace"] == WORKSPACE_PVC and WORKSPACE_PVC in pvcs
    assert mounts["workspace"] == served == WORKSPACE_MOUNT
    assert "ReadWriteMany" in pvcs[WORKSPACE_PVC]["spec"]["accessModes"]  # UI and drift pods on any nodes

    # the committed compiled pipeline: the drift executor mounts that PVC there and writes there
    from galmorph.ops import compiled_dir

    spec, platform = list(yaml.safe_load_all((compiled_dir() / "rescoring.yaml").read_text()))
    (mount,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-drift"]["pvcMount"]
    assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == WORKSPACE_PVC
    assert mount["mountPath"] == WORKSPACE_MOUNT
    params = _drift_task(spec)["inputs"]["parameters"]
    assert params["workspace"]["runtimeValue"]["constant"] == WORKSPACE_MOUNT

    # a release that renames the PVC / path moves the UI with it (the pipeline's are the defaults)
    docs = render({"evidently": {"workspace": {"claimName": "drift-ws", "mountPath": "/ws"}}})
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("evidently"))
    (ui,) = dep["spec"]["template"]["spec"]["containers"]
    assert ui["args"][ui["args"].index("--workspace") + 1] == "/ws"
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "drift-ws" for d in docs)


def test_step_workspace_falls_back_only_when_the_pod_volume_is_absent(tmp_path):
    from galmorph.drift.workspace import WORKSPACE_MOUNT, step_workspace

    default = tmp_path / "state" / "evidently"
    assert step_workspace("", default) == default
    assert step_workspace(str(tmp_path / "mine"), default) == tmp_path / "mine"  # a new folder is created later
    if not Path(WORKSPACE_MOUNT).is_dir():  # a local run of the Kubernetes package: nothing mounted
        assert step_workspace(WORKSPACE_MOUNT, default) == default
    else:
        assert step_workspace(WORKSPACE_MOUNT, default) == Path(WORKSPACE_MOUNT)


# ---------------------------------------------------------------------------------------------
# (b) promotions: one shared lock, audit records in MLflow
# ---------------------------------------------------------------------------------------------
def test_select_lock_backends(tmp_path, monkeypatch):
    """One registry, one lock (#30): the lock follows the registry's store, never the audit log a caller
    names; a registry with no shareable lock is refused with what to set."""
    from galmorph.promotion.registry import LOCK_URL_ENV, PostgresAdvisoryLock, PromotionError, select_lock

    monkeypatch.delenv(LOCK_URL_ENV, raising=False)
    db = tmp_path / "store" / "mlflow.db"
    assert select_lock(None, tracking_uri=f"sqlite:///{db}").path("m") == db.parent / ".mlflow.db.m.promotion.lock"
    monkeypatch.setenv(LOCK_URL_ENV, f"file://{tmp_path / 'shared'}")
    assert select_lock().path("m") == tmp_path / "shared" / ".m.promotion.lock"
    pg = select_lock("postgresql+psycopg2://u:secret@db:5432/mlflow")
    assert isinstance(pg, PostgresAdvisoryLock) and "secret" not in repr(pg)
    monkeypatch.delenv(LOCK_URL_ENV)
    assert isinstance(select_lock(None, tracking_uri="postgresql://u@db/mlflow"), PostgresAdvisoryLock)
    with pytest.raises(PromotionError, match="GALMORPH_LOCK_URL"):
        select_lock(None, tracking_uri="http://mlflow:5000")
    with pytest.raises(PromotionError, match="unsupported promotion lock URL"):
        select_lock("redis://x")
    k = PostgresAdvisoryLock.key("galmorph-chirality")
    assert k == PostgresAdvisoryLock.key("galmorph-chirality") != PostgresAdvisoryLock.key("galmorph-arms")
    assert -(2 ** 63) <= k < 2 ** 63  # a Postgres bigint


_PROMOTE_SCRIPT = """
import json, os, sys, time
import galmorph.promotion.registry as reg

real = reg._record
def timed(audit_log, dec, client=None):  # inside the lock: record the window, hold it a while
    t0 = time.time(); time.sleep(1.0); real(audit_log, dec, client)
    with open(sys.argv[3], "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "t0": t0, "t1": time.time()}) + "\\n")
reg._record = timed
print("ready", flush=True)
d = reg.promote("arms", "1", eval_manifest=sys.argv[1], audit_log=sys.argv[2], log_evaluations=False)
print(d.decision, flush=True)
"""


def test_promotions_in_separate_processes_share_one_lock_and_audit_in_mlflow(sim_arms, mlflow_server, tmp_path):
    import os
    import subprocess
    import sys
    import time

    import mlflow

    from galmorph.promotion.registry import LOCK_URL_ENV, read_mlflow_audit, select_lock
    from test_scoring_helpers import TinyNet, register_model

    from galmorph.tasks import arm_classes

    classes = list(arm_classes())
    uri = register_model(TinyNet(len(classes), seed=1), "arms", classes, "galmorph-arms")
    version = uri.rsplit("/", 1)[1]
    assert version == "1"
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("galmorph-arms", "champion", version)

    shared = f"file://{tmp_path / 'shared-lock'}"
    windows = tmp_path / "windows.jsonl"
    procs = []
    holder = select_lock(shared).hold("galmorph-arms", timeout=60)
    holder.__enter__()  # a third party holds the shared lock while both pods start
    try:
        for pod in ("pod-a", "pod-b"):
            env = {**os.environ, LOCK_URL_ENV: shared, "GALMORPH_STATE_DIR": str(tmp_path / pod),
                   "MLFLOW_TRACKING_URI": mlflow_server}
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _PROMOTE_SCRIPT, str(sim_arms["manifest"]),
                 str(tmp_path / pod / "audit.jsonl"), str(windows)], env=env, stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        released = time.time()
    finally:
        holder.__exit__(None, None, None)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(o.strip().endswith("already-champion") for o in outs)
    w = sorted((json.loads(line) for line in windows.read_text().splitlines()), key=lambda d: d["t0"])
    assert len(w) == 2 and w[0]["t0"] >= released  # both waited for the shared lock
    assert w[1]["t0"] >= w[0]["t1"]  # serialised: the second entered after the first left

    # the audit is readable from MLflow alone: the pods' local state is gone
    shutil.rmtree(tmp_path / "pod-a")
    shutil.rmtree(tmp_path / "pod-b")
    records = read_mlflow_audit("galmorph-arms")
    assert [r["decision"] for r in records] == ["already-champion", "already-champion"]
    assert {r["pid"] for r in records} == {d["pid"] for d in w}
    tag = client.get_model_version("galmorph-arms", version).tags["galmorph.decision_audit_run"]
    assert tag in {r["audit_run_id"] for r in records}
