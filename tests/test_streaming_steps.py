"""The steps that rewrite a whole release (ingest of a folder or a manifest, validate, cutout, the drift step's rows,
a dataset's relative image paths) read and write it in chunks of ``manifest.CHUNK_ROWS`` rows, so their memory does
not grow with the release (measured by ``benchmarks/bench_rescoring.py --memory``). Here: with chunks of a few rows
each step gives exactly what it gives in one chunk (rows, order, quarantine reasons, metadata), a repeat of an
earlier chunk's object id is still quarantined, and no step handles more than a chunk at a time."""

import shutil

import numpy as np
import pandas as pd
import pytest

from galmorph.catalogue import manifest as manifest_module
from galmorph.catalogue.manifest import (ManifestError, ManifestWriter, RepeatedKeys, manifest_metadata,
                                         read_manifest, read_quarantine, repeated_ids, write_manifest)


@pytest.fixture
def chunks_of(monkeypatch):
    def set_rows(n: int) -> None:
        monkeypatch.setattr(manifest_module, "CHUNK_ROWS", n)
    return set_rows


def _sorted_q(path) -> pd.DataFrame:
    q = read_quarantine(path)
    return q.sort_values(["object_id", "reason"], na_position="first").reset_index(drop=True)


def _release_folder(sim_chirality, tmp_path):
    """The simulator's JPEGs as a release folder, plus the same galaxies repeated as PNGs (duplicate ids)."""
    d = tmp_path / "release"
    d.mkdir()
    for p in sorted((sim_chirality["dir"] / "jpg").glob("*.jpg")):
        shutil.copyfile(p, d / p.name)
    for p in sorted((sim_chirality["dir"] / "png").glob("*.png"))[:5]:
        shutil.copyfile(p, d / p.name)
    return d


def test_manifest_writer_chunks_types_metadata_and_failures(tmp_path):
    """Chunks become one manifest with the first chunk's types (a later all-null or int column is cast), the
    metadata given at close; a column the first chunk lacked is an error naming it, and an error leaves no file."""
    path = tmp_path / "m.parquet"
    with ManifestWriter(path, "release", {"source": "x"}) as w:
        w.write(pd.DataFrame({"object_id": ["a", "b"], "image_uri": ["1", "2"], "mag": [1.5, 2.5], "note": [None, None]}))
        w.write(pd.DataFrame({"object_id": ["c"], "image_uri": ["3"], "mag": [3], "note": ["n"]}))
        w.close({"rows_in": 3})
    m = read_manifest(path)
    assert m["object_id"].tolist() == ["a", "b", "c"] and m["mag"].tolist() == [1.5, 2.5, 3.0]
    assert m["note"].tolist()[2] == "n" and manifest_metadata(path) == {"source": "x", "rows_in": 3,
                                                                          "kind": "release", "schema_version": "1"}
    bad = tmp_path / "bad.parquet"
    with pytest.raises(ManifestError, match=r"column\(s\) \['extra'\] appear after its first 1 rows"):
        with ManifestWriter(bad, "release") as w:
            w.write(pd.DataFrame({"object_id": ["a"], "image_uri": ["1"]}))
            w.write(pd.DataFrame({"object_id": ["b"], "image_uri": ["2"], "extra": [1]}))
    assert not bad.exists() and not list(tmp_path.glob(".bad.parquet.tmp-*"))


def _first_rows_reference(keys) -> dict[int, int]:
    """Row -> first row of its key, for the repeats only (a dict over every key: the obvious way)."""
    first: dict[str, int] = {}
    out = {}
    for i, k in enumerate(keys):
        if k is None or not str(k).strip():
            continue
        if str(k) in first:
            out[i] = first[str(k)]
        else:
            first[str(k)] = i
    return out


@pytest.mark.parametrize("spill_rows", [None, 7])
def test_repeated_keys_agree_with_a_dict_in_memory_and_spilled(spill_rows, tmp_path):
    """The repeats and their first rows are those of a plain dict, whether the keys stay in memory or are
    partitioned to disk (a spill every 7 keys); blank keys keep their row number; the spill files are removed."""
    rng = np.random.default_rng(3)
    keys = [f"g{int(v)}" for v in rng.integers(0, 150, size=400)]
    keys[5] = keys[9] = None
    keys[17] = "  "
    f = RepeatedKeys(spill_rows, workdir=tmp_path)
    for lo in range(0, len(keys), 33):
        f.add(keys[lo:lo + 33])
    spilled = f._dir is not None
    rep = f.repeats()
    expect = _first_rows_reference(keys)
    assert spilled == (spill_rows is not None) and len(rep) == len(expect) > 200
    got = rep.first_of(np.arange(len(keys)))
    assert {i: int(v) for i, v in enumerate(got) if v >= 0} == expect
    assert rep.first_rows() == set(expect.values())
    assert not list(tmp_path.iterdir())


def test_repeated_ids_of_a_manifest_column(tmp_path, chunks_of):
    path = tmp_path / "m.parquet"
    write_manifest(pd.DataFrame({"object_id": ["a", "b", None, "a", "c", "b", "a"]}), path, kind="release")
    chunks_of(2)
    rep = repeated_ids(path)
    assert rep.first_of(range(7)).tolist() == [-1, -1, -1, 0, -1, 1, 0]
    assert repeated_ids(path, key=str.upper).first_of([3, 6]).tolist() == [0, 0]
    no_ids = tmp_path / "n.parquet"
    pd.DataFrame({"image_uri": ["x", "x"]}).to_parquet(no_ids)
    assert len(repeated_ids(no_ids)) == 0


def test_folder_listing_sorts_in_bounded_runs(tmp_path, monkeypatch):
    """A listing larger than a run is sorted in runs spilled to disk and merged (in groups when there are more
    runs than the fan-in): the same names, in the same order, as sorting them all at once."""
    from galmorph.catalogue import ingest as ingest_module

    d = tmp_path / "f"
    d.mkdir()
    rng = np.random.default_rng(0)
    names = [f"{int(v):05d}-x\u00e9.jpg" for v in rng.permutation(200)] + ["note.txt"]
    for n in names:
        (d / n).write_bytes(b"")
    monkeypatch.setattr(ingest_module, "LISTING_RUN", 9)
    monkeypatch.setattr(ingest_module, "_MERGE_FAN_IN", 4)
    listing = ingest_module._FolderNames(d, "*")
    assert len(listing._runs) <= 4 and len(listing) == 200
    assert list(listing) == list(listing) == sorted(n for n in names if n.endswith(".jpg"))
    tmp = listing._dir
    listing.close()
    assert not tmp.exists()


def test_folder_ingest_keeps_the_first_file_it_can_read_of_a_repeated_id(sim_chirality, tmp_path, chunks_of):
    """``A_r.fits`` (unreadable) and ``A_r.jpg`` give the same id: the FITS is quarantined for its error and the
    JPEG, in a later chunk, is ingested, not quarantined as a duplicate of a row that is not in the manifest."""
    import shutil as sh

    from galmorph.catalogue.ingest import ingest

    jpgs = sorted((sim_chirality["dir"] / "jpg").glob("*.jpg"))
    d = tmp_path / "rel"
    d.mkdir()
    (d / "A_r.fits").write_bytes(b"not a fits file")
    sh.copyfile(jpgs[0], d / "A_r.jpg")
    sh.copyfile(jpgs[1], d / "B.jpg")
    sh.copyfile(jpgs[1], d / "B.png")
    chunks_of(1)
    res = ingest(f"folder:{d}", tmp_path / "m.parquet")
    m, q = read_manifest(res.manifest_path), _sorted_q(res.quarantine_path)
    assert m["file_name"].tolist() == ["A_r.jpg", "B.jpg"]
    assert len(q) == 2 and "duplicate" not in q["reason"].iat[0]
    assert q["reason"].iat[1] == "folder object B: duplicate object_id (first seen in rel/B.jpg; this one rel/B.png)"


def test_folder_ingest_in_chunks_is_the_one_chunk_ingest(sim_chirality, tmp_path, chunks_of):
    from galmorph.catalogue.ingest import ingest

    d = _release_folder(sim_chirality, tmp_path)
    n_files = len(list(d.iterdir()))
    whole = ingest(f"folder:{d}", tmp_path / "whole.parquet")
    chunks_of(3)  # a PNG repeating a JPEG's id is always in a later chunk than the JPEG
    chunked = ingest(f"folder:{d}", tmp_path / "chunked.parquet")
    a, b = read_manifest(whole.manifest_path), read_manifest(chunked.manifest_path)
    pd.testing.assert_frame_equal(a, b)
    assert pq_row_groups(chunked.manifest_path) > 1
    qa, qb = _sorted_q(whole.quarantine_path), _sorted_q(chunked.quarantine_path)
    assert qa[["object_id", "reason"]].equals(qb[["object_id", "reason"]]) and len(qb) == 5
    assert all("duplicate object_id" in r for r in qb["reason"])
    assert chunked.n_out + chunked.n_quarantined == n_files == whole.n_out + whole.n_quarantined
    assert manifest_metadata(chunked.manifest_path)["rows_in"] == n_files


def pq_row_groups(path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_row_groups


def _messy_manifest(sim_chirality, tmp_path):
    """A release manifest with rows failing the table checks, null ids and ids repeated far apart."""
    from galmorph.catalogue.ingest import ingest

    m = read_manifest(ingest(f"sim:{sim_chirality['dir']}", tmp_path / "sim.parquet", task="chirality").manifest_path)
    m = m.iloc[:30].reset_index(drop=True)
    m.loc[3, "z"] = 0.5  # outside the selection
    m.loc[7, "ra"] = 400.0  # outside [0, 360)
    m.loc[11, "object_id"] = None
    m.loc[25, "object_id"] = m.loc[2, "object_id"]  # repeats row 2, chunks apart
    m.loc[26, "object_id"] = m.loc[25, "object_id"]  # and again, next to it
    m.loc[[3, 25, 26], "z"] = [0.5, 0.05, 0.05]
    path = tmp_path / "release.parquet"
    write_manifest(m, path, kind="release", extra_meta={"catalogue_label_counts": {"CW": 1}})
    return path


def test_validate_in_chunks_is_the_one_chunk_validate(sim_chirality, tmp_path, chunks_of, monkeypatch):
    from galmorph.catalogue import validation
    from galmorph.catalogue.validation import ValidationConfig, validate_manifest

    path = _messy_manifest(sim_chirality, tmp_path)
    cfg = ValidationConfig(z_min=0.0, z_max=0.2, check_images=True, max_failure_fraction=0.5)
    whole = validate_manifest(path, cfg, out_manifest=tmp_path / "w.parquet", quarantine_path=tmp_path / "wq.parquet",
                              report_path=tmp_path / "w.json", log_to_mlflow=False, progress=False)
    sizes: list[int] = []
    frame = validation.validate_frame

    def spy(df, *a, **k):
        sizes.append(len(df))
        return frame(df, *a, **k)

    monkeypatch.setattr(validation, "validate_frame", spy)
    chunks_of(4)
    chunked = validate_manifest(path, cfg, out_manifest=tmp_path / "c.parquet", quarantine_path=tmp_path / "cq.parquet",
                                report_path=tmp_path / "c.json", log_to_mlflow=False, progress=False)
    assert max(sizes) == 4 and sum(sizes) == 30
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "w.parquet"), read_manifest(tmp_path / "c.parquet"))
    qa, qb = _sorted_q(tmp_path / "wq.parquet"), _sorted_q(tmp_path / "cq.parquet")
    pd.testing.assert_frame_equal(qa[["object_id", "reason"]], qb[["object_id", "reason"]])
    reasons = " | ".join(qb["reason"])
    assert reasons.count("(first at row 2)") == 2 and "outside selection" in reasons and "object_id is null" in reasons
    assert (chunked.rows, chunked.passed, chunked.success) == (whole.rows, whole.passed, whole.success) == (30, 25, True)
    assert manifest_metadata(tmp_path / "c.parquet")["catalogue_label_counts"] == {"CW": 1}
    import json

    report = json.loads((tmp_path / "c.json").read_text())
    by_type = {r["expectation_config"]["type"]: r for r in report["gx_result"]["results"]}
    assert by_type["expect_column_values_to_be_unique"]["success"] is False
    assert report["gx_result"]["success"] is False and report["summary"]["quarantined"] == 5


def test_cutouts_in_chunks_are_the_one_chunk_cutouts(sim_chirality, tmp_path, chunks_of):
    """Written PNGs (the training path) and raster pass-through (rescoring) alike; a repeated id chunks apart
    never overwrites the first one's cutout."""
    from galmorph.catalogue.cutout import CutoutConfig, make_cutouts

    path = _messy_manifest(sim_chirality, tmp_path)
    for cfg in (CutoutConfig(size_px=32), CutoutConfig(size_px=32, raster_passthrough=True)):
        tag = "pass" if cfg.raster_passthrough else "png"
        whole = make_cutouts(path, tmp_path / f"w-{tag}", cfg, progress=False)
        chunks_of(4)
        chunked = make_cutouts(path, tmp_path / f"c-{tag}", cfg, progress=False)
        chunks_of(10_000)
        a, b = read_manifest(whole.manifest_path), read_manifest(chunked.manifest_path)
        assert a["object_id"].tolist() == b["object_id"].tolist() and len(a) == 27  # 30 - null id - 2 repeats
        assert (a.drop(columns=["image_uri", "cutout_fits_uri"]).equals(b.drop(columns=["image_uri", "cutout_fits_uri"])))
        assert pq_row_groups(chunked.manifest_path) > 1
        qb = _sorted_q(chunked.quarantine_path)
        assert len(qb) == 3 and sum("duplicate object_id" in r for r in qb["reason"]) == 2
        assert chunked.n_out + chunked.n_quarantined == 30
        if not cfg.raster_passthrough:  # the first row's cutout is its own image, pixel for pixel
            first = b.set_index("object_id").loc[a["object_id"].iat[2]]
            assert first["source_image_uri"] == read_manifest(path)["image_uri"].iat[2]
            for x, y in zip(a["image_uri"], b["image_uri"]):
                assert open(x, "rb").read() == open(y, "rb").read()
        else:
            assert b["image_uri"].tolist() == a["image_uri"].tolist()


def test_relative_dataset_round_trip_in_chunks(sim_chirality, tmp_path, chunks_of):
    """relativize_images then open_dataset (both streamed) give back every absolute path, rows and metadata."""
    from galmorph.catalogue.cutout import CutoutConfig, make_cutouts
    from galmorph.steps.artifacts import open_dataset, relativize_images

    path = _messy_manifest(sim_chirality, tmp_path)
    res = make_cutouts(path, tmp_path / "ds", CutoutConfig(size_px=16), progress=False)
    before = read_manifest(res.manifest_path)
    chunks_of(4)
    relativize_images(tmp_path / "ds")
    rel = read_manifest(res.manifest_path)
    assert all(not u.startswith("/") for u in rel["image_uri"]) and manifest_metadata(res.manifest_path)["relative_images"]
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "ds", moved)
    opened = read_manifest(open_dataset(moved, tmp_path / "open"))
    assert opened["image_uri"].tolist() == [u.replace(str(tmp_path / "ds"), str(moved)) for u in before["image_uri"]]
    pd.testing.assert_frame_equal(opened.drop(columns=["image_uri"]), before.drop(columns=["image_uri"]))
    assert manifest_metadata(tmp_path / "open" / "manifest.parquet")["cutout"]["size_px"] == 16


def test_release_manifest_ingest_in_chunks(sim_chirality, tmp_path, chunks_of):
    """A release's own manifest (``manifest:``) copied chunk by chunk: relative paths made absolute, the
    pipeline's task filled in the rows that name none, the metadata kept."""
    from galmorph.steps.artifacts import ingest_source

    path = _messy_manifest(sim_chirality, tmp_path)
    m = read_manifest(path)
    rel_dir = tmp_path / "rel"
    rel_dir.mkdir()
    m["image_uri"] = [f"img/{i}.jpg" for i in range(len(m))]
    m.loc[5:, "task"] = None
    write_manifest(m, rel_dir / "manifest.parquet", kind="release", extra_meta={"note": "n"})
    chunks_of(4)
    out = ingest_source(str(rel_dir), tmp_path / "out.parquet", tmp_path / "q.parquet", task="chirality")
    got = read_manifest(tmp_path / "out.parquet")
    assert out["rows_out"] == 30 == len(got) and pq_row_groups(tmp_path / "out.parquet") > 1
    assert got["image_uri"].tolist() == [str(rel_dir.resolve() / f"img/{i}.jpg") for i in range(30)]
    assert set(got["task"]) == {"chirality"} and manifest_metadata(tmp_path / "out.parquet")["note"] == "n"
    assert sum(out["labels"].values()) == int(m["label"].notna().sum())


def test_drift_rows_hold_only_the_sample(tmp_path, chunks_of):
    """The drift step reads catalogue and dataset chunk by chunk and keeps only the sample: the same rows as
    sampling the whole joined table, about ``sample_rows`` of them."""
    from galmorph.drift.features import drift_sample
    from galmorph.steps import _drift_rows

    n = 6000
    ids = [f"gal-{i:05d}" for i in range(n)]
    ds = tmp_path / "ds"
    ds.mkdir()
    man = pd.DataFrame({"object_id": ids, "image_uri": [f"png/{i}.png" for i in ids], "z": np.linspace(0.01, 0.1, n)})
    write_manifest(man, ds / "manifest.parquet", kind="cutouts", extra_meta={"relative_images": True})
    rng = np.random.default_rng(0)
    p = rng.random(n).astype("float32")
    cat = pd.DataFrame({"object_id": ids[::-1], "p_CW": p, "p_other": 1 - p, "pred": np.where(p > 0.5, "CW", "other"),
                        "model_version": "3"})
    cat.iloc[:-10].to_parquet(tmp_path / "catalogue.parquet")  # ten rows were quarantined at scoring
    chunks_of(700)
    rows, n_release, version = _drift_rows(tmp_path / "catalogue.parquet", ds, sample_rows=500)
    joined = read_manifest(ds / "manifest.parquet").merge(cat.iloc[:-10], on="object_id")
    expected = joined[drift_sample(joined["object_id"], 500)]
    assert sorted(rows["object_id"]) == sorted(expected["object_id"]) and 400 < len(rows) < 600
    assert n_release == n - 10 and version == "3"
    assert all(u.startswith(str(ds.resolve())) for u in rows["image_uri"])
    r = rows.set_index("object_id").loc[expected["object_id"]]
    assert np.allclose(r["p_CW"].to_numpy(), expected["p_CW"].to_numpy())
    every, _, _ = _drift_rows(tmp_path / "catalogue.parquet", ds, sample_rows=0)
    assert len(every) == n - 10
