"""The Helm chart charts/galmorph, proven offline.

The chart is rendered with the Helm v4 engine embedded in ``helm-python-sdk`` (default values, the
production values file, and an everything-on variant), linted strictly, and every rendered
manifest is validated against the Kubernetes 1.30 schemas with ``kubernetes-validate`` (strict:
unknown fields are errors). On top of the schemas the tests check what the schemas cannot:
non-root pods with read-only root filesystems, resources on every container, no secret values,
a NetworkPolicy for every enabled component, the exact galmorph commands of the upload Job and the
release-watcher CronJob (and that the CLI really has them), and the rendered MLflow command run
for real on this machine with its basic-auth app and allowed hosts.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev group) is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev group) is not installed")

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "galmorph"
K8S_VERSION = "1.30"
RELEASE, NAMESPACE = "galmorph", "galmorph"
POD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"}
# components that run pods, and the values switch that turns each on
COMPONENTS = {
    "mlflow": ("mlflow", "enabled"),
    "postgres": ("postgres", "enabled"),
    "evidently": ("evidently", "enabled"),
    "labelling": ("labelling", "enabled"),
    "pipelines-upload": ("pipelines", "upload", "enabled"),
    "release-watcher": ("releaseWatcher", "enabled"),
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def load_values(name: str) -> dict:
    return yaml.safe_load((CHART / name).read_text()) or {}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """Render the chart and return every manifest (hooks included) as a dict, NOTES.txt left out."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name=name, namespace=namespace)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["_template"] = path
                docs.append(doc)
    return docs


def strip(doc: dict) -> dict:
    """The manifest without the test's bookkeeping (and without empty annotations)."""
    d = {k: v for k, v in doc.items() if k != "_template"}
    if not d["metadata"].get("annotations"):
        d["metadata"] = {k: v for k, v in d["metadata"].items() if k != "annotations"}
    return d


def validate_k8s(doc: dict) -> None:
    """Validate one manifest against the Kubernetes schemas (strict: unknown fields rejected)."""
    kv.validate(strip(doc), K8S_VERSION, strict=True)


def pod_template(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in POD_KINDS]


def containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def component_of(doc: dict) -> str:
    return pod_template(doc)["metadata"]["labels"]["app.kubernetes.io/component"]


def selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels + matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


_QTY = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q) -> float:
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m and m.group(2) in _QTY, f"unparseable quantity {q!r}"
    return float(m.group(1)) * _QTY[m.group(2)]


def enabled(values: dict, path: tuple[str, ...]) -> bool:
    node = values
    for p in path:
        node = node[p]
    return bool(node)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# value sets
# ---------------------------------------------------------------------------------------------
DEFAULTS = load_values("values.yaml")
PRODUCTION = load_values("values-production.yaml")
ALL_ON = deep_merge(PRODUCTION, {
    "postgres": {"enabled": True},
    "mlflow": {"ingress": {"enabled": True}, "nodeSelector": {"pool": "services"},
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "services",
                                "effect": "NoSchedule"}]},
    "evidently": {"workspace": {"existingClaim": "drift-workspace"}},
    "hooks": {"enabled": True, "existingSecret": "galmorph-hooks"},
})
ALL_OFF = {"mlflow": {"enabled": False}, "postgres": {"enabled": False}, "evidently": {"enabled": False},
           "labelling": {"enabled": False}, "pipelines": {"upload": {"enabled": False}},
           "releaseWatcher": {"enabled": False}}
VALUE_SETS = {"defaults": {}, "production": PRODUCTION, "all-on": ALL_ON}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(vals) for name, vals in VALUE_SETS.items()}


def merged(name: str) -> dict:
    return deep_merge(DEFAULTS, VALUE_SETS[name])


# ---------------------------------------------------------------------------------------------
# lint + schemas
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values_file", [None, "values-production.yaml"])
def test_lint_strict_is_clean(values_file):
    values = load_values(values_file) if values_file else None
    report = helm.lint(str(CHART), values, strict=True, kube_version="v1.30.0", namespace=NAMESPACE)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_manifest_validates_against_kubernetes_1_30(rendered, name):
    docs = rendered[name]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "NetworkPolicy", "Job", "CronJob", "ServiceAccount"} <= kinds
    for doc in docs:
        try:
            validate_k8s(doc)
        except kv.utils.SchemaNotFoundError as exc:  # the chart renders only core kinds
            pytest.fail(f"{doc['_template']}: no Kubernetes schema for {doc['kind']}: {exc.message}")
        except kv.utils.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['_template']} {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")


def test_kubernetes_validation_is_not_vacuous(rendered):
    """The validator does reject a broken manifest (string replicas, an unknown container field)."""
    dep = next(d for d in rendered["defaults"] if d["kind"] == "Deployment")
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.utils.ValidationError):
        validate_k8s(bad)
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["runAsNonRoot"] = True  # wrong level
    with pytest.raises(kv.utils.ValidationError):
        validate_k8s(bad)


def test_default_render_contains_each_component(rendered):
    docs = rendered["defaults"]
    comps = {component_of(d) for d in workloads(docs)}
    assert comps == set(COMPONENTS)
    by_kind = {(d["kind"], component_of(d)) for d in workloads(docs)}
    assert ("StatefulSet", "postgres") in by_kind and ("CronJob", "release-watcher") in by_kind
    assert ("Job", "pipelines-upload") in by_kind
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert {"galmorph-evidently-workspace", "galmorph-release-watcher-state"} <= pvcs
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert {"galmorph-mlflow", "galmorph-evidently", "galmorph-postgres"} <= services
    assert {f"galmorph-labelling-{n}" for n in DEFAULTS["labelling"]["labellers"]} <= services


def test_components_switch_off(rendered):
    docs = render(ALL_OFF)
    assert workloads(docs) == []
    # with everything off only the default-deny policy remains (no workload: no ServiceAccount, no RBAC)
    assert sorted(d["kind"] for d in docs) == ["NetworkPolicy"]
    only_mlflow = render({**ALL_OFF, "mlflow": {"enabled": True}})
    assert {component_of(d) for d in workloads(only_mlflow)} == {"mlflow"}


# ---------------------------------------------------------------------------------------------
# pod hardening
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_pod_is_non_root_with_read_only_root(rendered, name):
    for doc in workloads(rendered[name]):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = pod_template(doc)["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc.get("runAsUser", 0) > 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
        tmp_vols = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc.get("privileged", False) is False, (where, c["name"])
            assert "ALL" in sc["capabilities"]["drop"] and not sc["capabilities"].get("add"), (where, c["name"])
            assert sc.get("runAsUser", psc["runAsUser"]) != 0, (where, c["name"])
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_vols, f"{where}/{c['name']}: /tmp must be an emptyDir"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_container_has_requests_and_limits(rendered, name):
    for doc in workloads(rendered[name]):
        for c in containers(pod_template(doc)["spec"]):
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            res = c["resources"]
            for key in ("cpu", "memory"):
                assert key in res["requests"] and key in res["limits"], where
                assert quantity(res["requests"][key]) <= quantity(res["limits"][key]), (where, key)


def test_pod_security_cannot_be_switched_off_by_values():
    for bad in ({"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0}},
                {"containerSecurityContext": {"allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]}}},
                {"containerSecurityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": []}}}):
        with pytest.raises(helm.HelmValuesError):
            render(bad)


# ---------------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------------
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|_URI$|_URL$|DB_URL)", re.I)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_secret_values_rendered(rendered, name):
    docs = rendered[name]
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart must not render Secrets"
    for doc in docs:  # no data/stringData anywhere (Secrets or otherwise smuggled in)
        assert "stringData" not in doc, doc["_template"]
    vals = merged(name)
    referenced = set()
    for doc in workloads(docs):
        spec = pod_template(doc)["spec"]
        for c in containers(spec):
            for env in c.get("env", []):
                if "valueFrom" in env and "secretKeyRef" in env["valueFrom"]:
                    referenced.add(env["valueFrom"]["secretKeyRef"]["name"])
                elif SECRETISH.search(env["name"]) and env["name"] not in {
                        "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_S3_ENDPOINT_URL", "KF_PIPELINES_SA_TOKEN_PATH"}:
                    pytest.fail(f"{doc['metadata']['name']}/{c['name']}: {env['name']} set from a literal")
        for vol in spec.get("volumes", []):
            if "secret" in vol:
                referenced.add(vol["secret"]["secretName"])
    # every Secret a pod uses is one the values name as an existing Secret
    named = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "existingSecret" and v:
                    named.add(v)
                walk(v)

    walk(vals)
    assert referenced and referenced <= named, (referenced, named)


@pytest.mark.parametrize("values_file", ["values.yaml", "values-production.yaml"])
def test_values_files_hold_no_plaintext_secrets(values_file):
    """Keys that sound secret only ever hold Secret names or key names inside a Secret."""
    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, path + [str(i)])
        else:
            yield ".".join(path), node

    for path, value in walk(load_values(values_file), []):
        leaf = path.split(".")[-1]
        if re.search(r"password|secret|token|credential|apikey", leaf, re.I) and not isinstance(value, (bool, int)):
            assert re.fullmatch(r"(existingSecret|tlsSecretName|secretKey|\w*Key|imagePullSecrets\.\d+)", leaf) \
                or leaf.isdigit(), f"{values_file}: {path} looks like a secret value"
            assert value is None or re.fullmatch(r"[-._a-zA-Z0-9]{0,253}", str(value)), (path, value)
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)), f"{values_file}: credentials in URL at {path}"


def test_schema_rejects_plaintext_secret_keys():
    for bad in ({"mlflow": {"auth": {"adminPassword": "hunter2"}}},
                {"postgres": {"password": "hunter2"}},
                {"mlflow": {"backendStore": {"uri": "postgresql://u:p@db/mlflow"}}}):
        with pytest.raises(helm.HelmValuesError, match="additional propert"):
            render(bad)


# ---------------------------------------------------------------------------------------------
# values schema
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,where", [
    ({"mlflow": {"replicaCount": "2"}}, "/mlflow/replicaCount"),
    ({"mlflow": {"replicaCount": -1}}, "/mlflow/replicaCount"),
    ({"images": {"app": {"tag": "latest"}}}, "/images/app/tag"),
    ({"pipelines": {"rescoringSchedule": {"cron": "every monday"}}}, "/pipelines/rescoringSchedule/cron"),
    ({"kfp": {"host": "ml-pipeline:8888"}}, "/kfp/host"),
    ({"mlflow": {"backendStore": {"existingSecret": ""}}}, "/mlflow/backendStore/existingSecret"),
    ({"mlflow": {"resources": {"limits": None}}}, "/mlflow/resources"),
    ({"labelling": {"resources": {"requests": {"memory": "lots"}}}}, "/labelling/resources/requests/memory"),
    ({"evidently": {"workspace": {"size": "lots"}}}, "/evidently/workspace/size"),
    ({"replicas": 3}, "additional properties"),
])
def test_schema_rejects_bad_values(bad, where):
    with pytest.raises(helm.HelmValuesError) as err:
        render(bad)
    assert where in str(err.value)
    with helm.Chart.load(str(CHART)) as chart:  # the same through the SDK's schema check
        chart.validate_schema(chart.merge_values({}))  # the defaults pass
        if "None" not in repr(bad):  # merge_values drops nulls (render applies them)
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(chart.merge_values(bad))


def _schema_node(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node


def test_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = []

    def walk(values, node, path):
        node = _schema_node(schema, node)
        if isinstance(values, dict) and node.get("properties") is not None:
            for k, v in values.items():
                if k not in node["properties"]:
                    missing.append(".".join(path + [k]))
                else:
                    walk(v, node["properties"][k], path + [k])
        elif not node:
            missing.append(".".join(path))

    for f in ("values.yaml", "values-production.yaml"):
        walk(load_values(f), schema, [])
    assert missing == [], f"values without a schema entry: {missing}"
    # and objects are closed where the chart owns the structure
    assert schema["additionalProperties"] is False
    for key in ("mlflow", "postgres", "evidently", "labelling", "pipelines", "releaseWatcher", "kfp"):
        assert schema["properties"][key]["additionalProperties"] is False, key


# ---------------------------------------------------------------------------------------------
# network policies
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VALUE_SETS) + ["only-mlflow"])
def test_network_policies_cover_each_enabled_component(rendered, name):
    if name == "only-mlflow":
        docs, vals = render({**ALL_OFF, "mlflow": {"enabled": True}}), deep_merge(DEFAULTS, {**ALL_OFF, "mlflow": {"enabled": True}})
    else:
        docs, vals = rendered[name], merged(name)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["metadata"]["name"].endswith("default-deny")]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny[0]["spec"] and "egress" not in deny[0]["spec"]
    pods = {component_of(d): pod_template(d)["metadata"]["labels"] for d in workloads(docs)}
    for comp, switch in COMPONENTS.items():
        if not enabled(vals, switch):
            assert comp not in pods
            continue
        labels = pods[comp]
        assert selector_matches(deny[0]["spec"]["podSelector"], labels), comp
        allow = [p for p in policies if p is not deny[0] and selector_matches(p["spec"]["podSelector"], labels)]
        assert len(allow) == 1, f"{name}: {comp} needs exactly one allow policy, got {len(allow)}"
        assert set(allow[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # a policy never selects pods of another release
    other = render({}, name="other")
    other_pods = [pod_template(d)["metadata"]["labels"] for d in workloads(other)]
    for p in policies:
        assert not any(selector_matches(p["spec"]["podSelector"], lab) for lab in other_pods)


def _policy(docs, comp):
    return next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == f"galmorph-{comp}")


def test_network_policies_allow_only_needed_traffic(rendered):
    docs = rendered["defaults"]
    client = {DEFAULTS["clients"]["podLabel"]["key"]: DEFAULTS["clients"]["podLabel"]["value"]}
    pods = {component_of(d): pod_template(d)["metadata"]["labels"] for d in workloads(docs)}

    def ingress_peers(comp):
        rules = _policy(docs, comp)["spec"].get("ingress", [])
        return [peer for r in rules for peer in r.get("from", [])], [pt["port"] for r in rules for pt in r["ports"]]

    # postgres: only mlflow and labelling of the release, and labelled pipeline pods (the promotion lock),
    # only the postgres port, no egress
    peers, ports = ingress_peers("postgres")
    allowed = {c for c, lab in pods.items() if any(selector_matches(p["podSelector"], lab) for p in peers)}
    assert allowed == {"mlflow", "labelling"} and ports == [5432]
    client = {"galmorph.io/platform-client": "true"}
    assert any(selector_matches(p["podSelector"], client) for p in peers)
    assert _policy(docs, "postgres")["spec"]["egress"] == []
    # mlflow / evidently: labelled client pods in, nothing else of the release (no ingress enabled)
    for comp, port in (("mlflow", 5000), ("evidently", 8000)):
        peers, ports = ingress_peers(comp)
        assert ports == [port]
        assert [p["podSelector"]["matchLabels"] for p in peers] == [client]
        assert not any(selector_matches(p["podSelector"], lab) for p in peers for lab in pods.values())
    assert _policy(docs, "evidently")["spec"]["egress"] == []
    # KFP clients: no ingress; egress only DNS + the KFP API port
    kfp = _policy(docs, "kfp-clients")["spec"]
    assert kfp["ingress"] == []
    assert sorted(pt["port"] for r in kfp["egress"] for pt in r["ports"]) == [53, 53, DEFAULTS["kfp"]["port"]]
    for comp in ("pipelines-upload", "release-watcher"):
        assert selector_matches(kfp["podSelector"], pods[comp])
    # mlflow egress: DNS, postgres pod, artifact store ports
    eg = _policy(docs, "mlflow")["spec"]["egress"]
    assert sorted(pt["port"] for r in eg for pt in r["ports"]) == sorted([53, 53, 5432, 443, 9000])
    # with an Ingress the ingress controller namespace is let in
    prod = rendered["production"]
    mlflow_from = [p for r in _policy(prod, "mlflow")["spec"]["ingress"] for p in r["from"]]
    assert {"namespaceSelector": PRODUCTION["networkPolicy"]["ingressControllerNamespaceSelector"]
            if "networkPolicy" in PRODUCTION else DEFAULTS["networkPolicy"]["ingressControllerNamespaceSelector"]} in mlflow_from
    assert any(p.get("namespaceSelector") == PRODUCTION["clients"]["namespaceSelector"] for p in mlflow_from)


# ---------------------------------------------------------------------------------------------
# the galmorph commands of the Job and the CronJob
# ---------------------------------------------------------------------------------------------
def _job(docs):
    return next(d for d in docs if d["kind"] == "Job" and component_of(d) == "pipelines-upload")


def _cronjob(docs):
    return next(d for d in docs if d["kind"] == "CronJob" and component_of(d) == "release-watcher")


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_upload_job_runs_galmorph_pipeline_upload_and_schedule(rendered, name):
    vals = merged(name)
    host, cron = vals["kfp"]["host"], vals["pipelines"]["rescoringSchedule"]["cron"]
    ns = ["--namespace", vals["kfp"]["namespace"]] if vals["kfp"]["namespace"] else []  # multi-user KFP
    job = _job(rendered[name])
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"post-install", "post-upgrade"}
    spec = pod_template(job)["spec"]
    (upload,), (schedule,) = spec["initContainers"], spec["containers"]
    assert upload["command"] == ["galmorph"] and schedule["command"] == ["galmorph"]
    assert upload["args"] == ["pipeline", "upload", "--host", host, *ns]
    assert schedule["args"] == ["pipeline", "schedule", "rescoring", "--cron", cron, "--host", host, *ns]
    for c in (upload, schedule):
        assert c["image"] == f"{vals['images']['cpu']['repository']}:{vals['images']['cpu']['tag']}"
        assert c["workingDir"] == vals["pipelines"]["upload"]["workingDir"]  # holds pipelines/*.yaml
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["KF_PIPELINES_SA_TOKEN_PATH"] == "/var/run/secrets/kubeflow/pipelines/token"
        assert {"name": "kfp-token", "mountPath": "/var/run/secrets/kubeflow/pipelines", "readOnly": True} in c["volumeMounts"]
    token = next(v for v in spec["volumes"] if v["name"] == "kfp-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    # without the schedule the Job only uploads
    solo = _job(render(deep_merge(VALUE_SETS[name], {"pipelines": {"rescoringSchedule": {"enabled": False}}})))
    assert [c["args"] for c in containers(pod_template(solo)["spec"])] == [["pipeline", "upload", "--host", host, *ns]]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_release_watcher_cronjob_runs_galmorph_release_watch(rendered, name):
    vals = merged(name)
    w = vals["releaseWatcher"]
    cj = _cronjob(rendered[name])
    assert cj["spec"]["schedule"] == w["schedule"] and cj["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_template(cj)["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["galmorph"]
    ns = ["--namespace", vals["kfp"]["namespace"]] if vals["kfp"]["namespace"] else []
    watch_dir = f"{w['mountPath']}/{w['releasesDir']}"
    assert c["args"] == ["release", "watch", watch_dir, "--host", vals["kfp"]["host"], "--once", *ns]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == w["mountPath"])
    assert mount["readOnly"] is True and "subPath" not in mount  # same paths as in the pipeline pods
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert vol["persistentVolumeClaim"]["claimName"] == w["releasesClaim"]
    # the data PVC and mount path the pipeline steps use, so submitted manifest paths resolve there
    platform = REPO / "src" / "galmorph" / "pipelines" / "platform.py"
    if platform.exists():
        from galmorph.ops import platform as kfp_platform

        assert (w["releasesClaim"], w["mountPath"]) == (kfp_platform.DATA_PVC, kfp_platform.DATA_MOUNT)
    state = next(m for m in c["volumeMounts"] if m["name"] == "state")
    assert {"name": "GALMORPH_STATE_DIR", "value": state["mountPath"]} in c["env"]


def _cli_module(name: str) -> Path:
    return REPO / "src" / "galmorph" / "cli" / f"{name}.py"


def _invoke(args: list[str]):
    from click.testing import CliRunner

    from galmorph.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_job_commands_exist_in_the_cli(rendered):
    """The rendered Job/CronJob arguments parse against the real galmorph CLI (click, --help)."""
    if not _cli_module("pipeline").exists():
        pytest.skip("src/galmorph/cli/pipeline.py not written yet (pipelines issue #6)")
    jobs = [_job(rendered["defaults"]), _job(rendered["production"])]  # without / with --namespace
    for c in (c for job in jobs for c in containers(pod_template(job)["spec"])):
        res = _invoke(c["args"] + ["--help"])
        assert res.exit_code == 0, f"`galmorph {' '.join(c['args'])}` does not parse:\n{res.output}"
        assert "--host" in res.output
    res = _invoke(["pipeline", "schedule", "--help"])
    assert res.exit_code == 0 and "--cron" in _invoke(["pipeline", "schedule", "rescoring", "--help"]).output


def test_cronjob_command_exists_in_the_cli(rendered):
    if not _cli_module("release").exists():
        pytest.skip("src/galmorph/cli/release.py not written yet (pipelines issue #6)")
    for name in ("defaults", "production"):
        (c,) = pod_template(_cronjob(rendered[name]))["spec"]["containers"]
        res = _invoke(c["args"] + ["--help"])
        assert res.exit_code == 0, f"`galmorph {' '.join(c['args'])}` does not parse:\n{res.output}"
    assert "--once" in res.output and "--host" in res.output


def test_labelling_command_exists_in_the_cli(rendered):
    if not _cli_module("label").exists():
        pytest.skip("src/galmorph/cli/label.py not written yet (labelling issue #3)")
    dep = next(d for d in workloads(rendered["defaults"]) if component_of(d) == "labelling")
    (c,) = pod_template(dep)["spec"]["containers"]
    lab = DEFAULTS["labelling"]
    assert c["command"] == ["galmorph"]
    name = f"galmorph-labelling-{lab['labellers'][0]}"
    assert c["args"] == ["label", "serve", "--queue", f"/queue/{lab['queue']['path']}",
                         "--auth", "token", "--tokens-file", f"/etc/galmorph/label-tokens/{lab['auth']['tokensKey']}",
                         "--allowed-host", name, "--allowed-host", f"{name}.{NAMESPACE}.svc",
                         "--allowed-host", "127.0.0.1", "--allowed-host", "localhost",
                         "--max-body-bytes", str(lab["auth"]["maxBodyBytes"]), "--task", lab["task"],
                         "--host", "0.0.0.0", "--port", str(lab["port"])]
    assert "--labeller" not in c["args"]  # the labeller is whoever signs in
    res = _invoke(c["args"] + ["--help"])
    assert res.exit_code == 0, f"`galmorph {' '.join(c['args'])}` does not parse:\n{res.output}"
    for opt in ("--queue", "--auth", "--tokens-file", "--allowed-host", "--max-body-bytes", "--task", "--host",
                "--port"):
        assert opt in res.output
    # the database URL comes from the Secret through the settings variable the CLI falls back to
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["GALMORPH_LABEL_DB_URL"]["valueFrom"]
    from galmorph.settings import Settings
    assert Settings(label_db_url="postgresql://h/labels").label_db_url == "postgresql://h/labels"
    assert "label_db_url" in res.output or "settings.label_db_url" in res.output


# ---------------------------------------------------------------------------------------------
# the rendered MLflow command, run for real
# ---------------------------------------------------------------------------------------------
def _http(url: str, host: str | None = None, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if host:
        req.add_header("Host", host)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - local server
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0  # not listening (yet)


@pytest.mark.slow  # an MLflow server start + auth db migrations: ~15 s idle, minutes on a loaded machine
@pytest.mark.timeout(420)
def test_rendered_mlflow_command_serves_with_basic_auth_and_allowed_hosts(tmp_path):
    """Run the exact `mlflow server` argv and env of the rendered Deployment on this machine.

    Only what a cluster provides is substituted: Secret values (a sqlite backend instead of
    Postgres, a local folder instead of the S3 bucket, an auth ini written here), the port, and
    the bind address. The server must answer /health, refuse anonymous API calls (basic auth),
    accept the admin, accept the in-cluster Service Host header and refuse a foreign one.
    """
    docs = render({"mlflow": {"workers": 1}})
    dep = next(d for d in workloads(docs) if component_of(d) == "mlflow")
    (c,) = pod_template(dep)["spec"]["containers"]
    assert c["command"] == ["mlflow"] and c["args"][0] == "server"
    args = list(c["args"])
    assert args[args.index("--app-name") + 1] == "basic-auth"
    port = free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    assert args[args.index("--artifacts-destination") + 1] == DEFAULTS["mlflow"]["artifactStore"]["destination"]
    args[args.index("--artifacts-destination") + 1] = str(tmp_path / "artifacts")

    admin_pw = "local-test-admin-pw"
    ini = tmp_path / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    secret_values = {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_pw, "MLFLOW_FLASK_SERVER_SECRET_KEY": "local-test-flask-key",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for e in c["env"]:
        if "valueFrom" in e:
            env[e["name"]] = secret_values[e["name"]]
        else:
            env[e["name"]] = e["value"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow-auth/basic_auth.ini"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)  # the Secret's mount point, here
    env["HOME"] = str(tmp_path)
    env["XDG_CACHE_HOME"] = str(tmp_path / ".cache")
    exe = str(Path(sys.executable).parent / "mlflow")
    log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([exe, *args], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 360
        while _http(base + "/health") != 200:
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow did not answer /health"
            time.sleep(1)
        api = base + "/api/2.0/mlflow/experiments/search?max_results=1"
        svc = f"galmorph-mlflow.{NAMESPACE}.svc.cluster.local:{DEFAULTS['mlflow']['service']['port']}"
        assert _http(api, host=svc) == 401  # basic auth is on
        assert _http(api, host=svc, auth=("admin", "wrong")) == 401
        assert _http(api, host=svc, auth=("admin", admin_pw)) == 200
        assert _http(api, host=f"galmorph-mlflow:{port}", auth=("admin", admin_pw)) == 200
        assert _http(api, host="evil.example.com", auth=("admin", admin_pw)) == 403  # allowed-hosts
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


# ---------------------------------------------------------------------------------------------
# production specifics and images
# ---------------------------------------------------------------------------------------------
def test_production_values_shape(rendered):
    docs = rendered["production"]
    assert not [d for d in docs if d["kind"] == "StatefulSet"], "production uses a managed Postgres"
    mlflow = next(d for d in workloads(docs) if component_of(d) == "mlflow")
    assert mlflow["spec"]["replicas"] == PRODUCTION["mlflow"]["replicaCount"] >= 2
    ingresses = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Ingress"}
    assert set(ingresses) == {"galmorph-mlflow", "galmorph-evidently", "galmorph-labelling"}
    for ing in ingresses.values():
        assert ing["spec"]["tls"][0]["secretName"]
        assert ing["spec"]["tls"][0]["hosts"] == [r["host"] for r in ing["spec"]["rules"]]
    # one labelling app, Service and Ingress host per labeller
    labellers = PRODUCTION["labelling"]["labellers"]
    rules = ingresses["galmorph-labelling"]["spec"]["rules"]
    assert [r["host"] for r in rules] == [f"{n}.{PRODUCTION['labelling']['ingress']['host']}" for n in labellers]
    assert [r["http"]["paths"][0]["backend"]["service"]["name"] for r in rules] == [f"galmorph-labelling-{n}" for n in labellers]
    apps = [d for d in workloads(docs) if component_of(d) == "labelling"]
    assert [d["metadata"]["labels"]["galmorph.io/labeller"] for d in apps] == labellers
    for d, n in zip(apps, labellers):  # each instance answers its own Ingress host only (plus in-cluster names)
        args = pod_template(d)["spec"]["containers"][0]["args"]
        hosts = [args[i + 1] for i, a in enumerate(args) if a == "--allowed-host"]
        assert f"{n}.{PRODUCTION['labelling']['ingress']['host']}" in hosts and "--secure-cookies" in args
    selectors = [json.dumps(d["spec"]["selector"], sort_keys=True) for d in apps]
    assert len(set(selectors)) == len(apps), "Deployments must not share selectors"
    args = pod_template(mlflow)["spec"]["containers"][0]["args"]
    assert PRODUCTION["mlflow"]["ingress"]["host"] in args[args.index("--allowed-hosts") + 1].split(",")
    env = {e["name"]: e for e in pod_template(mlflow)["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == PRODUCTION["mlflow"]["artifactStore"]["s3EndpointUrl"]


def test_default_images_are_the_galmorph_images():
    from galmorph import container_images as images

    for key, ref in (("app", images.APP_IMAGE), ("cpu", images.CPU_IMAGE)):
        img = DEFAULTS["images"][key]
        assert f"{img['repository']}:{img['tag']}" == ref


# ---------------------------------------------------------------------------------------------
# authentication, ServiceAccounts, RBAC, database users (issue #17)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_labelling_runs_with_token_auth_from_a_secret(rendered, name):
    vals = merged(name)
    lab = vals["labelling"]
    for dep in (d for d in workloads(rendered[name]) if component_of(d) == "labelling"):
        spec = pod_template(dep)["spec"]
        (c,) = spec["containers"]
        args = c["args"]
        assert args[args.index("--host") + 1] == "0.0.0.0"
        assert args[args.index("--auth") + 1] == "token"
        tokens = args[args.index("--tokens-file") + 1]
        mount = next(m for m in c["volumeMounts"] if tokens.startswith(m["mountPath"] + "/"))
        vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert vol["secret"]["secretName"] == lab["auth"]["existingSecret"] and mount["readOnly"]
        # probes reach /healthz (exempt from the Host check) rather than the signed-in page
        assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_proxy_mode_puts_the_auth_proxy_on_the_ingress():
    docs = render(deep_merge(PRODUCTION, {"labelling": {"auth": {
        "mode": "proxy", "oauth2Proxy": {"authUrl": "https://auth.example.org/oauth2/auth",
                                         "signinUrl": "https://auth.example.org/oauth2/start"}}}}))
    ing = next(d for d in docs if d["kind"] == "Ingress" and d["metadata"]["name"] == "galmorph-labelling")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/auth-url"] == "https://auth.example.org/oauth2/auth"
    assert ann["nginx.ingress.kubernetes.io/auth-response-headers"] == "X-Auth-Request-User"
    dep = next(d for d in workloads(docs) if component_of(d) == "labelling")
    args = pod_template(dep)["spec"]["containers"][0]["args"]
    assert args[args.index("--trust-proxy-header") + 1] == "X-Auth-Request-User" and "--auth" not in args
    # proxy mode without a proxy is refused
    with pytest.raises(Exception, match="oauth2Proxy.authUrl"):
        render(deep_merge(PRODUCTION, {"labelling": {"auth": {"mode": "proxy"}}}))


def test_evidently_ingress_has_authentication(rendered):
    ing = next(d for d in rendered["production"] if d["kind"] == "Ingress" and d["metadata"]["name"] == "galmorph-evidently")
    ann = ing["metadata"]["annotations"]
    auth = merged("production")["evidently"]["ingressAuth"]
    assert ann["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert ann["nginx.ingress.kubernetes.io/auth-secret"] == auth["existingSecret"]
    docs = render(deep_merge(PRODUCTION, {"evidently": {"ingressAuth": {
        "type": "oauth2-proxy", "oauth2Proxy": {"authUrl": "https://auth.example.org/oauth2/auth"}}}}))
    ing = next(d for d in docs if d["kind"] == "Ingress" and d["metadata"]["name"] == "galmorph-evidently")
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/auth-url"] == "https://auth.example.org/oauth2/auth"
    assert "nginx.ingress.kubernetes.io/auth-type" not in ing["metadata"]["annotations"]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_one_service_account_per_workload_and_least_privilege_rbac(rendered, name):
    docs = rendered[name]
    sas = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    pods = [(component_of(d), pod_template(d)["spec"]) for d in workloads(docs)]
    used = {}
    for comp, spec in pods:
        assert spec["automountServiceAccountToken"] is False, comp
        used.setdefault(spec["serviceAccountName"], set()).add(comp)
    assert set(used) == set(sas), "every pod has its own ServiceAccount and every ServiceAccount is used"
    assert all(len(comps) == 1 for comps in used.values()), used
    assert all(sa["automountServiceAccountToken"] is False for sa in sas.values())
    # only the two KFP clients are bound, to a Role on pipelines.kubeflow.org resources only
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    bound = {s["name"] for b in bindings for s in b["subjects"]}
    hooks = {"galmorph-hooks"} if enabled(merged(name), ("hooks", "enabled")) else set()  # #27: submits rescorings
    assert bound == {"galmorph-pipelines-upload", "galmorph-release-watcher"} | hooks
    assert all(b["kind"] == "RoleBinding" and b["roleRef"]["kind"] == "Role" for b in bindings)
    assert all(b["roleRef"]["name"] != "kubeflow-edit" for b in bindings)
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    # each client its own Role (one binding, one subject), on pipelines.kubeflow.org only, no wildcard
    assert len(bindings) == len(roles) == 2 + len(hooks) and all(len(b["subjects"]) == 1 for b in bindings)
    granted = {}
    for b in bindings:
        role = roles[b["roleRef"]["name"]]
        assert {g for r in role["rules"] for g in r["apiGroups"]} == {"pipelines.kubeflow.org"}
        assert not any("*" in r["verbs"] or "*" in r["resources"] for r in role["rules"])
        granted[b["subjects"][0]["name"]] = {(res, v) for r in role["rules"] for res in r["resources"]
                                             for v in r["verbs"]}
    # the release watcher starts and finds runs, nothing else (no pipeline uploads, no deletes)
    assert granted["galmorph-release-watcher"] == {(res, v) for res in ("runs", "experiments")
                                                   for v in ("get", "list", "create")}
    for sa in hooks:  # the receiver: the same (it starts a rescoring run of the latest release)
        assert granted[sa] == granted["galmorph-release-watcher"]
    upload = granted["galmorph-pipelines-upload"]
    assert ("pipelines", "create") in upload and ("recurringruns", "delete") in upload
    assert not any(res == "runs" or v == "delete" and res not in ("recurringruns", "jobs") for res, v in upload)
    assert not [d for d in docs if d["kind"] == "ClusterRole"]
    assert not any(b["roleRef"]["name"] in ("edit", "admin", "cluster-admin") for b in bindings)


def test_each_database_has_its_own_user(rendered):
    docs = rendered["all-on"]
    vals = merged("all-on")["postgres"]
    init = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-init"))
    script = "\n".join(init["data"].values())
    users = [db["user"] for db in vals["databases"]]
    assert len(set(users)) == len(users) == 4 and vals["user"] not in users
    assert {db["name"] for db in vals["databases"]} == {"mlflow", "mlflow_auth", "labels", "promotion_lock"}
    for db in vals["databases"]:
        assert '-v db="%s" -v usr="%s"' % (db["name"], db["user"]) in script
    assert script.count("CREATE ROLE") == 4 and script.count("REVOKE ALL ON DATABASE") == 4
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    env = {e["name"]: e for e in pod_template(sts)["spec"]["containers"][0]["env"]}
    for db in vals["databases"]:
        ref = env[f"GALMORPH_PW_{db['name'].upper()}"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": vals["existingSecret"], "key": db["passwordKey"]}
    # the consumers read their connection from Secrets of their own, never the superuser's
    refs = {}
    for d in workloads(docs):
        if component_of(d) == "postgres":
            continue
        for c in pod_template(d)["spec"]["containers"]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] != vals["existingSecret"], (component_of(d), e["name"])
                    refs[e["name"]] = (ref["name"], ref["key"])
    assert refs["GALMORPH_LABEL_DB_URL"] != refs["MLFLOW_BACKEND_STORE_URI"]
    # the README's connection URLs use those users, never the superuser
    readme = (CHART / "README.md").read_text()
    for db in vals["databases"]:
        assert f"postgresql://{db['user']}:" in readme and f"/{db['name']}" in readme
    assert "postgresql://postgres:" not in readme
    assert "postgresql://mlflow:$PG_PW@galmorph-postgres:5432/labels" not in readme


# ---------------------------------------------------------------------------------------------
# Kubeflow Trainer access (#28): off by default; when on, namespaced RBAC on trainjobs only
# ---------------------------------------------------------------------------------------------
TRAINER_ON = {"trainer": {"enabled": True}}


def _trainer_docs(docs):
    return [d for d in docs if d["_template"].endswith("/trainer.yaml")]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_trainer_objects_only_when_enabled(rendered, name):
    """The chart installs where Kubeflow Trainer is absent: nothing of it is rendered by default."""
    assert merged(name)["trainer"]["enabled"] is False
    docs = rendered[name]
    assert _trainer_docs(docs) == []
    assert "trainer.kubeflow.org" not in json.dumps([strip(d) for d in docs])
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "galmorph-trainer"]


@pytest.mark.parametrize("kfp_ns,trainer_ns,expected", [("", "", NAMESPACE), ("kubeflow-user", "", "kubeflow-user"),
                                                        ("kubeflow-user", "team-b", "team-b")])
def test_trainer_rbac_is_least_privilege_in_the_pipelines_namespace(kfp_ns, trainer_ns, expected):
    docs = render(deep_merge(TRAINER_ON, {"kfp": {"namespace": kfp_ns}, "trainer": {"namespace": trainer_ns}}))
    mine = _trainer_docs(docs)
    assert sorted(d["kind"] for d in mine) == ["ConfigMap", "Role", "RoleBinding"]
    for d in mine:
        validate_k8s(d)
        assert d["metadata"]["namespace"] == expected
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = next(d for d in mine if d["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
                              "verbs": ["create", "get", "list", "watch", "delete"]}]
    binding = next(d for d in mine if d["kind"] == "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": DEFAULTS["trainer"]["serviceAccount"],
                                    "namespace": expected}]
    # the chart's own workloads gain nothing: the KFP clients' bindings are unchanged
    others = {s["name"] for b in docs if b["kind"] == "RoleBinding" and b not in mine for s in b["subjects"]}
    assert others == {"galmorph-pipelines-upload", "galmorph-release-watcher"}


def test_trainer_enabled_lints_and_validates():
    report = helm.lint(str(CHART), TRAINER_ON, strict=True, kube_version="v1.30.0", namespace=NAMESPACE)
    assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report
    for doc in render(deep_merge(PRODUCTION, TRAINER_ON)):
        validate_k8s(doc)


def test_trainer_configmap_is_what_the_train_step_places_trainjobs_with():
    """The ConfigMap the compiled pipeline injects into the train step (name, key) carries the values, and
    the TrainJob the step builds from it uses them."""
    from galmorph.ops import compiled_dir
    from galmorph.steps.trainjob import TRAINER_CONFIGMAP, TRAINER_CONFIGMAP_KEY, placement
    from galmorph.training.trainjob import TrainJobRequest, build_trainjob

    over = {"trainer": {"enabled": True, "runtime": "torch-cuda-128", "gpuResource": "nvidia.com/mig-3g.40gb",
                        "nodeSelector": {"pool": "h100"}, "activeDeadlineSeconds": 7200,
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training",
                                         "effect": "NoSchedule"}],
                        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"cpu": "16", "memory": "96Gi"}}}}
    cm = next(d for d in _trainer_docs(render(over)) if d["kind"] == "ConfigMap")
    assert cm["metadata"]["name"] == TRAINER_CONFIGMAP
    defaults = json.loads(cm["data"][TRAINER_CONFIGMAP_KEY])
    ir_platform = list(yaml.safe_load_all((compiled_dir() / "training.yaml").read_text()))[1]
    env = [e for ex in ir_platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
           for e in ex.get("configMapAsEnv", [])]
    assert [(e["configMapName"], e["keyToEnv"][0]["configMapKey"]) for e in env] == [(TRAINER_CONFIGMAP,
                                                                                      TRAINER_CONFIGMAP_KEY)]
    job = build_trainjob(TrainJobRequest(name="galmorph-arms-c", task="arms", manifest="/data/x/manifest.parquet",
                                         workers=2, gpus_per_worker=1), placement(defaults))
    spec = job["spec"]
    t = over["trainer"]
    assert spec["runtimeRef"]["name"] == t["runtime"] and spec["activeDeadlineSeconds"] == 7200
    res = spec["trainer"]["resourcesPerNode"]
    assert res["limits"] == {**t["resources"]["limits"], t["gpuResource"]: "1"}
    assert res["requests"] == {**t["resources"]["requests"], t["gpuResource"]: "1"}
    node = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == t["nodeSelector"] and pod["tolerations"] == t["tolerations"]
    assert defaults["staging_dir"] == DEFAULTS["trainer"]["stagingDir"]


@pytest.mark.parametrize("bad,where", [
    ({"trainer": {"enabled": "yes"}}, "/trainer/enabled"),
    ({"trainer": {"runtime": "Torch_Distributed"}}, "/trainer/runtime"),
    ({"trainer": {"stagingDir": "trainjobs"}}, "/trainer/stagingDir"),
    ({"trainer": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}}, "/trainer/resources/requests/cpu"),
    ({"trainer": {"tolerations": [{"key": "k", "effect": "Never"}]}}, "/trainer/tolerations/0/effect"),
    ({"trainer": {"clusterWide": True}}, "additional properties"),
])
def test_schema_rejects_bad_trainer_values(bad, where):
    with pytest.raises(helm.HelmValuesError) as err:
        render(bad)
    assert where in str(err.value)


def test_trainer_placement_defaults_to_the_gpu_defaults():
    """Without a nodeSelector/tolerations of its own the chart leaves the GPU placement of
    infra/gpu-defaults.yaml in force (the one the one-process GPU step uses)."""
    from galmorph.steps.platform import load_platform
    from galmorph.steps.trainjob import TRAINER_CONFIGMAP_KEY, placement

    cm = next(d for d in _trainer_docs(render(TRAINER_ON)) if d["kind"] == "ConfigMap")
    defaults = json.loads(cm["data"][TRAINER_CONFIGMAP_KEY])
    assert "node_selector" not in defaults and "tolerations" not in defaults
    pl, gpu = placement(defaults), load_platform().gpu
    assert pl.node_selector == gpu["node_selector"] and pl.tolerations == gpu["tolerations"]
    assert pl.runtime == DEFAULTS["trainer"]["runtime"] == "torch-distributed"


# ---------------------------------------------------------------------------------------------
# the registry-event receiver (#27)
# ---------------------------------------------------------------------------------------------
def test_hooks_receiver_deployment_service_secret_policy_and_rights(rendered):
    """Off by default; on: a Deployment and Service, its secret from an existing Secret (also MLflow's webhook
    encryption key), a NetworkPolicy that lets only MLflow in (and MLflow out to it), its own ServiceAccount with
    no API token, bound to a Role with only the KFP run rights the rescoring needs."""
    assert not [d for d in workloads(rendered["defaults"]) if component_of(d) == "hooks"]
    with pytest.raises(Exception, match="hooks.existingSecret"):
        render({"hooks": {"enabled": True}})
    docs = rendered["all-on"]
    dep = next(d for d in workloads(docs) if component_of(d) == "hooks")
    assert dep["kind"] == "Deployment"
    spec = pod_template(dep)["spec"]
    c = containers(spec)[0]
    assert c["args"][:3] == ["hooks", "serve", "--register"]
    assert c["args"][c["args"].index("--hooks-url") + 1].startswith("http://galmorph-hooks.")
    env = {e["name"]: e for e in c["env"]}
    assert env["GALMORPH_HOOKS_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "galmorph-hooks", "key": "webhook-secret"}
    # the newest release of a task (for the rescoring a hand promotion starts): the watcher's folder, read-only
    w = merged("all-on")["releaseWatcher"]
    assert env["GALMORPH_RELEASES_DIR"]["value"] == f"{w['mountPath'].rstrip('/')}/{w['releasesDir']}"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "releases")
    vol = next(v for v in spec["volumes"] if v["name"] == "releases")
    assert mount["mountPath"] == w["mountPath"] and mount["readOnly"] is True
    assert vol["persistentVolumeClaim"] == {"claimName": w["releasesClaim"], "readOnly": True}
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "galmorph-hooks")
    assert svc["spec"]["ports"][0]["port"] == 8095
    ml = pod_template(next(d for d in workloads(docs) if component_of(d) == "mlflow"))["spec"]
    ml_env = {e["name"]: e for e in containers(ml)[0]["env"]}
    assert ml_env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "galmorph-hooks"
    pods = {component_of(d): pod_template(d)["metadata"]["labels"] for d in workloads(docs)}
    pol = _policy(docs, "hooks")["spec"]
    assert selector_matches(pol["podSelector"], pods["hooks"])
    others = [p for p in docs if p["kind"] == "NetworkPolicy" and p["metadata"]["name"] != "galmorph-hooks"
              and not p["metadata"]["name"].endswith("default-deny")
              and selector_matches(p["spec"]["podSelector"], pods["hooks"])]
    assert others == []
    peers = [peer for r in pol["ingress"] for peer in r["from"]]
    assert {c for c, lab in pods.items() if any(selector_matches(p["podSelector"], lab) for p in peers)} == {"mlflow"}
    assert all("namespaceSelector" not in p for p in peers) and [pt["port"] for r in pol["ingress"] for pt in r["ports"]] == [8095]
    ml_out = _policy(docs, "mlflow")["spec"]["egress"]
    assert any(any(selector_matches(t.get("podSelector", {"matchLabels": {"x": "y"}}), pods["hooks"]) for t in r["to"])
               and [p["port"] for p in r["ports"]] == [8095] for r in ml_out if "to" in r)
    sa = spec["serviceAccountName"]
    assert spec["automountServiceAccountToken"] is False
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs)
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and any(s_["name"] == sa for s_ in d["subjects"]))
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == binding["roleRef"]["name"])
    assert role["rules"] == [{"apiGroups": ["pipelines.kubeflow.org"], "resources": ["experiments", "runs"],
                              "verbs": ["get", "list", "create"]}]
