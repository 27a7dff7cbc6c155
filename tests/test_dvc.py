"""DVC: the repo's dvc.yaml reproduces in a fresh git+dvc repo (simulator source), data versions
match DVC's own hashes, the local remote receives the outputs, MLflow records the version."""

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from galmorph.catalogue.dvcops import compute_md5, data_version, data_version_info, ensure_local_remote, log_dataset, run_dvc

REPO = Path(__file__).resolve().parents[1]


def _git_dvc_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    run_dvc(["init", "-q"], path)
    run_dvc(["config", "core.analytics", "false"], path)
    return path


def test_data_version_matches_dvc_add_and_tracks_changes(tmp_path):
    repo = _git_dvc_repo(tmp_path / "r")
    d = repo / "set"
    d.mkdir()
    (d / "a.txt").write_text("alpha\n")
    (d / "b.txt").write_text("beta\n")
    f = repo / "m.parquet"
    f.write_bytes(b"not really parquet")
    before_dir, before_file = compute_md5(d), compute_md5(f)
    assert before_file == hashlib.md5(b"not really parquet").hexdigest()
    assert before_dir.endswith(".dir") and data_version_info(d).source == "computed"
    run_dvc(["add", "set", "m.parquet"], repo)
    recorded = yaml.safe_load((repo / "set.dvc").read_text())["outs"][0]["md5"]
    assert recorded == before_dir  # our hash is DVC's hash
    info = data_version_info(d)
    assert info.md5 == recorded and info.source == "set.dvc"
    assert data_version(f) == before_file and data_version_info(f).source == "m.parquet.dvc"
    (d / "b.txt").write_text("beta changed\n")
    changed = data_version_info(d)
    assert changed.md5 != recorded and changed.stale_record == recorded and changed.source == "computed"


@pytest.mark.slow
def test_dvc_repro_reproduces_the_pipeline_in_a_fresh_repo(tmp_path):
    repo = _git_dvc_repo(tmp_path / "pipe")
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="sim", task="chirality", image="jpg")
    params["simulate"].update(n=6, size=48, seed=1)
    params["cutout"].update(size_px=32, crop_fraction=0.9)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = run_dvc(["repro"], repo).stdout
    for stage in ("simulate", "ingest", "validate", "cutout"):
        assert f"Running stage '{stage}'" in out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for s in lock["stages"].values() for o in s["outs"]}
    assert len(list((repo / "data/cutouts/png").glob("*.png"))) == 6
    import pandas as pd

    assert len(pd.read_parquet(repo / "data/manifests/validated.parquet")) == 6
    # the version MLflow records is the lock's hash
    v = data_version_info(repo / "data/cutouts")
    assert v.md5 == outs["data/cutouts"] and v.source == "dvc.lock"
    # nothing changed -> nothing runs; forcing the data stages reproduces identical outputs
    again = run_dvc(["repro"], repo).stdout
    assert "Running stage" not in again
    forced = run_dvc(["repro", "--force", "--downstream", "validate"], repo).stdout
    assert "Running stage 'cutout'" in forced and "Running stage 'simulate'" not in forced
    lock2 = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {o["path"]: o["md5"] for s in lock2["stages"].values() for o in s["outs"]} == outs
    # a parameter change reruns only what depends on it
    params["cutout"]["size_px"] = 24
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = run_dvc(["repro"], repo).stdout
    assert "Running stage 'cutout'" in third and "Running stage 'simulate'" not in third
    assert data_version(repo / "data/cutouts") != outs["data/cutouts"]
    # the local demo remote receives every output
    ensure_local_remote(repo)
    run_dvc(["push"], repo)
    assert any((repo / ".dvc-remote").rglob("*"))
    assert "in sync" in run_dvc(["status", "--cloud"], repo).stdout


def test_repo_pipeline_definition_and_remote():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["simulate", "ingest", "validate", "cutout"]
    assert "data/cutouts" in stages["cutout"]["outs"]
    cfg = (REPO / ".dvc" / "config").read_text()
    assert "remote = demo" in cfg and "url = ../.dvc-remote" in cfg


def test_mlflow_run_records_the_data_version(tmp_path, mlflow_server):
    import mlflow
    import pandas as pd

    from galmorph.catalogue.manifest import write_manifest

    p = write_manifest(pd.DataFrame({"object_id": ["a", "b"], "ra": [1.0, 2.0], "dec": [0.0, 0.0]}),
                       tmp_path / "m.parquet", kind="unit")
    mlflow.set_experiment("test-dvc")
    with mlflow.start_run() as run:
        v = log_dataset(p, name="unit")
    r = mlflow.get_run(run.info.run_id)
    assert v == compute_md5(p) and r.data.tags["galmorph.data_version"] == v
    assert r.inputs.dataset_inputs[0].dataset.digest == v
