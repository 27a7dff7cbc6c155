"""The A1 measurement on arrays: :func:`lopsidedness_a1`, a composition of the steps below.

The measurement, step by step (each step a function here; the names in ``code`` are fields of
:class:`A1Options`):

1. **Sky** (:func:`first_pass_sky`, :func:`second_pass_sky`): a ``sep`` background (mesh ``bkg_mesh`` px, capped at the image size) is estimated,
   sources are detected on the subtracted image, and the background is re-estimated with every
   detected source masked (two passes, so the galaxy's own light does not raise the sky).
2. **Other sources** (:func:`mask_other_sources`, :func:`fill_masked`; stars, neighbours) are the ``sep`` segments that do *not* contain the galaxy's
   centre; they are dilated by ``mask_dilate`` px and replaced by a Gaussian-weighted interpolation
   of the nearby unmasked pixels (normalised convolution).
3. **Centre** (:func:`locate_centre`): the brightest pixel within ``search_radius`` px of the expected position, refined by
   the first moment of the light in the 3x3 box around it. With ``centre_iterations > 0`` the 3x3
   first moment is iterated on the bilinearly interpolated image until the box is centred on the
   light (the fixed point of the 3x3 moment; removes the pull towards the pixel centre that a single
   moment has for a broad peak).
4. **Radii** (:func:`measurement_radii`): R50 and R90 from the caller (catalogue) or from the image's curve of growth (Petrosian
   total flux within 2 R_P, as for SDSS ``petroR50``/``petroR90``).
5. **Annuli** (:func:`fit_annulus_profile`): ``n_annuli`` logarithmically spaced circular annuli between R50 and R90. In each, a
   weighted linear least-squares fit ``I(phi) = a0 + sum_{m=1..mmax} a_m cos(m phi) + b_m sin(m phi)``
   (all annuli solved at once through batched normal equations; the angular basis comes from powers
   of ``(dx + i dy)/r``, no trigonometry per pixel). Assumed pixel variance = background rms^2
   (+ I/gain when ``gain`` is given). With ``noise="residual"`` (default) the galaxy's own noise,
   which a sky rms leaves out, is added as ``k a0`` per annulus, ``k`` the median over the annuli
   of the robust (MAD) excess residual variance per unit intensity (:func:`source_noise_scale`):
   one estimate per image, so a contaminated annulus does not move it. Parameter errors from the
   covariance diagonal.
6. **Mean** (:func:`combine_annuli`): ``A_m(r) = sqrt(a_m^2 + b_m^2) / a0``, phase ``phi_m = atan2(b_m, a_m) / m`` (radians,
   counter-clockwise from +x with y up on the display, as :mod:`galmorph.simulate`).
   ``A1`` = mean of ``A1(r)`` over the valid annuli weighted by the inverse noise variance of each
   (weights that do not depend on the measured amplitude). An amplitude is a modulus of two noisy
   components and is biased high (Rice); with ``debias`` the weighted mean is corrected as a whole
   (:func:`debiased_mean_amplitude`, method of moments), which stays unbiased at low S/N where
   debiasing each annulus and clipping it at zero does not.

Angles and positions use display orientation (row 0 at the top; ``x`` = column, ``y`` = row);
:func:`galmorph.imaging.io.load_image` gives FITS data in that orientation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from galmorph.imaging.a1.centre import curve_of_growth_radii, find_centre
from galmorph.imaging.a1.fourier import (
    amplitudes_from_coef,
    combine_annuli,
    fit_annuli,
    fourier_basis,
    source_noise_scale,
)
from galmorph.imaging.a1.options import A1Options, resolve_options
from galmorph.imaging.a1.result import A1Error, A1Profile, A1Result
from galmorph.imaging.a1.sky import (
    detect_sources,
    dilate_mask,
    estimate_background,
    fill_masked,
    masked_background,
    padding_mask,
)


@dataclass
class FirstPassSky:
    """Step 1, first pass: the sky model, the sky-subtracted image and the segmentation map."""

    background: Any | None  # sep.Background, None when neither sky nor sources are wanted
    subtracted: np.ndarray
    rms: float
    segmentation: np.ndarray | None  # sep labels (0 = sky), None when detection failed or was off


@dataclass
class AnnulusFit:
    """Step 5: the per-annulus fit (``coef``/``cov`` rows of every annulus; ``profile.valid`` marks
    those used for A1)."""

    profile: A1Profile
    coef: np.ndarray
    cov: np.ndarray
    masked_fraction: float
    flags: list[str]


# ---------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------
def prepare_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Grey float64 image with its unusable (non-finite or padding) pixels set to the median of the
    others, the mask of those pixels and the flags they raise. :class:`A1Error` for an image that
    is not 2-D (or 3-D colour), smaller than 8 px or more than 90 % unusable."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.ndim != 2:
        raise A1Error(f"image must be 2-D, got shape {np.shape(image)}")
    h, w = img.shape
    if min(h, w) < 8:
        raise A1Error(f"image too small for A1 ({w}x{h} px)")
    data = np.ascontiguousarray(img, dtype=np.float64)
    flags: list[str] = []
    bad = ~np.isfinite(data)
    if bad.any():
        flags.append("nonfinite_pixels")
    pad = padding_mask(data)
    if pad is not None:
        bad |= pad
        flags.append("image_padding")
    if bad.mean() > 0.9:
        raise A1Error(f"image has {int((~bad).sum())} usable pixels (the rest non-finite or padding)")
    if bad.any():
        data = np.where(bad, np.median(data[~bad]), data)
    return data, bad, flags


def first_pass_sky(data: np.ndarray, bad: np.ndarray, start: tuple[float, float], r90: float | None,
                   options: A1Options) -> FirstPassSky:
    """Step 1, first pass: ``sep`` background (unmasked but for ``bad``), then sources detected on
    the subtracted image, within ``options.detect_radius`` of ``start`` (default from ``r90``)."""
    h, w = data.shape
    if not (options.subtract_background or options.mask_sources):
        return FirstPassSky(None, data, float(np.std(data)) or 1.0, None)
    badm = bad if bad.any() else None
    bkg = estimate_background(data, options.bkg_mesh, options.bkg_filter, mask=badm)
    sub = data - bkg.back()
    rms = bkg.globalrms if bkg.globalrms > 0 else float(np.std(sub)) or 1.0
    detect = (options.detect_thresh, options.detect_minarea, options.deblend_cont, options.detect_bin)
    # with catalogue radii only the region around the galaxy matters for masking: detect there
    rad = None
    if options.detect_radius is not None:
        rad = float(options.detect_radius)
    elif r90 is not None and np.isfinite(r90) and r90 > 0:
        rad = 1.2 * float(r90) + options.search_radius + 6.0
    seg = None
    if rad is not None and (2 * rad + 1) ** 2 < 0.7 * h * w:
        xs, ys = start
        r0d, r1d = max(int(ys - rad), 0), min(int(ys + rad) + 2, h)
        c0d, c1d = max(int(xs - rad), 0), min(int(xs + rad) + 2, w)
        segc = detect_sources(np.ascontiguousarray(sub[r0d:r1d, c0d:c1d]), rms,
                              None if badm is None else np.ascontiguousarray(badm[r0d:r1d, c0d:c1d]), *detect)
        if segc is not None:
            seg = np.zeros((h, w), dtype=segc.dtype)
            seg[r0d:r1d, c0d:c1d] = segc
    else:
        seg = detect_sources(sub, rms, badm, *detect)
    return FirstPassSky(bkg, sub, rms, seg)


def locate_centre(sub: np.ndarray, start: tuple[float, float], options: A1Options) -> tuple[float, float, str, list[str]]:
    """Step 3: ``(x, y, centre_source, flags)``; the brightest pixel within ``search_radius`` of
    ``start`` refined by the 3x3 first moment (:func:`find_centre`), or ``start`` as given."""
    if not options.refine_centre:
        return start[0], start[1], "given", []
    cx, cy, on_rim = find_centre(sub, start[0], start[1], options.search_radius, options.centre_iterations)
    return cx, cy, "peak+moment", ["peak_at_search_edge"] if on_rim else []


def galaxy_segment(seg: np.ndarray | None, x: float, y: float) -> int:
    """Label of the galaxy in the segmentation map: the segment at the centre pixel, else the one
    covering most of the 3x3 box around it; 0 when none (or no map)."""
    if seg is None:
        return 0
    h, w = seg.shape
    iy, ix = int(round(min(max(y, 0), h - 1))), int(round(min(max(x, 0), w - 1)))
    gid = int(seg[iy, ix])
    if gid == 0:
        box = seg[max(iy - 1, 0):iy + 2, max(ix - 1, 0):ix + 2].ravel()
        box = box[box > 0]
        gid = int(np.bincount(box).argmax()) if box.size else 0
    return gid


def second_pass_sky(data: np.ndarray, bad: np.ndarray, sky: FirstPassSky, gid: int, centre: tuple[float, float],
                    options: A1Options) -> tuple[np.ndarray | None, float, float, list[str]]:
    """Step 1, second pass: ``(background map, median level, rms, flags)`` with every detected
    source masked and the galaxy out to ``bkg_galaxy_factor`` x its isophotal radius (its faint
    outskirts lie below the detection threshold). The first pass when there is no segmentation or
    no sky subtraction, or when the masked pass fails (flag ``background_failed``); no map, level 0
    and the image's std when there is no sky model."""
    if sky.background is None:
        return None, 0.0, sky.rms, []
    flags: list[str] = []
    seg = sky.segmentation
    if seg is not None and options.subtract_background:
        h, w = data.shape
        cx, cy = centre
        bmask = seg > 0
        if gid > 0:
            from scipy.ndimage import find_objects

            sl = find_objects(seg, max_label=gid)[gid - 1]
            r_iso = 0.0
            if sl is not None:  # farthest pixel of the galaxy segment (searched in its bounding box)
                gy, gx = np.nonzero(seg[sl] == gid)
                r_iso = float(np.sqrt(((gx + sl[1].start - cx) ** 2 + (gy + sl[0].start - cy) ** 2).max()))
            yy, xx = np.ogrid[0:h, 0:w]
            d2 = (xx - cx) ** 2 + (yy - cy) ** 2
            for factor in (options.bkg_galaxy_factor, 1.0):
                circ = d2 <= (factor * r_iso) ** 2
                cand = bmask | circ | bad
                if (~cand).mean() >= 0.15:
                    bmask = cand
                    break
        back, rms = masked_background(data, bmask | bad, options.bkg_mesh, options.bkg_filter)
        if back is None:
            flags.append("background_failed")
            back, rms = sky.background.back(), sky.rms
    else:
        back, rms = sky.background.back(), sky.rms
    level = float(np.median(back[::8, ::8]))  # smooth map: a sparse median is exact enough
    return back, level, float(rms), flags


def mask_other_sources(seg: np.ndarray, gid: int, centre: tuple[float, float], dilate: int) -> tuple[np.ndarray, int]:
    """Step 2: mask of the other sources (segments other than ``gid``, grown by ``dilate`` px but
    never into the 5x5 box at the galaxy's centre) and their number."""
    h, w = seg.shape
    iy, ix = int(round(min(max(centre[1], 0), h - 1))), int(round(min(max(centre[0], 0), w - 1)))
    others = (seg > 0) & (seg != gid)
    n_sources = int(np.unique(seg[others]).size)
    if others.any() and dilate > 0:
        others = dilate_mask(others, int(dilate))
        # never let the grown mask reach the galaxy's own core (the centre's 5x5 box)
        iy0, ix0 = max(iy - 2, 0), max(ix - 2, 0)
        sg = seg[iy0:iy + 3, ix0:ix + 3]
        others[iy0:iy + 3, ix0:ix + 3] &= (sg > 0) & (sg != gid)
    return others, n_sources


def measurement_radii(data: np.ndarray, centre: tuple[float, float], r50: float | None,
                      r90: float | None) -> tuple[float, float, str, list[str]]:
    """Step 4: ``(r50, r90, radii_source, flags)``: the given radii, else the Petrosian curve of
    growth around ``centre`` (:func:`curve_of_growth_radii`; flag ``cog_not_converged``)."""
    if r50 is not None:
        return float(r50), float(r90), "given", []
    r50, r90, converged = curve_of_growth_radii(data, centre[0], centre[1])
    return float(r50), float(r90), "curve_of_growth", [] if converged else ["cog_not_converged"]


def edge_distance(shape: tuple[int, int], centre: tuple[float, float]) -> float:
    """Distance (px) from ``centre`` to the nearest image edge (pixel borders)."""
    h, w = shape
    cx, cy = centre
    return min(cx + 0.5, w - 0.5 - cx, cy + 0.5, h - 0.5 - cy)


def saturated_within(raw: np.ndarray, centre: tuple[float, float], radius: float, saturation: float) -> bool:
    """True when a pixel of ``raw`` within ``radius`` of ``centre`` is at or above ``saturation``."""
    h, w = raw.shape
    cx, cy = centre
    r0s, r1s = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, h)
    c0s, c1s = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, w)
    yy, xx = np.mgrid[r0s:r1s, c0s:c1s]
    inside = np.hypot(xx - cx, yy - cy) <= radius
    return bool(np.any(raw[r0s:r1s, c0s:c1s][inside] >= saturation))


def fit_annulus_profile(data: np.ndarray, excluded: np.ndarray, masked: np.ndarray, centre: tuple[float, float],
                        r50: float, r90: float, sky_rms: float, options: A1Options) -> AnnulusFit:
    """Step 5: the Fourier model to ``mmax`` fitted by least squares in ``n_annuli`` log-spaced
    annuli between ``r50`` and ``r90`` (:func:`fit_annuli`), with the pixel-noise model
    ``options.noise``; amplitudes and the annuli valid for A1.

    ``excluded`` pixels are not fitted; ``masked`` ones (interpolated over other sources) are fitted
    but left out of the noise estimate, and make the masked fraction.
    """
    h, w = data.shape
    cx, cy = centre
    mmax = options.mmax
    flags: list[str] = []
    n_ann = int(max(1, min(options.n_annuli, math.floor(r90 - r50))))
    edges = np.geomspace(r50, r90, n_ann + 1)
    r0b, r1b = max(int(math.floor(cy - r90)) - 1, 0), min(int(math.ceil(cy + r90)) + 2, h)
    c0b, c1b = max(int(math.floor(cx - r90)) - 1, 0), min(int(math.ceil(cx + r90)) + 2, w)
    yy, xx = np.mgrid[r0b:r1b, c0b:c1b]
    dx = (xx - cx).ravel()
    dy = -(yy - cy).ravel()  # y up
    rr = np.hypot(dx, dy)
    sel = (rr >= edges[0]) & (rr < edges[-1])
    sel &= ~excluded[r0b:r1b, c0b:c1b].ravel()
    dx, dy, rr = dx[sel], dy[sel], rr[sel]
    vals = data[r0b:r1b, c0b:c1b].ravel()[sel]
    msk = masked[r0b:r1b, c0b:c1b].ravel()[sel]
    labels = np.clip(np.searchsorted(edges, rr, side="right") - 1, 0, n_ann - 1)
    X = fourier_basis(dx, dy, mmax)
    variance: np.ndarray | float = sky_rms ** 2
    if options.gain:
        variance = sky_rms ** 2 + np.clip(vals, 0, None) / float(options.gain)
    coef, cov, counts, chi2_red, ok, noise_ratio = fit_annuli(vals, X, labels, n_ann, variance, 2 * mmax + 2,
                                                               options.noise == "chi2", noise_pixels=~msk)
    if options.noise == "residual":
        base = (np.full(n_ann, float(variance)) if np.ndim(variance) == 0 else
                np.bincount(labels, weights=variance, minlength=n_ann)[:n_ann] / np.maximum(counts, 1))
        cov = cov * source_noise_scale(noise_ratio, coef[:, 0], base)[:, None, None]
    n_masked = np.bincount(labels, weights=msk.astype(float), minlength=n_ann)[:n_ann].astype(int)
    n_good = counts - n_masked
    full_ring = np.pi * (edges[1:] ** 2 - edges[:-1] ** 2)
    few = (n_good < options.min_pixels) | (counts < options.min_coverage * full_ring)
    if np.any(few):
        flags.append("annulus_few_pixels")
    ok &= ~few
    a0, a0_err, amp, amp_err, phase = amplitudes_from_coef(coef, cov, mmax, options.debias)
    nonpos = ok & ~(a0 > 0)
    if nonpos.any():
        flags.append("nonpositive_a0")
    ok &= a0 > 0
    ok &= np.isfinite(amp[:, 0]) & np.isfinite(amp_err[:, 0]) & (amp_err[:, 0] > 0)
    masked_fraction = float(msk.mean()) if msk.size else float("nan")
    if masked_fraction > options.max_masked_fraction:
        flags.append("high_masked_fraction")
    profile = A1Profile(
        r_inner=edges[:-1], r_outer=edges[1:], radius=np.sqrt(edges[:-1] * edges[1:]),
        n_pixels=counts, n_masked=n_masked, valid=ok, a0=a0, a0_err=a0_err, amp=amp, amp_err=amp_err,
        phase=phase, chi2_red=chi2_red,
    )
    return AnnulusFit(profile, coef, cov, masked_fraction, flags)


# ---------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------
def lopsidedness_a1(image: np.ndarray, x0: float | None = None, y0: float | None = None, r50: float | None = None,
                    r90: float | None = None, *, options: A1Options | None = None, **option_overrides: Any) -> A1Result:
    """Measure the lopsidedness A1 of the galaxy at (about) ``(x0, y0)`` in ``image`` (the steps of
    this module's docstring).

    ``image``: 2-D array (display orientation; colour is averaged to grey). ``x0, y0``: expected
    centre (column, row; default the image centre). ``r50, r90``: radii (px) bounding the annuli,
    both or neither (neither: the curve of growth). ``options``: :class:`A1Options` (default the
    documented measurement); ``option_overrides``: its fields by name, a shorthand for
    ``options=A1Options(...)`` (e.g. ``lopsidedness_a1(img, noise="chi2")``).

    Returns an :class:`A1Result`; problems that still allow a measurement become ``flags``.
    Raises :class:`A1Error` for unusable input (not 2-D, too small, all non-finite, bad options).
    """
    opts = resolve_options(options, option_overrides)
    data, bad, flags = prepare_image(image)
    h, w = data.shape
    if (r50 is None) != (r90 is None):
        raise A1Error("give both r50 and r90, or neither")
    raw = data
    start = ((w - 1) / 2 if x0 is None else float(x0), (h - 1) / 2 if y0 is None else float(y0))
    if not (math.isfinite(start[0]) and math.isfinite(start[1])):
        raise A1Error(f"start position ({start[0]}, {start[1]}) is not finite")

    # 1. sky
    sky = first_pass_sky(data, bad, start, r90, opts)
    # 3. centre
    cx, cy, centre_source, f = locate_centre(sky.subtracted, start, opts)
    flags += f
    gid = galaxy_segment(sky.segmentation, cx, cy)
    if sky.segmentation is not None and gid == 0:
        flags.append("galaxy_not_detected")
    # 1. sky, pass 2
    back, bkg_level, bkg_rms, f = second_pass_sky(data, bad, sky, gid, (cx, cy), opts)
    flags += f
    if back is not None and opts.subtract_background:
        data = data - back
    # 2. other sources
    mask = bad.copy()
    n_masked_sources = 0
    if opts.mask_sources and sky.segmentation is not None:
        others, n_masked_sources = mask_other_sources(sky.segmentation, gid, (cx, cy), opts.mask_dilate)
        mask |= others
    if mask.any():
        data = fill_masked(data, mask, centre=(cx, cy))
    # 4. radii
    r50, r90, radii_source, f = measurement_radii(data, (cx, cy), r50, r90)
    flags += f

    def result(a1=float("nan"), a1_err=float("nan"), a1_phase=float("nan"), masked_fraction=float("nan"),
               profile=None) -> A1Result:
        return A1Result(a1=a1, a1_err=a1_err, x0=cx, y0=cy, r50=r50, r90=r90, radii_source=radii_source,
                        centre_source=centre_source, masked_fraction=masked_fraction,
                        n_masked_sources=n_masked_sources, background=bkg_level, background_rms=bkg_rms,
                        flags=sorted(set(flags)), profile=profile, a1_phase=a1_phase, start=start, shape=(h, w))

    edge_dist = edge_distance((h, w), (cx, cy))
    if edge_dist < opts.edge_margin:
        flags.append("centre_near_edge")
    if not (math.isfinite(r50) and math.isfinite(r90) and r50 > 0 and r90 > r50):
        flags += ["invalid_radii", "no_valid_annuli"]
        return result()
    if r90 > edge_dist:
        flags.append("annuli_truncated")
    if opts.saturation is not None and saturated_within(raw, (cx, cy), r90, opts.saturation):
        flags.append("saturated")
    # 5. annuli
    fit = fit_annulus_profile(data, bad, mask, (cx, cy), r50, r90, bkg_rms, opts)
    flags += fit.flags
    ok = fit.profile.valid
    if not ok.any():
        flags.append("no_valid_annuli")
        return result(masked_fraction=fit.masked_fraction, profile=fit.profile)
    # 6. mean
    a1, a1_err, a1_phase = combine_annuli(fit.coef[ok], fit.cov[ok], fit.profile.amp_err[ok, 0],
                                          weighting=opts.weighting, debias=opts.debias)
    return result(a1, a1_err, a1_phase, fit.masked_fraction, fit.profile)
