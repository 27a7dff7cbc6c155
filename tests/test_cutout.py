"""Cutouts: centred real FITS cutouts at their CRVAL, simulator truth, crops, partial overlap, failures."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter

from galmorph.catalogue.cutout import CutoutConfig, fits_cutout, make_cutouts
from galmorph.imaging.io import load_image, read_fits
from galmorph.catalogue.ingest import ingest
from galmorph.catalogue.manifest import read_manifest, read_quarantine, resolve_image_uri

realdata = pytest.mark.realdata


def _peak_offset(img: np.ndarray) -> float:
    """Distance (px) of the brightest pixel of the smoothed image from the image centre."""
    s = gaussian_filter(img if img.ndim == 2 else img.mean(axis=2), img.shape[0] / 16)
    y, x = np.unravel_index(np.argmax(s), s.shape)
    c = (np.array(s.shape) - 1) / 2
    return float(np.hypot(y - c[0], x - c[1]))


@realdata
def test_every_sdss_fits_cutout_at_its_crval_is_centred(data_root, tmp_path):
    man = ingest("sdss_fits", tmp_path / "fits.parquet", data_root=data_root)
    res = make_cutouts(man.manifest_path, tmp_path / "full", CutoutConfig(size_px=64), data_root=data_root,
                       progress=False)
    assert res.n_out == 27 and res.n_quarantined == 0 and res.n_partial == 0
    for row in read_manifest(res.manifest_path).itertuples():
        img = load_image(row.image_uri)
        assert img.shape == (64, 64) and 0 <= img.min() and img.max() <= 1
        assert _peak_offset(img) <= 2.0, row.object_id
        cut = read_fits(row.cutout_fits_uri)
        x, y = cut.wcs.world_to_pixel_values(row.ra, row.dec)
        n = cut.data.shape[0]
        assert abs(x - (n - 1) / 2) <= 0.5 and abs(y - (n - 1) / 2) <= 0.5
    # a fixed 40" box: small frames only partly overlap -> filled and flagged, still centred
    r40 = make_cutouts(man.manifest_path, tmp_path / "r40", CutoutConfig(size_arcsec=40, size_px=48),
                       data_root=data_root, progress=False)
    m40 = read_manifest(r40.manifest_path)
    src = read_manifest(man.manifest_path).set_index("object_id")
    for row in m40.itertuples():
        side = read_fits(resolve_image_uri(src.loc[row.object_id, "image_uri"], data_root)).data.shape[0]
        assert row.cutout_partial == (side * 0.396 < 40 - 0.396), row.object_id
        assert (row.cutout_fill_fraction > 0) == row.cutout_partial
        assert row.cutout_size_arcsec == pytest.approx(40, abs=0.4)
        assert _peak_offset(load_image(row.image_uri)) <= 2.0, row.object_id
    assert 0 < r40.n_partial < 27


def test_simulated_fits_cutout_sizes_in_r90_and_partial_overlap(sim_lopsided, tmp_path):
    truth = pd.read_parquet(sim_lopsided["truth"])
    res = ingest(f"sim:{sim_lopsided['dir']}", tmp_path / "m.parquet", image="fits")
    m = read_manifest(res.manifest_path).head(6)
    r = make_cutouts(m, tmp_path / "c", CutoutConfig(size_r90=2.0), progress=False)
    out = read_manifest(r.manifest_path)
    for row, t in zip(out.itertuples(), truth.head(6).itertuples()):
        assert row.cutout_size_px == max(3, round(2 * t.r90_arcsec / 0.396))
        assert _peak_offset(load_image(row.image_uri)) <= 1.5
    # shift the position by 3/4 of the frame: the box half leaves the image -> filled + flagged
    t = truth.iloc[0]
    path = resolve_image_uri(m.iloc[0]["image_uri"])
    c = fits_cutout(path, t["ra"] + 0.75 * 96 * 0.396 / 3600, t["dec"], size_arcsec=96 * 0.396)
    assert c.partial and 0.6 < c.fill_fraction < 0.9 and np.isfinite(c.fits_data).all()


@realdata
def test_raster_centre_crop_424_to_224_and_greyscale(data_root, tmp_path):
    man = ingest("decals", tmp_path / "d.parquet", data_root=data_root)
    m = read_manifest(man.manifest_path).head(3)
    r = make_cutouts(m, tmp_path / "c", CutoutConfig(crop_fraction=224 / 424), data_root=data_root, progress=False)
    src = load_image(resolve_image_uri(m.iloc[0]["image_uri"], data_root))
    assert src.shape == (424, 424, 3)
    out = load_image(read_manifest(r.manifest_path).iloc[0]["image_uri"])
    assert out.shape == (224, 224, 3)
    np.testing.assert_allclose(out, src[100:324, 100:324], atol=1 / 255 + 1e-6)
    g = make_cutouts(m, tmp_path / "g", CutoutConfig(crop_fraction=224 / 424, size_px=64, greyscale=True),
                     data_root=data_root, progress=False)
    gi = load_image(read_manifest(g.manifest_path).iloc[0]["image_uri"])
    assert gi.shape == (64, 64)


def test_failing_rows_go_to_quarantine_with_reasons(tmp_path, sim_lopsided):
    from astropy.io import fits
    from PIL import Image

    from galmorph.simulate import make_wcs

    d = tmp_path / "bad"
    d.mkdir()
    rng = np.random.default_rng(1)
    hdr = make_wcs(150.0, 2.0, 32).to_header()
    nan = rng.normal(100, 5, (32, 32))
    nan[0, 0] = np.nan
    fits.PrimaryHDU(nan, header=hdr).writeto(d / "nan.fits")
    fits.PrimaryHDU(rng.normal(100, 5, (32, 32))).writeto(d / "nowcs.fits")
    fits.PrimaryHDU(rng.normal(100, 5, (32, 32)), header=hdr).writeto(d / "ok.fits")
    Image.fromarray((rng.uniform(0, 1, (40, 40, 3)) * 255).astype(np.uint8)).save(d / "ok.jpg")
    (d / "trunc.jpg").write_bytes((d / "ok.jpg").read_bytes()[:300])
    (d / "zero.jpg").write_bytes(b"")
    rows = [("ok_fits", "ok.fits", 150.0, 2.0, 5.0), ("ok_jpg", "ok.jpg", np.nan, np.nan, np.nan),
            ("nan", "nan.fits", 150.0, 2.0, 5.0), ("nowcs", "nowcs.fits", 150.0, 2.0, 5.0),
            ("trunc", "trunc.jpg", 150.0, 2.0, 5.0), ("zero", "zero.jpg", 150.0, 2.0, 5.0),
            ("offimage", "ok.fits", 160.0, 2.0, 5.0), ("nor90", "ok.fits", 150.0, 2.0, np.nan)]
    df = pd.DataFrame(rows, columns=["object_id", "image_uri", "ra", "dec", "r90_arcsec"])
    df["image_uri"] = [str(d / f) for f in df["image_uri"]]
    df["survey"], df["z"], df["z_bin"], df["label"], df["task"], df["provenance"] = "t", np.nan, "unknown", None, None, "t"
    res = make_cutouts(df, tmp_path / "out", CutoutConfig(size_r90=1.0, size_px=16), progress=False)
    assert res.n_in == 8 == res.n_out + res.n_quarantined and res.n_out == 2
    q = dict(zip(*read_quarantine(res.quarantine_path)[["object_id", "reason"]].T.values))
    assert "object nan: nan.fits: 1 NaN/inf pixel(s)" in q["nan"]
    assert "nowcs.fits: FITS header has no usable celestial WCS" in q["nowcs"]
    assert "trunc.jpg: cannot decode image" in q["trunc"]
    assert "zero.jpg: zero-byte file" in q["zero"]
    assert "lies outside the image" in q["offimage"]
    assert "no usable R90 in column 'r90_arcsec'" in q["nor90"]


def test_cli_cutout_json(sim_arms, tmp_path):
    from galmorph.cli import main

    res = ingest(f"sim:{sim_arms['dir']}", tmp_path / "m.parquet", image="jpg")
    r = CliRunner().invoke(main, ["cutout", str(res.manifest_path), "--out", str(tmp_path / "c"), "--size-px", "32",
                                  "--crop-fraction", "0.8", "--greyscale", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["rows_out"] == 40 and doc["rows_quarantined"] == 0
    assert load_image(read_manifest(tmp_path / "c/manifest.parquet").iloc[0]["image_uri"]).shape == (32, 32)
