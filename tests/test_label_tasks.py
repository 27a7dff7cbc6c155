"""Every task is labellable (issue #30): the queue -> app labels -> export -> training loop on the
simulator for lopsided, arms and chirality, with the task's own labels, keys and overlay; labels of
another task are refused; images outside the image roots say how to allow them (--image-root)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.labelling.choices import LABELLING, UNSURE, label_choices, labelling_for
from galmorph.labelling.store import LabelError, LabelStore
from galmorph.tasks import TASKS

#: A label of another task, posted to each task's app.
FOREIGN = {"lopsided": "CW", "arms": "lopsided", "chirality": "symmetric"}


def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1",
                      headers={"X-Requested-With": "galmorph"})


def test_every_task_has_its_classes_keys_and_an_overlay():
    assert set(LABELLING) == set(TASKS)
    for task, spec in LABELLING.items():
        assert spec.labels == (*TASKS[task].classes, UNSURE) == label_choices(task)
        keys = [c.key for c in spec.choices]
        assert len(set(keys)) == len(keys) and not {"z", "o"} & set(keys), task
        assert all(len(k) == 1 for k in keys) and spec.overlays
    assert labelling_for("chirality").keys == {"c": "CW", "a": "ACW", "x": "other", "u": UNSURE}
    assert labelling_for("lopsided").keys == {"s": "symmetric", "l": "lopsided", "u": UNSURE}
    assert labelling_for("chirality").overlays == ("winding",) and labelling_for("lopsided").overlays == ("a1",)
    with pytest.raises(ValueError, match="unknown labelling task"):
        labelling_for("bars")


def test_store_refuses_labels_of_another_task(tmp_path):
    s = LabelStore(f"sqlite:///{tmp_path / 'l.db'}")
    s.register_queue(pd.DataFrame({"object_id": ["a"], "queue_bin": ["x"], "queue_position": [0]}), "q")
    s.set_label("a", "alice", "ACW", "chirality")
    s.set_label("a", "alice", "5+", "arms")
    with pytest.raises(LabelError, match="not one of the chirality labels"):
        s.set_label("a", "alice", "lopsided", "chirality")
    with pytest.raises(LabelError, match="unknown labelling task"):
        s.set_label("a", "alice", "CW", "bars")
    assert dict(zip(s.labels("chirality").object_id, s.labels("chirality").label)) == {"a": "ACW"}


@pytest.mark.parametrize("task", ["lopsided", "arms", "chirality"])
def test_queue_label_export_train_loop(task, tmp_path, request):
    """``label sample --task`` -> the app offers the task's labels and overlay -> labels posted as a
    labeller would -> ``label export`` (task from the queue) -> one tiny training epoch on the export."""
    from galmorph.catalogue.manifest import manifest_metadata, read_manifest, read_quarantine, write_manifest
    from galmorph.cli import main
    from galmorph.labelling.app import create_app
    from galmorph.labelling.queue import read_queue

    sim = request.getfixturevalue(f"sim_{task}")
    man = read_manifest(sim["manifest"])
    truth = man.set_index("object_id").label.astype(str).to_dict()
    unlabelled = write_manifest(man.assign(label=None, task=None), tmp_path / "survey.parquet", kind="test")
    qpath, db = tmp_path / "queue.parquet", f"sqlite:///{tmp_path / 'labels.db'}"
    res = CliRunner().invoke(main, ["label", "sample", "--manifest", str(unlabelled), "--out", str(qpath),
                                    "--task", task, "--per-bin", "100", "--bins", "1", "--z-min", "0", "--z-max", "1"])
    assert res.exit_code == 0, res.output
    queue = read_queue(qpath)
    assert (queue.task == task).all() and len(queue) == len(truth)
    assert ("a1" in queue.columns) == (task == "lopsided")  # A1 is measured for the task that shows it

    spec = labelling_for(task)
    client = _client(create_app(queue, LabelStore(db), "alice", task=task, image_roots=[sim["dir"]]))
    page = client.get("/").text
    for c in spec.choices:
        assert f'data-label="{c.label}"' in page and f"<kbd>{c.key.upper()}</kbd>" in page
    assert ("Lopsided" in page) == (task == "lopsided") and spec.title in page
    assert ('id="a1"' in page) == (task == "lopsided")
    first = queue.object_id[0]
    obj = client.get(f"/api/object/{first}").json()
    assert set(spec.overlays) <= set(obj) and ("a1" in obj) == (task == "lopsided")
    if "winding" in spec.overlays:
        assert obj["winding"]["width"] == 64 and 0 < obj["winding"]["r_inner"] < obj["winding"]["r_outer"]

    # a label of another task: a clear 422 naming the task's labels, nothing stored
    bad = client.post("/api/label", json={"object_id": first, "label": FOREIGN[task]})
    assert bad.status_code == 422, bad.text
    assert f"not a label of the {task} task" in bad.json()["detail"]
    assert all(lab in bad.json()["detail"] for lab in spec.labels)
    st = client.get("/api/state").json()
    assert st["done"] == 0 and st["labels"] == list(spec.labels)

    skipped = queue.object_id[1]
    for oid in queue.object_id:
        r = client.post("/api/label", json={"object_id": oid, "label": UNSURE if oid == skipped else truth[oid]})
        assert r.status_code == 200, r.text
    st = client.get("/api/state").json()
    assert st["done"] == len(queue) and st["next"] is None
    assert sum(b[UNSURE] for b in st["bins"]) == 1
    for c in spec.classes:
        assert sum(b[c] for b in st["bins"]) == sum(truth[o] == c for o in queue.object_id if o != skipped)
    assert client.get("/api/agreement").status_code == 200

    out = tmp_path / "labelled.parquet"
    res = CliRunner().invoke(main, ["label", "export", "--db", db, "--out", str(out), "--queue", str(qpath)])
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    assert (m.task == task).all() and manifest_metadata(out)["kind"] == f"labelled-{task}"
    assert dict(zip(m.object_id, m.label)) == {o: truth[o] for o in queue.object_id if o != skipped}
    assert set(m.label) <= set(TASKS[task].classes) and all(f"n_{c}" in m.columns for c in spec.classes)
    assert list(read_quarantine(json.loads(res.stdout.strip().splitlines()[-1])["quarantine"]).object_id) == [skipped]

    from galmorph.training.config import resolve_config
    from galmorph.training.runner import fit_trial

    cfg = resolve_config(task, "tiny", {"progress": False, "max_epochs": 1, "image_size": 32, "trials": 1,
                                        "num_workers": 0, "cache_images": False})
    fit = fit_trial(cfg, m, 0, tmp_path / "train", data_root=None)
    assert len(fit["history"]) == 1 and len(fit["datamodule"].frame) == len(m)  # every exported row is usable
    assert set(fit["predictions"].label) <= set(cfg.classes()) and "test_accuracy" in fit["metrics"]


def test_cli_task_must_match_the_queue_and_export_quarantines_foreign_labels(tmp_path, sim_chirality):
    from galmorph.catalogue.manifest import read_manifest, read_quarantine
    from galmorph.cli import main
    from galmorph.labelling.export import export_labels
    from galmorph.labelling.queue import sample_queue, write_queue

    man = read_manifest(sim_chirality["manifest"]).assign(label=None)
    q, summary = sample_queue(man.head(6), per_bin=10, n_bins=1, z_min=0, z_max=1, task="chirality")
    qpath = write_queue(q, tmp_path / "q.parquet", summary)
    db = f"sqlite:///{tmp_path / 'l.db'}"
    res = CliRunner().invoke(main, ["label", "serve", "--queue", str(qpath), "--db", db, "--task", "lopsided"])
    assert res.exit_code == 2 and "sampled for task 'chirality'" in res.output
    # a database from before: chirality rows labelled with the lopsided words go to the quarantine
    s = LabelStore(db)
    s.register_queue(q, "q")
    s.set_label(q.object_id[0], "alice", "CW", "chirality")
    from sqlalchemy.orm import Session

    from galmorph.labelling.store import LabelRow

    with Session(s.engine) as ses, ses.begin():
        ses.add(LabelRow(task="chirality", object_id=q.object_id[1], labeller="alice", label="symmetric"))
    out = export_labels(s, tmp_path / "e.parquet", task="chirality")
    assert out["n_labelled"] == 1 and read_manifest(out["manifest"]).label.tolist() == ["CW"]
    qu = read_quarantine(out["quarantine"])
    assert list(qu.object_id) == [q.object_id[1]] and "no label of the chirality classes" in qu.reason[0]


def test_images_outside_the_image_roots_name_the_image_root_option(tmp_path, sim_chirality, monkeypatch):
    """Issue #30: a queue saved outside the image folder answered 403 on every image without a hint."""
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.cli import main
    from galmorph.labelling.app import create_app
    from galmorph.labelling.queue import sample_queue, write_queue

    man = read_manifest(sim_chirality["manifest"]).assign(label=None)
    q, summary = sample_queue(man.head(4), per_bin=10, n_bins=1, z_min=0, z_max=1, task="chirality")
    qdir = tmp_path / "queues"
    qdir.mkdir()
    qpath = write_queue(q, qdir / "q.parquet", summary)
    app = create_app(q, LabelStore(f"sqlite:///{tmp_path / 'a.db'}"), "alice", task="chirality",
                     image_roots=[qdir], measure_missing_a1=False)
    assert len(app.state.images_outside_roots) == len(q)
    r = _client(app).get(f"/image/{q.object_id[0]}")
    assert r.status_code == 403
    assert "outside the image roots" in r.json()["detail"] and "--image-root" in r.json()["detail"]
    assert str(sim_chirality["dir"]) not in r.text  # the server's folders are not told to the browser

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    res = CliRunner().invoke(main, ["label", "serve", "--queue", str(qpath), "--db", db, "--labeller", "alice"])
    assert res.exit_code == 0, res.output
    assert f"{len(q)} of {len(q)} queued images lie outside the image roots" in res.stderr
    assert f"--image-root {Path(sim_chirality['dir']).resolve()}" in res.stderr
    assert "labelling 4 objects for chirality" in res.stderr  # the task is the queue's
    res = CliRunner().invoke(main, ["label", "serve", "--queue", str(qpath), "--db", db, "--labeller", "alice",
                                    "--image-root", str(sim_chirality["dir"])])
    assert res.exit_code == 0 and "outside the image roots" not in res.stderr
