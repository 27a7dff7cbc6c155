"""The README's first command, as CI runs it: `galmorph demo` with its defaults (what `make demo` runs
after syncing the environment), in a private state folder and on free ports so that it never meets a
demo or stack of the person running the tests.

Then: a champion per task in the registry, promoted by the pipeline's policy; the rescoring run's
catalogue published; a drift verdict. The demo takes minutes (three training pipelines and a rescoring
pipeline on two cores), so it is `slow`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from galmorph.ops.demo import DemoConfig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GALMORPH = Path(sys.executable).with_name("galmorph")  # the console script `uv run galmorph` runs
VERDICTS = {"drift", "no_drift", "insufficient_data"}
TASKS = DemoConfig.from_params(REPO / "params.yaml").run  # what a plain `galmorph demo` trains


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo-state")
    ports = {k: str(free_port()) for k in ("GALMORPH_MLFLOW_PORT", "GALMORPH_EVIDENTLY_PORT", "GALMORPH_LABEL_PORT")}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GALMORPH_") or k in ("GALMORPH_DATA_ROOT", "GALMORPH_NUM_WORKERS")}
    env.pop("MLFLOW_TRACKING_URI", None)  # an earlier test's server is not the demo's
    # MLFLOW_REGISTRY_URI, which the session's server fixture exports, is kept on purpose: a user's shell may
    # have one too, and the demo's steps must still resolve its models in the demo's own registry
    env.update(ports, GALMORPH_STATE_DIR=str(state))
    cmd = [str(GALMORPH), "demo"]
    try:
        run = subprocess.run(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=3600)
        uri = f"http://127.0.0.1:{ports['GALMORPH_MLFLOW_PORT']}"
        champions = _champions(uri) if run.returncode == 0 else {}
    finally:
        subprocess.run([*cmd[:-1], "stack", "down"], cwd=REPO, env=env, capture_output=True, timeout=300)
    (state / "demo-output.txt").write_text(run.stdout + run.stderr)
    return {"run": run, "state": state, "out": state / "demo", "champions": champions}


def _champions(uri: str) -> dict[str, dict]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out = {}
    for task in TASKS:
        try:
            v = client.get_model_version_by_alias(f"galmorph-{task}", "champion")
        except MlflowException:
            continue
        out[task] = {"version": v.version, "decision": v.tags.get("galmorph.decision")}
    return out


def test_demo_runs_as_the_readme_says(demo):
    run = demo["run"]
    assert run.returncode == 0, f"galmorph demo exited {run.returncode}:\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    assert "Traceback" not in run.stderr
    assert "demo finished" in run.stdout and "MLflow UI:" in run.stdout
    summary = json.loads((demo["out"] / "summary.json").read_text())
    assert Path(summary["outputs"]) == demo["out"].resolve()  # the default: <state folder>/demo


def test_a_champion_per_task_promoted_by_the_policy(demo):
    assert set(demo["champions"]) == set(TASKS), demo["champions"]
    summary = json.loads((demo["out"] / "summary.json").read_text())
    for task in TASKS:
        assert demo["champions"][task]["decision"] in ("first-champion", "promoted"), (task, demo["champions"])
        d = summary["decisions"][task]
        assert str(d["champion_after"]) == demo["champions"][task]["version"]
        # learnt well above the quality floor (macro-F1 >= majority-class macro-F1 + 0.05)
        m = d["candidate_metrics"]
        assert m["f1_macro"] >= m["baseline_f1_macro"] + 0.2, (task, m)


def test_release_rescored_published_with_a_drift_verdict(demo):
    summary = json.loads((demo["out"] / "summary.json").read_text())
    assert summary["drift"] in VERDICTS
    pub = Path(summary["published"])
    assert summary["publish"] == "published" and (pub / "PUBLISHED").is_file(), summary
    cat = pd.read_parquet(pub / "catalogue.parquet")
    rescoring = summary["steps"][-1]
    assert len(cat) == rescoring["n_scored"] > 0 and rescoring["n_quarantined"] == 0
    assert (Path(rescoring["run_dir"]) / "drift" / "summary" / "verdict.txt").read_text().strip() == summary["drift"]
