"""Labelling: stratified queues, the label database, agreement, export (+DVC), the web app's API."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.labelling.agreement import agreement_report, cohen_kappa
from galmorph.labelling.export import dvc_add, export_labels, resolve_labels
from galmorph.labelling.queue import predictive_entropy, read_queue, sample_queue, write_queue
from galmorph.labelling.store import LabelError, LabelStore, UnknownObject


def catalogue(n=600, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.0, 0.15, n)
    return pd.DataFrame({"object_id": [f"obj{i:04d}" for i in range(n)], "survey": "sim", "ra": 0.0, "dec": 0.0,
                         "z": z, "z_bin": "x", "image_uri": "", "label": None, "task": None, "provenance": "test"})


# --------------------------------------------------------------------------------------------
# queue
# --------------------------------------------------------------------------------------------
def test_sample_queue_stratified_and_reproducible():
    cat = catalogue()
    cat.loc[:9, ["label", "task"]] = ["lopsided", "lopsided"]  # already labelled in the manifest
    exclude = set(cat.object_id[10:30])
    q, summary = sample_queue(cat, per_bin=20, n_bins=4, z_min=0.01, z_max=0.1, seed=7, exclude_ids=exclude)
    edges = np.linspace(0.01, 0.1, 5)
    assert summary["bins"] == [f"{a:.4f}-{b:.4f}" for a, b in zip(edges[:-1], edges[1:])]
    assert len(q) == 80 and q.object_id.is_unique
    assert q.groupby("queue_bin").size().tolist() == [20, 20, 20, 20]
    for b, g in q.groupby("queue_bin"):
        lo, hi = map(float, b.split("-"))
        assert ((g.z >= lo) & (g.z <= hi)).all()
    assert not set(q.object_id) & (exclude | set(cat.object_id[:10]))
    assert list(q.queue_position) == list(range(80)) and (q.task == "lopsided").all()
    # bins are interleaved (the order is shuffled across bins)
    assert q.queue_bin.iloc[:8].nunique() > 1
    # reproducible by seed, independent of the manifest's row order; another seed differs
    q2, _ = sample_queue(cat.sample(frac=1, random_state=3), per_bin=20, seed=7, exclude_ids=exclude)
    assert list(q2.object_id) == list(q.object_id)
    q3, _ = sample_queue(cat, per_bin=20, seed=8, exclude_ids=exclude)
    assert set(q3.object_id) != set(q.object_id)
    # a bin with too few objects gives what it has
    few, s = sample_queue(cat, per_bin=1000, seed=0)
    assert s["chosen"] == s["available"] and len(few) == sum(s["available"].values())


def test_entropy_ranking():
    assert np.allclose(predictive_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])), [np.log(2), 0.0])
    cat = catalogue(300, seed=1)
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, len(cat))
    scores = pd.DataFrame({"object_id": cat.object_id, "p_symmetric": 1 - p, "p_lopsided": p})
    scores["entropy"] = predictive_entropy(scores[["p_symmetric", "p_lopsided"]].to_numpy())
    q, summary = sample_queue(cat, per_bin=5, seed=0, scores=scores)
    assert summary["ranked_by"] == "entropy" and len(q) == 20
    assert q.entropy.is_monotonic_decreasing
    allb, _ = sample_queue(cat, per_bin=10_000, seed=0)
    ent = scores.set_index("object_id").entropy
    for b, g in q.groupby("queue_bin"):
        pool = allb[allb.queue_bin == b].object_id
        assert set(g.object_id) == set(ent[pool].nlargest(5).index)


def test_queue_round_trip(tmp_path):
    q, s = sample_queue(catalogue(), per_bin=3, seed=0)
    write_queue(q, tmp_path / "q.parquet", s)
    back = read_queue(tmp_path / "q.parquet")
    assert list(back.object_id) == list(q.object_id)
    from galmorph.catalogue.manifest import ManifestError, manifest_metadata, write_manifest

    assert manifest_metadata(tmp_path / "q.parquet")["queue"]["seed"] == 0
    write_manifest(catalogue(5), tmp_path / "m.parquet", kind="x")
    with pytest.raises(ManifestError, match="not a labelling queue"):
        read_queue(tmp_path / "m.parquet")


# --------------------------------------------------------------------------------------------
# label store, agreement, export
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def store(tmp_path):
    s = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    q, _ = sample_queue(catalogue(), per_bin=5, seed=0)
    s.register_queue(q, "q")
    return s, q


def test_store_labellers_never_overwrite_and_undo(store):
    s, q = store
    a, b = q.object_id[0], q.object_id[1]
    s.set_label(a, "alice", "lopsided")
    s.set_label(a, "bob", "symmetric")
    s.set_label(a, "alice", "symmetric")  # alice changes her mind: only her row changes
    lab = s.labels()
    assert len(lab) == 2 and set(lab.labeller) == {"alice", "bob"}
    assert dict(zip(lab.labeller, lab.label)) == {"alice": "symmetric", "bob": "symmetric"}
    s.set_label(b, "alice", "unsure")
    assert s.undo("alice")["object_id"] == b  # removes the unsure
    res = s.undo("alice")  # restores alice's first label of a
    assert res["restored_label"] == "lopsided"
    assert dict(zip(s.labels().labeller, s.labels().label)) == {"alice": "lopsided", "bob": "symmetric"}
    s.undo("alice")
    assert set(s.labels().labeller) == {"bob"}
    with pytest.raises(LabelError, match="nothing to undo"):
        s.undo("alice")
    with pytest.raises(UnknownObject):
        s.set_label("no-such-object", "alice", "lopsided")
    with pytest.raises(LabelError, match="not one of"):
        s.set_label(a, "alice", "LOPSIDED!")
    ev = s.events("alice")
    assert list(ev.action).count("undo") == 3 and ev["at"].notna().all()
    assert ev["at"].iloc[0].tzinfo is not None


def test_cohen_kappa_matches_sklearn_and_report(store):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(1)
    x = rng.choice(["symmetric", "lopsided"], 50)
    y = np.where(rng.uniform(size=50) < 0.8, x, rng.choice(["symmetric", "lopsided"], 50))
    assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))
    assert cohen_kappa(x, x) == pytest.approx(1.0)
    s, q = store
    ids = list(q.object_id[:12])
    for i, oid in enumerate(ids):
        s.set_label(oid, "alice", x[i])
        s.set_label(oid, "bob", y[i])
        if i < 6:
            s.set_label(oid, "carol", x[i])
    s.set_label(ids[0], "dave", "unsure")
    rep = agreement_report(s.labels())
    pairs = {(p["a"], p["b"]): p for p in rep["pairs"]}
    assert rep["labellers"] == ["alice", "bob", "carol"]  # dave only said unsure
    assert pairs[("alice", "bob")]["n_common"] == 12
    assert pairs[("alice", "bob")]["kappa"] == pytest.approx(cohen_kappa_score(x[:12], y[:12]))
    assert pairs[("alice", "carol")]["kappa"] == pytest.approx(1.0) and pairs[("alice", "carol")]["n_common"] == 6
    from galmorph.cli import main

    with_db = CliRunner().invoke(main, ["label", "agreement", "--db", s.url, "--json"])
    assert with_db.exit_code == 0, with_db.output
    assert json.loads(with_db.output)["pairs"][0]["n_common"] == 12


def test_export_policies_and_training_consumes(tmp_path, store):
    s, q = store
    o = list(q.object_id[:4])
    s.set_label(o[0], "alice", "lopsided")
    s.set_label(o[0], "bob", "lopsided")
    s.set_label(o[0], "carol", "symmetric")  # majority lopsided, latest symmetric
    s.set_label(o[1], "alice", "symmetric")
    s.set_label(o[1], "bob", "lopsided")  # tie -> most recent (lopsided)
    s.set_label(o[2], "alice", "unsure")  # only unsure -> quarantine
    s.set_label(o[3], "bob", "symmetric")
    res = resolve_labels(s.labels(), "majority").set_index("object_id")
    assert res.label[o[0]] == "lopsided" and res.label[o[1]] == "lopsided" and res.label[o[3]] == "symmetric"
    assert res.label_agreement[o[0]] == pytest.approx(2 / 3)
    latest = resolve_labels(s.labels(), "latest").set_index("object_id")
    assert latest.label[o[0]] == "symmetric"
    out = export_labels(s, tmp_path / "labelled.parquet")
    from galmorph.catalogue.manifest import manifest_metadata, read_manifest, read_quarantine

    m = read_manifest(out["manifest"])
    assert sorted(m.object_id) == sorted([o[0], o[1], o[3]])
    assert (m.task == "lopsided").all() and set(m.label) <= {"symmetric", "lopsided"}
    assert m.set_index("object_id").z[o[0]] == pytest.approx(q.set_index("object_id").z[o[0]])
    assert manifest_metadata(out["manifest"])["kind"] == "labelled-lopsided"
    qu = read_quarantine(out["quarantine"])
    assert list(qu.object_id) == [o[2]] and "only 'unsure'" in qu.reason[0]
    only_bob = export_labels(s, tmp_path / "bob.parquet", labeller="bob")
    assert only_bob["n_labelled"] == 3
    # training's class order: every exported label is one of the task's classes
    from galmorph.tasks import TASKS

    assert set(m.label) <= set(TASKS["lopsided"].classes)


def test_export_dvc_add(tmp_path, store):
    s, q = store
    s.set_label(q.object_id[0], "alice", "lopsided")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    from galmorph.catalogue.dvcops import run_dvc

    run_dvc(["init", "-q"], cwd=repo)
    from galmorph.cli import main

    out = repo / "data" / "labels.parquet"
    res = CliRunner().invoke(main, ["label", "export", "--db", s.url, "--out", str(out), "--dvc"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output.strip().splitlines()[-1])
    dvc_file = Path(info["dvc_file"])
    assert dvc_file.exists() and "md5" in dvc_file.read_text()
    # outside a DVC repository: a clear error
    with pytest.raises(RuntimeError, match="not inside a DVC repository"):
        dvc_add(export_labels(s, tmp_path / "elsewhere" / "l.parquet")["manifest"])


# --------------------------------------------------------------------------------------------
# the web app (API level; the browser test drives the page itself)
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def app_client(tmp_path, sim_lopsided):
    from fastapi.testclient import TestClient

    from galmorph.labelling.app import create_app
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_lopsided["manifest"])
    man["label"] = None
    q, _ = sample_queue(man, per_bin=2, seed=0)
    q = q.head(5).copy()
    # one object with an image outside the allowed folders, one with a traversal URI, one FITS
    q.loc[3, "image_uri"] = "/etc/passwd"
    q.loc[4, "image_uri"] = "data://../../etc/passwd"
    q.loc[2, "image_uri"] = q.loc[2, "fits_path"]
    store = LabelStore(f"sqlite:///{tmp_path / 'app.db'}")
    app = create_app(q, store, "alice", data_root=tmp_path / "no-data-root",
                     image_roots=[Path(sim_lopsided["dir"])])
    return (TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1",
                       headers={"X-Requested-With": "galmorph"}), q, store)


def test_app_label_flow_and_tallies(app_client):
    client, q, store = app_client
    st = client.get("/api/state").json()
    assert st["total"] == 5 and st["done"] == 0 and st["next"] == q.object_id[0]
    obj = client.get(f"/api/object/{q.object_id[0]}").json()
    a1 = obj["a1"]
    assert a1["a1"] is not None and a1["a1_width"] == 96 and 0 < a1["a1_r50_px"] < a1["a1_r90_px"]
    r = client.post("/api/label", json={"object_id": q.object_id[0], "label": "lopsided"})
    assert r.status_code == 200 and r.json()["state"]["done"] == 1
    assert client.get("/api/state").json()["next"] == q.object_id[1]
    client.post("/api/label", json={"object_id": q.object_id[1], "label": "unsure"})
    bins = {b["bin"]: b for b in client.get("/api/state").json()["bins"]}
    b0 = bins[q.queue_bin[0]]
    assert b0["lopsided"] >= 1 and sum(b["done"] for b in bins.values()) == 2
    u = client.post("/api/undo")
    assert u.status_code == 200 and u.json()["undone"]["object_id"] == q.object_id[1]
    assert client.get("/api/state").json()["next"] == q.object_id[1]
    assert set(store.labels().object_id) == {q.object_id[0]}
    page = client.get("/")
    assert page.status_code == 200 and "overlay-toggle" in page.text and "alice" in page.text


def test_app_bad_requests_are_4xx(app_client):
    client, q, store = app_client
    assert client.get("/api/object/nope").status_code == 404
    assert client.post("/api/label", json={"object_id": "nope", "label": "lopsided"}).status_code == 404
    assert client.post("/api/label", json={"object_id": q.object_id[0], "label": "maybe"}).status_code == 422
    assert client.post("/api/label", json={"object_id": q.object_id[0]}).status_code == 422
    assert client.post("/api/label", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/api/undo").status_code == 409
    for url in ("/image/..%2F..%2Fetc%2Fpasswd", "/image/../../etc/passwd", "/image/%2Fetc%2Fpasswd"):
        r = client.get(url)
        assert 400 <= r.status_code < 500 and "root:" not in r.text, url
    assert client.get(f"/image/{q.object_id[3]}").status_code == 403  # /etc/passwd in the queue
    assert client.get(f"/image/{q.object_id[4]}").status_code == 400  # data:// traversal
    ok = client.get(f"/image/{q.object_id[0]}")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert ok.content == Path(q.image_uri[0]).read_bytes()
    fits = client.get(f"/image/{q.object_id[2]}")
    assert fits.status_code == 200 and fits.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(store.labels()) == 0


def test_cli_sample_measures_a1(tmp_path, sim_lopsided):
    from galmorph.cli import main
    from galmorph.catalogue.manifest import read_manifest, write_manifest

    man = read_manifest(sim_lopsided["manifest"])
    man["label"] = None
    man.loc[0, "image_uri"] = str(tmp_path / "gone.jpg")
    man.loc[0, "fits_path"] = None
    src = write_manifest(man, tmp_path / "m.parquet", kind="test")
    done = LabelStore(f"sqlite:///{tmp_path / 'l.db'}")
    done.register_queue(man.head(3), "x")
    done.set_label(man.object_id[1], "alice", "lopsided")
    out = tmp_path / "q.parquet"
    res = CliRunner().invoke(main, ["label", "sample", "--manifest", str(src), "--out", str(out), "--per-bin", "100",
                                    "--exclude-labelled", done.url, "--seed", "3"])
    assert res.exit_code == 0, res.output
    q = read_queue(out)
    assert man.object_id[1] not in set(q.object_id)
    assert len(q) == len(man) - 1 - int(((man.z < 0.01) | (man.z > 0.1)).sum())
    assert q.a1.notna().sum() >= len(q) - 1
    if man.object_id[0] in set(q.object_id):
        row = q.set_index("object_id").loc[man.object_id[0]]
        assert "does not exist" in row.a1_error


def test_exported_labels_feed_training_data(tmp_path, sim_lopsided):
    """label sample -> labels in the store -> export -> the training data module reads those labels
    and those images (the export is a training manifest, not just a table of labels)."""
    from galmorph.datasets.datamodule import GalaxyDataModule
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.training.config import resolve_config

    man = read_manifest(sim_lopsided["manifest"])
    man = man.assign(label=None, task=None)  # unlabelled survey rows
    q, _ = sample_queue(man, per_bin=10, n_bins=4, z_min=0.0, z_max=1.0, seed=1)
    s = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    s.register_queue(q, "q")
    truth = read_manifest(sim_lopsided["manifest"]).set_index("object_id").label
    chosen = list(q.object_id[:16])
    for oid in chosen:
        s.set_label(oid, "alice", truth[oid])
    out = export_labels(s, tmp_path / "labelled.parquet")
    m = read_manifest(out["manifest"])
    assert sorted(m.object_id) == sorted(chosen)
    cfg = resolve_config("lopsided", "tiny", {"batch_size": 4, "num_workers": 0})
    dm = GalaxyDataModule.from_config(m, cfg, data_root=None)
    dm.setup()
    seen = dm.assignments().set_index("object_id").label
    assert seen.to_dict() == {oid: truth[oid] for oid in chosen}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (cfg.in_chans, cfg.image_size, cfg.image_size) and x.shape[0] == y.shape[0]
    assert set(y.tolist()) <= set(range(len(cfg.classes())))
