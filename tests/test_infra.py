"""infra/: Dockerfiles, kustomize overlays for Kubeflow profile namespaces, GPU defaults.

No Docker and no cluster here, so: the Dockerfiles are parsed (pinned bases, non-root final
USER, uv.lock installs, image names matching galmorph.container_images); every overlay is built with
`kubectl kustomize` and each object validated against the Kubernetes 1.30 schemas (strict), the
Kubeflow CRDs (PodDefault, Profile) against small local schemas in infra/kustomize/schemas/ with
their embedded core types (env, envFrom, ResourceQuotaSpec) validated by the Kubernetes schemas;
the GPU defaults are checked the same way by embedding them in a Pod.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev group) is not installed")
jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
DOCKER = INFRA / "docker"
KUSTOMIZE = INFRA / "kustomize"
K8S_VERSION = "1.30"
OVERLAYS = {"evaluation": "kubeflow-user-example-com", "production": "galmorph-pipelines"}
CRD_SCHEMAS = {
    ("kubeflow.org/v1alpha1", "PodDefault"): KUSTOMIZE / "schemas" / "poddefault-kubeflow-v1alpha1.json",
    ("kubeflow.org/v1", "Profile"): KUSTOMIZE / "schemas" / "profile-kubeflow-v1.json",
}
CHART_VALUES = yaml.safe_load((REPO / "charts" / "galmorph" / "values.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        out.append((instr.upper(), rest.strip()))
    return out


def stages(instrs):
    """[(base image, stage name, [instructions of the stage])]"""
    result = []
    for instr, rest in instrs:
        if instr == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append((parts[0], name, []))
        elif result:
            result[-1][2].append((instr, rest))
    return result


DOCKERFILES = {"project": DOCKER / "project" / "Dockerfile", "app": DOCKER / "app" / "Dockerfile"}
PINNED_TAG = re.compile(r"^[^:@\s]+:(v?\d+\.\d+\.\d+[\w.\-]*)(@sha256:[0-9a-f]{64})?$")
DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


def arg_defaults(instrs) -> dict[str, str]:
    return dict(rest.split("=", 1) for instr, rest in instrs if instr == "ARG" and "=" in rest)


def resolve_base(base: str, args: dict[str, str]) -> str:
    m = re.fullmatch(r"\$\{?(\w+)\}?", base)
    return args.get(m.group(1), base) if m else base


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dockerfile_bases_are_pinned(kind):
    """Every base (after its build-argument default) is an exact tag or digest, never :latest."""
    path = DOCKERFILES[kind]
    instrs = dockerfile_instructions(path)
    st = stages(instrs)
    assert st, f"{path}: no FROM"
    names = {n for _, n, _ in st if n}
    args = arg_defaults(instrs)
    for base, _, _ in st:
        if base in names:
            continue  # a previous stage
        base = resolve_base(base, args)
        assert PINNED_TAG.match(base) or DIGEST.match(base), f"{path}: base {base!r} is not pinned"
        assert ":latest" not in base


def test_project_image_base_is_a_build_argument_and_app_image_layers_on_it():
    """One project image (CPU and GPU steps) from a configurable base; the app image is a thin layer on
    the project image, not a second copy of the environment."""
    from galmorph import container_images

    instrs = dockerfile_instructions(DOCKERFILES["project"])
    assert all(b == "${BASE_IMAGE}" for b, _, _ in stages(instrs))
    assert arg_defaults(instrs)["BASE_IMAGE"].startswith("docker.io/library/python:3.11")
    app = dockerfile_instructions(DOCKERFILES["app"])
    assert [b for b, _, _ in stages(app)] == ["${PROJECT_IMAGE}"]
    assert arg_defaults(app)["PROJECT_IMAGE"] == container_images.CPU_IMAGE
    assert not any(instr == "RUN" and "uv sync" in rest for instr, rest in app)


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dockerfile_final_stage_runs_as_non_root(kind):
    path = DOCKERFILES[kind]
    _, _, body = stages(dockerfile_instructions(path))[-1]
    users = [rest for instr, rest in body if instr == "USER"]
    assert users, f"{path}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{path}: final USER is root"
    assert user.isdigit(), "numeric USER so Kubernetes runAsNonRoot can verify it"
    # the uid matches what the chart's pods run as
    assert int(user) == CHART_VALUES["podSecurityContext"]["runAsUser"]
    after = body[[i for i, (ins, _) in enumerate(body) if ins == "USER"][-1]:]
    assert not any("sudo" in rest or "su " in rest for _, rest in after)
    project = stages(dockerfile_instructions(DOCKERFILES["project"]))[-1][2]
    assert any(instr == "RUN" and f"--uid {user}" in rest for instr, rest in project), f"uid {user} not created"


def test_dockerfile_installs_project_from_uv_lock():
    instrs = dockerfile_instructions(DOCKERFILES["project"])
    copies = " ".join(rest for instr, rest in instrs if instr == "COPY")
    assert "uv.lock" in copies and "pyproject.toml" in copies
    syncs = [rest for instr, rest in instrs if instr == "RUN" and "uv sync" in rest]
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs), syncs
    # the dependency layer comes before the project sources (a src/ edit reuses it)
    order = [rest for instr, rest in instrs if instr in ("COPY", "RUN")]
    deps = next(i for i, r in enumerate(order) if "--no-install-project" in r)
    assert deps < next(i for i, r in enumerate(order) if r.startswith("src "))
    ignore = (DOCKERFILES["project"].parent / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!uv.lock" in ignore and "!src/" in ignore
    # no CA bundle or secret is copied into the image (the host's bundle is a build-time mount)
    assert "ca-certificates.crt" not in copies and "SSL_CERT_FILE=" not in " ".join(
        rest for instr, rest in instrs if instr == "ENV")


def test_deps_pyproject_keeps_dependencies_and_drops_tool_settings(tmp_path):
    """Editing pytest markers must not invalidate the image's dependency layer: the filtered pyproject
    keeps [project], [dependency-groups], [build-system], [tool.uv] byte for byte and drops the rest."""
    import sys
    import tomllib

    out = subprocess.run([sys.executable, str(DOCKER / "deps_pyproject.py"), str(REPO / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout
    full, kept = tomllib.loads((REPO / "pyproject.toml").read_text()), tomllib.loads(out)
    for key in ("project", "build-system", "dependency-groups"):
        assert kept[key] == full[key]
    assert kept["tool"].get("uv") == full["tool"].get("uv")
    assert "pytest" not in kept["tool"] and "pytest" in full["tool"]


def test_project_image_carries_the_pipeline_packages_for_the_upload_job():
    """The upload Job's workingDir holds pipelines/ in the project image (the layout of a checkout)."""
    instrs = dockerfile_instructions(DOCKERFILES["project"])
    workdir = CHART_VALUES["pipelines"]["upload"]["workingDir"]
    assert ("WORKDIR", workdir) in instrs
    for folder in ("pipelines", "components", "monitoring"):  # src/ links to all three
        assert any(instr == "COPY" and rest.split()[0] == folder for instr, rest in instrs), folder
        assert f"!{folder}/" in (DOCKERFILES["project"].parent / "Dockerfile.dockerignore").read_text().split()


def test_app_image_has_the_mlflow_server_extras():
    """basic-auth needs mlflow[auth] (locked), Postgres and S3 need their drivers in the app image."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"mlflow\[auth\]', pyproject), "mlflow[auth] must be a project dependency"
    runs = " ".join(rest for instr, rest in dockerfile_instructions(DOCKERFILES["app"]) if instr == "RUN")
    assert re.search(r'psycopg2-binary==[\d.]+', runs) and re.search(r'boto3==[\d.]+', runs)


def test_image_names_come_from_the_settings(monkeypatch):
    from galmorph.container_images import image_names
    from galmorph.settings import get_settings

    monkeypatch.setenv("GALMORPH_IMAGE_REGISTRY", "registry.example.org:5000/astro/")
    monkeypatch.setenv("GALMORPH_IMAGE_TAG", "2026.1")
    get_settings.cache_clear()
    try:
        names = image_names()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert names == {k: f"registry.example.org:5000/astro/galmorph-{k}:2026.1" for k in ("cpu", "gpu", "app")}
    assert image_names("r.io/x", "t")["gpu"] == "r.io/x/galmorph-gpu:t"


def test_build_script_tags_the_component_images():
    """make images tags the one project image with both component names and builds the app on it."""
    from galmorph import container_images

    names = container_images.image_names()
    assert names["cpu"] == container_images.CPU_IMAGE and names["gpu"] == container_images.GPU_IMAGE
    script = (DOCKER / "build-images.sh").read_text()
    assert '$PODMAN tag "$CPU_IMAGE" "$GPU_IMAGE"' in script
    assert '--build-arg PROJECT_IMAGE="$CPU_IMAGE"' in script
    assert "io.galmorph.inputs-hash" in script and "GIT_COMMIT" in script


# ---------------------------------------------------------------------------------------------
# kustomize overlays
# ---------------------------------------------------------------------------------------------
def kustomize(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`)")
    out = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_with(env=None, env_from=None, tolerations=None, node_selector=None, resources=None) -> dict:
    """A minimal Pod carrying core-type fragments, for validating them with the Kubernetes schemas."""
    container = {"name": "probe", "image": "ghcr.io/galmorph/galmorph-cpu:0.1.0"}
    if env is not None:
        container["env"] = env
    if env_from is not None:
        container["envFrom"] = env_from
    if resources is not None:
        container["resources"] = resources
    spec = {"containers": [container]}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}, "spec": spec}


def validate(doc: dict) -> None:
    """Core kinds against the Kubernetes schemas; Kubeflow CRDs against the local schemas plus
    their embedded core types against the Kubernetes schemas."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        schema = json.loads(CRD_SCHEMAS[key].read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(doc)
        spec = doc["spec"]
        if doc["kind"] == "PodDefault":
            kv.validate(pod_with(env=spec.get("env", []), env_from=spec.get("envFrom", []),
                                 tolerations=spec.get("tolerations")), K8S_VERSION, strict=True)
            kv.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": spec["selector"]["matchLabels"]},
                         "spec": {"containers": [{"name": "c", "image": "x:1.0.0"}]}}, K8S_VERSION, strict=True)
        if doc["kind"] == "Profile" and "resourceQuotaSpec" in spec:
            kv.validate({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
                         "spec": spec["resourceQuotaSpec"]}, K8S_VERSION, strict=True)
        return
    kv.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_overlay_builds_and_validates(overlay):
    docs = kustomize(overlay)
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except kv.utils.SchemaNotFoundError as exc:
            pytest.fail(f"{overlay}: {doc['kind']} has neither a Kubernetes nor a local schema: {exc.message}")
        except (kv.utils.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {list(exc.path)}: {exc.message}")


@pytest.mark.parametrize("overlay,namespace", list(OVERLAYS.items()))
def test_overlay_targets_the_profile_namespace(overlay, namespace):
    docs = kustomize(overlay)
    for doc in docs:
        if doc["kind"] == "Profile":
            assert doc["metadata"]["name"] == namespace and "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]
    assert not [d for d in docs if d["kind"] == "Secret"], "credentials are referenced, never shipped"
    if overlay == "production":
        assert [d["kind"] for d in docs].count("Profile") == 1


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_poddefault_injects_tracking_uri_and_credentials(overlay):
    docs = kustomize(overlay)
    (pd,) = [d for d in docs if d["kind"] == "PodDefault"]
    spec = pd["spec"]
    # selects exactly the pods the chart's NetworkPolicies let through to MLflow/Evidently
    label = CHART_VALUES["clients"]["podLabel"]
    assert spec["selector"] == {"matchLabels": {label["key"]: label["value"]}}
    env = {e["name"]: e for e in spec["env"]}
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "galmorph-mlflow-credentials", "key": key}
    # the tracking URI comes from the ConfigMap named in envFrom, in the same namespace
    (cm_name,) = [e["configMapRef"]["name"] for e in spec["envFrom"]]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
    assert cm["metadata"]["namespace"] == pd["metadata"]["namespace"]
    assert cm["data"]["MLFLOW_TRACKING_URI"] == cm["data"]["GALMORPH_MLFLOW_TRACKING_URI"]
    # ... and it is the Service the chart renders for the release "galmorph" in namespace "galmorph"
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev group) is not installed")
    with helm.Chart.load(str(REPO / "charts" / "galmorph")) as chart:
        files = chart.render({}, name="galmorph", namespace="galmorph")
    svc = next(d for d in yaml.safe_load_all(files["galmorph/templates/mlflow.yaml"])
               if d and d["kind"] == "Service")
    expected = f"http://{svc['metadata']['name']}.galmorph.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    assert cm["data"]["MLFLOW_TRACKING_URI"] == expected
    # the Settings object picks the injected variable up
    from galmorph.settings import Settings

    assert Settings(mlflow_tracking_uri=cm["data"]["GALMORPH_MLFLOW_TRACKING_URI"]).mlflow_tracking_uri == expected


def test_crd_validation_is_not_vacuous():
    docs = kustomize("evaluation")
    pd = next(d for d in docs if d["kind"] == "PodDefault")
    bad = copy.deepcopy(pd)
    bad["spec"]["selectr"] = bad["spec"].pop("selector")  # typo: structure check
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = copy.deepcopy(pd)
    bad["spec"]["env"][0]["valueFrom"]["secretKeyRef"]["keyy"] = "x"  # inner core type check
    with pytest.raises(kv.utils.ValidationError):
        validate(bad)


# ---------------------------------------------------------------------------------------------
# GPU defaults
# ---------------------------------------------------------------------------------------------
def test_gpu_defaults_are_valid_kubernetes_placement():
    d = yaml.safe_load((INFRA / "gpu-defaults.yaml").read_text())
    assert {"accelerator_type", "accelerator_limit", "node_selector", "tolerations", "image"} <= set(d)
    assert d["accelerator_type"] in {"nvidia.com/gpu", "NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_L4",
                                     "NVIDIA_TESLA_A100", "NVIDIA_H100_80GB"}
    assert isinstance(d["accelerator_limit"], int) and d["accelerator_limit"] >= 1
    from galmorph import container_images

    assert d["image"] == container_images.GPU_IMAGE
    # node selector, tolerations and the GPU resource limit form a valid Pod
    res = {"requests": {"cpu": d["cpu_request"], "memory": d["memory_request"]},
           "limits": {"memory": d["memory_limit"], d["accelerator_type"]: d["accelerator_limit"]}}
    kv.validate(pod_with(tolerations=d["tolerations"], node_selector=d["node_selector"], resources=res),
                K8S_VERSION, strict=True)
    bad = copy.deepcopy(d["tolerations"])
    bad[0]["effect"] = 7
    with pytest.raises(kv.utils.ValidationError):
        kv.validate(pod_with(tolerations=bad), K8S_VERSION, strict=True)
    # the toleration matches the taint GPU node pools carry
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in d["tolerations"])


def test_gpu_defaults_apply_with_kfp_kubernetes():
    """The keys are exactly what kfp / kfp-kubernetes take, and compile into a GPU task spec."""
    kfp = pytest.importorskip("kfp")
    from kfp import compiler, dsl
    from kfp import kubernetes

    d = yaml.safe_load((INFRA / "gpu-defaults.yaml").read_text())

    @dsl.component(base_image=d["image"])
    def score():  # noqa: ANN202 - no annotations: kfp reads them, and this module has postponed ones
        pass

    @dsl.pipeline(name="gpu-defaults-probe")
    def probe():
        t = score()
        t.set_accelerator_type(d["accelerator_type"]).set_accelerator_limit(d["accelerator_limit"])
        for k, v in d["node_selector"].items():
            kubernetes.add_node_selector(t, label_key=k, label_value=v)
        for tol in d["tolerations"]:
            kubernetes.add_toleration(t, **tol)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.yaml"
        compiler.Compiler().compile(probe, str(out))
        docs = list(yaml.safe_load_all(out.read_text()))
    text = json.dumps(docs)
    assert d["accelerator_type"] in text and "nvidia.com/gpu.present" in text and "NoSchedule" in text
    assert kfp.__version__.startswith("2.")


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_rolebinding_grants_the_charts_kfp_clients(overlay):
    """The chart's upload Job / release watcher ServiceAccount may act on KFP in the profile namespace."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev group) is not installed")
    with helm.Chart.load(str(REPO / "charts" / "galmorph")) as chart:
        files = chart.render({}, name="galmorph", namespace="galmorph")
    job = next(d for d in yaml.safe_load_all(files["galmorph/templates/pipelines-upload-job.yaml"]) if d)
    cron = next(d for d in yaml.safe_load_all(files["galmorph/templates/release-watcher.yaml"])
                if d and d["kind"] == "CronJob")
    sas = {job["spec"]["template"]["spec"]["serviceAccountName"],
           cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]}
    rbs = [d for d in kustomize(overlay) if d["kind"] == "RoleBinding"]
    assert all(rb["metadata"]["namespace"] == OVERLAYS[overlay] for rb in rbs)
    # one Role per client (#30: no kubeflow-edit; the rules are checked in the next test)
    assert sorted(s["name"] for rb in rbs for s in rb["subjects"]) == sorted(sas)
    assert all(s["namespace"] == "galmorph" and s["kind"] == "ServiceAccount" for rb in rbs for s in rb["subjects"])


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_kfp_clients_get_least_privilege_roles_equal_to_the_charts(overlay):
    """#30: the profile namespace holds the MLflow and lock Secrets, so the chart's KFP clients get Roles
    with only the pipelines.kubeflow.org rules they use (the chart's own), never kubeflow-edit or any other
    ClusterRole, and nothing on Secrets."""
    from test_charts import render

    docs = kustomize(overlay)
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert bindings and all(b["roleRef"]["kind"] == "Role" for b in bindings), bindings
    roles = {d["metadata"]["name"].removeprefix("galmorph-kfp-"): d["rules"] for d in docs if d["kind"] == "Role"}
    assert not [r for rules in roles.values() for r in rules if "secrets" in r.get("resources", [])]
    chart = render({"pipelines": {"upload": {"enabled": True}}, "releaseWatcher": {"enabled": True}})
    chart_roles = {d["metadata"]["name"].split("-kfp-", 1)[1]: d["rules"] for d in chart
                   if d["kind"] == "Role" and "-kfp-" in d["metadata"]["name"]}
    assert roles == chart_roles
    subjects = {b["metadata"]["name"].removeprefix("galmorph-kfp-"): [s["name"] for s in b["subjects"]]
                for b in bindings}
    assert subjects == {"pipelines-upload": ["galmorph-pipelines-upload"],
                        "release-watcher": ["galmorph-release-watcher"]}
