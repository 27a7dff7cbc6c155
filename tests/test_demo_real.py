"""`galmorph demo --real`: the plan it submits, built from the real data without training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.ops.demo import plan_real_demo, select_real_training_set
from galmorph.catalogue.manifest import read_manifest


def _manifest(n_cw=3, n_acw=4, n_other=20):
    labels = ["CW"] * n_cw + ["ACW"] * n_acw + ["other"] * n_other
    rng = np.random.default_rng(1)
    labels = list(rng.permutation(labels))
    return pd.DataFrame({"object_id": [f"g{i}" for i in range(len(labels))], "label": labels})


def test_selection_keeps_every_spiral_and_a_seeded_sample_of_other():
    m = _manifest()
    s = select_real_training_set(m, n_other=5, seed=3)
    assert (s["label"] == "CW").sum() == 3 and (s["label"] == "ACW").sum() == 4
    assert (s["label"] == "other").sum() == 5
    assert s.equals(select_real_training_set(m, n_other=5, seed=3))  # seeded
    assert set(s["object_id"]) != set(select_real_training_set(m, n_other=5, seed=4)["object_id"])
    # order of the manifest kept; asking for more "other" than exist takes them all
    assert list(s["object_id"]) == [o for o in m["object_id"] if o in set(s["object_id"])]
    assert len(select_real_training_set(m, n_other=99)) == len(m)
    with pytest.raises(ValueError, match="no CW/ACW"):
        select_real_training_set(m[m["label"] == "other"], n_other=2)


def test_real_demo_plan_from_the_data_root(data_root, tmp_path):
    gz1 = pd.read_csv(data_root / "gz1_chirality" / "labels.csv", dtype={"dr7objid": str})
    n_cw = int((gz1["gz1_class"] == "clockwise").sum())
    n_acw = int((gz1["gz1_class"] == "anticlockwise").sum())
    plan = plan_real_demo(data_root, tmp_path, n_other=40, seed=7, max_epochs=2)
    assert plan.labels == {"CW": n_cw, "ACW": n_acw, "other": 40} or plan.labels == {
        "ACW": n_acw, "CW": n_cw, "other": 40}
    sel = read_manifest(plan.training_manifest)
    assert len(sel) == n_cw + n_acw + 40 and sel["object_id"].is_unique
    spirals = set(gz1.loc[gz1["gz1_class"].isin(["clockwise", "anticlockwise"]), "dr7objid"].astype(str))
    assert spirals <= set(sel["object_id"])
    others = sel[sel["label"] == "other"]
    assert not set(others["gz1_class"]) & {"clockwise", "anticlockwise"}
    # the catalogue's counts travel with the selection: the model records GZ1's prior (#26.2)
    from galmorph.catalogue.manifest import manifest_metadata

    counts = manifest_metadata(plan.training_manifest)["catalogue_label_counts"]
    assert counts["CW"] == n_cw and counts["ACW"] == n_acw and sum(counts.values()) == len(gz1)
    # every selected image exists under the data root
    for uri in sel["image_uri"].head(20):
        assert (data_root / uri.removeprefix("data://")).exists(), uri
    t = plan.training_params
    assert t["task"] == "chirality" and t["preset"] == "reference"
    assert t["source"] == str(plan.training_manifest)
    assert json.loads(t["overrides_json"]) == {"max_epochs": 2}
    r = plan.rescoring_params
    assert r["release"] == "decals" and r["release_uri"] == "decals" and r["task"] == "chirality"
    assert r["hold_on_drift"] is True and r["model_alias"] == "champion"
    # the pipelines accept these parameters (names and types), without running anything
    from galmorph.ops.run import coerce_params
    coerce_params("training", dict(t))
    coerce_params("rescoring", dict(r))
    # DECaLS has no redshifts: its galaxies fall in the "unknown" z bin, survey decals
    from galmorph.catalogue.ingest import load_source
    dec, _q, _k = load_source(r["release_uri"], data_root)
    assert len(dec) > 0 and set(dec["z_bin"]) == {"unknown"} and set(dec["survey"]) == {"decals"}


def test_cli_real_only_options_refused_without_real():
    from galmorph.cli.base import main

    res = CliRunner().invoke(main, ["demo", "--n-other", "5"])
    assert res.exit_code != 0 and "--real only" in res.output
