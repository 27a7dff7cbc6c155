"""Data-parallel training on Kubeflow Trainer v2: the ``TrainJob`` that runs ``galmorph train`` on several
nodes, its submission, the watch of its status, and the read-back of the model that rank 0 registered.

The TrainJob (``trainer.kubeflow.org/v1alpha1``, runtime ``torch-distributed``) runs in each of
``workers`` nodes::

    torchrun --no-python galmorph train --task T --preset P --manifest M \\
        --devices G --num-nodes N --accelerator gpu|cpu [--set KEY=VALUE ...]

The Trainer's Torch plugin gives every node the ``PET_*`` variables (nodes, processes per node = G,
node rank, master address and port) that ``torchrun`` reads; ``torchrun`` starts G processes per node
and Lightning takes the world from their torchelastic environment (``devices * num_nodes`` ranks). The
training manifest and its images lie on the shared data volume, mounted at the same path in every node.

Every MLflow run the job creates carries the tag :data:`RUN_TAG` = the TrainJob's name (MLflow's
``MLFLOW_RUN_CONTEXT`` variable adds it to each run ``mlflow.start_run`` creates), so that
:func:`find_trainjob_result` finds the model the job registered without reading pod logs.

Nothing here knows the cluster's placement: callers pass a :class:`Placement` (the step library builds
it from ``infra/gpu-defaults.yaml``, the chart's ``trainer`` values and the platform's Secret and volume
names: :mod:`galmorph.steps.trainjob`). Kubernetes is reached only through the ``kubernetes`` client's
``CustomObjectsApi``.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_RUNTIME = "torch-distributed"
#: The replicated job and container of the torch runtimes that run the trainer.
TRAINER_NODE = "node"
#: ``runtimePatches[].manager`` of the patches galmorph sets.
PATCH_MANAGER = "galmorph.io/trainjob"
#: MLflow tag on every run of a TrainJob (value: the TrainJob's name).
RUN_TAG = "galmorph.trainjob"
#: Kubernetes label on the TrainJob naming the galmorph task.
TASK_LABEL = "galmorph.io/task"
#: The ``galmorph train`` options a TrainJob passes to every node (the Lightning Trainer's ``devices``,
#: ``num_nodes`` and ``accelerator``; each node's ranks run under torchrun).
DDP_OPTIONS = ("--devices", "--num-nodes", "--accelerator")
#: The condition types that end a TrainJob (Trainer 2.x; the others: Created, Suspended).
TERMINAL = ("Complete", "Failed")
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(RuntimeError):
    """A TrainJob could not be submitted, watched or read back."""


class TrainJobFailed(TrainJobError):
    """The TrainJob reached its ``Failed`` condition."""


# ---------------------------------------------------------------------------------------------
# what to run and where
# ---------------------------------------------------------------------------------------------
@dataclass
class Placement:
    """Where the training nodes run and what they get, as the cluster defines it.

    ``node_selector`` and ``tolerations`` place GPU nodes and apply only when the job asks for GPUs;
    ``resources`` are per node, besides the GPUs (``{"requests": {...}, "limits": {...}}``)."""

    runtime: str = DEFAULT_RUNTIME
    accelerator_type: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    credentials_secret: str = ""                                 # Secret with the MLflow credentials
    credentials_env: dict[str, str] = field(default_factory=dict)  # its key -> environment variable
    data_pvc: str = ""                                           # the shared data volume (PVC name)
    data_mount: str = "/data"
    pod_labels: dict[str, str] = field(default_factory=dict)
    service_account: str = ""
    active_deadline_seconds: int = 0                             # 0: no deadline

    @classmethod
    def from_defaults(cls, gpu_defaults: dict[str, Any], trainer: dict[str, Any] | None = None,
                      **fixed: Any) -> Placement:
        """Placement from the GPU defaults (``infra/gpu-defaults.yaml`` keys: ``accelerator_type``,
        ``node_selector``, ``tolerations``, ``cpu_request``, ``memory_request``, ``memory_limit``),
        overridden by the trainer defaults (the chart's ``trainer`` values as the ``galmorph-trainer``
        ConfigMap holds them: ``runtime``, ``accelerator_type``, ``node_selector``, ``tolerations``,
        ``resources``, ``service_account``, ``active_deadline_seconds``), plus ``fixed`` fields."""
        g, t = dict(gpu_defaults or {}), dict(trainer or {})
        resources: dict[str, dict[str, str]] = {}
        for key, (kind, res) in {"cpu_request": ("requests", "cpu"), "memory_request": ("requests", "memory"),
                                 "cpu_limit": ("limits", "cpu"), "memory_limit": ("limits", "memory")}.items():
            if g.get(key):
                resources.setdefault(kind, {})[res] = str(g[key])
        if t.get("resources"):
            resources = {k: {r: str(q) for r, q in (v or {}).items()} for k, v in t["resources"].items() if v}
        values: dict[str, Any] = {
            "runtime": t.get("runtime") or DEFAULT_RUNTIME,
            "accelerator_type": str(t.get("accelerator_type") or g.get("accelerator_type") or "nvidia.com/gpu"),
            "node_selector": {str(k): str(v) for k, v in
                              ((t if "node_selector" in t else g).get("node_selector") or {}).items()},
            "tolerations": list((t if "tolerations" in t else g).get("tolerations") or []),
            "resources": resources,
            "service_account": str(t.get("service_account") or ""),
            "active_deadline_seconds": int(t.get("active_deadline_seconds") or 0),
        }
        values.update(fixed)
        return cls(**values)


@dataclass
class TrainJobRequest:
    """One data-parallel training run: ``workers`` nodes with ``gpus_per_worker`` GPUs each (0: CPU
    nodes, one process each). ``manifest`` and ``out_dir`` are paths as the training pods see them."""

    name: str
    task: str
    manifest: str
    preset: str = "tiny"
    workers: int = 2
    gpus_per_worker: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)
    image: str = ""
    tracking_uri: str = ""
    experiment: str = ""
    register: bool = True
    out_dir: str = ""
    namespace: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or len(self.name) > 63:
            raise TrainJobError(f"TrainJob name {self.name!r}: must be a lower-case RFC 1035 label (a letter, then "
                                "letters, digits or '-'), at most 63 characters")
        if self.workers < 1:
            raise TrainJobError(f"workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise TrainJobError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")

    @property
    def accelerator(self) -> str:
        return "gpu" if self.gpus_per_worker > 0 else "cpu"

    @property
    def procs_per_node(self) -> int:
        return self.gpus_per_worker if self.gpus_per_worker > 0 else 1


def trainjob_name(task: str, suffix: str | None = None) -> str:
    """A fresh TrainJob name: ``galmorph-<task>-<8 hex>`` (an RFC 1035 label, short enough for the pod
    and Service names that the Trainer derives from it)."""
    return f"galmorph-{task}-{suffix or uuid.uuid4().hex[:8]}"


def set_item(key: str, value: Any) -> str:
    """An override as a ``--set KEY=VALUE`` item that ``galmorph train`` types back to ``value``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"{key}={text}"


def trainer_command(req: TrainJobRequest) -> tuple[list[str], list[str]]:
    """The trainer container's ``command`` and ``args``: ``torchrun --no-python galmorph train ...``."""
    args = ["--task", req.task, "--preset", req.preset, "--manifest", req.manifest,
            "--devices", str(req.procs_per_node), "--num-nodes", str(req.workers), "--accelerator", req.accelerator]
    for key in sorted(req.overrides):
        args += ["--set", set_item(key, req.overrides[key])]
    if req.experiment:
        args += ["--experiment", req.experiment]
    if not req.register:
        args.append("--no-register")
    if req.out_dir:
        args += ["--out-dir", req.out_dir]
    return ["torchrun", "--no-python", "galmorph", "train"], args


def build_trainjob(req: TrainJobRequest, placement: Placement) -> dict[str, Any]:
    """The ``TrainJob`` object (a dict, as ``kubectl apply`` and the API take it) for ``req``."""
    command, args = trainer_command(req)
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if req.tracking_uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": req.tracking_uri})
    if placement.credentials_secret:
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": placement.credentials_secret, "key": key,
                                                             "optional": True}}}
                for key, var in placement.credentials_env.items()]
    env.append({"name": "MLFLOW_RUN_CONTEXT", "value": json.dumps({RUN_TAG: req.name})})

    resources: dict[str, dict[str, str]] = {k: dict(v) for k, v in placement.resources.items() if v}
    if req.gpus_per_worker > 0:  # an extended resource: requests == limits
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})[placement.accelerator_type] = str(req.gpus_per_worker)
    trainer: dict[str, Any] = {"image": req.image, "command": command, "args": args, "env": env,
                               "numNodes": req.workers, "numProcPerNode": req.procs_per_node}
    if not req.image:
        del trainer["image"]
    if resources:
        trainer["resourcesPerNode"] = resources

    pod_spec: dict[str, Any] = {}
    if req.gpus_per_worker > 0:
        if placement.node_selector:
            pod_spec["nodeSelector"] = dict(placement.node_selector)
        if placement.tolerations:
            pod_spec["tolerations"] = [dict(t) for t in placement.tolerations]
    if placement.service_account:
        pod_spec["serviceAccountName"] = placement.service_account
    if placement.data_pvc:
        pod_spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": placement.data_pvc}}]
        pod_spec["containers"] = [{"name": TRAINER_NODE,
                                   "volumeMounts": [{"name": "data", "mountPath": placement.data_mount}]}]
    pod_template: dict[str, Any] = {}
    if placement.pod_labels:
        pod_template["metadata"] = {"labels": dict(placement.pod_labels)}
    if pod_spec:
        pod_template["spec"] = pod_spec

    spec: dict[str, Any] = {"runtimeRef": {"name": placement.runtime}, "trainer": trainer}
    if pod_template:
        spec["runtimePatches"] = [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": TRAINER_NODE, "template": {"spec": {"template": pod_template}}}]}}}}]
    if placement.active_deadline_seconds > 0:
        spec["activeDeadlineSeconds"] = int(placement.active_deadline_seconds)
    metadata: dict[str, Any] = {"name": req.name, "labels": {"app.kubernetes.io/part-of": "galmorph",
                                                             "app.kubernetes.io/component": "trainjob",
                                                             TASK_LABEL: req.task}}
    if req.namespace:
        metadata["namespace"] = req.namespace
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def to_yaml(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------
# submit and watch
# ---------------------------------------------------------------------------------------------
def current_namespace() -> str:
    """The namespace of the pod this runs in (its ServiceAccount's), or ``""`` outside a pod."""
    try:
        return _SA_NAMESPACE.read_text().strip()
    except OSError:
        return ""


def custom_objects_api():
    """A ``kubernetes.client.CustomObjectsApi``: in-cluster credentials in a pod, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise TrainJobError(f"no Kubernetes API to submit a TrainJob to: not in a pod and no kubeconfig "
                                f"({exc})") from exc
    return client.CustomObjectsApi()


def _api_error(exc, what: str, namespace: str) -> TrainJobError:
    status = getattr(exc, "status", None)
    detail = ""
    try:
        detail = json.loads(exc.body).get("message", "") if getattr(exc, "body", None) else ""
    except (TypeError, ValueError):
        detail = str(exc.body)
    if status == 404:
        hint = (f"no {PLURAL}.{GROUP} API in this cluster, or no such TrainJob: install Kubeflow Trainer "
                f"(its CRDs and the {DEFAULT_RUNTIME} ClusterTrainingRuntime)")
    elif status == 403:
        hint = (f"the pipeline's ServiceAccount may not use {PLURAL}.{GROUP} in namespace {namespace}: install "
                "the galmorph chart with trainer.enabled=true (Role + RoleBinding for it)")
    elif status == 409:
        hint = "a TrainJob of that name exists already"
    elif status == 422:
        hint = "the API server rejected the TrainJob (an older Kubeflow Trainer than 2.3?)"
    else:
        hint = f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    return TrainJobError(f"{what} in namespace {namespace}: {hint}" + (f" ({detail})" if detail else ""))


def submit_trainjob(body: dict[str, Any], namespace: str, api=None) -> dict[str, Any]:
    """Create the TrainJob (``POST .../namespaces/<ns>/trainjobs``); returns the created object."""
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    name = body["metadata"]["name"]
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as exc:
        raise _api_error(exc, f"cannot create TrainJob {name}", namespace) from exc
    log.info("TrainJob %s/%s submitted: %d node(s) x %s, runtime %s", namespace, name,
             body["spec"]["trainer"]["numNodes"], _per_node(body), body["spec"]["runtimeRef"]["name"])
    return created


def _per_node(body: dict[str, Any]) -> str:
    tr = body["spec"]["trainer"]
    limits = (tr.get("resourcesPerNode") or {}).get("limits") or {}
    gpus = [f"{v} {k}" for k, v in limits.items() if "gpu" in k.lower()]
    return ", ".join(gpus) or f"{tr.get('numProcPerNode', 1)} CPU process(es)"


def delete_trainjob(name: str, namespace: str, api=None) -> None:
    """Delete the TrainJob (its pods go with it: foreground propagation)."""
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                            propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404:
            raise _api_error(exc, f"cannot delete TrainJob {name}", namespace) from exc


def trainjob_state(obj: dict[str, Any]) -> tuple[str, str]:
    """``(state, detail)`` of a TrainJob object: the terminal condition that is true (``Complete``,
    ``Failed``); else ``Running`` while a child job has active pods; else the latest true condition
    (``Created``, ``Suspended``); else ``Pending``. The detail is the condition's reason and message
    (for ``Running``: the child jobs' pod counts)."""
    status = obj.get("status") or {}
    conds = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    jobs = status.get("jobsStatus") or []
    cond = next((c for t in TERMINAL for c in conds if c.get("type") == t), None)
    if cond is None and any((js.get("active") or 0) > 0 for js in jobs):
        counts = ["{}: {}".format(js.get("name", "?"), ", ".join(f"{k} {js[k]}" for k in
                                                               ("active", "ready", "succeeded", "failed")
                                                               if js.get(k)))
                  for js in jobs]
        return "Running", "; ".join(counts)
    cond = cond or (conds[-1] if conds else None)
    if cond is None:
        return "Pending", ""
    return cond["type"], ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)


def wait_for_trainjob(name: str, namespace: str, api=None, timeout_s: float | None = None,
                      watch_timeout_s: int = 300) -> dict[str, Any]:
    """Watch the TrainJob until it is ``Complete`` (returns the object) or ``Failed``
    (:class:`TrainJobFailed` with the Trainer's reason and message); every change of state is logged.

    Reads the object, then watches it from that resourceVersion (``watch=true``, field selector on the
    name) for up to ``watch_timeout_s``; when the watch ends or expires (HTTP 410) it reads again and
    re-watches. ``timeout_s`` (None: none) bounds the whole wait (:class:`TrainJobError`)."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last: tuple[str, str] | None = None

    def seen(obj: dict[str, Any]) -> bool:
        nonlocal last
        state = trainjob_state(obj)
        if state != last:
            log.info("TrainJob %s/%s: %s%s", namespace, name, state[0], f" ({state[1]})" if state[1] else "")
            last = state
        if state[0] == "Failed":
            raise TrainJobFailed(f"TrainJob {namespace}/{name} failed: {state[1] or 'no reason given'} "
                                 f"(kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name})")
        return state[0] == "Complete"

    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            raise _api_error(exc, f"cannot read TrainJob {name}", namespace) from exc
        if seen(obj):
            return obj
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TrainJobError(f"TrainJob {namespace}/{name} did not finish within {timeout_s:.0f} s "
                                f"(last state {last[0] if last else 'unknown'})")
        w = watch.Watch()
        try:
            for event in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                                  field_selector=f"metadata.name={name}",
                                  resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
                                  timeout_seconds=int(min(watch_timeout_s, remaining or watch_timeout_s)) or 1):
                if event["type"] == "DELETED":
                    raise TrainJobError(f"TrainJob {namespace}/{name} was deleted before it finished")
                if seen(event["object"]):
                    w.stop()
                    return event["object"]
        except ApiException as exc:
            if exc.status != 410:  # 410 Gone: the resourceVersion expired; read again and re-watch
                raise _api_error(exc, f"cannot watch TrainJob {name}", namespace) from exc
        finally:
            w.stop()


def run_trainjob(body: dict[str, Any], namespace: str, api=None, timeout_s: float | None = None) -> dict[str, Any]:
    """Submit the TrainJob and wait for it (:func:`wait_for_trainjob`). When the wait ends other than by
    the job's own end (timeout, the step's pod being stopped: SIGTERM is turned into an exit here), the
    TrainJob is deleted, so that no orphaned nodes keep their GPUs; a failed TrainJob is kept for its logs."""
    api = api or custom_objects_api()
    name = body["metadata"]["name"]
    submit_trainjob(body, namespace, api=api)
    handles_sigterm = threading.current_thread() is threading.main_thread()
    if handles_sigterm:
        def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
            raise SystemExit(f"stopped by signal {signum}")

        previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return wait_for_trainjob(name, namespace, api=api, timeout_s=timeout_s)
    except TrainJobFailed:
        raise
    except BaseException:
        log.warning("TrainJob %s/%s: stopping it (the wait ended before the job did)", namespace, name)
        try:
            delete_trainjob(name, namespace, api=api)
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("TrainJob %s/%s could not be deleted", namespace, name)
        raise
    finally:
        if handles_sigterm:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# the result: what rank 0 logged and registered
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainJobResult:
    """What the TrainJob trained, read back from MLflow (the fields of
    :class:`galmorph.training.runner.TrainResult` that a caller outside the job can know)."""

    run_id: str
    parent_run_id: str
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    metrics: dict[str, float]


def find_trainjob_result(name: str, experiment: str, client=None) -> TrainJobResult:
    """The training run of TrainJob ``name`` in MLflow ``experiment``: the one parent run tagged
    :data:`RUN_TAG` = ``name`` that carries ``galmorph.model_uri`` (set by the training run when the
    model was logged; a job whose ranks each logged a model is an error, not a guess)."""
    import mlflow

    client = client or mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrainJobError(f"TrainJob {name}: MLflow has no experiment {experiment!r} (did rank 0 reach MLflow?)")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{name}'", max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "galmorph.model_uri" in r.data.tags]
    if len(parents) != 1:
        raise TrainJobError(f"TrainJob {name}: expected one finished training run tagged {RUN_TAG}={name} in "
                            f"experiment {experiment!r}, found {len(parents)} (of {len(runs)} tagged runs)")
    parent = parents[0]
    tags = parent.data.tags
    model_uri = tags["galmorph.model_uri"]
    best_run_id = tags.get("galmorph.best_run_id") or parent.info.run_id
    best = client.get_run(best_run_id) if best_run_id != parent.info.run_id else parent
    reg_name = reg_version = None
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    if m:
        reg_name, reg_version = m.group(1), m.group(2)
    metrics = {**best.data.metrics, **parent.data.metrics}
    return TrainJobResult(run_id=best_run_id, parent_run_id=parent.info.run_id, model_uri=model_uri,
                          registered_name=reg_name, registered_version=reg_version, metrics=metrics)


__all__ = ["API_VERSION", "DDP_OPTIONS", "DEFAULT_RUNTIME", "GROUP", "KIND", "PLURAL", "RUN_TAG", "VERSION",
           "Placement", "TrainJobError", "TrainJobFailed", "TrainJobRequest", "TrainJobResult", "build_trainjob",
           "current_namespace", "custom_objects_api", "delete_trainjob", "find_trainjob_result", "run_trainjob",
           "set_item", "submit_trainjob", "to_yaml", "trainer_command", "trainjob_name", "trainjob_state",
           "wait_for_trainjob"]
