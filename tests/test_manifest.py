"""The manifest format, quarantine tables and settings (env override of the data root)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.catalogue.manifest import (
    REQUIRED_COLUMNS,
    ManifestError,
    assign_z_bin,
    data_uri,
    manifest_metadata,
    quarantine_record,
    read_manifest,
    read_quarantine,
    resolve_image_uri,
    write_manifest,
    write_quarantine,
)
from galmorph.settings import Settings, get_settings


def _df(n=4):
    return pd.DataFrame({"object_id": [f"o{i}" for i in range(n)], "survey": "sim", "ra": np.linspace(1, 2, n),
                         "dec": np.linspace(-1, 1, n), "z": [0.02, 0.05, np.nan, 0.3][:n],
                         "image_uri": [data_uri(f"x/{i}.png") for i in range(n)], "label": ["CW", "ACW", None, "other"][:n],
                         "task": "chirality", "provenance": "test", "mag_r": np.arange(n, dtype=float)})


def test_write_read_roundtrip_keeps_types_extras_and_metadata(tmp_path):
    df = _df()
    df["z_bin"] = assign_z_bin(df["z"])
    p = write_manifest(df, tmp_path / "m.parquet", kind="unit", extra_meta={"seed": 7})
    back = read_manifest(p)
    assert list(back.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert back["ra"].dtype == np.float64 and str(back["object_id"].dtype) == "string"
    np.testing.assert_allclose(back["mag_r"], df["mag_r"])
    assert back["label"].isna().sum() == 1
    meta = manifest_metadata(p)
    assert meta["kind"] == "unit" and meta["seed"] == 7 and meta["schema_version"] == "1"


def test_z_bins_edges_unknown_and_out_of_range():
    b = assign_z_bin([0.01, 0.0299, 0.03, 0.1, 0.2, 0.25, np.nan, 0.005])
    assert list(b) == ["0.01-0.03", "0.01-0.03", "0.03-0.05", "0.10-0.12", "0.16-0.20", "out_of_range",
                       "unknown", "out_of_range"]


def test_missing_columns_and_unreadable_files_are_named(tmp_path):
    thin = _df().drop(columns=["survey", "z"])
    thin.to_parquet(tmp_path / "thin.parquet")
    back = read_manifest(tmp_path / "thin.parquet")  # optional columns are filled
    assert back["survey"].isna().all() and back["z"].isna().all() and (back["z_bin"] == "unknown").all()
    for col in ("object_id", "image_uri"):
        _df().drop(columns=[col]).to_parquet(tmp_path / "bad.parquet")
        with pytest.raises(ManifestError, match=rf"bad.parquet.*no '{col}' column"):
            read_manifest(tmp_path / "bad.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="junk.parquet.*not a readable Parquet"):
        read_manifest(tmp_path / "junk.parquet")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.parquet")


def test_image_uri_resolution(tmp_path):
    assert resolve_image_uri("data://a/b.png", tmp_path) == (tmp_path / "a/b.png").resolve()
    with pytest.raises(ManifestError, match="outside the data root"):
        resolve_image_uri("data://../../etc/passwd", tmp_path)
    with pytest.raises(ManifestError, match="no data root"):
        resolve_image_uri("data://a.png", None)
    assert resolve_image_uri("file:///x/y.png") == Path("/x/y.png")


def test_quarantine_roundtrip_keeps_row_as_json(tmp_path):
    rec = quarantine_record("o1", "ingest", "non-numeric ra 'abc'", {"ra": "abc", "z": np.float64(0.1), "n": np.int64(3)})
    p = write_quarantine([rec], tmp_path / "q.parquet")
    q = read_quarantine(p)
    assert list(q.columns) == ["object_id", "stage", "reason", "row"]
    assert json.loads(q["row"][0]) == {"ra": "abc", "z": 0.1, "n": 3}
    empty = read_quarantine(write_quarantine([], tmp_path / "e.parquet"))
    assert len(empty) == 0 and list(empty.columns) == ["object_id", "stage", "reason", "row"]


def test_settings_env_override_of_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("GALMORPH_MLFLOW_PORT", "5999")
    # MLFLOW_TRACKING_URI (set by the session's MLflow fixture) outranks the port-derived default
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GALMORPH_MLFLOW_TRACKING_URI", raising=False)
    s = Settings()
    assert s.data_root == tmp_path.resolve() and s.mlflow_tracking_uri.endswith(":5999")
    get_settings.cache_clear()
    try:
        assert get_settings().data_root == tmp_path.resolve()
    finally:
        monkeypatch.delenv("GALMORPH_DATA_ROOT")
        get_settings.cache_clear()
    missing = Settings(data_root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="GALMORPH_DATA_ROOT"):
        missing.require_data_root()


def test_csv_manifest_reads_ids_as_strings_and_fills_the_rest(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("object_id,image_uri,ra,z,mag\n007,a.png,10.5,0.02,1\n587739609160417293,b.png,,,2\n")
    df = read_manifest(p)
    assert list(df["object_id"]) == ["007", "587739609160417293"]
    assert df["ra"].dtype == np.float64 and np.isnan(df["ra"][1]) and np.isnan(df["dec"]).all()
    assert list(df["z_bin"]) == ["0.01-0.03", "unknown"] and df["survey"].isna().all()
    assert list(df.columns[: len(REQUIRED_COLUMNS)]) != [] and "mag" in df.columns


def test_ragged_csv_rows_are_named_by_their_own_id_or_line(tmp_path):
    p = tmp_path / "m.csv"
    # the first data line has an extra field (pandas would take column 1 as the index and shift ids)
    p.write_text("object_id,image_uri,label\nA1,a.png,CW,extra\nA2,b.png,ACW\n,c.png\nA4,d.png,other\n")
    with pytest.raises(ManifestError, match=r"2 unreadable row\(s\).*line 2"):
        read_manifest(p)
    bad: list = []
    df = read_manifest(p, bad_rows=bad)
    assert list(df["object_id"]) == ["A2", "A4"] and list(df["label"]) == ["ACW", "other"]
    assert [r["object_id"] for r in bad] == ["A1", None]
    assert "line 2: 4 field(s)" in bad[0]["reason"] and "line 4: 2 field(s)" in bad[1]["reason"]
    assert "named by its line" in bad[1]["reason"]
