"""The winding component on simulated CW/ACW/other galaxies: decided galaxies carry their label's sense,
featureless ones stay undecided, an unreadable image is quarantined (rows in = rows out + quarantined)."""

import pandas as pd
from kfp.dsl import Dataset

from galmorph.catalogue.manifest import read_manifest, write_manifest
from galmorph_components.winding.component import winding


def test_winding_component_measures_simulated_spirals(sim_chirality, tmp_path):
    man = read_manifest(sim_chirality["manifest"])
    broken = man.iloc[[0]].assign(object_id="broken-1", image_uri=str(tmp_path / "missing.jpg"))
    src = tmp_path / "in.parquet"
    write_manifest(pd.concat([man, broken], ignore_index=True), src, kind="sample")
    out = Dataset(name="w", uri=str(tmp_path / "w"), metadata={})
    q = Dataset(name="q", uri=str(tmp_path / "q"), metadata={})
    res = winding.python_func(manifest=Dataset(name="m", uri=str(src), metadata={}), measured=out, quarantine=q)
    df = read_manifest(out.path)
    quar = pd.read_parquet(q.path)
    assert res.rows_out == len(df) == len(man) and out.metadata["rows"] == len(man)
    assert list(quar["object_id"]) == ["broken-1"] and "missing.jpg" in quar["reason"].iloc[0]
    decided = df[df["winding"].notna()]
    assert res.decided == len(decided) >= len(man) // 3
    # the measured sense is the label's wherever it is decided; featureless galaxies are not decided
    assert (decided["winding"] == decided["label"]).all(), decided[["object_id", "label", "winding"]]
    assert (df.loc[df["label"] == "CW", "winding_score"] > 0).mean() > 0.8
    assert (df.loc[df["label"] == "ACW", "winding_score"] < 0).mean() > 0.8
    # a stricter confidence decides fewer, never more
    out2 = Dataset(name="w2", uri=str(tmp_path / "w2"), metadata={})
    res2 = winding.python_func(manifest=Dataset(name="m", uri=str(src), metadata={}), measured=out2,
                               quarantine=Dataset(name="q2", uri=str(tmp_path / "q2"), metadata={}),
                               min_confidence=6.0)
    assert res2.decided < res.decided
