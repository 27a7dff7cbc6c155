"""Data validation: real-data must-shows, bad images and rows, failure fraction, MLflow logging, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.catalogue.ingest import ingest
from galmorph.catalogue.manifest import read_manifest, read_quarantine
from galmorph.catalogue.validation import ValidationConfig, validate_frame, validate_manifest

realdata = pytest.mark.realdata


@pytest.fixture(scope="module")
def bad_manifest(tmp_path_factory):
    """A manifest of 12 rows: 4 good images, every kind of bad image, and bad row values."""
    from astropy.io import fits
    from PIL import Image

    from galmorph.simulate import make_wcs

    d = tmp_path_factory.mktemp("badimgs")
    rng = np.random.default_rng(0)
    good = (rng.uniform(0, 1, (32, 32, 3)) * 255).astype(np.uint8)
    for i in range(3):
        Image.fromarray(good).save(d / f"good{i}.jpg", quality=90)
    Image.fromarray(good).save(d / "trunc.jpg", quality=90)
    raw = (d / "trunc.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    (d / "zero.png").write_bytes(b"")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(d / "blank.png")
    Image.fromarray(good[:20]).save(d / "small.png")
    hdr = make_wcs(150.0, 2.0, 32).to_header()
    fits.PrimaryHDU(rng.normal(100, 5, (32, 32)), header=hdr).writeto(d / "ok.fits")
    nan = rng.normal(100, 5, (32, 32))
    nan[3:5, 3:5] = np.nan
    fits.PrimaryHDU(nan, header=hdr).writeto(d / "nan.fits")
    fits.PrimaryHDU(rng.normal(100, 5, (32, 32))).writeto(d / "nowcs.fits")
    rows = [
        ("g0", "good0.jpg", 150.0, 2.0, 0.05, "CW"),
        ("g1", "good1.jpg", 150.1, 2.0, np.nan, "ACW"),
        ("g2", "good2.jpg", 150.2, 2.0, 0.02, None),
        ("f0", "ok.fits", 150.0, 2.0, 0.03, "other"),
        ("t", "trunc.jpg", 150.0, 2.0, 0.05, "CW"),
        ("zero", "zero.png", 150.0, 2.0, 0.05, "CW"),
        ("blank", "blank.png", 150.0, 2.0, 0.05, "CW"),
        ("small", "small.png", 150.0, 2.0, 0.05, "CW"),
        ("nan", "nan.fits", 150.0, 2.0, 0.05, "CW"),
        ("nowcs", "nowcs.fits", 150.0, 2.0, 0.05, "CW"),
        ("missing", "missing.jpg", 150.0, 2.0, 0.05, "CW"),
        ("g0", "good0.jpg", 400.0, 2.0, 0.05, "CW"),  # duplicate id + RA out of range
        ("lab", "good0.jpg", 150.0, 95.0, 0.05, "Zwise"),  # Dec out of range + bad label
        ("z", "good1.jpg", 150.0, 2.0, 0.5, "CW"),  # outside the selection
    ]
    df = pd.DataFrame(rows, columns=["object_id", "image_uri", "ra", "dec", "z", "label"])
    df["image_uri"] = [str(d / f) for f in df["image_uri"]]
    df["survey"], df["z_bin"], df["task"], df["provenance"] = "test", "x", "chirality", "unit test"
    return df


EXPECTED_REASONS = {
    "t": "cannot decode image",
    "zero": "zero-byte file",
    "blank": "blank image",
    "small": "size 20x32 != expected 32x32",
    "nan": "4 NaN/inf pixel(s)",
    "nowcs": "no usable celestial WCS",
    "missing": "file does not exist",
    "lab": "label 'Zwise' not a chirality class",
    "z": "outside selection [0.01, 0.1]",
}


def test_bad_rows_and_images_are_quarantined_with_reasons(bad_manifest, tmp_path):
    cfg = ValidationConfig(z_min=0.01, z_max=0.1, expected_size=(32, 32), max_failure_fraction=0.8)
    res = validate_manifest(bad_manifest, cfg, out_manifest=tmp_path / "ok.parquet",
                            quarantine_path=tmp_path / "q.parquet", report_path=tmp_path / "r.json", progress=False)
    assert res.rows == len(bad_manifest) == res.passed + res.n_quarantined
    q = read_quarantine(tmp_path / "q.parquet")
    reasons = dict(zip(q["object_id"], q["reason"]))
    for oid, text in EXPECTED_REASONS.items():
        assert text in reasons[oid], (oid, reasons[oid])
    assert "dec 95.0 outside [-90, 90]" in reasons["lab"]
    dup = q[q.object_id == "g0"]
    assert len(dup) == 1 and "duplicate object_id 'g0' (first at row 0)" in dup.iloc[0]["reason"]
    assert "ra 400.0 outside [0, 360)" in dup.iloc[0]["reason"]
    passed = read_manifest(tmp_path / "ok.parquet")
    assert sorted(passed["object_id"]) == ["f0", "g0", "g1", "g2"]  # NaN z and null label are allowed
    assert res.success  # 10/14 failed < 0.8
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["quarantined"] == 10 and report["gx_result"]["success"] is False
    names = {r["expectation_config"]["type"] for r in report["gx_result"]["results"]}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_be_between",
            "expect_column_values_to_be_in_set", "expect_column_to_exist"} <= names
    # same rows, stricter limit: the run fails, the counts do not change
    strict = validate_frame(bad_manifest, ValidationConfig(z_min=0.01, z_max=0.1, expected_size=(32, 32),
                                                           max_failure_fraction=0.5), progress=False)
    assert not strict.success and strict.n_quarantined == 10


def test_schema_errors_and_empty_manifest_fail(bad_manifest):
    res = validate_frame(bad_manifest.drop(columns=["survey"]).head(3), ValidationConfig(check_images=False),
                         progress=False)
    assert not res.success and any("missing required column(s) ['survey']" in e for e in res.schema_errors)
    empty = validate_frame(bad_manifest.head(0), ValidationConfig(), progress=False)
    assert not empty.success and "no rows" in empty.schema_errors[0]


@realdata
def test_gz2_arms_z_selection_quarantines_exactly_the_3_low_z_rows(data_root, tmp_path):
    from galmorph.cli import main

    res = ingest("gz2_arms", tmp_path / "gz2.parquet", data_root=data_root)
    low = set(read_manifest(res.manifest_path).query("z < 0.01")["object_id"])
    r = CliRunner().invoke(main, ["validate", str(res.manifest_path), "--json", "--z-min", "0.01", "--z-max", "0.1",
                                  "--expected-size", "512x512", "--data-root", str(data_root)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["rows"] == 167 and doc["passed"] == 164 and len(doc["quarantined"]) == 3
    assert {q["id"] for q in doc["quarantined"]} == low and len(low) == 3
    assert all("outside selection [0.01, 0.1]" in q["reason"] for q in doc["quarantined"])


@realdata
def test_hart_validation_catches_the_negative_redshift(data_root, tmp_path, mlflow_server):
    import mlflow

    res = ingest("hart", tmp_path / "hart.parquet", data_root=data_root)
    neg = read_manifest(res.manifest_path).query("z < 0")["object_id"].tolist()
    assert len(neg) == 1
    mlflow.set_experiment("test-validation")
    with mlflow.start_run() as run:
        v = validate_manifest(res.manifest_path, ValidationConfig(), report_path=tmp_path / "hart.json", progress=False)
    assert v.success and v.rows == 6222 and v.n_quarantined == 1
    assert v.quarantine.iloc[0]["object_id"] == neg[0] and "negative redshift" in v.quarantine.iloc[0]["reason"]
    client = mlflow.tracking.MlflowClient()
    r = client.get_run(run.info.run_id)
    assert r.data.metrics["validation.hart.quarantined"] == 1 and r.data.metrics["validation.hart.rows"] == 6222
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "validation")]
    assert "validation/hart.json" in arts


def _gaussian_galaxy(size: int, sigma: float, seed: int) -> np.ndarray:
    yy, xx = np.indices((size, size))
    c = (size - 1) / 2
    img = 20 + 200 * np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * sigma**2))
    return np.clip(img + np.random.default_rng(seed).normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def test_framing_check_warns_about_galaxies_too_small_in_the_model_input(tmp_path, mlflow_server):
    """Validation measures each galaxy's extent (~2 R90; a 2-D Gaussian of sigma s has R90 = 2.146 s) in the
    model's input and warns (report, MLflow, extra columns) about those below 40 px, without quarantining.
    A 256 px frame read by a 128 px model: sigma 25 -> ~107 px native -> ~53 px in the input (fine);
    sigma 12 -> ~51 px native -> ~26 px (small) unless the model crops 0.5 of the frame (-> ~51 px);
    sigma 5 -> ~11 px (small either way). A wrong scale (e.g. ignoring the crop) changes the counts."""
    import mlflow
    from PIL import Image

    rows = []
    for i, sigma in enumerate((25.0, 12.0, 5.0)):
        path = tmp_path / f"g{i}.png"
        Image.fromarray(_gaussian_galaxy(256, sigma, i)).save(path)
        rows.append({"object_id": f"g{i}", "image_uri": str(path), "ra": 150.0 + i, "dec": 2.0, "z": 0.05,
                     "label": "CW"})
    df = pd.DataFrame(rows)
    df["survey"], df["z_bin"], df["task"], df["provenance"] = "test", "x", "chirality", "unit test"
    full = validate_frame(df, ValidationConfig(model_image_size=128), name="framing", progress=False)
    assert full.success and full.passed == 3 and full.n_extent_measured == 3
    ext = full.passed_manifest.set_index("object_id")["extent_model_px"]
    for oid, sigma in (("g0", 25.0), ("g1", 12.0), ("g2", 5.0)):
        assert ext[oid] == pytest.approx(2 * 2.146 * sigma * 0.5, rel=0.2), (oid, ext[oid])
    assert full.passed_manifest["small_extent"].tolist() == [False, True, True]
    assert full.n_small_extent == 2 and "2 of 3 galaxies are smaller than 40 px" in full.warnings[0]
    cropped = validate_frame(df, ValidationConfig(model_image_size=128, model_crop_fraction=0.5), progress=False)
    assert cropped.passed_manifest["small_extent"].tolist() == [False, False, True]
    assert validate_frame(df, ValidationConfig(), progress=False).warnings == []  # no framing: no check
    # the report and MLflow carry the warning
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    mlflow.set_experiment("validation-framing")
    with mlflow.start_run() as run:
        res = validate_manifest(manifest, ValidationConfig(model_image_size=128), report_path=tmp_path / "r.json",
                                progress=False)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["n_small_extent"] == 2 and report["summary"]["warnings"] == res.warnings
    got = mlflow.get_run(run.info.run_id).data
    assert got.metrics["validation.m.n_small_extent"] == 2
    assert "smaller than 40 px" in got.tags["galmorph.warning.validation.m"]
    # and the CLI prints it
    from galmorph.cli import main

    out = CliRunner().invoke(main, ["validate", str(manifest), "--model-image-size", "128",
                                    "--model-crop-fraction", "0.5"])
    assert out.exit_code == 0 and "warning: m: 1 of 3 galaxies are smaller than 40 px" in out.output


def test_a_row_without_coordinates_or_image_in_a_catalogue_that_has_them_is_quarantined(bad_manifest):
    """#30: NaN ra or an empty image_uri no longer pass when the manifest gives coordinates / images for
    its other rows (such a row cannot be cross-matched, cut out, labelled or scored); a manifest that
    gives none (GZ1's image folders have no coordinates) still passes, and the flags override."""
    good = bad_manifest[bad_manifest["object_id"].isin(["g0", "g1", "g2"])].drop_duplicates("object_id")
    extra = good.iloc[[0, 0]].copy()
    extra["object_id"] = ["no_ra", "no_img"]
    extra.loc[extra.index[0], "ra"] = np.nan
    extra.iloc[1, extra.columns.get_loc("image_uri")] = ""
    df = pd.concat([good, extra], ignore_index=True)
    res = validate_frame(df, ValidationConfig(max_failure_fraction=1.0), progress=False)
    reasons = dict(zip(res.quarantine["object_id"], res.quarantine["reason"]))
    assert set(reasons) == {"no_ra", "no_img"}, reasons
    assert "ra missing" in reasons["no_ra"] and "no image_uri" in reasons["no_img"]
    assert res.passed == 3 and res.passed + res.n_quarantined == len(df)
    # no coordinates anywhere (GZ1): rows pass; explicit flags win over the automatic choice
    nocoords = good.assign(ra=np.nan, dec=np.nan)
    assert validate_frame(nocoords, ValidationConfig(), progress=False).passed == 3
    assert validate_frame(nocoords, ValidationConfig(require_coords=True, max_failure_fraction=1.0),
                          progress=False).passed == 0
    lenient = validate_frame(df, ValidationConfig(require_coords=False, require_images=False), progress=False)
    assert lenient.passed == 5
