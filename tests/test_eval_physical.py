"""Physical-property analysis: known truths on synthetic tables, and the real lopsided x Hart run."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.evaluation.physical import (class_property_summary, compare_samples, compare_to_parent,
                                          match_property_table, redshift_matched_resampling)
from galmorph.catalogue.ingest import parse_iau_name

REPO = Path(__file__).resolve().parents[1]


def test_parse_sdss_name():  # the one IAU-name parser (galmorph.catalogue.ingest) reads the catalogue's SDSS names
    ra, dec = parse_iau_name("SDSS J132008.30+302700.3")
    assert ra == pytest.approx(15 * (13 + 20 / 60 + 8.30 / 3600))
    assert dec == pytest.approx(30 + 27 / 60 + 0.3 / 3600)
    assert parse_iau_name("J225422.30-101025.8")[1] == pytest.approx(-(10 + 10 / 60 + 25.8 / 3600))
    with pytest.raises(ValueError, match="cannot parse"):
        parse_iau_name("NGC 4321")


def test_summary_and_tests_on_known_samples():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"label": ["a"] * 400 + ["b"] * 400,
                       "m": np.r_[rng.normal(10.0, 0.3, 400), rng.normal(10.5, 0.3, 400)]})
    df.loc[0, "m"] = np.nan  # dropped, not counted
    s = class_property_summary(df, "label", "m")
    assert s["a"]["n"] == 399 and s["b"]["n"] == 400 and s["all"]["n"] == 799
    assert s["a"]["median"] == pytest.approx(10.0, abs=0.05) and s["b"]["median"] == pytest.approx(10.5, abs=0.05)
    assert s["a"]["q25"] < s["a"]["median"] < s["a"]["q75"]
    vp = compare_to_parent(df, "label", "m")
    assert vp["a"]["ks_p"] < 1e-6 and vp["a"]["t_p_less"] < 1e-6 and vp["a"]["t_p_greater"] > 0.99
    x = rng.normal(0, 1, 300)
    same = compare_samples(x, x[::-1])
    assert same["ks_stat"] == 0.0 and same["ks_p"] == pytest.approx(1.0)
    assert same["t_p_less"] == pytest.approx(0.5) and same["t_p_greater"] == pytest.approx(0.5)
    with pytest.raises(KeyError, match="property column"):
        class_property_summary(df, "label", "nope")


def test_redshift_matched_resampling_removes_a_pure_redshift_effect():
    """Mass depends on z only; the classes differ only in their z distributions. Raw medians differ,
    the z-matched ones agree; a real class offset survives the matching."""
    rng = np.random.default_rng(1)
    za, zb = rng.uniform(0.02, 0.05, 600), rng.uniform(0.03, 0.08, 900)
    z = np.r_[za, zb]
    mass = 9.5 + 20 * z + rng.normal(0, 0.05, len(z))
    df = pd.DataFrame({"label": ["lop"] * 600 + ["sym"] * 900, "Z": z, "M": mass})
    raw = df.groupby("label")["M"].median()
    assert raw["sym"] - raw["lop"] > 0.2
    r = redshift_matched_resampling(df, "label", "M", reference="lop", resampled="sym", n_realisations=30)
    assert abs(r["resampled_median_mean"] - r["reference_median"]) < 0.05
    assert abs(r["n_reference_unmatched"] - (za < 0.03).sum()) <= 2  # no "sym" galaxy below z = 0.03
    df2 = df.assign(M=df["M"] + np.where(df["label"] == "sym", 0.3, 0.0))
    r2 = redshift_matched_resampling(df2, "label", "M", reference="lop", resampled="sym", n_realisations=30)
    assert r2["resampled_median_mean"] - r2["reference_median"] == pytest.approx(0.3, abs=0.06)
    assert r2["frac_ks_p_below_0.05"] == 1.0
    with pytest.raises(ValueError, match="needs both classes"):
        redshift_matched_resampling(df, "label", "M", reference="lop", resampled="zzz")


def test_match_property_table_keeps_every_row():
    cat = pd.DataFrame({"object_id": ["a", "b", "c"], "ra": [10.0, 20.0, 30.0], "dec": [0.0, 0.0, 0.0]})
    props = pd.DataFrame({"ra": [10.0 + 1 / 3600, 20.0 + 10 / 3600], "dec": [0.0, 0.0], "logMstar": [10.1, 10.2]})
    m, u = match_property_table(cat, props, radius_arcsec=3.0)
    assert list(m["object_id"]) == ["a"] and m["logMstar"].iloc[0] == 10.1
    assert m["sep_arcsec"].iloc[0] == pytest.approx(1.0, abs=0.01)
    assert set(u["object_id"]) == {"b", "c"} and u["reason"].notna().all()


@pytest.mark.realdata
def test_lopsided_x_hart_benchmark_runs(data_root, tmp_path):
    """The benchmark script run as its users run it (``python benchmarks/physical_lopsided.py``), its
    results read back from the JSON and Markdown it writes."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "physical_lopsided.py"), "--data-root",
                           str(data_root), "--out", str(tmp_path), "--realisations", "20"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "physical.json").read_text())
    assert res["n_catalogue"] == 7042 and res["n_matched"] == 1824
    assert res["n_matched"] + res["n_unmatched"] == res["n_catalogue"]
    for name, a in res["subsamples"].items():
        s = a["logMstar"]["summary"]
        lop, sym = s["lopsided"]["median"], s["symmetric"]["median"]
        assert math.isfinite(lop) and math.isfinite(sym) and 9.5 < lop < 11.5
        assert lop < sym, name  # lopsided spirals are less massive, as published (10.40 vs 10.79)
    full = res["subsamples"]["all (training labels + all predictions)"]["logMstar"]
    assert full["vs_parent"]["lopsided"]["t_p_less"] < 0.01
    assert full["resampling"]["symmetric_matched_to_lopsided"]["resampled_median_mean"] > \
        full["resampling"]["symmetric_matched_to_lopsided"]["reference_median"]
    md = (tmp_path / "physical.md").read_text()
    assert "10.40" in md and "10.79" in md and "1824" in md
