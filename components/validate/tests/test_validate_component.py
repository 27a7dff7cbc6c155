"""The validate component: a broken image is quarantined; success follows the failure fraction."""

import json

import pandas as pd
from kfp.dsl import Artifact, Dataset, Metrics

from galmorph.catalogue.manifest import read_manifest, read_quarantine, write_manifest
from galmorph_components.validate.component import validate


def _run(man, tmp_path, frac):
    outs = dict(passed=Dataset(name="p", uri=str(tmp_path / f"passed{frac}"), metadata={}),
                quarantine=Dataset(name="q", uri=str(tmp_path / f"q{frac}"), metadata={}),
                report=Artifact(name="r", uri=str(tmp_path / f"r{frac}.json"), metadata={}),
                metrics=Metrics(name="m", uri=str(tmp_path / f"m{frac}"), metadata={}))
    res = validate.python_func(manifest=Dataset(name="in", uri=str(man), metadata={}),
                               max_failure_fraction=frac, **outs)
    return res, outs


def test_validate_quarantines_broken_image(sim_chirality, tmp_path):
    df = read_manifest(sim_chirality["manifest"])
    bad = tmp_path / "zero.jpg"
    bad.write_bytes(b"")
    df.loc[0, "image_uri"] = str(bad)
    man = write_manifest(df, tmp_path / "m.parquet", kind="sim-chirality")
    res, outs = _run(man, tmp_path, 0.05)
    assert res is True and outs["metrics"].metadata["rows"] == 48 and outs["metrics"].metadata["passed"] == 47
    q = read_quarantine(outs["quarantine"].path)
    assert q["object_id"].tolist() == [df.loc[0, "object_id"]]
    assert len(read_manifest(outs["passed"].path)) == 47
    assert json.loads(open(outs["report"].path).read())["summary"]["passed"] == 47
    assert outs["metrics"].metadata["quarantined"] == 1.0
    # a stricter threshold than the failure fraction (1/48) fails the run
    res2, _ = _run(man, tmp_path, 0.01)
    assert res2 is False
