"""Batch scoring (galmorph.scoring.batch / `galmorph score`) against a real local MLflow server.

Models are small real torch modules logged through the platform's model contract (pt2 export) and
loaded back with ``load_for_inference``; images are simulator renderings.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.scoring.batch import (chirality_violation, completed_shards, iter_shards, merge_scores, plan_workers,
                              score_manifest)
from test_scoring_helpers import (MirrorAntisymmetric, TinyNet, add_broken_images, mirror_release, register_model,
                                   replicate_manifest)

CHIR = ["CW", "ACW", "other"]


@pytest.fixture(scope="module")
def chir_model(mlflow_server):
    return register_model(TinyNet(3, seed=1), "chirality", CHIR, "galmorph-test-score-chir")


@pytest.fixture(scope="module")
def ce_model(mlflow_server):
    return register_model(MirrorAntisymmetric(seed=2), "chirality", CHIR, "galmorph-test-score-ce")


@pytest.fixture(scope="module")
def confident_model(mlflow_server):
    # bias makes CW overwhelmingly likely for any image
    return register_model(TinyNet(3, bias=[12.0, 0.0, 0.0], seed=3), "chirality", CHIR, "galmorph-test-score-conf")


def test_cvs_formula():
    cvs, sig = chirality_violation(60, 40)
    assert cvs == pytest.approx(20 / 10)
    assert chirality_violation(50, 50) == (0.0, 1.0)
    # all CW: CVS = -sqrt(n), sigma = 1/2
    cvs, sig = chirality_violation(0, 36)
    assert cvs == pytest.approx(-6.0) and sig == pytest.approx(0.5)
    assert all(math.isnan(v) for v in chirality_violation(0, 0))


def test_iter_shards_streams_exact_row_ranges(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1003
    t = pa.table({"object_id": [f"o{i}" for i in range(n)], "image_uri": ["x"] * n, "v": np.arange(n)})
    p = tmp_path / "m.parquet"
    pq.write_table(t, p, row_group_size=97)  # row groups that do not align with shards
    got = {s: (first, f) for s, first, f in iter_shards(p, 50, ["object_id", "v"], read_batch=13)}
    assert sorted(got) == list(range(21))
    for s, (first, f) in got.items():
        assert first == s * 50
        assert f["v"].tolist() == list(range(first, min(first + 50, n)))
    sub = list(iter_shards(p, 50, ["v"], shards=[3, 20]))
    assert [s for s, _, _ in sub] == [3, 20] and sub[1][2]["v"].tolist() == list(range(1000, 1003))
    assert plan_workers(n, 50, 4) == [list(range(0, 6)), list(range(6, 11)), list(range(11, 16)),
                                      list(range(16, 21))]
    assert plan_workers(10, 50, 4) == [[0]]


def test_score_quarantine_and_catalogue(sim_chirality, chir_model, tmp_path):
    """Rows in = rows scored + rows quarantined; broken images are quarantined with a reason;
    probabilities agree with the in-memory predictor; the high-confidence flag follows P_pred."""
    from galmorph.scoring.inference import predict_manifest
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.models.io import load_for_inference

    man, broken = add_broken_images(sim_chirality["manifest"], tmp_path / "release.parquet", tmp_path)
    n = len(read_manifest(man))
    out = tmp_path / "scores"
    res = score_manifest(chir_model, man, out, batch_size=8, shard_size=16, threshold=0.4, progress=False)
    assert res.n_scored + res.n_quarantined == n and res.n_quarantined == 2
    m = merge_scores([out], out, release="sim-r1")
    cat = pd.read_parquet(m.catalogue)
    q = pd.read_parquet(m.quarantine)
    assert sorted(q["object_id"]) == sorted(broken)
    assert all(q["stage"] == "score") and all(q["reason"].str.contains("broken-"))
    assert len(cat) == n - 2 and cat["object_id"].is_unique and not set(broken) & set(cat["object_id"])
    assert cat["row"].tolist() == list(range(n - 2)) and set(cat["shard"]) == {0, 1, 2}
    p = cat[[f"p_{c}" for c in CHIR]].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)
    assert (cat["pred"] == np.array(CHIR)[p.argmax(axis=1)]).all()
    assert (cat["high_confidence"] == (cat["p_pred"] >= 0.4)).all()
    assert 0 < cat["high_confidence"].sum() < len(cat), "threshold should split this untrained model's outputs"
    assert set(cat["model_version"]) == {chir_model.rsplit("/", 1)[1]}
    for c in ("z", "z_bin", "survey", "label"):
        assert c in cat.columns
    # same probabilities as the in-memory predictor on the readable rows
    ref = predict_manifest(load_for_inference(chir_model), read_manifest(sim_chirality["manifest"]), batch_size=5)
    ref = ref.set_index("object_id").loc[cat["object_id"]]
    np.testing.assert_allclose(p, ref[[f"p_{c}" for c in CHIR]].to_numpy(), atol=1e-5)
    s = json.loads(Path(m.summary).read_text())
    assert s["n_rows"] == n and s["n_scored"] == n - 2 and s["n_quarantined"] == 2
    assert s["duplicate_object_ids"] == 0
    counts = cat["pred"].value_counts()
    assert s["cvs"]["cvs"] == pytest.approx(chirality_violation(counts.get("ACW", 0), counts.get("CW", 0))[0])


def test_high_confidence_flag_and_known_cvs(sim_chirality, confident_model, tmp_path):
    """A model that says CW with P > 0.99 for every galaxy: all rows high-confidence, CVS = -sqrt(n)."""
    out = tmp_path / "conf"
    score_manifest(confident_model, sim_chirality["manifest"], out, batch_size=16, shard_size=20, progress=False)
    m = merge_scores(out, out)
    cat = pd.read_parquet(m.catalogue)
    n = len(cat)
    assert (cat["pred"] == "CW").all() and cat["high_confidence"].all() and (cat["p_pred"] > 0.99).all()
    assert m.summary_data["cvs"]["cvs"] == pytest.approx(-math.sqrt(n))
    assert m.summary_data["cvs"]["sigma"] == pytest.approx(0.5) and m.summary_data["cvs"]["sigma_null"] == 1.0
    assert m.summary_data["high_confidence_fraction"] == 1.0


def test_cvs_of_mirrored_release_flips_sign(sim_chirality, ce_model, tmp_path):
    """For a chirality-equivariant model, the mirrored simulated release has exactly the opposite CVS
    and each galaxy's CW/ACW probabilities are swapped."""
    mirrored = mirror_release(sim_chirality["manifest"], tmp_path / "mirror")
    a, b = tmp_path / "a", tmp_path / "b"
    score_manifest(ce_model, sim_chirality["manifest"], a, batch_size=16, shard_size=100, progress=False)
    score_manifest(ce_model, mirrored, b, batch_size=16, shard_size=100, progress=False)
    ma, mb = merge_scores(a, a), merge_scores(b, b)
    ca, cb = pd.read_parquet(ma.catalogue), pd.read_parquet(mb.catalogue)
    np.testing.assert_allclose(ca["p_CW"], cb["p_ACW"], atol=1e-4)
    np.testing.assert_allclose(ca["p_ACW"], cb["p_CW"], atol=1e-4)
    sa, sb = ma.summary_data["cvs"], mb.summary_data["cvs"]
    assert sa["n_acw"] + sa["n_cw"] > 0
    assert sb["cvs"] == pytest.approx(-sa["cvs"])


def test_resume_rejects_different_settings(sim_chirality, chir_model, tmp_path):
    from galmorph.scoring.batch import ScoringError

    out = tmp_path / "s"
    score_manifest(chir_model, sim_chirality["manifest"], out, shard_size=10, shards=[0], progress=False)
    with pytest.raises(ScoringError, match="shard_size"):
        score_manifest(chir_model, sim_chirality["manifest"], out, shard_size=20, progress=False)
    with pytest.raises(ScoringError, match="missing"):
        merge_scores(out, out)


def _galmorph() -> str:
    exe = Path(sys.executable).parent / "galmorph"
    return str(exe) if exe.exists() else "galmorph"


def test_kill_and_resume_gives_identical_rows(sim_chirality, chir_model, mlflow_server, tmp_path):
    """SIGKILL a `galmorph score` subprocess after its first shard lands, rerun the same command:
    the catalogue equals an uninterrupted run's, row for row, with no duplicates."""
    man = replicate_manifest(sim_chirality["manifest"], tmp_path / "big.parquet", 1200)
    env = {**os.environ, "GALMORPH_MLFLOW_TRACKING_URI": mlflow_server}
    killed = tmp_path / "killed"
    cmd = [_galmorph(), "score", "--model", chir_model, "--manifest", str(man), "--batch-size", "16",
           "--shard-size", "40", "--num-workers", "0", "--no-progress"]
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not completed_shards(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = completed_shards(killed)
    assert 0 < len(done_at_kill) < 30, f"kill landed at {len(done_at_kill)} of 30 shards"
    assert not (killed / "catalogue.parquet").exists()
    r = subprocess.run([*cmd, "--out", str(killed), "--json"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout)
    assert set(resumed["scoring"]["shards_skipped"]) == done_at_kill
    full = tmp_path / "full"
    r = subprocess.run([*cmd, "--out", str(full), "--json"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = pd.read_parquet(killed / "catalogue.parquet")
    b = pd.read_parquet(full / "catalogue.parquet")
    assert len(a) == len(b) == 1200 and a["object_id"].is_unique
    assert a["object_id"].tolist() == b["object_id"].tolist()
    num = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(a[num].to_numpy(), b[num].to_numpy(), atol=1e-6)
    assert (a["pred"] == b["pred"]).all() and (a["high_confidence"] == b["high_confidence"]).all()


def test_mlflow_gone_at_the_record_step_is_a_clear_error_and_a_rerun_records(sim_chirality, chir_model, tmp_path,
                                                                            mlflow_server, monkeypatch):
    """The soak killed the tracking server while a release was scored: the command ended in a traceback at
    the last step. Now: a ScoringError that says the scores are kept and what to do; the catalogue is
    there; the same call against a live server then records the release without scoring again."""
    import socket

    from mlflow import MlflowClient

    from galmorph.scoring.batch import ScoringError
    from galmorph.scoring.run import merge_and_log

    out = tmp_path / "scores"
    score_manifest(chir_model, sim_chirality["manifest"], out, batch_size=16, shard_size=32, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(ScoringError) as err:
        merge_and_log([out], out, release="sim-gone", tracking_uri=dead)
    msg = str(err.value)
    assert dead in msg and "nothing is lost" in msg and "catalogue.parquet" in msg
    assert (out / "catalogue.parquet").is_file()
    m, run_id = merge_and_log([out], out, release="sim-gone", tracking_uri=mlflow_server)
    assert run_id and MlflowClient(mlflow_server).get_run(run_id).info.status == "FINISHED"
    assert len(pd.read_parquet(m.catalogue)) == len(pd.read_parquet(sim_chirality["manifest"]))
