"""Compiled pipeline packages: not stale, and carrying the GPU/Kubernetes/retry/caching settings on purpose."""

from __future__ import annotations

import inspect

import pytest
import yaml

from galmorph.ops import PIPELINES, compiled_dir
from galmorph.ops.compile import compile_all, normalised, stale_packages
from galmorph.steps.platform import load_platform


def test_committed_packages_are_not_stale(tmp_path):
    """Recompile into a temp dir and compare (normalised YAML) with the committed pipelines/*.yaml."""
    compile_all(tmp_path)
    stale = stale_packages(compiled_dir(), tmp_path)
    assert not stale, "stale pipeline package(s); run `galmorph pipeline compile`:\n" + "\n".join(stale.values())


def test_stale_detection_notices_a_change(tmp_path):
    compile_all(tmp_path / "a", ("labelling",))
    p = tmp_path / "a" / "labelling.yaml"
    p.write_text(p.read_text().replace("name: galmorph-labelling", "name: galmorph-labelling-old", 1))
    compile_all(tmp_path / "b", ("labelling",))
    assert "labelling" in stale_packages(tmp_path / "a", tmp_path / "b", ("labelling",))
    assert "sdkVersion" not in normalised(tmp_path / "b" / "labelling.yaml")


def _docs(name):
    return list(yaml.safe_load_all((compiled_dir() / f"{name}.yaml").read_text()))


def _executor(ir, comp):
    return ir["deploymentSpec"]["executors"][f"exec-{comp}"]["container"]


def _tasks(ir):
    """All tasks of the root DAG and its sub-DAGs."""
    out = dict(ir["root"]["dag"]["tasks"])
    for c in ir["components"].values():
        out.update((c.get("dag") or {}).get("tasks", {}))
    return out


def test_training_package_settings():
    ir, platform = _docs("training")
    gpu = load_platform().gpu
    train = _executor(ir, "train")
    assert train["resources"]["accelerator"]["resourceType"] == gpu["accelerator_type"]
    assert int(train["resources"]["accelerator"]["resourceCount"]) == int(gpu["accelerator_limit"])
    assert train["image"].endswith("galmorph-gpu:0.1.0") and _executor(ir, "cutout")["image"].endswith("cpu:0.1.0")
    tasks = _tasks(ir)
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["train"]["cachingOptions"] == {} or not tasks["train"]["cachingOptions"].get("enableCache")
    assert not tasks["promote"]["cachingOptions"].get("enableCache")
    # the validation gate and the lopsided-only A1 branch
    conds = [t["triggerPolicy"]["condition"] for t in tasks.values() if t.get("triggerPolicy", {}).get("condition")]
    assert any("validate-Output" in c for c in conds) and any("lopsided" in c for c in conds)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train"]["nodeSelector"]["labels"] == gpu["node_selector"]
    assert k8s["exec-train"]["tolerations"][0]["key"] == gpu["tolerations"][0]["key"]
    assert k8s["exec-train"]["secretAsEnv"][0]["secretName"] == "galmorph-mlflow-credentials"
    assert k8s["exec-ingest"]["pvcMount"][0]["mountPath"] == "/data"
    # promotions of every pod are serialised by one lock: GALMORPH_LOCK_URL from the Secret (optional)
    lock = {e["secretName"]: e for e in k8s["exec-promote"]["secretAsEnv"]}["galmorph-promotion-lock"]
    assert lock["keyToEnv"] == [{"secretKey": "url", "envVar": "GALMORPH_LOCK_URL"}] and lock["optional"]
    # every MLflow client step is labelled so the chart's NetworkPolicies admit it
    for ex in ("exec-train", "exec-evaluate", "exec-promote"):
        assert k8s[ex]["podMetadata"]["labels"]["galmorph.io/platform-client"] == "true", ex


def test_rescoring_package_fans_out_on_gpus():
    ir, platform = _docs("rescoring")
    tasks = _tasks(ir)
    loop = [t for t in tasks.values() if t.get("parameterIterator")]
    assert loop and loop[0]["iteratorPolicy"]["parallelismLimit"] == 8
    assert tasks["score"]["retryPolicy"]["maxRetryCount"] == 3
    assert _executor(ir, "score")["resources"]["accelerator"]["resourceCount"] == "1"
    merge_inputs = tasks["merge"]["inputs"]["artifacts"]["scores"]
    assert "taskOutputArtifact" in merge_inputs or "componentInputArtifact" in merge_inputs
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "nodeSelector" in k8s["exec-score"] and "tolerations" in k8s["exec-score"]
    assert {"drift", "publish", "merge", "shard", "resolve-model"} <= set(tasks)


def test_every_pipeline_compiles_to_a_package():
    for n in PIPELINES:
        assert (compiled_dir() / f"{n}.yaml").exists()


@pytest.mark.parametrize("name", PIPELINES)
def test_every_pipeline_parameter_shows_a_description_and_its_default(name):
    """What the Kubeflow UI shows a user who triggers a run: every run parameter of the compiled package has
    a description (the pipeline docstring's Args, compiled into the IR) and the signature's default."""
    from galmorph.ops.loader import load_pipeline_module

    func = load_pipeline_module(name).pipeline
    sig = inspect.signature(getattr(func, "pipeline_func", func))
    params = _docs(name)[0]["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(sig.parameters)
    undescribed = sorted(p for p, d in params.items() if len(str(d.get("description", "")).split()) < 3)
    assert not undescribed, f"{name}: parameters without a description: {undescribed}"
    for p, d in params.items():
        default = sig.parameters[p].default
        shown = d.get("defaultValue")
        assert shown == default or (shown is None and default == ""), (name, p, shown, default)


def test_component_readmes_are_not_stale():
    """Each component's README (inputs, defaults, outputs) is generated from its signature: regenerate with
    ``galmorph.ops.docs.write_component_readmes()`` after changing a component."""
    from galmorph.ops.docs import COMPONENTS, component_readme
    from galmorph.settings import REPO_ROOT

    stale = [n for n in COMPONENTS
             if (REPO_ROOT / "components" / n / "README.md").read_text() != component_readme(n)]
    assert not stale, f"stale component READMEs: {stale}"
