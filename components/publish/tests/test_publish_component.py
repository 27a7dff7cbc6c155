"""The publish component: published on no drift; held (nothing published) on drift with hold on."""

import json

import pandas as pd
from kfp.dsl import Artifact, Dataset

from galmorph_components.publish.component import publish


def _catalogue(tmp_path):
    d = tmp_path / "cat"
    d.mkdir()
    pd.DataFrame({"object_id": ["a", "b"], "p_CW": [0.9, 0.2]}).to_parquet(d / "catalogue.parquet")
    (d / "summary.json").write_text(json.dumps({"n_scored": 2}))
    return Dataset(name="c", uri=str(d), metadata={})


def test_publish_and_hold(tmp_path):
    cat = _catalogue(tmp_path)
    pub = tmp_path / "pub"
    r1 = publish.python_func(catalogue=cat, verdict="no_drift", release="r1", publish_dir=str(pub),
                             published=Artifact(name="p", uri=str(tmp_path / "p1"), metadata={}))
    assert r1.status == "published" and (pub / "r1" / "catalogue.parquet").exists()
    r2 = publish.python_func(catalogue=cat, verdict="drift", release="r2", publish_dir=str(pub),
                             published=Artifact(name="p", uri=str(tmp_path / "p2"), metadata={}))
    assert r2.status == "held" and (pub / "r2" / "HELD").exists() and not (pub / "r2" / "catalogue.parquet").exists()
    r3 = publish.python_func(catalogue=cat, verdict="drift", release="r3", publish_dir=str(pub), hold_on_drift=False,
                             published=Artifact(name="p", uri=str(tmp_path / "p3"), metadata={}))
    assert r3.status == "published"
