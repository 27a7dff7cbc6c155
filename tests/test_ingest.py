"""Catalogue ingest: the real-data numbers, every source, and bad input (named errors, rows kept)."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.catalogue.ingest import (
    IngestError,
    ingest,
    ingest_decals,
    ingest_gz2_arms,
    ingest_image_folder,
    parse_iau_name,
)
from galmorph.catalogue.manifest import read_manifest, read_quarantine, resolve_image_uri

realdata = pytest.mark.realdata


def _balanced(res):
    assert res.n_in == res.n_out + res.n_quarantined
    assert len(read_manifest(res.manifest_path)) == res.n_out
    assert len(read_quarantine(res.quarantine_path)) == res.n_quarantined


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("ingest")


# ------------------------------------------------------------------------------------------ real data
@realdata
def test_gz1_chirality_5290_rows_328_cw_359_acw(data_root, out):
    res = ingest("gz1_chirality", out / "gz1.parquet", data_root=data_root)
    _balanced(res)
    m = read_manifest(res.manifest_path)
    assert len(m) == 5290 and res.n_quarantined == 0
    counts = m["label"].value_counts()
    assert counts["CW"] == 328 and counts["ACW"] == 359 and counts["other"] == 5290 - 328 - 359
    assert (m.loc[m.gz1_class == "clockwise", "label"] == "CW").all()
    assert set(m.loc[m.label == "other", "gz1_class"]) == {"elliptical", "edge_on", "merger", "dont_know"}
    assert m["ra"].isna().all() and m["z_bin"].eq("unknown").all() and m["survey"].eq("sdss").all()
    assert m["object_id"].is_unique and (m["task"] == "chirality").all()
    for uri in m["image_uri"].head(5):
        assert uri.startswith("data://gz1_chirality/images/") and resolve_image_uri(uri, data_root).is_file()


@realdata
def test_gz2_arms_167_rows_labels_from_rounded_mean(data_root, out):
    res = ingest("gz2_arms", out / "gz2.parquet", data_root=data_root)
    _balanced(res)
    m = read_manifest(res.manifest_path)
    assert len(m) == 167
    src = pd.read_csv(data_root / "gz2_arms/labels.csv", dtype={"dr7objid": str}).set_index("dr7objid")
    has_mean = m["n_arms_mean"].notna()
    rounded = np.floor(m.loc[has_mean, "n_arms_mean"] + 0.5).astype(int)
    expect = rounded.map(lambda n: "cant_tell" if n <= 0 else ("5+" if n >= 5 else str(n)))
    assert (m.loc[has_mean, "label"] == expect).all()
    assert has_mean.sum() == 164 and (m.loc[~has_mean, "label_source"] != "n_arms_mean").all()
    np.testing.assert_allclose(m.set_index("object_id").loc[src.index, "z"], src["z"])
    assert {"log_mstar", "petro_theta_arcsec", "t11_arms_number_a32_2_flag"} <= set(m.columns)
    assert (m["z"] < 0.01).sum() == 3  # real catalogue noise, caught by validation (test_validation)


@realdata
def test_decals_387_with_ra_dec_parsed_from_names(data_root, out):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    res = ingest("decals", out / "decals.parquet", data_root=data_root)
    _balanced(res)
    m = read_manifest(res.manifest_path)
    assert len(m) == 387 and m["survey"].eq("decals").all() and m[["ra", "dec"]].notna().all().all()
    # independent parse of the sexagesimal names by astropy
    names = m["object_id"].str.slice(1)
    sex = [f"{n[0:2]}h{n[2:4]}m{n[4:9]}s {n[9:12]}d{n[12:14]}m{n[14:]}s" for n in names]
    c = SkyCoord(sex, frame="icrs")
    np.testing.assert_allclose(m["ra"], c.ra.deg, atol=1e-9)
    np.testing.assert_allclose(m["dec"], c.dec.deg, atol=1e-9)
    assert m.iloc[0]["object_id"] == "J000411.19+020924.0"
    assert m.iloc[0]["ra"] == pytest.approx(1.0466250) and m.iloc[0]["dec"] == pytest.approx(2.1566667)
    assert set(m["ring"].unique()) <= {0.0, 1.0}
    assert resolve_image_uri(m.iloc[0]["image_uri"], data_root).is_file()
    assert (SkyCoord(m.ra.values * u.deg, m.dec.values * u.deg).dec.deg == m.dec.values).all()


@realdata
def test_lopsided_934_labelled_and_7042_with_predictions(data_root, out):
    res = ingest("lopsided", out / "lop.parquet", data_root=data_root)
    _balanced(res)
    m = read_manifest(res.manifest_path)
    assert len(m) == 934 and m["label"].value_counts().to_dict() == {"lopsided": 490, "symmetric": 444}
    assert m["A1"].notna().all() and m[["ra", "dec"]].notna().all().all()
    full = ingest("lopsided", out / "lop_all.parquet", data_root=data_root, include_predicted=True)
    _balanced(full)
    f = read_manifest(full.manifest_path)
    assert len(f) == 7042 and f["label"].isna().sum() == 6108
    assert set(f.loc[f.label.isna(), "predicted_class"]) == {"lopsided", "symmetric"}
    assert f["p_pred"].between(0, 1).sum() == 6108


@realdata
def test_hart_sdss_fits_and_gz2_table(data_root, out):
    from galmorph.imaging.io import read_fits

    h = ingest("hart", out / "hart.parquet", data_root=data_root)
    _balanced(h)
    hm = read_manifest(h.manifest_path)
    assert len(hm) == 6222 and (hm["z"] < 0).sum() == 1 and "logMstar" in hm.columns
    f = ingest("sdss_fits", out / "fits.parquet", data_root=data_root)
    _balanced(f)
    fm = read_manifest(f.manifest_path)
    assert len(fm) == 27
    row = fm.iloc[0]
    w = read_fits(resolve_image_uri(row["image_uri"], data_root)).wcs
    assert (row["ra"], row["dec"]) == pytest.approx(tuple(w.wcs.crval))
    assert row["object_id"].isdigit() and len(row["object_id"]) == 19
    g = ingest("gz2_table", out / "gz2t.parquet", data_root=data_root)
    _balanced(g)
    gm = read_manifest(g.manifest_path)
    t = pd.read_csv(data_root / "catalogues/gz2_stripe82_table5.csv.gz")
    wf = t[[c for c in t.columns if c.startswith("t11_") and c.endswith("_weighted_fraction")]]
    expect = ((t["t01_smooth_or_features_a02_features_or_disk_debiased"] > 0.430)
              & (t["t02_edgeon_a05_no_debiased"] > 0.715) & (t["t04_spiral_a08_spiral_debiased"] > 0.715)
              & (t["t04_spiral_a08_spiral_count"] > 20) & (wf.max(axis=1) > 0.8))
    assert len(gm) == expect.sum() > 0
    assert (gm["rho_m"] > 0.8).all() and gm["label"].isin(["1", "2", "3", "4", "5+", "cant_tell"]).all()


def test_sim_source_labels_match_truth(sim_chirality, tmp_path):
    res = ingest(f"sim:{sim_chirality['dir']}", tmp_path / "sim.parquet", task="chirality", image="png")
    _balanced(res)
    m = read_manifest(res.manifest_path)
    truth = pd.read_parquet(sim_chirality["truth"])
    assert list(m["label"]) == list(truth["label_chirality"]) and len(m) == 48
    assert all(resolve_image_uri(u).is_file() and u.endswith(".png") for u in m["image_uri"])


# ------------------------------------------------------------------------------------------ bad input
def _write(path, text):
    path.write_text(text)
    return path


GZ2_HEADER = "dr7objid,ra,dec,z,n_arms_mean,log_mstar\n"


def test_non_numeric_ra_and_duplicate_ids_are_quarantined_with_reasons(tmp_path):
    csv = _write(tmp_path / "labels.csv", GZ2_HEADER + "1,10.0,1.0,0.03,2.1,10\n2,abc,1.0,0.03,2.9,10\n"
                 "3,11.0,2.0,0.05,1.2,10\n3,12.0,3.0,0.04,3.0,10\n4,13.0,,0.02,4.4,10\n")
    res = ingest("gz2_arms", tmp_path / "m.parquet", data_root=tmp_path, labels=csv, images=tmp_path)
    _balanced(res)
    assert res.n_in == 5 and res.n_out == 2 and res.n_quarantined == 3
    q = read_quarantine(res.quarantine_path).set_index("object_id")
    assert "non-numeric ra 'abc'" in q.loc["2", "reason"] and "labels.csv row 3" in q.loc["2", "reason"]
    assert "duplicate object_id" in q.loc["3", "reason"] and "first seen in labels.csv row 4; this one labels.csv row 5" in q.loc["3", "reason"]
    assert "missing ra/dec" in q.loc["4", "reason"]
    assert json.loads(q.loc["2", "row"])["ra"] == "abc"
    assert list(read_manifest(res.manifest_path)["label"]) == ["2", "1"]


def test_missing_columns_are_named(tmp_path):
    csv = _write(tmp_path / "labels.csv", "dr7objid,ra,z\n1,10,0.02\n")
    with pytest.raises(IngestError, match=r"labels.csv: missing column\(s\) \['dec', 'n_arms_mean'\]"):
        ingest_gz2_arms(csv, tmp_path)


def test_empty_catalogues_give_clear_errors(tmp_path):
    with pytest.raises(IngestError, match=r"labels.csv has no rows"):
        ingest_gz2_arms(_write(tmp_path / "labels.csv", GZ2_HEADER), tmp_path)
    with pytest.raises(IngestError, match=r"zero.csv is empty \(zero bytes\)"):
        ingest_gz2_arms(_write(tmp_path / "zero.csv", ""), tmp_path)
    with pytest.raises(IngestError, match="nope.csv does not exist"):
        ingest_gz2_arms(tmp_path / "nope.csv", tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(IngestError, match="holds no images"):
        ingest_image_folder(tmp_path / "empty_dir")
    with pytest.raises(IngestError, match="unknown source 'gz3'"):
        ingest("gz3", tmp_path / "x.parquet", data_root=tmp_path)


def test_unparseable_iau_names_are_quarantined(tmp_path):
    csv = _write(tmp_path / "catalog.csv", "iauname,ring\nJ000411.19+020924.0,1\nNGC1300,0\nJ250000.00+000000.0,0\n")
    man, q = ingest_decals(csv, tmp_path)
    assert len(man) == 1 and len(q) == 2
    assert "cannot parse RA/Dec from name 'NGC1300'" in q[0]["reason"]
    assert "out-of-range" in q[1]["reason"]
    assert parse_iau_name("SDSS J132008.30-302700.3") == pytest.approx((200.034583, -30.450083), abs=1e-6)


def test_image_folder_quarantines_fits_without_wcs(tmp_path):
    from astropy.io import fits

    from galmorph.simulate import make_wcs

    d = tmp_path / "imgs"
    d.mkdir()
    fits.PrimaryHDU(np.ones((20, 20)), header=make_wcs(150.0, 2.0, 20).to_header()).writeto(d / "good_r.fits")
    fits.PrimaryHDU(np.ones((20, 20))).writeto(d / "nowcs_r.fits")
    res = ingest(f"folder:{d}", tmp_path / "m.parquet", survey="test")
    _balanced(res)
    m = read_manifest(res.manifest_path)
    assert list(m["object_id"]) == ["good"] and m.iloc[0]["ra"] == pytest.approx(150.0)
    q = read_quarantine(res.quarantine_path)
    assert q.iloc[0]["object_id"] == "nowcs" and "no usable celestial WCS" in q.iloc[0]["reason"]


def test_cli_ingest_json_and_error(tmp_path, sim_arms):
    from galmorph.cli import main

    r = CliRunner().invoke(main, ["ingest", f"sim:{sim_arms['dir']}", "--out", str(tmp_path / "a.parquet"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["rows_in"] == doc["rows_out"] == 40 and doc["rows_quarantined"] == 0
    bad = CliRunner().invoke(main, ["ingest", "gz2_arms", "--out", str(tmp_path / "b.parquet"),
                                    "--data-root", str(tmp_path), "--catalogue", str(_write(tmp_path / "l.csv", "a\n1\n"))])
    assert bad.exit_code == 1 and "missing column(s)" in bad.output


# ------------------------------------------------------------------------------------------ SDSS query
def test_sdss_query_sql_and_offline_result(tmp_path):
    from astropy.table import Table

    from galmorph.catalogue.sdss_query import SdssSelection, apply_selection, build_sql, fetch, read_query_result

    sql = build_sql()
    for cut in ("s.z > 0.01 AND s.z < 0.1", "(p.modelMag_g - p.extinction_g) < 16", "p.petroR90_g >= 3",
                "p.fracDeV_g <= 0.5", "p.expAB_g >= 0.6"):
        assert cut in sql
    gz2 = build_sql(SdssSelection(top=10), fallback_gz2=True)
    assert "t04_spiral_a08_spiral_debiased > 0.6" in gz2 and gz2.startswith("SELECT TOP 10")
    with pytest.raises(ValueError, match="z_min"):
        SdssSelection(z_min=0.2, z_max=0.1)
    # a saved SkyServer CSV (with its '#Table1' line): the same cuts applied offline
    rows = ("objID,ra,dec,z,modelMag_g,extinction_g,petroR90_g,fracDeV_g,expAB_g\n"
            "1,10,0,0.05,15.5,0.2,5,0.1,0.8\n"      # passes
            "2,10,0,0.05,16.1,0.2,5,0.1,0.8\n"      # passes only thanks to the extinction correction
            "3,10,0,0.15,15.0,0.1,5,0.1,0.8\n"      # z too high
            "4,10,0,0.05,15.0,0.1,2,0.1,0.8\n"      # too small
            "5,10,0,0.05,15.0,0.1,5,0.7,0.8\n"      # bulge dominated
            "6,10,0,0.05,15.0,0.1,5,0.1,0.4\n")     # inclined
    (tmp_path / "r.csv").write_text("#Table1\n" + rows)
    df = read_query_result(tmp_path / "r.csv")
    assert list(df.loc[apply_selection(df), "objID"]) == [1, 2]
    Table.from_pandas(df).write(tmp_path / "r.fits")
    assert len(read_query_result(tmp_path / "r.fits")) == 6
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="e.csv is empty"):
        read_query_result(tmp_path / "e.csv")
    try:
        import astroquery  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs astroquery.*--extra fetch"):
            fetch(sql)


# ------------------------------------------------------------------------------------------ CSV faults
def test_ragged_line_is_quarantined_under_its_own_id_or_line(tmp_path):
    """The first data line has a field too many: pandas would take the ids as the index and shift every
    column; the ragged line is quarantined under its own id, a short line without an id under its line."""
    csv = _write(tmp_path / "labels.csv", "dr7objid,gz1_class\n101,clockwise,EXTRA\n102,anticlockwise\n"
                 "103,spiral\n\n")
    (tmp_path / "short.csv").write_text("gz1_class,dr7objid\n201,x\nclockwise\n")
    res = ingest("gz1_chirality", tmp_path / "m.parquet", data_root=tmp_path, labels=csv, images=tmp_path)
    _balanced(res)
    m = read_manifest(res.manifest_path)
    assert list(m["object_id"]) == ["102", "103"] and list(m["label"]) == ["ACW", "other"]
    q = read_quarantine(res.quarantine_path)
    assert list(q["object_id"]) == ["101"] and "labels.csv line 2: 3 field(s), the header has 2" in q["reason"][0]
    res2 = ingest("gz1_chirality", tmp_path / "m2.parquet", data_root=tmp_path, labels=tmp_path / "short.csv",
                  images=tmp_path)
    q2 = read_quarantine(res2.quarantine_path)
    assert q2["object_id"].isna().all() and "short.csv line 3" in q2["reason"][0]
    assert res2.n_in == res2.n_out + res2.n_quarantined == 2


def test_generic_catalogue_source_with_column_map(tmp_path):
    from galmorph.cli import main

    (tmp_path / "img").mkdir()
    csv = _write(tmp_path / "cat.csv", "objid,file,RA,DEC,redshift,mag\n0042,img/a.png,10.5,-3,0.02,17\n"
                 "0043,img/b.png,abc,1,0.03,18\n0044,/abs/c.png,,,,19\n0042,img/d.png,1,1,0.05,20\n")
    r = CliRunner().invoke(main, ["ingest", "catalogue", "--path", str(csv), "--out", str(tmp_path / "m.parquet"),
                                  "--map", "object_id=objid", "--map", "image_uri=file", "--map", "ra=RA",
                                  "--map", "dec=DEC", "--map", "z=redshift", "--survey", "mine", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["rows_in"] == 4 and doc["rows_out"] == 2 and doc["rows_quarantined"] == 2
    m = read_manifest(tmp_path / "m.parquet").set_index("object_id")
    assert list(m.index) == ["0042", "0044"] and m.loc["0042", "ra"] == 10.5 and m.loc["0042", "z_bin"] == "0.01-0.03"
    assert resolve_image_uri(m.loc["0042", "image_uri"]) == (tmp_path / "img/a.png").resolve()
    assert m.loc["0044", "image_uri"] == "/abs/c.png" and np.isnan(m.loc["0044", "ra"])
    assert m.loc["0044", "z_bin"] == "unknown" and (m["survey"] == "mine").all() and "mag" in m.columns
    q = read_quarantine(tmp_path / "m.quarantine.parquet").set_index("object_id")
    assert "non-numeric ra 'abc'" in q.loc["0043", "reason"] and "duplicate object_id" in q.loc["0042", "reason"]
    bad = CliRunner().invoke(main, ["ingest", "catalogue", "--path", str(csv), "--out", str(tmp_path / "x.parquet"),
                                    "--map", "object_id=nope"])
    assert bad.exit_code == 1 and "missing column(s) ['nope']" in bad.output
    bad = CliRunner().invoke(main, ["ingest", "catalogue", "--path", str(csv), "--out", str(tmp_path / "x.parquet"),
                                    "--map", "colour=mag"])
    assert bad.exit_code == 1 and "'colour' is not a manifest column" in bad.output
