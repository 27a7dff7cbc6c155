"""Positional cross-match: lopsided x Hart = 1824 at 3", known offsets, unmatched reporting, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.catalogue.crossmatch import CrossmatchError, crossmatch, crossmatch_files
from galmorph.catalogue.ingest import ingest


@pytest.mark.realdata
def test_lopsided_catalogue_x_hart_spirals_gives_1824_at_3_arcsec(data_root, tmp_path):
    lop = ingest("lopsided", tmp_path / "lop.parquet", data_root=data_root, include_predicted=True)
    res = crossmatch_files(lop.manifest_path, data_root / "catalogues/hart2017_spirals.csv", 3.0,
                           out=tmp_path / "pairs.parquet", right_id="dr7objid")
    assert res.n_matches == 1824
    assert res.n_left == 7042 and len(res.unmatched_left) == 7042 - 1824
    assert len(res.unmatched_right) == 6222 - 1824
    assert (res.pairs["sep_arcsec"] <= 3.0).all() and res.pairs["left_id"].is_unique
    assert res.unmatched_left["reason"].str.contains("> 3.0\"").all()
    pairs = pd.read_parquet(tmp_path / "pairs.parquet")
    assert len(pairs) == 1824
    assert len(pd.read_parquet(tmp_path / "pairs.unmatched.parquet")) == (7042 - 1824) + (6222 - 1824)
    # a smaller radius can only lose matches
    assert 0 < crossmatch_files(lop.manifest_path, data_root / "catalogues/hart2017_spirals.csv", 0.05,
                                right_id="dr7objid").n_matches < 1824


def _cat(ids, ra, dec):
    return pd.DataFrame({"object_id": ids, "ra": ra, "dec": dec})


def test_known_offsets_radius_and_unmatched_reasons():
    arc = 1 / 3600
    right = _cat(["r1", "r2", "r3", "r4"], [10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 0.0, 60.0])
    # dec offsets 1", 2.9", 3.1"; at dec 60 an RA offset of 4"/cos(60) is 4" on the sky
    left = _cat(["a", "b", "c", "d", "e"], [10.0, 20.0, 30.0, 40.0 + 4 * arc / np.cos(np.radians(60)), np.nan],
                [1 * arc, 2.9 * arc, 3.1 * arc, 60.0, 0.0])
    res = crossmatch(left, right, 3.0)
    assert list(res.pairs["left_id"]) == ["a", "b"] and list(res.pairs["right_id"]) == ["r1", "r2"]
    np.testing.assert_allclose(res.pairs["sep_arcsec"], [1.0, 2.9], atol=1e-6)
    un = res.unmatched_left.set_index("id")
    assert un.loc["c", "nearest_arcsec"] == pytest.approx(3.1, abs=1e-6)
    assert un.loc["d", "nearest_arcsec"] == pytest.approx(4.0, abs=1e-3)
    assert "no usable ra/dec" in un.loc["e", "reason"]
    assert set(res.unmatched_right["id"]) == {"r3", "r4"}
    assert crossmatch(left, right, 5.0).n_matches == 4  # radius is configurable


def test_one_to_one_keeps_the_closest_and_errors_are_named():
    arc = 1 / 3600
    right = _cat(["r"], [10.0], [0.0])
    left = _cat(["near", "far"], [10.0, 10.0], [0.5 * arc, 2 * arc])
    assert crossmatch(left, right).n_matches == 2
    res = crossmatch(left, right, one_to_one=True)
    assert list(res.pairs["left_id"]) == ["near"]
    assert "closer to another" in res.unmatched_left.iloc[0]["reason"]
    with pytest.raises(CrossmatchError, match="right: missing coordinate column"):
        crossmatch(left, right.drop(columns=["dec"]))
    with pytest.raises(CrossmatchError, match="left: table has no rows"):
        crossmatch(left.head(0), right)
    with pytest.raises(CrossmatchError, match="radius must be > 0"):
        crossmatch(left, right, 0)


def test_cli_crossmatch(tmp_path):
    from galmorph.cli import main

    arc = 1 / 3600
    _cat(["a", "b"], [1.0, 2.0], [0.0, 0.0]).to_csv(tmp_path / "l.csv", index=False)
    _cat(["x", "y"], [1.0, 2.0], [1 * arc, 10 * arc]).to_csv(tmp_path / "r.csv", index=False)
    r = CliRunner().invoke(main, ["crossmatch", str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), "--radius", "2",
                                  "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["matches"] == 1 and doc["unmatched_left"] == 1 and doc["unmatched_right"] == 1
