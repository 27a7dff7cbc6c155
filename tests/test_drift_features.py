"""Drift features: known truths on synthetic images, the simulator, quarantine, catalogue/prediction
columns and the PCA embedding reduction."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.drift.features import (
    IMAGE_FEATURES,
    catalogue_features,
    compute_drift_features,
    embedding_pca_features,
    feature_columns,
    image_features,
    prediction_features,
)


@pytest.fixture()
def tmp_path():
    """A private temporary folder (pytest's basetemp is pruned by concurrent pytest runs)."""
    with tempfile.TemporaryDirectory(prefix="galmorph-drift-") as d:
        yield Path(d)


def gaussian(size=128, sigma=6.0, q=1.0, theta=0.0, amp=1.0):
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    c = (size - 1) / 2
    dx, dy = xx - c, yy - c
    ct, st = np.cos(theta), np.sin(theta)
    u, v = dx * ct + dy * st, -dx * st + dy * ct
    return amp * np.exp(-0.5 * (u ** 2 / sigma ** 2 + v ** 2 / (q * sigma) ** 2))


def test_gaussian_radii_concentration_and_round_shape():
    sigma = 6.0
    f = image_features(gaussian(sigma=sigma), is_raster=False, detect_sigma=0.0)
    # analytic curve of growth of a circular Gaussian: R50 = 1.177 sigma, R90 = 2.146 sigma
    assert f["r50_px"] == pytest.approx(1.1774 * sigma, rel=0.1)
    assert f["r90_px"] == pytest.approx(2.1460 * sigma, rel=0.1)
    assert f["concentration"] == pytest.approx(2.146 / 1.1774, rel=0.1)
    assert f["ellipticity"] < 0.05
    assert f["total_flux"] == pytest.approx(2 * np.pi * sigma ** 2, rel=0.05)
    assert np.isnan(f["colour_r_g"])  # single band


def test_ellipticity_from_axis_ratio_and_rotation_invariance():
    e0 = image_features(gaussian(sigma=8, q=0.5), is_raster=False, detect_sigma=0.0)["ellipticity"]
    e1 = image_features(gaussian(sigma=8, q=0.5, theta=np.pi / 3), is_raster=False, detect_sigma=0.0)["ellipticity"]
    assert e0 == pytest.approx(0.5, abs=0.07)
    assert e1 == pytest.approx(e0, abs=0.03)


def test_sky_level_noise_and_colour_ratios():
    rng = np.random.default_rng(0)
    g = gaussian(size=160, sigma=7, amp=0.6)
    scale = np.array([1.2, 1.0, 0.7])
    rgb = g[..., None] * scale + 0.1 + rng.normal(0, 0.02, (160, 160, 3))
    f = image_features(np.clip(rgb, 0, 1).astype(np.float32), is_raster=True)
    assert f["sky_level"] == pytest.approx(0.1, abs=0.01)
    # grey = mean of 3 bands with independent noise: rms 0.02 / sqrt(3)
    assert f["sky_noise"] == pytest.approx(0.02 / np.sqrt(3), rel=0.25)
    assert f["colour_r_g"] == pytest.approx(1.2, rel=0.08)
    assert f["colour_b_g"] == pytest.approx(0.7, rel=0.08)
    assert f["masked_fraction"] == 0.0


def test_masked_fraction_counts_nan_and_footprint_zeros():
    img = gaussian(size=100, sigma=5) + 0.05
    img[:10, :] = np.nan  # 10 % not finite
    img[-5:, :] = 0.0  # 5 % outside the footprint (FITS zeros)
    f = image_features(img, is_raster=False)
    assert f["masked_fraction"] == pytest.approx(0.15, abs=1e-6)
    with pytest.raises(ValueError, match="no usable pixels"):
        image_features(np.full((50, 50), np.nan), is_raster=False)


def test_downsampling_keeps_radii_in_original_pixels():
    big = gaussian(size=480, sigma=20)
    f_small = image_features(big, is_raster=False, max_size=120, detect_sigma=0.0)
    f_full = image_features(big, is_raster=False, max_size=1000, detect_sigma=0.0)
    assert f_small["r50_px"] == pytest.approx(f_full["r50_px"], rel=0.08)
    assert f_small["total_flux"] == pytest.approx(f_full["total_flux"], rel=0.05)


def test_simulated_galaxies_sizes_follow_truth(sim_chirality):
    man = pd.read_parquet(sim_chirality["manifest"])
    truth = pd.read_parquet(sim_chirality["truth"])
    res = compute_drift_features(man, progress=False)
    assert len(res.features) + len(res.quarantine) == len(man)
    assert len(res.quarantine) == 0
    m = res.features.merge(truth[["object_id", "r50_px"]].astype({"object_id": str}), on="object_id",
                           suffixes=("", "_true"))
    rho = m["r50_px"].rank().corr(m["r50_px_true"].rank())
    assert rho > 0.7, f"measured R50 does not follow the simulator's truth (Spearman {rho:.2f})"
    for c in ("sky_level", "sky_noise", "concentration", "ellipticity", "colour_r_g", "masked_fraction"):
        assert m[c].notna().all(), c
    a1_available = True
    try:
        from galmorph.imaging.a1 import lopsidedness_a1  # noqa: F401
    except ImportError:
        a1_available = False
    assert ("a1" in res.features.columns) == a1_available


def test_measuring_in_worker_processes_gives_the_same_features(sim_chirality, tmp_path):
    """The drift step measures large samples in a process pool: same rows, same numbers, same quarantine as one
    process (a broken image included)."""
    man = pd.read_parquet(sim_chirality["manifest"]).copy()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    man.loc[3, "image_uri"] = str(tmp_path / "broken.png")
    one = compute_drift_features(man, progress=False, frame_size=48)
    pool = compute_drift_features(man, progress=False, frame_size=48, num_workers=2)
    assert len(man) > 16  # the pool's threshold
    pd.testing.assert_frame_equal(one.features.reset_index(drop=True), pool.features.reset_index(drop=True))
    assert list(one.quarantine["object_id"]) == list(pool.quarantine["object_id"]) == [str(man.loc[3, "object_id"])]


def test_the_drift_step_measures_large_sets_in_a_pool_of_the_configured_size(monkeypatch):
    """One rule for the drift step's pool (a release that kept its source images, or cutouts): settings.num_workers,
    else up to 2 CPUs; small sets in the step's own process."""
    from galmorph.steps import MAX_ROWS_WITHOUT_A_POOL, _drift_workers

    monkeypatch.setenv("GALMORPH_NUM_WORKERS", "3")
    assert _drift_workers(1000) == 3 and _drift_workers(MAX_ROWS_WITHOUT_A_POOL) == 0
    monkeypatch.setenv("GALMORPH_NUM_WORKERS", "0")
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert _drift_workers(1000) == 2
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert _drift_workers(1000) == 0


def test_unreadable_rows_are_quarantined_with_reasons(sim_chirality, tmp_path):
    man = pd.read_parquet(sim_chirality["manifest"]).head(6).copy()
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    man.loc[1, "image_uri"] = str(tmp_path / "missing.jpg")
    man.loc[2, "image_uri"] = str(empty)
    man.loc[3, "object_id"] = man.loc[0, "object_id"]  # duplicate id
    man.loc[4, "image_uri"] = "data://nowhere.jpg"  # no data root given
    res = compute_drift_features(man, data_root=None, progress=False)
    assert len(res.features) + len(res.quarantine) == len(man)
    assert len(res.features) == 2
    reasons = dict(zip(res.quarantine["object_id"], res.quarantine["reason"]))
    assert "does not exist" in reasons[str(man.loc[1, "object_id"])]
    assert "zero-byte" in reasons[str(man.loc[2, "object_id"])]
    assert "duplicate" in " ".join(res.quarantine["reason"])
    assert "data root" in reasons[str(man.loc[4, "object_id"])]
    assert set(res.quarantine["stage"]) == {"drift_features"}


def test_catalogue_features_aliases():
    df = pd.DataFrame({"object_id": ["a", "b"], "z": [0.05, None], "petroR90_r": [10.0, 12.0],
                       "SERSIC_BA": [0.5, 0.9], "logMstar": [10.1, 9.8], "petroMag_r": [16.0, 17.5],
                       "modelMag_g": [17.0, 18.0], "unrelated": [1, 2]})
    c = catalogue_features(df)
    assert list(c.columns) == ["z", "cat_r90", "cat_axis_ratio", "cat_log_mstar", "mag_r", "mag_g"]
    assert c["cat_axis_ratio"].tolist() == [0.5, 0.9]
    assert np.isnan(c["z"].iloc[1])


def test_prediction_features_and_feature_columns(sim_chirality):
    preds = pd.DataFrame({"object_id": ["1", "2", "3"], "p_CW": [0.9, 0.2, np.nan], "p_ACW": [0.05, 0.5, np.nan],
                          "p_other": [0.05, 0.3, np.nan]})
    p = prediction_features(preds)
    assert p["pred"].tolist()[:2] == ["CW", "ACW"] and pd.isna(p["pred"].iloc[2])
    assert p["confidence"].tolist()[:2] == pytest.approx([0.9, 0.5])
    man = pd.read_parquet(sim_chirality["manifest"]).head(8)
    preds = pd.DataFrame({"object_id": man["object_id"].astype(str), "p_CW": 0.7, "p_ACW": 0.2, "p_other": 0.1})
    res = compute_drift_features(man, predictions=preds, progress=False)
    num, cat = feature_columns(res.features)
    assert {"p_CW", "p_ACW", "p_other", "confidence", "sky_level"} <= set(num)
    assert cat == ["pred"]
    assert not set(num) & {"object_id", "survey", "z_bin"}
    with pytest.raises(ValueError, match="duplicate object_id"):
        prediction_features(pd.concat([preds, preds]))


def test_embedding_pca_reuses_reference_axes():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(60, 32))
    cur = rng.normal(size=(40, 32))
    fr, pca = embedding_pca_features([f"r{i}" for i in range(60)], ref, n_components=4)
    fc, pca2 = embedding_pca_features([f"c{i}" for i in range(40)], cur, pca=pca)
    assert pca2 is pca
    assert list(fr.columns) == ["object_id", "emb_pc1", "emb_pc2", "emb_pc3", "emb_pc4"]
    assert fc.shape == (40, 5)
    np.testing.assert_allclose(fr[[f"emb_pc{i}" for i in range(1, 5)]].mean().to_numpy(), 0, atol=1e-9)
    with pytest.raises(ValueError, match="non-finite"):
        embedding_pca_features(["a", "b"], np.array([[1.0, np.nan], [0.0, 1.0]]), pca=pca)


def test_image_feature_names_are_stable():
    assert set(IMAGE_FEATURES) >= {"sky_level", "sky_noise", "total_flux", "concentration", "ellipticity",
                                   "colour_r_g", "colour_b_g", "a1", "masked_fraction"}


def test_prediction_features_take_a_column_selected_twice():
    """The drift step joined the catalogue's p_* columns and then p_pred again: the same column twice
    (a real DECaLS rescoring failed on it). Identical copies are one column; different ones are an error."""
    from galmorph.drift.features import prediction_features

    base = pd.DataFrame({"object_id": ["a", "b"], "p_CW": [0.7, 0.2], "p_ACW": [0.2, 0.1], "p_other": [0.1, 0.7],
                         "pred": ["CW", "other"], "p_pred": [0.7, 0.7]})
    twice = pd.concat([base, base[["p_pred"]]], axis=1)
    assert list(twice.columns).count("p_pred") == 2
    got = prediction_features(twice)
    pd.testing.assert_frame_equal(got, prediction_features(base))
    assert got["confidence"].tolist() == [0.7, 0.7]
    clash = pd.concat([base, base[["p_pred"]] * 0.5], axis=1)
    with pytest.raises(ValueError, match="'p_pred' 2 times with different values"):
        prediction_features(clash)
