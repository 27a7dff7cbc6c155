"""Labelling components: sample a stratified queue, export it to the label DB, export labels back."""

from kfp.dsl import Dataset

from galmorph.labelling.store import LabelStore
from galmorph.catalogue.manifest import read_manifest, write_manifest
from galmorph_components.label_export.component import label_export
from galmorph_components.label_queue.component import label_queue
from galmorph_components.label_sample.component import label_sample


def test_sample_queue_export_roundtrip(sim_lopsided, tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    df = read_manifest(sim_lopsided["manifest"])
    df["label"], df["task"] = None, None  # an unlabelled catalogue
    unlabelled = write_manifest(df, tmp_path / "unlabelled.parquet", kind="catalogue")
    q = Dataset(name="q", uri=str(tmp_path / "queue"), metadata={})
    res = label_sample.python_func(manifest=Dataset(name="m", uri=str(unlabelled), metadata={}),
                                   queue=q, per_bin=3, task="lopsided", label_db_url=db, seed=1)
    queue = read_manifest(q.path)
    assert res.rows == len(queue) <= 12 and queue["object_id"].is_unique
    exported = Dataset(name="e", uri=str(tmp_path / "exported"), metadata={})
    r = label_queue.python_func(queue=q, exported=exported, label_db_url=db)
    assert r.registered == len(queue)
    store = LabelStore(db)
    first = str(queue["object_id"].iloc[0])
    store.set_label(first, "alice", "lopsided", task="lopsided")
    lab = Dataset(name="l", uri=str(tmp_path / "labelled"), metadata={})
    r = label_export.python_func(labelled=lab, quarantine=Dataset(name="x", uri=str(tmp_path / "lq"), metadata={}),
                                 task="lopsided", label_db_url=db)
    out = read_manifest(lab.path)
    assert r.n_labelled == 1 and out["object_id"].tolist() == [first] and out["label"].tolist() == ["lopsided"]
    # a second sample excludes the labelled object
    q2 = Dataset(name="q2", uri=str(tmp_path / "queue2"), metadata={})
    label_sample.python_func(manifest=Dataset(name="m", uri=str(unlabelled), metadata={}),
                             queue=q2, per_bin=50, task="lopsided", label_db_url=db, seed=1)
    assert first not in set(read_manifest(q2.path)["object_id"])
