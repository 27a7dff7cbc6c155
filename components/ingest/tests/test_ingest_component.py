"""The ingest component's python function on a simulator folder and on a release folder (release.json)."""

import json

from kfp.dsl import Dataset

from galmorph.catalogue.manifest import read_manifest, read_quarantine
from galmorph_components.ingest.component import ingest


def _ds(p):
    return Dataset(name=p.name, uri=str(p), metadata={})


def test_ingest_sim_folder(sim_chirality, tmp_path):
    m, q = _ds(tmp_path / "manifest"), _ds(tmp_path / "quarantine")
    out = ingest.python_func(source=f"sim:{sim_chirality['dir']}", manifest=m, quarantine=q, task="chirality")
    df = read_manifest(m.path)
    assert out.rows_in == out.rows_out + out.rows_quarantined == 48 == len(df)
    assert set(df["label"]) == {"CW", "ACW", "other"} and m.metadata["rows"] == 48
    assert len(read_quarantine(q.path)) == 0


def test_ingest_release_folder(sim_chirality, tmp_path):
    rel = tmp_path / "dr1"
    rel.mkdir()
    (rel / "release.json").write_text(json.dumps({"release": "dr1", "manifest": str(sim_chirality["manifest"])}))
    m, q = _ds(tmp_path / "manifest"), _ds(tmp_path / "quarantine")
    out = ingest.python_func(source=str(rel), manifest=m, quarantine=q)
    assert out.rows_out == 48 and read_manifest(m.path)["object_id"].is_unique
