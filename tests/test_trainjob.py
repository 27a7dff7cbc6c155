"""Data-parallel training on Kubeflow Trainer (#28): the TrainJob, its submission and watch, the train step.

* The TrainJob that ``galmorph trainjob render`` prints (1, 2 and 4 workers, with and without GPUs)
  validates against the TrainJob schema vendored in ``infra/kustomize/schemas/`` (derived from the
  Trainer's generated API models, kubeflow-trainer-api 2.3.0; objects closed, so an unknown field fails),
  and runs the ``galmorph train`` options the CLI has.
* Submit and watch go through the ``kubernetes`` client's real request code down to urllib3. No
  Kubernetes API server can run here, and that is the only reason the HTTP boundary
  (``urllib3.PoolManager.urlopen``) is replaced by a scripted API server: the tests see the exact
  method, URL, query and JSON body the client sends, and answer with TrainJob objects that themselves
  validate against the schema (Created -> Running -> Complete; Failed with the Trainer's message; an
  expired watch; Trainer not installed; no RBAC; a timeout that deletes the job).
* The train step with ``workers > 1`` stages the dataset, submits the TrainJob and returns the model
  version that "rank 0" registered (MLflow on sqlite; rank 0 is played by the scripted server with the
  environment the TrainJob gives its nodes); with ``workers = 1`` no TrainJob is involved.
"""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.parse
from pathlib import Path

import jsonschema
import pytest
import urllib3
import yaml
from click.testing import CliRunner

from galmorph.steps.platform import CLIENT_POD_LABEL, DATA_MOUNT, DATA_PVC, MLFLOW_SECRET, load_platform
from galmorph.training import trainjob as tj

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "infra" / "kustomize" / "schemas" / "trainjob-trainer-v1alpha1.json"
HOST = "https://k8s.test"
NS = "team-a"
#: torchrun's variables, which the Trainer's Torch plugin sets itself and refuses in trainer.env
TORCHRUN_RESERVED = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def render(*args: str) -> dict:
    from galmorph.cli import main

    r = CliRunner().invoke(main, ["trainjob", "render", "--tracking-uri", "http://galmorph-mlflow.galmorph:5000",
                                  *args])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.stdout)


def _arg(args: list[str], opt: str) -> str:
    return args[args.index(opt) + 1]


def _node_template(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == tj.TRAINER_NODE
    return rjob["template"]["spec"]["template"]


# ---------------------------------------------------------------------------------------------
# the rendered TrainJob
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_rendered_trainjob_validates_against_the_trainer_schema(validator, workers, gpus):
    job = render("--task", "chirality", "--preset", "tiny", "--workers", str(workers), "--gpus-per-worker",
                 str(gpus), "--set", "max_epochs=3", "--name", "galmorph-chirality-t1")
    errors = sorted(validator.iter_errors(job), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)

    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed"}
    tr = spec["trainer"]
    assert tr["numNodes"] == workers and tr["numProcPerNode"] == max(gpus, 1)
    assert tr["command"] == ["torchrun", "--no-python", "galmorph", "train"]
    args = tr["args"]
    assert (_arg(args, "--task"), _arg(args, "--preset")) == ("chirality", "tiny")
    assert _arg(args, "--devices") == str(max(gpus, 1)) and _arg(args, "--num-nodes") == str(workers)
    assert _arg(args, "--accelerator") == ("gpu" if gpus else "cpu")
    assert _arg(args, "--set") == "max_epochs=3"
    assert _arg(args, "--manifest") == f"{DATA_MOUNT}/trainjobs/galmorph-chirality-t1/manifest.parquet"
    from galmorph.container_images import CPU_IMAGE, GPU_IMAGE

    assert tr["image"] == (GPU_IMAGE if gpus else CPU_IMAGE)
    # MLflow: URI, credentials from the platform Secret, the run tag that finds rank 0's model
    env = {e["name"]: e for e in tr["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://galmorph-mlflow.galmorph:5000"
    for key, var in {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}.items():
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": MLFLOW_SECRET, "key": key, "optional": True}
    assert json.loads(env["MLFLOW_RUN_CONTEXT"]["value"]) == {tj.RUN_TAG: "galmorph-chirality-t1"}
    assert not TORCHRUN_RESERVED & set(env), "the Trainer rejects a TrainJob that sets torchrun's variables"
    # GPUs per node (requests == limits for an extended resource) and the GPU placement only with GPUs
    gpu = load_platform().gpu
    res = tr["resourcesPerNode"]
    node = _node_template(job)
    if gpus:
        assert res["limits"][gpu["accelerator_type"]] == res["requests"][gpu["accelerator_type"]] == str(gpus)
        assert node["spec"]["nodeSelector"] == gpu["node_selector"]
        assert node["spec"]["tolerations"] == gpu["tolerations"]
    else:
        assert not any("gpu" in k for kind in res.values() for k in kind)
        assert "nodeSelector" not in node["spec"] and "tolerations" not in node["spec"]
    assert res["requests"]["memory"] == gpu["memory_request"]
    # the shared data volume at the path the manifest is on, and the label the NetworkPolicies admit
    assert node["spec"]["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": DATA_PVC}}]
    (container,) = node["spec"]["containers"]
    assert container == {"name": "node", "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}]}
    assert node["metadata"]["labels"] == {CLIENT_POD_LABEL[0]: CLIENT_POD_LABEL[1]}


def test_the_schema_check_is_not_vacuous(validator):
    good = render("--task", "arms", "--workers", "2", "--name", "galmorph-arms-t2")
    assert validator.is_valid(good)
    bad = json.loads(json.dumps(good))
    bad["spec"]["trainer"]["numNodes"] = "2"
    assert not validator.is_valid(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] = "one"  # not a quantity
    assert not validator.is_valid(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["podSpecOverrides"] = []  # Trainer <= 2.1's field: not in the 2.3 API
    assert not validator.is_valid(bad)
    bad = json.loads(json.dumps(good))
    _node_template(bad)["spec"]["tolerations"][0]["effect"] = "NoScheduled"
    assert not validator.is_valid(bad)
    for name in ("Galmorph-arms", "1-arms", "a" * 64):  # the CRD's CEL rules on metadata.name
        bad = json.loads(json.dumps(good))
        bad["metadata"]["name"] = name
        assert not validator.is_valid(bad), name


def test_trainjob_names_and_bad_requests_are_refused():
    assert re.fullmatch(r"galmorph-lopsided-[0-9a-f]{8}", tj.trainjob_name("lopsided"))
    from galmorph.cli import main

    for args, msg in ((["--name", "Bad_Name"], "RFC 1035"), (["--set", "max_epochs=many"], "max_epochs"),
                      (["--set", "no_such_key=1"], "no_such_key"), (["--workers", "0"], "workers")):
        r = CliRunner().invoke(main, ["trainjob", "render", "--task", "chirality", *args])
        assert r.exit_code != 0 and msg in r.output, (args, r.output)


def test_overrides_reach_galmorph_train_typed_as_given():
    from galmorph.training.config import parse_set_items

    overrides = {"max_epochs": 3, "lr": 0.0003, "mirror_copies": True, "arch": "resnet18", "trials": 2}
    req = tj.TrainJobRequest(name="galmorph-chirality-x", task="chirality", manifest="/data/m.parquet",
                             overrides=overrides)
    _, args = tj.trainer_command(req)
    items = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert parse_set_items(items) == overrides


def _train_options() -> set[str]:
    from galmorph.cli import main

    return {o for p in main.commands["train"].params for o in getattr(p, "opts", ())}


def test_the_trainjob_runs_options_galmorph_train_has():
    """Every option the nodes' ``galmorph train`` receives exists, but the three of the DDP half of #28."""
    req = tj.TrainJobRequest(name="galmorph-arms-x", task="arms", manifest="/data/m.parquet", overrides={"lr": 1e-3},
                             experiment="e", register=False, out_dir="/data/w")
    _, args = tj.trainer_command(req)
    passed = {a for a in args if a.startswith("--")}
    assert set(tj.DDP_OPTIONS) <= passed
    missing = passed - _train_options() - set(tj.DDP_OPTIONS)
    assert not missing, f"galmorph train has no {sorted(missing)}"


def test_galmorph_train_has_the_ddp_options():
    assert set(tj.DDP_OPTIONS) <= _train_options()


def test_trainer_defaults_override_the_gpu_defaults():
    from galmorph.steps.trainjob import placement

    defaults = {"runtime": "torch-cuda", "accelerator_type": "amd.com/gpu", "node_selector": {"pool": "a100"},
                "tolerations": [], "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
                "active_deadline_seconds": 3600}
    pl = placement(defaults)
    req = tj.TrainJobRequest(name="galmorph-arms-y", task="arms", manifest="/data/m.parquet", gpus_per_worker=4)
    job = tj.build_trainjob(req, pl)
    assert job["spec"]["runtimeRef"] == {"name": "torch-cuda"} and job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["trainer"]["resourcesPerNode"] == {"requests": {"cpu": "2", "memory": "8Gi", "amd.com/gpu": "4"},
                                                          "limits": {"amd.com/gpu": "4"}}
    node = _node_template(job)["spec"]
    assert node["nodeSelector"] == {"pool": "a100"} and "tolerations" not in node  # explicitly none


# ---------------------------------------------------------------------------------------------
# submit and watch, through the kubernetes client down to urllib3
# ---------------------------------------------------------------------------------------------
class _Body(io.BytesIO):
    """A response body that reports itself closed at its end, as http.client's response does."""

    def isclosed(self) -> bool:
        return self.tell() >= len(self.getbuffer())


def _status(*conds: tuple[str, str, str], active: int = 0, succeeded: int = 0) -> dict:
    status: dict = {"conditions": [{"type": t, "status": "True", "reason": r, "message": m,
                                    "lastTransitionTime": "2026-01-01T00:00:00Z"} for t, r, m in conds]}
    status["jobsStatus"] = [{"name": "node", "active": active, "ready": active, "succeeded": succeeded,
                             "failed": 0, "suspended": 0}]
    return status


CREATED = ("Created", "JobsCreationSucceeded", "Succeeded to create Jobs")


class FakeKube:
    """A scripted Kubernetes API server behind ``urllib3.PoolManager.urlopen`` (see the module docstring):
    records each request and answers TrainJob create/get/watch/delete from a script of states."""

    def __init__(self, watches: list[list[dict]], get_states: list[dict] | None = None, create_status: int = 201,
                 on_create=None, on_watch=None):
        self.requests: list[dict] = []
        self.watches = list(watches)          # each: the events of one watch response
        self.get_states = list(get_states or [{}])
        self.create_status = create_status
        self.on_create, self.on_watch = on_create, on_watch
        self.obj: dict | None = None
        self.rv = 0

    def _obj(self, status: dict) -> dict:
        self.rv += 1
        return {**self.obj, "metadata": {**self.obj["metadata"], "resourceVersion": str(self.rv), "uid": "u-1"},
                "status": status}

    @staticmethod
    def _response(payload, status=200, preload=True):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return urllib3.HTTPResponse(body=_Body(data), status=status, preload_content=preload,
                                    headers={"Content-Type": "application/json"}, reason="scripted")

    def urlopen(self, pool, method, url, redirect=True, **kw):  # noqa: ARG002 - urllib3's signature
        parsed = urllib.parse.urlsplit(url)
        body = kw.get("body")
        req = {"method": method, "path": parsed.path, "query": dict(urllib.parse.parse_qsl(parsed.query)),
               "body": json.loads(body) if body else None, "headers": dict(kw.get("headers") or {})}
        self.requests.append(req)
        preload = kw.get("preload_content", True)
        base = f"/apis/{tj.GROUP}/{tj.VERSION}/namespaces/{NS}/{tj.PLURAL}"
        if method == "POST" and parsed.path == base:
            if self.create_status != 201:
                return self._response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "message": "scripted refusal", "code": self.create_status},
                                      self.create_status, preload)
            self.obj = req["body"]
            if self.on_create:
                self.on_create(self.obj)
            return self._response(self._obj({}), 201, preload)
        name = self.obj["metadata"]["name"] if self.obj else "?"
        if method == "GET" and parsed.path == f"{base}/{name}":
            state = self.get_states.pop(0) if len(self.get_states) > 1 else self.get_states[0]
            return self._response(self._obj(state), 200, preload)
        if method == "GET" and parsed.path == base and req["query"].get("watch") == "True":
            events = self.watches.pop(0) if self.watches else []
            if self.on_watch:
                self.on_watch(events)
            lines = []
            for ev in events:
                if ev["type"] == "ERROR":
                    lines.append(ev)
                else:
                    lines.append({"type": ev["type"], "object": self._obj(ev["status"])})
            return self._response(b"".join(json.dumps(x).encode() + b"\n" for x in lines), 200, preload)
        if method == "DELETE" and parsed.path == f"{base}/{name}":
            return self._response({"kind": "Status", "apiVersion": "v1", "status": "Success"}, 200, preload)
        return self._response({"kind": "Status", "code": 404, "message": f"no route {method} {url}"}, 404, preload)


@pytest.fixture
def api():
    from kubernetes import client

    return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=HOST)))


@pytest.fixture
def kube(monkeypatch):
    """Install a FakeKube at urllib3's boundary: ``kube(watches, ...)`` returns it."""
    def make(*args, **kwargs) -> FakeKube:
        fake = FakeKube(*args, **kwargs)
        monkeypatch.setattr(urllib3.PoolManager, "urlopen", lambda pool, *a, **k: fake.urlopen(pool, *a, **k))
        return fake
    return make


def _body(name="galmorph-chirality-w1", workers=2, gpus=1) -> dict:
    req = tj.TrainJobRequest(name=name, task="chirality", manifest="/data/trainjobs/x/manifest.parquet",
                             workers=workers, gpus_per_worker=gpus, namespace=NS,
                             tracking_uri="http://mlflow:5000")
    from galmorph.steps.trainjob import placement

    return tj.build_trainjob(req, placement({}))


def test_submit_and_watch_until_complete(api, kube, validator, caplog):
    fake = kube(watches=[[{"type": "MODIFIED", "status": _status(CREATED, active=2)},
                          {"type": "MODIFIED", "status": _status(CREATED, ("Complete", "JobsCompleted",
                                                                           "TrainJob is completed"), succeeded=2)}]],
                get_states=[_status(CREATED)])
    body = _body()
    with caplog.at_level(logging.INFO, logger="galmorph.training.trainjob"):
        done = tj.run_trainjob(body, NS, api=api)
    assert tj.trainjob_state(done)[0] == "Complete"
    post, get, watch = fake.requests
    # the create: POST of exactly the built object to the namespaced trainjobs collection, as JSON
    assert post["method"] == "POST" and post["path"] == f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
    assert post["body"] == body and post["headers"]["Content-Type"] == "application/json"
    assert validator.is_valid(post["body"])
    # then a read and a watch of that one object from the read's resourceVersion
    assert get["method"] == "GET" and get["path"].endswith("/trainjobs/galmorph-chirality-w1")
    assert watch["method"] == "GET" and watch["path"].endswith("/trainjobs")
    assert watch["query"]["watch"] == "True"
    assert watch["query"]["fieldSelector"] == "metadata.name=galmorph-chirality-w1"
    assert watch["query"]["resourceVersion"] == "2" and int(watch["query"]["timeoutSeconds"]) > 0
    # every state change in the log (the KFP step's log), in order, once each
    states = [m for m in caplog.messages if m.startswith(f"TrainJob {NS}/galmorph-chirality-w1: ")]
    assert [s.split(": ", 1)[1].split(" ")[0] for s in states] == ["Created", "Running", "Complete"], states
    assert "node: active 2, ready 2" in states[1]
    assert not [r for r in fake.requests if r["method"] == "DELETE"]


def test_a_failed_trainjob_is_a_clear_error_and_kept_for_its_logs(api, kube):
    msg = "jobset completed with failure: node-1 exited with 1 (NCCL error: unhandled system error)"
    fake = kube(watches=[[{"type": "MODIFIED", "status": _status(CREATED, active=2)},
                          {"type": "MODIFIED", "status": _status(CREATED, ("Failed", "FailedJobs", msg))}]],
                get_states=[_status(CREATED)])
    with pytest.raises(tj.TrainJobFailed) as err:
        tj.run_trainjob(_body(), NS, api=api)
    text = str(err.value)
    assert "galmorph-chirality-w1 failed" in text and "FailedJobs" in text and "NCCL error" in text
    assert f"kubectl -n {NS} logs" in text
    assert not [r for r in fake.requests if r["method"] == "DELETE"]


def test_an_expired_watch_is_resumed_from_a_fresh_read(api, kube):
    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                        "reason": "Expired", "message": "too old resource version"}}
    fake = kube(watches=[[{"type": "MODIFIED", "status": _status(CREATED, active=2)}, gone],
                         [{"type": "MODIFIED", "status": _status(CREATED, ("Complete", "JobsCompleted", "done"))}]],
                get_states=[_status(CREATED), _status(CREATED, active=2)])
    done = tj.run_trainjob(_body(), NS, api=api)
    assert tj.trainjob_state(done)[0] == "Complete"
    assert [(r["method"], "watch" in r["query"]) for r in fake.requests] == [
        ("POST", False), ("GET", False), ("GET", True), ("GET", False), ("GET", True)]


@pytest.mark.parametrize("code,hint", [(404, "install Kubeflow Trainer"), (403, "trainer.enabled=true"),
                                       (409, "exists already")])
def test_refused_submissions_say_why(api, kube, code, hint):
    kube(watches=[], create_status=code)
    with pytest.raises(tj.TrainJobError, match=hint) as err:
        tj.run_trainjob(_body(), NS, api=api)
    assert f"namespace {NS}" in str(err.value) and "scripted refusal" in str(err.value)


def test_a_wait_that_ends_first_deletes_the_trainjob(api, kube):
    fake = kube(watches=[], get_states=[_status(CREATED, active=2)])
    with pytest.raises(tj.TrainJobError, match="did not finish within"):
        tj.run_trainjob(_body(), NS, api=api, timeout_s=0)
    delete = fake.requests[-1]
    assert delete["method"] == "DELETE" and delete["path"].endswith("/trainjobs/galmorph-chirality-w1")
    assert delete["query"]["propagationPolicy"] == "Foreground"


def test_scripted_api_objects_are_valid_trainjobs(validator):
    """The status objects the scripted server answers with are TrainJobs as the schema describes them."""
    fake = FakeKube(watches=[])
    fake.obj = _body()
    for status in (_status(CREATED), _status(CREATED, active=2), _status(CREATED, ("Failed", "FailedJobs", "x")),
                   _status(CREATED, ("Complete", "JobsCompleted", "y"))):
        obj = fake._obj(status)
        errors = list(validator.iter_errors(obj))
        assert not errors, [e.message for e in errors]


# ---------------------------------------------------------------------------------------------
# the train step
# ---------------------------------------------------------------------------------------------
def _play_rank0(body: dict, monkeypatch) -> None:
    """What rank 0 of the TrainJob does in MLflow (galmorph.training.runner): a parent run and a trial run
    created with the environment the TrainJob gives its nodes, the best trial's model registered and the
    parent tagged with it."""
    import mlflow

    env = {e["name"]: e.get("value") for e in body["spec"]["trainer"]["env"]}
    args = body["spec"]["trainer"]["args"]
    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", env["MLFLOW_RUN_CONTEXT"])
    task = _arg(args, "--task")
    mlflow.set_experiment(f"galmorph-{task}")
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=f"{task}-tiny") as parent:
        with mlflow.start_run(run_name="trial-0", nested=True) as child:
            mlflow.log_metrics({"test_accuracy": 0.75, "test_f1_macro": 0.7})
        try:
            client.create_registered_model(f"galmorph-{task}")
        except mlflow.exceptions.MlflowException:
            pass
        mv = client.create_model_version(f"galmorph-{task}", f"runs:/{child.info.run_id}/model",
                                         run_id=child.info.run_id)
        mlflow.log_metrics({"test_accuracy_mean": 0.75})
        mlflow.set_tags({"galmorph.best_run_id": child.info.run_id,
                         "galmorph.model_uri": f"models:/galmorph-{task}/{mv.version}"})
    monkeypatch.delenv("MLFLOW_RUN_CONTEXT")


@pytest.fixture
def sqlite_mlflow(tmp_path, monkeypatch):
    """A private sqlite tracking URI for the step (which points mlflow and the environment at it); mlflow's
    process-wide URI and active experiment are put back afterwards."""
    import mlflow
    from mlflow.tracking import fluent

    old, old_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield uri
    mlflow.set_tracking_uri(old)
    mlflow.set_registry_uri(old_registry)


def test_train_step_with_workers_trains_on_a_trainjob(sim_chirality, tmp_path, monkeypatch, api, kube, validator,
                                                      sqlite_mlflow):
    import mlflow

    from galmorph import steps

    uri = sqlite_mlflow
    staging = tmp_path / "shared" / "trainjobs"
    monkeypatch.setenv("GALMORPH_TRAINER_DEFAULTS", json.dumps({"namespace": NS, "staging_dir": str(staging)}))
    monkeypatch.setattr(tj, "custom_objects_api", lambda: api)
    seen = {}

    def on_create(body):  # the dataset is on the shared volume before the nodes start
        args = body["spec"]["trainer"]["args"]
        manifest = Path(_arg(args, "--manifest"))
        from galmorph.catalogue.manifest import read_manifest

        df = read_manifest(manifest)
        seen["manifest"], seen["rows"] = manifest, len(df)
        seen["images_staged"] = all(Path(u).is_relative_to(staging) and Path(u).exists() for u in df["image_uri"])
        seen["valid"] = validator.is_valid(body)
        seen["body"] = body

    fake = kube(watches=[[{"type": "MODIFIED", "status": _status(CREATED, active=3)},
                          {"type": "MODIFIED", "status": _status(CREATED, ("Complete", "JobsCompleted", "done"))}]],
                get_states=[_status(CREATED)], on_create=on_create,
                on_watch=lambda events: _play_rank0(seen["body"], monkeypatch))
    metadata, metrics = {}, {}
    out = steps.train("chirality", str(sim_chirality["manifest"]), tmp_path / "model", preset="tiny",
                      overrides_json='{"max_epochs": 2}', tracking_uri=uri, workers=3, gpus_per_worker=2,
                      model_metadata=metadata, metrics=metrics)
    body = seen["body"]
    assert seen["valid"] and seen["images_staged"] and seen["rows"] > 0
    assert seen["manifest"].is_relative_to(staging / body["metadata"]["name"])
    assert body["metadata"]["namespace"] == NS and body["spec"]["trainer"]["numNodes"] == 3
    args = body["spec"]["trainer"]["args"]
    assert (_arg(args, "--devices"), _arg(args, "--num-nodes"), _arg(args, "--set")) == ("2", "3", "max_epochs=2")
    # the outputs are rank 0's registered version, like the one-process path's
    mv = mlflow.MlflowClient(uri).get_model_version("galmorph-chirality", out.registered_version)
    assert out.model_uri == f"models:/galmorph-chirality/{mv.version}" and out.run_id == mv.run_id
    assert metadata["registered_version"] == out.registered_version and metadata["drift_reference"]
    assert metrics["test_accuracy"] == 0.75
    assert json.loads((tmp_path / "model" / "model.json").read_text())["model_uri"] == out.model_uri
    assert not (staging / body["metadata"]["name"]).exists(), "the staged copy goes once the job is complete"
    assert [r["method"] for r in fake.requests] == ["POST", "GET", "GET"]


def test_train_step_with_one_worker_keeps_the_one_process_path(sim_chirality, tmp_path, monkeypatch, kube,
                                                               sqlite_mlflow):
    from galmorph import steps, training
    from galmorph.steps import trainjob as step_trainjob

    fake = kube(watches=[])
    calls = []

    class Result:
        run_id = parent_run_id = ""
        model_uri, registered_name, registered_version, metrics = "runs:/r/model", None, None, {"test_accuracy": 1.0}

    monkeypatch.setattr(training, "train", lambda *a, **k: calls.append(k) or Result())
    monkeypatch.setattr(step_trainjob, "train_on_trainjob", lambda *a, **k: pytest.fail("no TrainJob with 1 worker"))
    out = steps.train("chirality", str(sim_chirality["manifest"]), tmp_path / "model", preset="tiny",
                      tracking_uri=sqlite_mlflow, workers=1, gpus_per_worker=4)
    assert len(calls) == 1 and out.model_uri == "runs:/r/model" and fake.requests == []


def test_the_pipeline_trains_in_one_process_unless_workers_above_one():
    from galmorph.ops import compiled_dir
    from galmorph.steps.trainjob import TRAINER_CONFIGMAP, TRAINER_CONFIGMAP_KEY, TRAINER_DEFAULTS_ENV

    ir, platform = yaml.safe_load_all((compiled_dir() / "training.yaml").read_text())
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params["workers"]["defaultValue"] == 1 and params["gpus_per_worker"]["defaultValue"] == 1
    comps = ir["components"]
    branches = next(c for c in comps.values() if any(t.get("taskInfo", {}).get("name") == "one-process"
                                                     for t in (c.get("dag") or {}).get("tasks", {}).values()))
    conds = {t["taskInfo"]["name"]: t["triggerPolicy"]["condition"] for t in branches["dag"]["tasks"].values()}
    assert conds["one-process"].endswith("['pipelinechannel--workers']) <= 1")
    assert conds["trainjob"].startswith("!(") and "<= 1" in conds["trainjob"]
    execs = ir["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # one process: the GPU task as before; the TrainJob branch: a CPU pod with the trainer defaults and the data PVC
    assert execs["exec-train"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "resources" not in execs["exec-train-2"]["container"]
    assert "pvcMount" not in k8s["exec-train"] and "configMapAsEnv" not in k8s["exec-train"]
    (cm,) = k8s["exec-train-2"]["configMapAsEnv"]
    assert cm["configMapName"] == TRAINER_CONFIGMAP and cm["optional"]
    assert cm["keyToEnv"] == [{"configMapKey": TRAINER_CONFIGMAP_KEY, "envVar": TRAINER_DEFAULTS_ENV}]
    assert k8s["exec-train-2"]["pvcMount"][0]["mountPath"] == DATA_MOUNT
    assert k8s["exec-train-2"]["secretAsEnv"][0]["secretName"] == MLFLOW_SECRET
    # evaluate and promote take the model of whichever branch ran
    outs = branches["outputDefinitions"]["parameters"]
    assert len(outs) == 2
    tasks = dict(ir["root"]["dag"]["tasks"])
    for c in comps.values():
        tasks.update((c.get("dag") or {}).get("tasks", {}))
    assert tasks["evaluate"]["inputs"]["parameters"]["model_uri"]["taskOutputParameter"]["outputParameterKey"] in outs
    assert tasks["promote"]["inputs"]["parameters"]["version"]["taskOutputParameter"]["outputParameterKey"] in outs
