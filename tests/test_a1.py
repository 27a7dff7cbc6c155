"""A1 lopsidedness: injection-recovery on simulated galaxies, masking, centring, files, manifests, real data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.imaging.a1 import (
    SDSS_PIXEL_SCALE,
    A1Error,
    A1Options,
    annulus_snr,
    curve_of_growth_radii,
    debiased_mean_amplitude,
    load_for_a1,
    lopsidedness_a1,
    measure_a1_file,
    rice_mean,
)
from galmorph.catalogue.a1 import measure_a1_manifest
from galmorph.simulate import GalaxyParams, half_light_radii, render_galaxy

SIZE = 128
C = (SIZE - 1) / 2


def galaxy(a1=0.0, flux=2e5, dx=0.0, dy=0.0, n_arms=0, seed=0, phase=0.0, stars=(), disc_scale=8.0,
           noise=True, arm_phase=0.0):
    p = GalaxyParams(size=SIZE, x0=C + dx, y0=C + dy, flux=flux, disc_scale=disc_scale, n_arms=n_arms,
                     winding="Z" if n_arms else "none", a1=a1, a1_phase=phase, arm_phase=arm_phase,
                     stars=list(stars), noise=noise)
    img = render_galaxy(p, seed)["r"]
    return p, img


@pytest.fixture(scope="module")
def radii():
    return half_light_radii(GalaxyParams(size=SIZE, disc_scale=8.0, n_arms=0))


# --------------------------------------------------------------------------------------------
# injection-recovery
# --------------------------------------------------------------------------------------------
AMPLITUDES = (0.0, 0.05, 0.1, 0.2, 0.3)
# total counts of the galaxy (sky 100 counts/px, Poisson): R50-R90 S/N about 430, 200 and 65
# (real SDSS cutouts: median 85, see benchmarks/a1_injection.py)
NOISE_LEVELS = {"high": 8e5, "medium": 3e5, "low": 8e4}


@pytest.fixture(scope="module")
def injection_grid(radii):
    rng = np.random.default_rng(42)
    r50, r90 = radii
    rows = []
    for level, flux in NOISE_LEVELS.items():
        for amp in AMPLITUDES:
            for k in range(6):
                dx, dy = rng.uniform(-0.5, 0.5, 2)
                n_arms = (0, 2, 4)[k % 3]
                phase = float(rng.uniform(0, 2 * np.pi))
                p, img = galaxy(amp, flux, dx, dy, n_arms=n_arms, seed=int(rng.integers(1 << 30)), phase=phase,
                                arm_phase=float(rng.uniform(0, 2 * np.pi)))
                res = lopsidedness_a1(img, r50=r50, r90=r90)
                rows.append({"level": level, "amp": amp, "a1": res.a1, "err": res.a1_err, "phase": res.a1_phase,
                             "true_phase": phase, "dx": res.x0 - p.x0, "dy": res.y0 - p.y0, "flags": res.flags})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("level", ["high", "medium"])
def test_injection_recovered_without_bias(injection_grid, level):
    g = injection_grid[injection_grid.level == level]
    assert np.isfinite(g.a1).all()
    for amp, grp in g.groupby("amp"):
        bias = grp.a1.mean() - amp
        assert abs(bias) < 0.02, f"{level} S/N, injected {amp}: mean {grp.a1.mean():.3f} (bias {bias:+.3f})"


def test_low_snr_still_ordered_and_errors_grow(injection_grid):
    g = injection_grid
    low = g[g.level == "low"].groupby("amp").a1.mean()
    assert low.is_monotonic_increasing, low
    assert abs(low.loc[0.3] - 0.3) < 0.05 and abs(low.loc[0.0]) < 0.04
    # errors grow as S/N falls
    med = g.groupby("level").err.median()
    assert med["high"] < med["medium"] < med["low"]


# total counts whose R50-R90 S/N is 85, the median of the raw SDSS r-band cutouts in
# sdss_fits/cutouts (benchmarks/a1_injection.py measures that median from the data)
SDSS_TYPICAL_FLUX = 1.109e5


def test_injection_unbiased_at_typical_sdss_snr(radii):
    """The issue's goal: |bias| < 0.02 at the sample's typical S/N, for every injected amplitude."""
    r50, r90 = radii
    model = render_galaxy(GalaxyParams(size=SIZE, disc_scale=8.0, n_arms=0, flux=SDSS_TYPICAL_FLUX, noise=False))["model"]
    assert 80 < annulus_snr(model, C, C, r50, r90, sky_variance=100.0, gain=1.0) < 90
    rng = np.random.default_rng(2026)
    for amp in AMPLITUDES:
        vals = []
        for k in range(60):
            dx, dy = rng.uniform(-0.5, 0.5, 2)
            _, img = galaxy(amp, SDSS_TYPICAL_FLUX, dx, dy, n_arms=(0, 2, 4)[k % 3], seed=int(rng.integers(1 << 30)),
                            phase=float(rng.uniform(0, 2 * np.pi)), arm_phase=float(rng.uniform(0, 2 * np.pi)))
            vals.append(lopsidedness_a1(img, r50=r50, r90=r90).a1)
        bias = float(np.mean(vals)) - amp
        assert abs(bias) < 0.02, f"injected {amp}: mean {np.mean(vals):.3f} (bias {bias:+.3f})"


def test_rice_mean_and_debiased_mean_amplitude():
    rng = np.random.default_rng(0)
    sigma = np.array([0.02, 0.03, 0.05])
    for nu in (0.0, 0.03, 0.2):
        z = rng.normal(size=(200_000, 3)) * sigma + 1j * rng.normal(size=(200_000, 3)) * sigma + nu
        assert np.allclose(np.abs(z).mean(axis=0), rice_mean(nu, sigma), rtol=5e-3, atol=2e-4)
    assert rice_mean(0.2, 0.0) == 0.2 and abs(float(rice_mean(0.2, 1e-9)) - 0.2) < 1e-12
    # pure noise: the raw weighted mean sits at the noise floor, the corrected one near zero;
    # a real amplitude comes back unbiased
    w = 1 / sigma ** 2
    for nu, tol in ((0.0, 0.012), (0.1, 0.004), (0.25, 0.004)):
        est, raw = [], []
        for _ in range(3000):
            amp = np.abs(nu + sigma * (rng.normal(size=3) + 1j * rng.normal(size=3)))
            raw.append(np.sum(w * amp) / w.sum())
            est.append(debiased_mean_amplitude(amp, sigma, w))
        assert abs(np.mean(est) - nu) < tol, (nu, np.mean(est))
        assert np.mean(raw) - nu > 2 * abs(np.mean(est) - nu)
    assert debiased_mean_amplitude(np.array([0.0, 0.0]), np.array([0.1, 0.1]), np.ones(2)) == 0.0


def test_residual_noise_model_gives_honest_errors(radii):
    """Without a gain the sky rms leaves out the galaxy's Poisson noise: the residual noise model
    puts it back, so the reported error matches the scatter between noise realisations."""
    r50, r90 = radii
    res = {"residual": [], "assumed": []}
    for seed in range(16):
        _, img = galaxy(0.15, 1.6e6, seed=seed)
        for noise in res:
            res[noise].append(lopsidedness_a1(img, r50=r50, r90=r90, noise=noise))
    scatter = np.std([r.a1 for r in res["residual"]], ddof=1)
    err_res = np.median([r.a1_err for r in res["residual"]])
    err_ass = np.median([r.a1_err for r in res["assumed"]])
    assert 0.6 < scatter / err_res < 1.6, (scatter, err_res)
    assert err_ass < 0.75 * err_res  # the sky-only variance underestimates the noise here
    with pytest.raises(A1Error, match="noise model"):
        lopsidedness_a1(galaxy(0.0)[1], noise="poisson")
    with pytest.raises(A1Error, match="weighting"):
        lopsidedness_a1(galaxy(0.0)[1], weighting="median")


def test_phase_and_centre_recovered(injection_grid):
    g = injection_grid[(injection_grid.amp >= 0.1) & (injection_grid.level != "low")]
    dphi = np.angle(np.exp(1j * (g.phase - g.true_phase)))
    assert np.all(np.abs(dphi) < 0.35), dphi
    # sub-pixel centre offsets are found (symmetric core)
    sym = injection_grid[injection_grid.amp == 0.0]
    off = np.hypot(sym.dx, sym.dy)
    assert np.all(off[sym.level != "low"] < 0.15) and np.all(off < 0.3), off


def test_error_matches_scatter_between_noise_realisations(radii):
    r50, r90 = radii
    vals, errs = [], []
    for seed in range(12):
        _, img = galaxy(0.15, 1.5e5, seed=seed)
        res = lopsidedness_a1(img, r50=r50, r90=r90)
        vals.append(res.a1)
        errs.append(res.a1_err)
    ratio = np.std(vals, ddof=1) / np.median(errs)
    assert 0.4 < ratio < 2.5, ratio


# --------------------------------------------------------------------------------------------
# masking and centring
# --------------------------------------------------------------------------------------------
def test_bright_star_masked(radii):
    r50, r90 = radii
    r_star = 0.5 * (r50 + r90)
    star = (C + r_star, C + 3.0, 3e4)
    _, clean = galaxy(0.0, 3e5, seed=3)
    _, img = galaxy(0.0, 3e5, seed=3, stars=[star])
    ref = lopsidedness_a1(clean, r50=r50, r90=r90)
    masked = lopsidedness_a1(img, r50=r50, r90=r90, mask_sources=True)
    unmasked = lopsidedness_a1(img, r50=r50, r90=r90, mask_sources=False)
    assert masked.n_masked_sources >= 1 and masked.masked_fraction > 0
    assert masked.a1 < 0.05 and abs(masked.a1 - ref.a1) < 0.02, (masked.a1, ref.a1)
    assert unmasked.a1 > 0.1, unmasked.a1
    # the galaxy itself is never masked: a clean image has nothing masked
    assert ref.masked_fraction == 0.0
    # the fill follows the galaxy's radial profile: a generous mask does not paint in lopsidedness
    for dilate in (1, 3, 5):
        grown = lopsidedness_a1(img, r50=r50, r90=r90, mask_dilate=dilate)
        assert grown.a1 < ref.a1 + 0.02, (dilate, grown.a1, ref.a1)


def test_half_pixel_start_shift_matters_only_without_refinement():
    _, img = galaxy(0.0, 3e5, dx=0.2, dy=-0.1, seed=5)
    p_true = (C + 0.2, C - 0.1)
    kw = dict(r50=None, r90=None)
    r50, r90 = half_light_radii(GalaxyParams(size=SIZE, disc_scale=8.0, n_arms=0))
    kw = dict(r50=r50, r90=r90)
    fixed_a = lopsidedness_a1(img, *p_true, refine_centre=False, **kw)
    fixed_b = lopsidedness_a1(img, p_true[0] + 0.5, p_true[1], refine_centre=False, **kw)
    ref_a = lopsidedness_a1(img, *p_true, refine_centre=True, **kw)
    ref_b = lopsidedness_a1(img, p_true[0] + 0.5, p_true[1], refine_centre=True, **kw)
    assert fixed_b.a1 - fixed_a.a1 > 0.03, (fixed_a.a1, fixed_b.a1)
    assert fixed_b.centre_source == "given" and ref_b.centre_source == "peak+moment"
    assert abs(ref_a.a1 - ref_b.a1) < 1e-6 and abs(ref_a.x0 - ref_b.x0) < 1e-6
    assert ref_a.a1 < 0.03


def test_mirror_invariance_and_phase(radii):
    r50, r90 = radii
    _, img = galaxy(0.2, 3e5, seed=9, phase=0.7)
    a = lopsidedness_a1(img, r50=r50, r90=r90)
    b = lopsidedness_a1(np.fliplr(img).copy(), r50=r50, r90=r90)
    assert abs(a.a1 - b.a1) < 1e-3
    # a left-right mirror maps the phase phi to pi - phi
    assert abs(np.angle(np.exp(1j * (b.a1_phase - (np.pi - a.a1_phase))))) < 0.02


def test_curve_of_growth_radii_match_truth(radii):
    r50, r90 = radii
    _, img = galaxy(0.0, 8e5, seed=11, noise=False)
    res = lopsidedness_a1(img)
    assert res.radii_source == "curve_of_growth"
    assert abs(res.r50 / r50 - 1) < 0.1 and abs(res.r90 / r90 - 1) < 0.15, (res.r50, r50, res.r90, r90)
    r50b, r90b, conv = curve_of_growth_radii(img - 100.0, C, C)
    assert conv and r50b < r90b


def test_profile_and_flags(radii):
    r50, r90 = radii
    _, img = galaxy(0.0, 3e5, n_arms=2, seed=1)
    img[0:4, :] = np.nan  # bad rows
    res = lopsidedness_a1(img, r50=r50, r90=r90, saturation=float(np.nanmax(img)) - 1)
    d = json.loads(json.dumps(res.to_dict()))
    prof = d["profile"]
    assert len(prof["A1"]) == len(prof["radius"]) > 1
    assert all(f"A{m}" in prof and f"phase{m}" in prof for m in range(1, 6))
    # two arms: m = 2 dominates the odd modes
    assert np.nanmean(res.profile.amp[:, 1]) > 3 * np.nanmean(res.profile.amp[:, 0])
    assert "nonfinite_pixels" in res.flags and "saturated" in res.flags
    assert math.isfinite(res.a1)
    # galaxy at the corner: its annuli fall off the image
    edge = lopsidedness_a1(img, 3.0, 60.0, r50=r50, r90=r90, refine_centre=False)
    assert "centre_near_edge" in edge.flags and "annuli_truncated" in edge.flags
    # R50/R90 too close: annuli with too few pixels
    tiny = lopsidedness_a1(img, r50=1.0, r90=1.6)
    assert "annulus_few_pixels" in tiny.flags and "no_valid_annuli" in tiny.flags and not tiny.ok
    with pytest.raises(A1Error):
        lopsidedness_a1(np.full((64, 64), np.nan))
    with pytest.raises(A1Error):
        lopsidedness_a1(np.zeros(10))
    with pytest.raises(A1Error):
        lopsidedness_a1(img, r50=5.0)


# --------------------------------------------------------------------------------------------
# manifests and CLI
# --------------------------------------------------------------------------------------------
def test_measure_manifest_adds_columns_and_quarantines(tmp_path, sim_lopsided):
    from galmorph.catalogue.manifest import read_manifest, read_quarantine, write_manifest

    man = read_manifest(sim_lopsided["manifest"]).head(12).copy()
    man.loc[0, "fits_path"] = str(tmp_path / "missing.fits")
    man.loc[1, "fits_path"] = None
    man.loc[1, "image_uri"] = None
    src = write_manifest(man, tmp_path / "in.parquet", kind="test")
    res = measure_a1_manifest(src, tmp_path / "out.parquet", progress=False)
    out = read_manifest(res["manifest"])
    q = read_quarantine(res["quarantine"])
    assert res["rows_in"] == 12 == len(out) + len(q)
    assert set(q.object_id) == {man.object_id[0], man.object_id[1]}
    assert any("does not exist" in r and man.object_id[0] in r for r in q.reason)
    for c in ("a1", "a1_err", "a1_x0", "a1_r50_px", "a1_flags"):
        assert c in out.columns
    assert np.isfinite(out.a1).all()
    # radii from the manifest's r50_px/r90_px, and A1 follows the injected lopsidedness
    assert np.allclose(out.a1_r50_px, out.r50_px)
    lop = out[out.label == "lopsided"].a1.median()
    sym = out[out.label == "symmetric"].a1.median()
    assert lop > sym + 0.08, (lop, sym)
    # two processes: same rows, same order, same values, same quarantine
    res2 = measure_a1_manifest(src, tmp_path / "out2.parquet", progress=False, workers=2)
    out2, q2 = read_manifest(res2["manifest"]), read_quarantine(res2["quarantine"])
    assert list(out2.object_id) == list(out.object_id) and list(q2.object_id) == list(q.object_id)
    assert np.allclose(out2.a1.to_numpy(), out.a1.to_numpy(), rtol=0, atol=1e-9)  # BLAS threads differ


def test_cli_json_lines(tmp_path, sim_lopsided):
    from galmorph.cli import main
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_lopsided["manifest"]).head(3)
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not a fits file")
    files = [str(p) for p in man.fits_path] + [str(bad)]
    res = CliRunner().invoke(main, ["a1", "--json", *files])
    lines = [json.loads(line) for line in res.output.strip().splitlines()]
    assert len(lines) == 4
    assert res.exit_code == 1  # one input unreadable
    for obj, row in zip(lines[:3], man.itertuples()):
        assert obj["file"] == row.fits_path and math.isfinite(obj["a1"]) and obj["error"] is None
        assert "A1" in obj["profile"] and obj["centre"]["x"] is not None
    assert lines[3]["flags"] == ["unreadable"] and "bad.fits" in lines[3]["error"]
    # --gain / --noise reach the measurement: the assumed-noise error without a gain is smaller
    errs = {}
    for extra in ([], ["--noise", "assumed"], ["--noise", "assumed", "--gain", "1"]):
        r = CliRunner().invoke(main, ["a1", "--json", "--no-profile", *extra, files[0]])
        assert r.exit_code == 0, r.output
        errs[" ".join(extra)] = json.loads(r.output)["a1_err"]
    assert errs["--noise assumed"] < errs["--noise assumed --gain 1"], errs
    assert CliRunner().invoke(main, ["a1", "--noise", "poisson", files[0]]).exit_code == 2
    ok = CliRunner().invoke(main, ["a1", "--json", "--r50", "5", "--r90", "12", files[0]])
    assert ok.exit_code == 0 and json.loads(ok.output)["r50"] == 5.0
    assert CliRunner().invoke(main, ["a1", "--r50", "5", files[0]]).exit_code == 2


@pytest.mark.realdata
def test_real_sdss_cutouts(data_root):
    from galmorph.cli import main

    files = sorted(str(p) for p in (data_root / "sdss_fits" / "cutouts").glob("*.fits"))
    assert len(files) >= 20
    res = CliRunner().invoke(main, ["a1", "--json", "--no-profile", *files])
    objs = [json.loads(line) for line in res.output.strip().splitlines()]
    assert [o["file"] for o in objs] == files
    finite = []
    for o in objs:
        if o["a1"] is not None:
            assert 0.0 <= o["a1"] < 0.7, o
            finite.append(o["a1"])
        else:
            assert o["flags"] and o["error"], o
    assert len(finite) >= 0.85 * len(files)
    assert 0.05 < float(np.median(finite)) < 0.3


def test_source_noise_scale_is_one_estimate_per_image():
    from galmorph.imaging.a1 import source_noise_scale

    a0 = np.array([400.0, 250.0, 150.0, 90.0])
    base = np.full(4, 100.0)
    ratio = 1 + 0.5 * a0 / base  # Poisson-like: variance 100 + 0.5 I
    assert np.allclose(source_noise_scale(ratio, a0, base), ratio)
    hit = ratio.copy()
    hit[2] *= 8  # a star left unmasked in one annulus
    assert np.allclose(source_noise_scale(hit, a0, base), ratio)
    # sky-dominated: no source term, never below the assumed variance
    assert np.allclose(source_noise_scale(np.array([0.9, 1.0, 1.1, 0.95]), a0, base), 1.0)


def test_annulus_snr_matches_the_formula():
    light = np.full((64, 64), 10.0)
    yy, xx = np.mgrid[0:64, 0:64]
    n = int(((np.hypot(xx - 31.5, yy - 31.5) >= 5) & (np.hypot(xx - 31.5, yy - 31.5) < 12)).sum())
    got = annulus_snr(light, 31.5, 31.5, 5, 12, sky_variance=4.0, gain=2.0)
    assert got == pytest.approx(10.0 * n / math.sqrt(4.0 * n + 10.0 * n / 2.0))
    assert annulus_snr(light, 31.5, 31.5, 5, 12, sky_variance=4.0) == pytest.approx(10.0 * n / math.sqrt(4.0 * n))


# --------------------------------------------------------------------------------------------
# options object and pixel scale
# --------------------------------------------------------------------------------------------
def test_options_object_is_the_one_set_of_options(radii):
    r50, r90 = radii
    _, img = galaxy(0.15, 3e5, seed=6)
    opts = A1Options(noise="chi2", mask_dilate=3, n_annuli=3)
    by_object = lopsidedness_a1(img, r50=r50, r90=r90, options=opts)
    by_name = lopsidedness_a1(img, r50=r50, r90=r90, noise="chi2", mask_dilate=3, n_annuli=3)
    default = lopsidedness_a1(img, r50=r50, r90=r90)
    assert by_object.to_dict() == by_name.to_dict()
    assert len(by_object.profile.radius) == 3 and by_object.a1_err != default.a1_err
    # overrides apply on top of the object
    assert lopsidedness_a1(img, r50=r50, r90=r90, options=opts, n_annuli=4).to_dict()["profile"]["radius"] == \
        default.to_dict()["profile"]["radius"]
    with pytest.raises(TypeError, match="bkg_meshh"):
        lopsidedness_a1(img, bkg_meshh=32)
    with pytest.raises(A1Error, match="mmax"):
        A1Options(mmax=0)
    with pytest.raises(AttributeError):
        opts.noise = "assumed"  # frozen


def _write_fits(path, img, cdelt_arcsec=None):
    """``img`` (display orientation) as FITS, with a TAN WCS of ``cdelt_arcsec`` px scale when given."""
    from astropy.io import fits

    hdr = fits.Header()
    if cdelt_arcsec is not None:
        h, w = img.shape
        hdr.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0,
                    "CRPIX1": (w + 1) / 2, "CRPIX2": (h + 1) / 2, "CUNIT1": "deg", "CUNIT2": "deg",
                    "CDELT1": -cdelt_arcsec / 3600, "CDELT2": cdelt_arcsec / 3600})
    fits.PrimaryHDU(np.flipud(img), header=hdr).writeto(path)
    return path


def test_pixel_scale_from_the_wcs_else_the_stated_default(tmp_path):
    from galmorph.cli import main
    from galmorph.catalogue.manifest import read_manifest, write_manifest

    _, img = galaxy(0.1, 3e5, seed=4)
    with_wcs = _write_fits(tmp_path / "wcs.fits", img, cdelt_arcsec=0.25)
    plain = _write_fits(tmp_path / "plain.fits", img)
    a = measure_a1_file(with_wcs, r50=8.0, r90=20.0)
    b = measure_a1_file(plain, r50=8.0, r90=20.0)
    assert (a.pixel_scale, a.pixel_scale_source) == (pytest.approx(0.25), "wcs")
    assert (b.pixel_scale, b.pixel_scale_source) == (SDSS_PIXEL_SCALE, "default")
    assert measure_a1_file(plain, r50=8.0, r90=20.0, pixel_scale=0.5).pixel_scale == 0.5
    # the measurement in px does not depend on the scale; the radii in arcsec do
    assert a.a1 == b.a1
    assert a.to_dict()["r50_arcsec"] == pytest.approx(8.0 * 0.25)
    assert b.to_dict()["r90_arcsec"] == pytest.approx(20.0 * 0.396)
    bare = lopsidedness_a1(img, r50=8.0, r90=20.0).to_dict()
    assert bare["pixel_scale_source"] is None and bare["r50_arcsec"] is None
    # manifest radii in arcsec are converted with each image's own scale, which is recorded
    man = pd.DataFrame([{"object_id": "wcs", "fits_path": str(with_wcs), "r50_arcsec": 2.0, "r90_arcsec": 5.0},
                        {"object_id": "plain", "fits_path": str(plain), "r50_arcsec": 2.0, "r90_arcsec": 5.0}])
    res = measure_a1_manifest(write_manifest(man, tmp_path / "in.parquet", kind="test"), tmp_path / "out.parquet",
                              progress=False)
    out = read_manifest(res["manifest"]).set_index("object_id")
    assert out.loc["wcs", "a1_r50_px"] == pytest.approx(2.0 / 0.25)
    assert out.loc["plain", "a1_r50_px"] == pytest.approx(2.0 / 0.396)
    assert list(out.a1_pixel_scale_source) == ["wcs", "default"]
    assert out.loc["wcs", "a1_pixel_scale"] == pytest.approx(0.25)
    # and `galmorph a1 --json` states it
    r = CliRunner().invoke(main, ["a1", "--json", "--no-profile", str(with_wcs), str(plain)])
    objs = [json.loads(line) for line in r.output.strip().splitlines()]
    assert [(o["pixel_scale_arcsec"], o["pixel_scale_source"]) for o in objs] == [
        (pytest.approx(0.25), "wcs"), (0.396, "default")]


@pytest.mark.realdata
def test_real_sdss_cutouts_pixel_scale_from_wcs(data_root):
    files = sorted((data_root / "sdss_fits" / "cutouts").glob("*.fits"))
    assert files
    for f in files[:5]:
        image = load_for_a1(f)
        assert image.pixel_scale_source == "wcs" and image.pixel_scale == pytest.approx(0.396, abs=1e-3), f
