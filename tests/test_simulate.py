"""The simulator: determinism by seed and truth sanity (mirror swaps chirality, WCS centre, radii)."""

import math

import numpy as np
import pandas as pd
import pytest

from galmorph.simulate import GalaxyParams, galaxy_components, half_light_radii, render_galaxy, simulate_dataset


def test_same_seed_same_data_other_seed_differs(tmp_path):
    a = simulate_dataset(tmp_path / "a", 4, seed=3, task="chirality", size=48, progress=False)
    b = simulate_dataset(tmp_path / "b", 4, seed=3, task="chirality", size=48, progress=False)
    c = simulate_dataset(tmp_path / "c", 4, seed=4, task="chirality", size=48, progress=False)
    ta, tb, tc = (pd.read_parquet(r["truth"]) for r in (a, b, c))
    cols = [c_ for c_ in ta.columns if not c_.endswith("_path")]
    pd.testing.assert_frame_equal(ta[cols], tb[cols])
    assert not np.allclose(ta["ra"], tc["ra"])
    for name in ("jpg", "png", "fits"):
        fa = sorted((tmp_path / "a" / name).iterdir())
        fb = sorted((tmp_path / "b" / name).iterdir())
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]


def test_mirror_swaps_chirality():
    """fliplr of a Z-wise (CW) galaxy with arm phase p is the S-wise (ACW) galaxy with phase pi - p."""
    base = dict(size=65, n_arms=2, pitch_deg=20, arm_strength=0.8, bulge_fraction=0.1, disc_scale=8.0)
    z = sum(galaxy_components(GalaxyParams(winding="Z", arm_phase=0.4, **base)).values())
    s = sum(galaxy_components(GalaxyParams(winding="S", arm_phase=math.pi - 0.4, **base)).values())
    s_same_phase = sum(galaxy_components(GalaxyParams(winding="S", arm_phase=0.4, **base)).values())
    np.testing.assert_allclose(np.fliplr(z), s, rtol=1e-6, atol=1e-12)
    assert not np.allclose(z, s_same_phase, rtol=1e-3)  # the winding sense really changes the image


def test_truth_table_is_consistent(sim_chirality, sim_lopsided):
    t = pd.read_parquet(sim_chirality["truth"])
    assert set(t.loc[t.chirality == "CW", "winding"]) == {"Z"}
    assert set(t.loc[t.chirality == "ACW", "winding"]) == {"S"}
    assert (t.loc[t.chirality == "other", "n_arms"] == 0).all()
    assert t["chirality"].value_counts().min() >= 15  # balanced classes
    assert (t["r90_px"] > t["r50_px"]).all() and ((t["z"] > 0.01) & (t["z"] < 0.1)).all()
    lop = pd.read_parquet(sim_lopsided["truth"])
    assert ((lop["a1_injected"] >= 0.1) == (lop["label_lopsided"] == "lopsided")).all()


def test_fits_wcs_points_at_galaxy_centre(sim_chirality):
    from astropy.io import fits
    from astropy.wcs import WCS

    t = pd.read_parquet(sim_chirality["truth"]).iloc[0]
    with fits.open(t["fits_path"]) as h:
        w, n = WCS(h[0].header), h[0].data.shape[0]
    x, y = w.world_to_pixel_values(t["ra"], t["dec"])
    # truth x0/y0 are in display orientation (row 0 at top); FITS rows run bottom-up
    assert x == pytest.approx(t["x0"], abs=0.6) and (n - 1 - y) == pytest.approx(t["y0"], abs=0.6)


def test_half_light_radii_of_exponential_disc():
    p = GalaxyParams(size=129, bulge_fraction=0.0, n_arms=0, disc_scale=8.0, psf_fwhm=0.5)
    r50, r90 = half_light_radii(p)
    assert r50 == pytest.approx(1.678 * 8.0, rel=0.05) and r90 == pytest.approx(3.890 * 8.0, rel=0.05)


def test_render_is_deterministic_by_generator_seed():
    p = GalaxyParams(size=48)
    np.testing.assert_array_equal(render_galaxy(p, 5)["r"], render_galaxy(p, 5)["r"])
    assert not np.array_equal(render_galaxy(p, 5)["r"], render_galaxy(p, 6)["r"])
