"""Lopsidedness: the m = 1 Fourier amplitude A1 of a galaxy's light between R50 and R90.

The measurement, step by step (:func:`lopsidedness_a1`):

1. **Sky**: a ``sep`` background (mesh ``bkg_mesh`` px, capped at the image size) is estimated,
   sources are detected on the subtracted image, and the background is re-estimated with every
   detected source masked (two passes, so the galaxy's own light does not raise the sky).
2. **Other sources** (stars, neighbours) are the ``sep`` segments that do *not* contain the galaxy's
   centre; they are dilated by ``mask_dilate`` px and replaced by a Gaussian-weighted interpolation
   of the nearby unmasked pixels (normalised convolution).
3. **Centre**: the brightest pixel within ``search_radius`` px of the expected position, refined by
   the first moment of the light in the 3x3 box around it. With ``centre_iterations > 0`` the 3x3
   first moment is iterated on the bilinearly interpolated image until the box is centred on the
   light (the fixed point of the 3x3 moment; removes the pull towards the pixel centre that a single
   moment has for a broad peak).
4. **Radii**: R50 and R90 from the caller (catalogue) or from the image's curve of growth (Petrosian
   total flux within 2 R_P, as for SDSS ``petroR50``/``petroR90``).
5. **Annuli**: ``n_annuli`` logarithmically spaced circular annuli between R50 and R90. In each, a
   weighted linear least-squares fit ``I(phi) = a0 + sum_{m=1..mmax} a_m cos(m phi) + b_m sin(m phi)``
   (all annuli solved at once through batched normal equations; the angular basis comes from powers
   of ``(dx + i dy)/r``, no trigonometry per pixel). Assumed pixel variance = background rms^2
   (+ I/gain when ``gain`` is given). With ``noise="residual"`` (default) the galaxy's own noise,
   which a sky rms leaves out, is added as ``k a0`` per annulus, ``k`` the median over the annuli
   of the robust (MAD) excess residual variance per unit intensity (:func:`source_noise_scale`):
   one estimate per image, so a contaminated annulus does not move it. Parameter errors from the
   covariance diagonal.
6. ``A_m(r) = sqrt(a_m^2 + b_m^2) / a0``, phase ``phi_m = atan2(b_m, a_m) / m`` (radians,
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

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Quality flags that :func:`lopsidedness_a1` can raise (``A1Result.flags``).
FLAG_DESCRIPTIONS: dict[str, str] = {
    "annulus_few_pixels": "an annulus had fewer unmasked in-image pixels than min_pixels (dropped)",
    "annuli_truncated": "the R90 circle crosses the image edge (partial annuli)",
    "centre_near_edge": "the centre is within edge_margin px of the image edge",
    "peak_at_search_edge": "the brightest pixel lies on the rim of the search radius (centre may be elsewhere)",
    "saturated": "pixels at or above the saturation level inside R90",
    "galaxy_not_detected": "sep found no source at the centre",
    "high_masked_fraction": "more than max_masked_fraction of the pixels between R50 and R90 were masked",
    "cog_not_converged": "the curve of growth never reached the Petrosian criterion; total flux at the largest radius",
    "nonpositive_a0": "an annulus had mean intensity <= 0 (dropped)",
    "no_valid_annuli": "no annulus could be fitted; A1 is NaN",
    "invalid_radii": "R50/R90 unusable (non-finite, <= 0 or R90 <= R50)",
    "background_failed": "the masked second background pass failed; first pass used",
    "nonfinite_pixels": "the image has NaN/inf pixels (excluded)",
    "image_padding": "the image has constant-valued padding (frame edge; excluded)",
}


#: Pixel-noise models for the annulus fits (``lopsidedness_a1(noise=...)``).
NOISE_MODELS: dict[str, str] = {
    "residual": "assumed variance + k I, k measured from the robust (MAD) fit residuals of all annuli",
    "assumed": "background rms^2 (+ I/gain when gain is given), as is",
    "chi2": "assumed variance inflated by each annulus' reduced chi-square where it exceeds 1",
}


class A1Error(ValueError):
    """The A1 measurement cannot run on this input (bad array, bad arguments)."""


# ---------------------------------------------------------------------------------------------
# result objects
# ---------------------------------------------------------------------------------------------
def _f(v: Any) -> Any:
    """JSON-safe float (NaN/inf -> None)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class A1Profile:
    """Per-annulus Fourier profile (arrays of length n_annuli; ``amp``/``phase`` are (n, mmax))."""

    r_inner: np.ndarray
    r_outer: np.ndarray
    radius: np.ndarray  # geometric mid radius of each annulus
    n_pixels: np.ndarray  # in-image pixels fitted
    n_masked: np.ndarray  # of which were interpolated
    valid: np.ndarray  # bool: used for A1
    a0: np.ndarray
    a0_err: np.ndarray
    amp: np.ndarray  # A_m = sqrt(a_m^2 + b_m^2) / a0, m = 1..mmax
    amp_err: np.ndarray
    phase: np.ndarray  # radians in [0, 2 pi / m)
    chi2_red: np.ndarray

    @property
    def a1(self) -> np.ndarray:
        return self.amp[:, 0]

    @property
    def a1_err(self) -> np.ndarray:
        return self.amp_err[:, 0]

    def to_dict(self) -> dict:
        mmax = self.amp.shape[1] if self.amp.ndim == 2 else 0
        out: dict[str, Any] = {
            "radius": [_f(v) for v in self.radius],
            "r_inner": [_f(v) for v in self.r_inner],
            "r_outer": [_f(v) for v in self.r_outer],
            "n_pixels": [int(v) for v in self.n_pixels],
            "n_masked": [int(v) for v in self.n_masked],
            "valid": [bool(v) for v in self.valid],
            "a0": [_f(v) for v in self.a0],
            "chi2_red": [_f(v) for v in self.chi2_red],
        }
        for m in range(1, mmax + 1):
            out[f"A{m}"] = [_f(v) for v in self.amp[:, m - 1]]
            out[f"A{m}_err"] = [_f(v) for v in self.amp_err[:, m - 1]]
            out[f"phase{m}"] = [_f(v) for v in self.phase[:, m - 1]]
        return out


@dataclass
class A1Result:
    """Outcome of one A1 measurement (see :func:`lopsidedness_a1`)."""

    a1: float
    a1_err: float
    x0: float  # measured centre, column (display orientation)
    y0: float  # measured centre, row from the top
    r50: float
    r90: float
    radii_source: str  # "given" | "curve_of_growth"
    centre_source: str  # "peak+moment" | "given"
    masked_fraction: float
    n_masked_sources: int
    background: float  # median sky level subtracted
    background_rms: float
    flags: list[str] = field(default_factory=list)
    profile: A1Profile | None = None
    a1_phase: float = float("nan")  # weighted circular mean of the m=1 phase (radians)
    start: tuple[float, float] = (float("nan"), float("nan"))
    shape: tuple[int, int] = (0, 0)

    @property
    def ok(self) -> bool:
        return math.isfinite(self.a1)

    def to_dict(self, profile: bool = True) -> dict:
        d: dict[str, Any] = {
            "a1": _f(self.a1), "a1_err": _f(self.a1_err), "a1_phase": _f(self.a1_phase),
            "centre": {"x": _f(self.x0), "y": _f(self.y0), "source": self.centre_source},
            "start": {"x": _f(self.start[0]), "y": _f(self.start[1])},
            "r50": _f(self.r50), "r90": _f(self.r90), "radii_source": self.radii_source,
            "masked_fraction": _f(self.masked_fraction), "n_masked_sources": int(self.n_masked_sources),
            "background": _f(self.background), "background_rms": _f(self.background_rms),
            "shape": list(self.shape), "flags": list(self.flags),
        }
        if profile:
            d["profile"] = self.profile.to_dict() if self.profile is not None else None
        return d


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def padding_mask(data: np.ndarray) -> np.ndarray | None:
    """Pixels of constant-valued padding (survey cutouts at a frame edge), or None.

    Padding is recognised by a whole row or column that is exactly constant; every pixel equal
    to that value is then padding.
    """
    for axis in (1, 0):
        flat = np.ptp(data, axis=axis) == 0
        if flat.any():
            i = int(np.argmax(flat))
            value = data[i, 0] if axis == 1 else data[0, i]
            return data == value
    return None


def estimate_background(data: np.ndarray, mesh: int = 64, filter_size: int = 3,
                        mask: np.ndarray | None = None):
    """``sep.Background`` with the mesh capped at the image size; returns the sep object."""
    import sep

    h, w = data.shape
    bw, bh = int(max(4, min(mesh, w))), int(max(4, min(mesh, h)))
    fs = filter_size if (w // bw > 1 or h // bh > 1) else 1
    return sep.Background(data, mask=mask, bw=bw, bh=bh, fw=fs, fh=fs)


def clipped_stats(values: np.ndarray, nsigma: float = 3.0, n_iter: int = 5) -> tuple[float, float]:
    """Median and MAD-based sigma of ``values`` after iterative ``nsigma`` clipping."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size > 20000:  # a regular subsample is plenty for a sky level
        v = v[:: v.size // 20000]
    if v.size == 0:
        return float("nan"), float("nan")
    med, sig = float(np.median(v)), float("nan")
    for _ in range(n_iter):
        mad = float(np.median(np.abs(v - med)))
        sig = 1.4826 * mad if mad > 0 else float(np.std(v))
        keep = np.abs(v - med) <= nsigma * sig
        if keep.all() or keep.sum() < 10:
            break
        v = v[keep]
        med = float(np.median(v))
    return med, sig


def _masked_background(data: np.ndarray, mask: np.ndarray, mesh: int, filter_size: int):
    """Background map with ``mask`` excluded: sep's mesh map when its meshes have enough unmasked
    pixels, else a constant clipped median of the unmasked pixels. ``(None, None)`` when fewer
    than 100 pixels are unmasked."""
    n_free = int((~mask).sum())
    if n_free < 100:
        return None, None
    try:
        b = estimate_background(data, mesh, filter_size, mask=mask)
        if not (b.globalback == 0.0 and b.globalrms == 1.0) and b.globalrms > 0:
            return b.back(), float(b.globalrms)
    except Exception:  # noqa: BLE001 - sep refuses fully masked meshes
        pass
    med, sig = clipped_stats(data[~mask])
    if not (math.isfinite(med) and sig > 0):
        return None, None
    return np.full(data.shape, med), sig


def ring_profile(img: np.ndarray, mask: np.ndarray, x0: float, y0: float, step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthal mean of the unmasked pixels in 1 px rings around ``(x0, y0)``: ``(radii, values)``
    at the ring mid-radii that have pixels. ``step`` subsamples the image (every step-th row and
    column; a ring mean needs far fewer pixels than the image has)."""
    ys, xs = np.ogrid[0:img.shape[0]:step, 0:img.shape[1]:step]
    k = np.hypot(xs - x0, ys - y0).astype(int).ravel()
    good = ~mask[::step, ::step].ravel()
    nb = int(k.max()) + 1
    tot = np.bincount(k[good], weights=img[::step, ::step].ravel()[good], minlength=nb)[:nb]
    n = np.bincount(k[good], minlength=nb)[:nb]
    have = n > 0
    return np.arange(nb)[have] + 0.5, tot[have] / n[have]


def fill_masked(img: np.ndarray, mask: np.ndarray, sigma: float = 1.5, max_iter: int = 8,
                centre: tuple[float, float] | None = None) -> np.ndarray:
    """Replace masked pixels by a Gaussian-weighted mean of nearby unmasked pixels.

    Normalised convolution with sigma doubling until every masked pixel has support; only the
    bounding box of the mask (padded) is processed. With ``centre`` (the galaxy's) the residual
    from the galaxy's azimuthal mean profile (:func:`ring_profile`) is interpolated and the profile
    added back: a steep, curved profile under a large mask (a star on the disc) is then not filled
    too bright on one side, which would fake lopsidedness.
    """
    from scipy.ndimage import gaussian_filter

    if not mask.any():
        return img
    out = img.copy()
    rows, cols = np.nonzero(mask)
    h, w = img.shape
    prof = ring_profile(img, mask, centre[0], centre[1]) if centre is not None else None
    s = sigma
    remaining = mask.copy()
    for _ in range(max_iter):
        pad = int(math.ceil(4 * s)) + 1
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, h)
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, w)
        sub_img, sub_mask = img[r0:r1, c0:c1], mask[r0:r1, c0:c1]
        model = 0.0
        if prof is not None and prof[0].size:
            yy, xx = np.ogrid[r0:r1, c0:c1]
            model = np.interp(np.hypot(xx - centre[0], yy - centre[1]), *prof)
            sub_img = sub_img - model
        wgt = (~sub_mask).astype(np.float64)
        num = gaussian_filter(np.where(sub_mask, 0.0, sub_img), s, mode="constant")
        den = gaussian_filter(wgt, s, mode="constant")
        rem = remaining[r0:r1, c0:c1]
        ok = rem & (den > 1e-3)
        block = out[r0:r1, c0:c1]
        block[ok] = (num / np.where(den > 1e-3, den, 1.0) + model)[ok]
        rem &= ~ok
        if not remaining.any():
            break
        s *= 2
    if remaining.any():  # nothing unmasked anywhere near: fall back to 0 (sky)
        out[remaining] = 0.0
    return out


def detect_sources(sub: np.ndarray, rms: float, mask: np.ndarray | None = None, thresh: float = 1.5,
                   minarea: int = 5, deblend_cont: float = 0.005, bin_factor: int | None = None) -> np.ndarray | None:
    """sep segmentation map (0 = sky, k = k-th object) of a background-subtracted image.

    With ``bin_factor`` n > 1 detection runs on the n x n summed image (noise n * rms) and the map
    is expanded back to full resolution. None when sep fails (e.g. pixel-stack overflow).
    """
    import sep

    h, w = sub.shape
    n = (2 if min(h, w) >= 128 else 1) if bin_factor is None else max(int(bin_factor), 1)
    # sep allocates its pixel stack (default 300000) on every call: size it to the image instead
    old_stack = sep.get_extract_pixstack()
    sep.set_extract_pixstack(int(max(10_000, (h // n) * (w // n) + 1000)))
    try:
        return _detect(sub, rms, mask, thresh, minarea, deblend_cont, n)
    finally:
        sep.set_extract_pixstack(old_stack)


def _detect(sub, rms, mask, thresh, minarea, deblend_cont, n):
    import sep

    h, w = sub.shape
    try:
        if n == 1:
            _, seg = sep.extract(sub, thresh, err=rms, mask=mask, minarea=minarea, deblend_cont=deblend_cont,
                                 segmentation_map=True)
            return seg
        hb, wb = h // n, w // n
        binned = np.ascontiguousarray(sub[:hb * n, :wb * n].reshape(hb, n, wb, n).sum(axis=(1, 3)))
        bmask = None
        if mask is not None:
            bmask = np.ascontiguousarray(mask[:hb * n, :wb * n].reshape(hb, n, wb, n).any(axis=(1, 3)))
        _, segb = sep.extract(binned, thresh, err=n * rms, mask=bmask, minarea=max(2, minarea // (n * n) + 1),
                              deblend_cont=deblend_cont, segmentation_map=True)
        seg = np.zeros((h, w), dtype=segb.dtype)
        seg[:hb * n, :wb * n] = np.repeat(np.repeat(segb, n, axis=0), n, axis=1)
        return seg
    except Exception as exc:  # noqa: BLE001
        log.debug("sep.extract failed: %s", exc)
        return None


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Grow ``mask`` by a disc of radius ``k`` px (only inside the mask's padded bounding box)."""
    from scipy.ndimage import binary_dilation

    rows, cols = np.nonzero(mask)
    if rows.size == 0 or k <= 0:
        return mask
    h, w = mask.shape
    r0, r1 = max(rows.min() - k, 0), min(rows.max() + k + 1, h)
    c0, c1 = max(cols.min() - k, 0), min(cols.max() + k + 1, w)
    yk, xk = np.mgrid[-k:k + 1, -k:k + 1]
    out = mask.copy()
    out[r0:r1, c0:c1] = binary_dilation(mask[r0:r1, c0:c1], structure=(xk * xk + yk * yk) <= k * k)
    return out


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = img.shape
    x = np.clip(x, 0, w - 1.000001)
    y = np.clip(y, 0, h - 1.000001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
            + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])


_OFF = np.array([-1.0, 0.0, 1.0])
_DX = np.tile(_OFF, 3)
_DY = np.repeat(_OFF, 3)


def find_centre(img: np.ndarray, x_start: float, y_start: float, search_radius: float = 5.0,
                centre_iterations: int = 0, tol: float = 1e-3) -> tuple[float, float, bool]:
    """Brightest pixel within ``search_radius`` of the start, refined by the 3x3 first moment.

    Returns ``(x, y, on_rim)``; ``on_rim`` is True when the brightest pixel lies on the rim of the
    search disc (the true peak may be outside it). ``centre_iterations`` > 0 iterates the 3x3 first
    moment on the bilinearly interpolated image (sub-pixel box) until it moves less than ``tol``.
    """
    h, w = img.shape
    rad = max(float(search_radius), 0.5)
    r0, r1 = max(int(math.floor(y_start - rad)), 0), min(int(math.ceil(y_start + rad)) + 1, h)
    c0, c1 = max(int(math.floor(x_start - rad)), 0), min(int(math.ceil(x_start + rad)) + 1, w)
    if r0 >= r1 or c0 >= c1:
        raise A1Error(f"start position ({x_start:.1f}, {y_start:.1f}) is outside the {w}x{h} image")
    yy, xx = np.mgrid[r0:r1, c0:c1]
    d2 = (xx - x_start) ** 2 + (yy - y_start) ** 2
    inside = d2 <= rad * rad
    if not inside.any():
        inside = d2 <= d2.min()
    box = np.where(inside, img[r0:r1, c0:c1], -np.inf)
    k = int(np.argmax(box))
    py, px = r0 + k // box.shape[1], c0 + k % box.shape[1]
    on_rim = bool(math.hypot(px - x_start, py - y_start) > rad - 1.0) and rad >= 2
    # 3x3 first moment (clipped at the image edge, negative light ignored)
    ys, xs = slice(max(py - 1, 0), min(py + 2, h)), slice(max(px - 1, 0), min(px + 2, w))
    b = np.clip(img[ys, xs], 0, None)
    s = b.sum()
    x, y = float(px), float(py)
    if s > 0:
        by, bx = np.mgrid[ys, xs]
        x, y = float((bx * b).sum() / s), float((by * b).sum() / s)
    if centre_iterations > 0:
        x, y = _iterate_moment(img, x, y, int(centre_iterations), tol)
    return x, y, on_rim


def _moment3(img: np.ndarray, x: float, y: float) -> tuple[float, float]:
    v = np.clip(_bilinear(img, x + _DX, y + _DY), 0, None)
    t = v.sum()
    if t <= 0:
        return 0.0, 0.0
    return float((_DX * v).sum() / t), float((_DY * v).sum() / t)


def _iterate_moment(img: np.ndarray, x: float, y: float, n_iter: int, tol: float) -> tuple[float, float]:
    """Fixed point of the 3x3 first moment on the interpolated image, ``m(c) = 0``.

    The moment responds to an offset with a gain below one (a broad peak pulls it to the box
    centre), so plain iteration crawls; a per-axis secant step on ``m`` converges in a few steps.
    """
    h, w = img.shape
    mx, my = _moment3(img, x, y)
    px, py, pmx, pmy = x, y, mx, my
    x, y = x + mx, y + my
    for _ in range(n_iter):
        mx, my = _moment3(img, x, y)
        if abs(mx) < tol and abs(my) < tol:
            break
        nx = x - mx * (x - px) / (mx - pmx) if abs(mx - pmx) > 1e-12 and abs(x - px) > 1e-12 else x + mx
        ny = y - my * (y - py) / (my - pmy) if abs(my - pmy) > 1e-12 and abs(y - py) > 1e-12 else y + my
        # keep each step modest (the secant can overshoot on noisy peaks)
        nx = x + float(np.clip(nx - x, -1.0, 1.0))
        ny = y + float(np.clip(ny - y, -1.0, 1.0))
        px, py, pmx, pmy = x, y, mx, my
        x, y = nx, ny
    return float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))


def curve_of_growth_radii(img: np.ndarray, x0: float, y0: float, r_max: float | None = None,
                          eta: float = 0.2, n_petro: float = 2.0) -> tuple[float, float, bool]:
    """R50, R90 (px) of the Petrosian flux (within ``n_petro`` Petrosian radii, ratio ``eta``).

    Returns ``(r50, r90, converged)``; when the Petrosian ratio never drops to ``eta`` inside
    ``r_max`` the total flux is the flux within ``r_max`` and ``converged`` is False.
    """
    h, w = img.shape
    if r_max is None:
        r_max = min(x0 + 0.5, w - 0.5 - x0, y0 + 0.5, h - 0.5 - y0)
    r_max = max(float(r_max), 2.0)
    r0, r1 = max(int(y0 - r_max) - 1, 0), min(int(y0 + r_max) + 2, h)
    c0, c1 = max(int(x0 - r_max) - 1, 0), min(int(x0 + r_max) + 2, w)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    r = np.hypot(xx - x0, yy - y0).ravel()
    sel = r < r_max
    k = r[sel].astype(int)
    nb = int(math.floor(r_max)) + 1
    prof = np.bincount(k, weights=img[r0:r1, c0:c1].ravel()[sel], minlength=nb)[:nb]
    npx = np.bincount(k, minlength=nb)[:nb].astype(float)
    cum = np.cumsum(prof)
    cum_n = np.cumsum(npx)
    edges = np.arange(1, nb + 1, dtype=float)  # ring k covers [k, k+1)
    # Petrosian ratio at the outer edge of ring k: SB in ring k / mean SB inside edge k+1
    with np.errstate(divide="ignore", invalid="ignore"):
        sb_ring = prof / np.maximum(npx, 1)
        sb_in = cum / np.maximum(cum_n, 1)
        ratio = sb_ring / sb_in
    ratio[:2] = 1.0
    below = np.nonzero((ratio < eta) & (sb_in > 0))[0]
    converged = below.size > 0
    if converged:
        rp = float(edges[below[0]])
        r_tot = min(n_petro * rp, float(edges[-1]))
        converged = n_petro * rp <= edges[-1]
    else:
        r_tot = float(edges[-1])
    cum_r = np.concatenate([[0.0], edges])
    cum_f = np.concatenate([[0.0], cum])
    total = float(np.interp(r_tot, cum_r, cum_f))
    if not total > 0:
        return float("nan"), float("nan"), False
    # monotone envelope for a noisy curve
    frac = np.maximum.accumulate(cum_f / total)
    upto = cum_r <= r_tot + 1e-9
    r50 = float(np.interp(0.5, frac[upto], cum_r[upto]))
    r90 = float(np.interp(0.9, frac[upto], cum_r[upto]))
    return r50, r90, converged


def fourier_basis(dx: np.ndarray, dy: np.ndarray, mmax: int) -> np.ndarray:
    """Design matrix ``[1, cos phi, sin phi, ..., cos(mmax phi), sin(mmax phi)]`` (N, 2 mmax + 1).

    ``dx`` to the right, ``dy`` up; uses powers of ``(dx + i dy)/r`` (no trigonometric calls).
    """
    r = np.hypot(dx, dy)
    r = np.where(r > 0, r, 1.0)
    z = (dx + 1j * dy) / r
    X = np.empty((dx.size, 2 * mmax + 1))
    X[:, 0] = 1.0
    zm = np.ones_like(z)
    for m in range(1, mmax + 1):
        zm = zm * z
        X[:, 2 * m - 1] = zm.real
        X[:, 2 * m] = zm.imag
    return X


def fit_annuli(values: np.ndarray, X: np.ndarray, labels: np.ndarray, n_annuli: int,
               variance: np.ndarray | float, min_pixels: int, chi2_scale: bool = True,
               noise_pixels: np.ndarray | None = None):
    """Weighted least squares of the Fourier model in every annulus at once (normal equations).

    ``labels`` holds each pixel's annulus index (0..n_annuli-1). Returns ``coef (n, p)``,
    ``cov (n, p, p)``, ``n (n,)``, ``chi2_red (n,)``, ``ok (n,)`` and ``noise_ratio (n,)``: the
    robust (MAD) variance of the normalised residuals, i.e. the actual pixel noise over the assumed
    one. Unlike ``chi2_red`` it is hardly raised by narrow arms or knots the Fourier model cannot
    follow, and it picks up noise the assumed variance leaves out (source Poisson noise when no
    gain is known, read noise). ``noise_pixels`` (bool per pixel) limits that estimate to real
    pixels (interpolated ones carry no noise).
    """
    p = X.shape[1]
    scalar_var = np.ndim(variance) == 0
    wgt = (1.0 / float(variance)) if scalar_var else 1.0 / np.asarray(variance, dtype=np.float64)
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    Xs, ys = X[order], values[order]
    ws = np.full(ys.shape, wgt) if scalar_var else wgt[order]
    counts = np.bincount(lab, minlength=n_annuli)[:n_annuli]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    ok = counts >= max(min_pixels, p + 1)
    A = np.zeros((n_annuli, p, p))
    b = np.zeros((n_annuli, p))
    for a in np.nonzero(ok)[0]:
        s0, s1 = bounds[a], bounds[a + 1]
        Xa = Xs[s0:s1]
        Xw = Xa * ws[s0:s1, None]
        A[a] = Xw.T @ Xa
        b[a] = Xw.T @ ys[s0:s1]
    coef = np.full((n_annuli, p), np.nan)
    cov = np.full((n_annuli, p, p), np.nan)
    chi2_red = np.full(n_annuli, np.nan)
    noise_ratio = np.full(n_annuli, np.nan)
    idx = np.nonzero(ok)[0]
    if idx.size:
        try:
            inv = np.linalg.inv(A[idx])
        except np.linalg.LinAlgError:  # a singular (degenerate) annulus: invert one by one
            inv = np.full((idx.size, p, p), np.nan)
            for j, a in enumerate(idx):
                try:
                    inv[j] = np.linalg.inv(A[a])
                except np.linalg.LinAlgError:
                    ok[a] = False
        coef[idx] = np.einsum("nij,nj->ni", inv, b[idx])
        cov[idx] = inv
        ok &= np.isfinite(coef).all(axis=1)
    # reduced chi-square per annulus
    if ok.any():
        cz = np.where(np.isfinite(coef), coef, 0.0)
        model = np.einsum("ij,ij->i", Xs, cz[lab])
        chi = np.bincount(lab, weights=ws * (ys - model) ** 2, minlength=n_annuli)[:n_annuli]
        dof = np.maximum(counts - p, 1)
        chi2_red[ok] = chi[ok] / dof[ok]
        z = np.abs(ys - model) * np.sqrt(ws)
        real = np.ones(z.shape, bool) if noise_pixels is None else np.asarray(noise_pixels, bool)[order]
        for a in np.nonzero(ok)[0]:
            za = z[bounds[a]:bounds[a + 1]][real[bounds[a]:bounds[a + 1]]]
            if za.size < p + 1:
                continue
            mad = float(np.median(za))
            noise_ratio[a] = (1.4826 * mad) ** 2 * counts[a] / max(counts[a] - p, 1)
        if chi2_scale:
            cov[ok] = cov[ok] * np.maximum(chi2_red[ok], 1.0)[:, None, None]
    return coef, cov, counts, chi2_red, ok, noise_ratio


def source_noise_scale(noise_ratio: np.ndarray, a0: np.ndarray, base_var: np.ndarray) -> np.ndarray:
    """Per-annulus variance factor from the galaxy's own (Poisson-like) noise, estimated robustly.

    ``noise_ratio`` is each annulus' measured (MAD) residual variance over the assumed ``base_var``;
    ``a0`` its mean intensity. The excess ``(ratio - 1) base_var`` is modelled as ``k a0`` with one
    ``k`` (an inverse effective gain) for the whole image: the median over annuli, so one annulus
    whose residuals are raised by unmodelled structure (a star left unmasked, a clump) neither
    inflates its own error nor gets down-weighted. Returns ``1 + k a0 / base_var`` (>= 1).
    """
    good = np.isfinite(noise_ratio) & np.isfinite(a0) & (a0 > 0) & (base_var > 0)
    if not good.any():
        return np.ones_like(noise_ratio)
    k = max(float(np.median((noise_ratio[good] - 1.0) * base_var[good] / a0[good])), 0.0)
    return np.where(np.isfinite(a0) & (a0 > 0), 1.0 + k * np.clip(a0, 0, None) / base_var, 1.0)


def amplitudes_from_coef(coef: np.ndarray, cov: np.ndarray, mmax: int, debias: bool = False):
    """``A_m``, errors and phases from the Fourier coefficients (first-order error propagation).

    ``debias`` removes the positive noise bias of an amplitude (a modulus of two noisy components):
    ``A^2 -> max(A^2 - (var a_m + var b_m) / a0^2, 0)``.
    """
    n = coef.shape[0]
    a0 = coef[:, 0]
    amp = np.full((n, mmax), np.nan)
    err = np.full((n, mmax), np.nan)
    phase = np.full((n, mmax), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        for m in range(1, mmax + 1):
            a, bb = coef[:, 2 * m - 1], coef[:, 2 * m]
            c = np.hypot(a, bb)
            A = c / a0
            if debias:
                noise2 = (cov[:, 2 * m - 1, 2 * m - 1] + cov[:, 2 * m, 2 * m]) / a0 ** 2
                amp[:, m - 1] = np.sqrt(np.clip(A ** 2 - noise2, 0, None))
            else:
                amp[:, m - 1] = A
            phase[:, m - 1] = np.mod(np.arctan2(bb, a), 2 * np.pi) / m
            # gradient of A w.r.t. (a0, a_m, b_m)
            safe_c = np.where(c > 0, c, 1.0)
            g = np.stack([-A / a0, a / (safe_c * a0), bb / (safe_c * a0)], axis=1)
            ii = [0, 2 * m - 1, 2 * m]
            sub = cov[:, ii][:, :, ii]
            v = np.einsum("ni,nij,nj->n", g, sub, g)
            # at c == 0 the gradient is undefined: use the mean component variance
            v0 = 0.5 * (cov[:, 2 * m - 1, 2 * m - 1] + cov[:, 2 * m, 2 * m]) / a0 ** 2
            err[:, m - 1] = np.sqrt(np.where(c > 0, v, v0))
    a0_err = np.sqrt(cov[:, 0, 0])
    return a0, a0_err, amp, err, phase


def rice_mean(nu: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
    """Expected modulus ``E|z|`` of a 2-D Gaussian ``z`` whose mean has modulus ``nu`` and whose two
    components have standard deviation ``sigma`` (the mean of the Rice distribution).

    ``sigma sqrt(pi/2) L_1/2(-nu^2 / 2 sigma^2)``, written with exponentially scaled Bessel
    functions so that it stays finite for ``nu >> sigma`` (where it tends to ``nu``).
    """
    from scipy.special import i0e, i1e

    nu = np.asarray(nu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = nu ** 2 / (2 * sigma ** 2)
        out = sigma * math.sqrt(math.pi / 2) * ((1 + x) * i0e(x / 2) + x * i1e(x / 2))
    return np.where(sigma > 0, out, nu)


def debiased_mean_amplitude(amp: np.ndarray, sigma: np.ndarray, weights: np.ndarray) -> float:
    """Noise-bias-corrected weighted mean of amplitudes (method of moments on the mean).

    ``amp`` are measured moduli of 2-D Gaussian vectors with per-component noise ``sigma``. Their
    weighted mean ``M`` is biased high (Rice). Returns the common true amplitude ``A >= 0`` whose
    expected weighted mean ``sum w E|z|(A, sigma) / sum w`` equals ``M``, 0 when ``M`` is at or
    below the pure-noise level. Correcting the *mean* (which averages the noise down) rather than
    each annulus and clipping there keeps the estimate unbiased at low S/N and small A.
    """
    from scipy.optimize import brentq

    amp, sigma, w = (np.asarray(v, dtype=np.float64) for v in (amp, sigma, weights))
    wsum = float(w.sum())
    m = float((w * amp).sum() / wsum)

    def expected(a: float) -> float:
        return float((w * rice_mean(a, sigma)).sum() / wsum) - m

    if expected(0.0) >= 0.0:
        return 0.0
    if expected(m) <= 0.0:  # only when sigma == 0 (rounding)
        return m
    return float(brentq(expected, 0.0, m, xtol=1e-7, rtol=1e-9))


def combine_annuli(coef: np.ndarray, cov: np.ndarray, amp_err: np.ndarray, weighting: str = "inverse_variance",
                   debias: bool = True) -> tuple[float, float, float]:
    """A1, its error and the mean m = 1 phase from the fitted annuli (rows of ``coef``/``cov``).

    Weights: ``"inverse_variance"`` = 1 / sigma_i^2 with sigma_i the noise of A1(r_i) (from the
    m = 1 components' covariance; independent of the measured amplitude, so the weights do not
    favour annuli that fluctuated low) or ``"uniform"``. With ``debias`` the weighted mean of the
    raw amplitudes is corrected for the noise bias by :func:`debiased_mean_amplitude`.
    Error: ``sqrt(sum w^2 err_i^2) / sum w``.
    """
    a0 = coef[:, 0]
    raw = np.hypot(coef[:, 1], coef[:, 2]) / a0
    var_c = 0.5 * (cov[:, 1, 1] + cov[:, 2, 2]) / a0 ** 2
    if weighting == "inverse_variance":
        wts = 1.0 / var_c
    elif weighting == "uniform":
        wts = np.ones_like(raw)
    else:
        raise A1Error(f"unknown weighting {weighting!r} (inverse_variance or uniform)")
    if debias:
        a1 = debiased_mean_amplitude(raw, np.sqrt(var_c), wts)
    else:
        a1 = float(np.sum(wts * raw) / np.sum(wts))
    a1_err = float(np.sqrt(np.sum(wts ** 2 * amp_err ** 2)) / np.sum(wts))
    ph = np.arctan2(coef[:, 2], coef[:, 1])
    a1_phase = float(np.mod(np.arctan2(np.sum(wts * raw * np.sin(ph)), np.sum(wts * raw * np.cos(ph))), 2 * np.pi))
    return a1, a1_err, a1_phase


# ---------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------
def lopsidedness_a1(
    image: np.ndarray,
    x0: float | None = None,
    y0: float | None = None,
    r50: float | None = None,
    r90: float | None = None,
    *,
    mask_sources: bool = True,
    refine_centre: bool = True,
    subtract_background: bool = True,
    bkg_mesh: int = 64,
    bkg_filter: int = 3,
    detect_thresh: float = 1.5,
    detect_minarea: int = 5,
    deblend_cont: float = 0.005,
    mask_dilate: int = 2,
    detect_bin: int | None = 1,
    detect_radius: float | None = None,
    bkg_galaxy_factor: float = 2.0,
    search_radius: float = 5.0,
    centre_iterations: int = 30,
    n_annuli: int = 4,
    mmax: int = 5,
    min_pixels: int = 30,
    min_coverage: float = 0.6,
    saturation: float | None = None,
    gain: float | None = None,
    edge_margin: float = 5.0,
    max_masked_fraction: float = 0.3,
    debias: bool = True,
    weighting: str = "inverse_variance",
    noise: str = "residual",
) -> A1Result:
    """Measure the lopsidedness A1 of the galaxy at (about) ``(x0, y0)`` in ``image``.

    Parameters
    ----------
    image : 2-D array (display orientation; colour images are averaged to grey by the caller).
    x0, y0 : expected centre (column, row; default the image centre). With ``refine_centre`` the
        centre is searched within ``search_radius`` px of it; without, it is used as given.
    r50, r90 : radii (px) bounding the annuli; both or neither. When missing they come from the
        curve of growth around the measured centre.
    mask_sources : detect other sources with ``sep`` and interpolate over them.
    bkg_mesh, bkg_filter : sep background mesh (px, capped at the image size) and filter size.
    detect_thresh, detect_minarea, deblend_cont, mask_dilate : source detection and mask growth.
    detect_radius : detect sources only within this many px of the expected position (default, when
        ``r90`` is given: 1.2 R90 + search_radius + 6; without radii the whole image).
    detect_bin : detect on an n x n binned image (default 1; 2 makes sep ~3x faster on large
        cutouts but deblends stars lying on the galaxy less well).
    centre_iterations : sub-pixel iterations of the 3x3 first moment (0 = a single moment).
    n_annuli : log-spaced annuli between R50 and R90 (reduced so each is >= 1 px wide).
    mmax : highest Fourier mode fitted (5).
    min_pixels : fewest pixels an annulus needs; ``min_coverage`` the fraction of its full ring
        that must fall inside the image.
    saturation : pixel level (raw, before background subtraction) at or above which pixels count
        as saturated; ``gain`` (e-/count) adds source Poisson noise to the pixel variance.
    noise : pixel-noise model of the fits (:data:`NOISE_MODELS`): ``"residual"`` (default) adds to
        the assumed variance (background rms^2, + I/gain with ``gain``) a source term ``k I`` with
        ``k`` measured robustly from the fit residuals (:func:`source_noise_scale`), so the galaxy's
        Poisson noise counts even without a gain; ``"assumed"`` uses the assumed variance as is;
        ``"chi2"`` inflates it by each annulus' reduced chi-square.
    debias : correct A1 for the noise bias of amplitudes (:func:`debiased_mean_amplitude` on the
        weighted mean); the per-annulus profile amplitudes are debiased in quadrature.
    weighting : ``"inverse_variance"`` (default; 1 / noise variance of each A1(r)) or ``"uniform"``
        mean of A1(r) over the annuli.

    Returns an :class:`A1Result`; problems that still allow a measurement become ``flags``.
    Raises :class:`A1Error` for unusable input (not 2-D, too small, all non-finite).
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.ndim != 2:
        raise A1Error(f"image must be 2-D, got shape {np.shape(image)}")
    h, w = img.shape
    if min(h, w) < 8:
        raise A1Error(f"image too small for A1 ({w}x{h} px)")
    if mmax < 1:
        raise A1Error("mmax must be >= 1")
    if (r50 is None) != (r90 is None):
        raise A1Error("give both r50 and r90, or neither")
    if noise not in NOISE_MODELS:
        raise A1Error(f"unknown noise model {noise!r} (one of {', '.join(NOISE_MODELS)})")
    if weighting not in ("inverse_variance", "uniform"):
        raise A1Error(f"unknown weighting {weighting!r} (inverse_variance or uniform)")
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
    raw = data
    xs = (w - 1) / 2 if x0 is None else float(x0)
    ys = (h - 1) / 2 if y0 is None else float(y0)
    if not (math.isfinite(xs) and math.isfinite(ys)):
        raise A1Error(f"start position ({xs}, {ys}) is not finite")

    # 1. background (first pass), sources, centre
    bkg_level, bkg_rms = 0.0, float(np.std(data)) or 1.0
    seg = None
    badm = bad if bad.any() else None
    if subtract_background or mask_sources:
        bkg = estimate_background(data, bkg_mesh, bkg_filter, mask=badm)
        sub = data - bkg.back()
        rms = bkg.globalrms if bkg.globalrms > 0 else float(np.std(sub)) or 1.0
        # with catalogue radii only the region around the galaxy matters for masking: detect there
        rad = None
        if detect_radius is not None:
            rad = float(detect_radius)
        elif r90 is not None and np.isfinite(r90) and r90 > 0:
            rad = 1.2 * float(r90) + search_radius + 6.0
        if rad is not None and (2 * rad + 1) ** 2 < 0.7 * h * w:
            r0d, r1d = max(int(ys - rad), 0), min(int(ys + rad) + 2, h)
            c0d, c1d = max(int(xs - rad), 0), min(int(xs + rad) + 2, w)
            segc = detect_sources(np.ascontiguousarray(sub[r0d:r1d, c0d:c1d]), rms,
                                  None if badm is None else np.ascontiguousarray(badm[r0d:r1d, c0d:c1d]),
                                  detect_thresh, detect_minarea, deblend_cont, detect_bin)
            if segc is not None:
                seg = np.zeros((h, w), dtype=segc.dtype)
                seg[r0d:r1d, c0d:c1d] = segc
        else:
            seg = detect_sources(sub, rms, badm, detect_thresh, detect_minarea, deblend_cont, detect_bin)
    else:
        bkg, sub, rms = None, data, bkg_rms
    if refine_centre:
        cx, cy, on_rim = find_centre(sub, xs, ys, search_radius, centre_iterations)
        if on_rim:
            flags.append("peak_at_search_edge")
        centre_source = "peak+moment"
    else:
        cx, cy, centre_source = xs, ys, "given"
    iy, ix = int(round(min(max(cy, 0), h - 1))), int(round(min(max(cx, 0), w - 1)))
    gid = 0
    if seg is not None:
        gid = int(seg[iy, ix])
        if gid == 0:
            # galaxy not at the peak pixel: take the segment covering most of the 3x3 box
            box = seg[max(iy - 1, 0):iy + 2, max(ix - 1, 0):ix + 2].ravel()
            box = box[box > 0]
            gid = int(np.bincount(box).argmax()) if box.size else 0
        if gid == 0:
            flags.append("galaxy_not_detected")
    # 2. background, second pass: every source masked, the galaxy out to bkg_galaxy_factor x its
    #    isophotal radius (its faint outskirts lie below the detection threshold)
    if bkg is not None and seg is not None and subtract_background:
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
            for factor in (bkg_galaxy_factor, 1.0):
                circ = d2 <= (factor * r_iso) ** 2
                cand = bmask | circ | bad
                if (~cand).mean() >= 0.15:
                    bmask = cand
                    break
        back, bkg_rms2 = _masked_background(data, bmask | bad, bkg_mesh, bkg_filter)
        if back is None:
            flags.append("background_failed")
            back, bkg_rms2 = bkg.back(), rms
    elif bkg is not None:
        back, bkg_rms2 = bkg.back(), rms
    if bkg is not None:
        bkg_level = float(np.median(back[::8, ::8]))  # smooth map: a sparse median is exact enough
        bkg_rms = float(bkg_rms2)
        if subtract_background:
            data = data - back
    # 3. masking of other sources
    mask = bad.copy()
    n_masked_sources = 0
    if mask_sources and seg is not None:
        others = (seg > 0) & (seg != gid)
        n_masked_sources = int(np.unique(seg[others]).size)
        if others.any() and mask_dilate > 0:
            others = _dilate(others, int(mask_dilate))
            # never let the grown mask reach the galaxy's own core (the centre's 5x5 box)
            iy0, ix0 = max(iy - 2, 0), max(ix - 2, 0)
            sg = seg[iy0:iy + 3, ix0:ix + 3]
            others[iy0:iy + 3, ix0:ix + 3] &= (sg > 0) & (sg != gid)
        mask |= others
    if mask.any():
        data = fill_masked(data, mask, centre=(cx, cy))

    # 4. radii
    radii_source = "given"
    if r50 is None:
        r50, r90, converged = curve_of_growth_radii(data, cx, cy)
        radii_source = "curve_of_growth"
        if not converged:
            flags.append("cog_not_converged")
    r50, r90 = float(r50), float(r90)
    valid_radii = math.isfinite(r50) and math.isfinite(r90) and r50 > 0 and r90 > r50
    edge_dist = min(cx + 0.5, w - 0.5 - cx, cy + 0.5, h - 0.5 - cy)
    if edge_dist < edge_margin:
        flags.append("centre_near_edge")
    if not valid_radii:
        flags.append("invalid_radii")
        flags.append("no_valid_annuli")
        return A1Result(float("nan"), float("nan"), cx, cy, r50, r90, radii_source, centre_source,
                        float("nan"), n_masked_sources, bkg_level, bkg_rms, sorted(set(flags)), None,
                        start=(xs, ys), shape=(h, w))
    if r90 > edge_dist:
        flags.append("annuli_truncated")
    if saturation is not None:
        r0s, r1s = max(int(cy - r90) - 1, 0), min(int(cy + r90) + 2, h)
        c0s, c1s = max(int(cx - r90) - 1, 0), min(int(cx + r90) + 2, w)
        yy, xx = np.mgrid[r0s:r1s, c0s:c1s]
        inside = np.hypot(xx - cx, yy - cy) <= r90
        if np.any(raw[r0s:r1s, c0s:c1s][inside] >= saturation):
            flags.append("saturated")

    # 5. annuli and fits
    n_ann = int(max(1, min(n_annuli, math.floor(r90 - r50))))
    edges = np.geomspace(r50, r90, n_ann + 1)
    r0b, r1b = max(int(math.floor(cy - r90)) - 1, 0), min(int(math.ceil(cy + r90)) + 2, h)
    c0b, c1b = max(int(math.floor(cx - r90)) - 1, 0), min(int(math.ceil(cx + r90)) + 2, w)
    yy, xx = np.mgrid[r0b:r1b, c0b:c1b]
    dx = (xx - cx).ravel()
    dy = -(yy - cy).ravel()  # y up
    rr = np.hypot(dx, dy)
    sel = (rr >= edges[0]) & (rr < edges[-1])
    sel &= ~bad[r0b:r1b, c0b:c1b].ravel()  # non-finite and padding pixels are not fitted
    dx, dy, rr = dx[sel], dy[sel], rr[sel]
    vals = data[r0b:r1b, c0b:c1b].ravel()[sel]
    msk = mask[r0b:r1b, c0b:c1b].ravel()[sel]
    labels = np.clip(np.searchsorted(edges, rr, side="right") - 1, 0, n_ann - 1)
    X = fourier_basis(dx, dy, mmax)
    variance: np.ndarray | float = bkg_rms ** 2
    if gain:
        variance = bkg_rms ** 2 + np.clip(vals, 0, None) / float(gain)
    coef, cov, counts, chi2_red, ok, noise_ratio = fit_annuli(vals, X, labels, n_ann, variance, 2 * mmax + 2,
                                                               noise == "chi2", noise_pixels=~msk)
    if noise == "residual":
        base = (np.full(n_ann, float(variance)) if np.ndim(variance) == 0 else
                np.bincount(labels, weights=variance, minlength=n_ann)[:n_ann] / np.maximum(counts, 1))
        cov = cov * source_noise_scale(noise_ratio, coef[:, 0], base)[:, None, None]
    n_masked = np.bincount(labels, weights=msk.astype(float), minlength=n_ann)[:n_ann].astype(int)
    n_good = counts - n_masked
    full_ring = np.pi * (edges[1:] ** 2 - edges[:-1] ** 2)
    few = (n_good < min_pixels) | (counts < min_coverage * full_ring)
    if np.any(few):
        flags.append("annulus_few_pixels")
    ok &= ~few
    a0, a0_err, amp, amp_err, phase = amplitudes_from_coef(coef, cov, mmax, debias)
    nonpos = ok & ~(a0 > 0)
    if nonpos.any():
        flags.append("nonpositive_a0")
    ok &= a0 > 0
    ok &= np.isfinite(amp[:, 0]) & np.isfinite(amp_err[:, 0]) & (amp_err[:, 0] > 0)
    masked_fraction = float(msk.mean()) if msk.size else float("nan")
    if masked_fraction > max_masked_fraction:
        flags.append("high_masked_fraction")
    profile = A1Profile(
        r_inner=edges[:-1], r_outer=edges[1:], radius=np.sqrt(edges[:-1] * edges[1:]),
        n_pixels=counts, n_masked=n_masked, valid=ok, a0=a0, a0_err=a0_err, amp=amp, amp_err=amp_err,
        phase=phase, chi2_red=chi2_red,
    )
    if ok.any():
        a1, a1_err, a1_phase = combine_annuli(coef[ok], cov[ok], amp_err[ok, 0], weighting=weighting, debias=debias)
    else:
        flags.append("no_valid_annuli")
        a1 = a1_err = a1_phase = float("nan")
    return A1Result(a1=a1, a1_err=a1_err, x0=cx, y0=cy, r50=r50, r90=r90, radii_source=radii_source,
                    centre_source=centre_source, masked_fraction=masked_fraction,
                    n_masked_sources=n_masked_sources, background=bkg_level, background_rms=bkg_rms,
                    flags=sorted(set(flags)), profile=profile, a1_phase=a1_phase, start=(xs, ys),
                    shape=(h, w))


def annulus_snr(light: np.ndarray, x0: float, y0: float, r_inner: float, r_outer: float, sky_variance: float,
                gain: float | None = None) -> float:
    """Integrated S/N of the sky-subtracted ``light`` between ``r_inner`` and ``r_outer`` of ``(x0, y0)``:
    ``S / sqrt(N sky_variance + S / gain)`` (N pixels, S their summed light; no source term without
    ``gain``). The S/N that the A1 injection goals are stated at (R50 to R90)."""
    yy, xx = np.mgrid[0:light.shape[0], 0:light.shape[1]]
    r = np.hypot(xx - x0, yy - y0)
    sel = (r >= r_inner) & (r < r_outer)
    s = float(light[sel].sum())
    var = sel.sum() * float(sky_variance) + (max(s, 0.0) / gain if gain else 0.0)
    return s / math.sqrt(var) if var > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# files and manifests
# ---------------------------------------------------------------------------------------------
def load_for_a1(path: str | Path, ra: float | None = None, dec: float | None = None):
    """Image (display orientation, greyscale float64), expected ``(x, y)`` from RA/Dec via the FITS
    WCS (None when not given or no WCS) and the saturation level from the FITS header (if any).

    Raises :class:`galmorph.imaging.io.ImageError` naming the file and the reason.
    """
    from galmorph.imaging.io import ImageError, is_fits, load_image, read_fits

    path = Path(path)
    expected = None
    saturation = None
    if is_fits(path):
        fi = read_fits(path)
        img = np.flipud(fi.data).astype(np.float64)
        hdr = fi.header
        for key in ("SATURATE", "SATURAT", "SATLEVEL"):
            if key in hdr:
                try:
                    saturation = float(hdr[key])
                except (TypeError, ValueError):
                    pass
                break
        if ra is not None and dec is not None and fi.wcs is not None and np.isfinite([ra, dec]).all():
            try:
                xf, yf = fi.wcs.world_to_pixel_values(float(ra), float(dec))
                xe, ye = float(xf), float(img.shape[0] - 1 - yf)
                if 0 <= xe < img.shape[1] and 0 <= ye < img.shape[0]:
                    expected = (xe, ye)
            except Exception:  # noqa: BLE001 - unusable WCS: fall back to the centre
                expected = None
        if not np.isfinite(img).any():
            raise ImageError(f"{path}: no finite pixels")
    else:
        img = load_image(path, greyscale=True).astype(np.float64)
    if img.ndim != 2:
        raise ImageError(f"{path}: expected a 2-D image, got shape {img.shape}")
    return img, expected, saturation


def measure_a1_file(path: str | Path, x0: float | None = None, y0: float | None = None,
                    r50: float | None = None, r90: float | None = None, ra: float | None = None,
                    dec: float | None = None, **kwargs) -> A1Result:
    """:func:`lopsidedness_a1` on an image file. The expected position is ``(x0, y0)`` when given,
    else the sky position ``(ra, dec)`` through the FITS WCS, else the image centre. A ``saturation``
    keyword in ``kwargs`` overrides the header's SATURATE."""
    img, expected, sat = load_for_a1(path, ra, dec)
    if x0 is None and y0 is None and expected is not None:
        x0, y0 = expected
    kwargs.setdefault("saturation", sat)
    return lopsidedness_a1(img, x0, y0, r50, r90, **kwargs)


#: Columns :func:`measure_a1_manifest` adds.
A1_COLUMNS = ("a1", "a1_err", "a1_phase", "a1_x0", "a1_y0", "a1_r50_px", "a1_r90_px", "a1_radii_source",
              "a1_masked_fraction", "a1_flags", "a1_image_uri", "a1_width", "a1_height")

_RADIUS_PX = (("r50_px", "r90_px"),)
_RADIUS_ARCSEC = (("r50_arcsec", "r90_arcsec"), ("petroR50_r", "petroR90_r"), ("petro_r50", "petro_r90"))
_IMAGE_COLUMNS = ("fits_uri", "fits_path", "image_uri")


def _row_radii(row: dict, pixel_scale: float) -> tuple[float | None, float | None]:
    def fin(v):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) and v > 0 else None

    for a, b in _RADIUS_PX:
        if a in row and b in row and fin(row[a]) and fin(row[b]):
            return fin(row[a]), fin(row[b])
    for a, b in _RADIUS_ARCSEC:
        if a in row and b in row and fin(row[a]) and fin(row[b]):
            return fin(row[a]) / pixel_scale, fin(row[b]) / pixel_scale
    return None, None


def _row_image_uri(row: dict) -> str | None:
    for c in _IMAGE_COLUMNS:
        v = row.get(c)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) not in ("", "<NA>"):
            return str(v)
    return None


def _measure_rows(records: list[dict], data_root, pixel_scale: float, stage: str, kwargs: dict,
                  progress: bool = False) -> tuple[list[dict], list[dict]]:
    """A1 for manifest rows (dicts): ``(measured rows, quarantine records)``, in input order."""
    import pandas as pd
    from tqdm import tqdm

    from galmorph.imaging.io import ImageError
    from galmorph.manifest import ManifestError, quarantine_record, resolve_image_uri

    out_rows, quarantine = [], []
    for row in tqdm(records, desc="A1", disable=not progress):
        oid = row.get("object_id")
        uri = _row_image_uri(row)
        if uri is None:
            quarantine.append(quarantine_record(oid, stage, "no image URI (fits_uri/fits_path/image_uri)", row))
            continue
        try:
            path = resolve_image_uri(uri, data_root)
            r50, r90 = _row_radii(row, pixel_scale)
            ra, dec = row.get("ra"), row.get("dec")
            res = measure_a1_file(path, r50=r50, r90=r90,
                                  ra=None if ra is None or pd.isna(ra) else float(ra),
                                  dec=None if dec is None or pd.isna(dec) else float(dec), **kwargs)
        except (ImageError, ManifestError, A1Error, OSError) as exc:
            quarantine.append(quarantine_record(oid, stage, f"object {oid}: {exc}", row))
            continue
        row = dict(row)
        row.update({
            "a1": res.a1, "a1_err": res.a1_err, "a1_phase": res.a1_phase, "a1_x0": res.x0, "a1_y0": res.y0,
            "a1_r50_px": res.r50, "a1_r90_px": res.r90, "a1_radii_source": res.radii_source,
            "a1_masked_fraction": res.masked_fraction, "a1_flags": ",".join(res.flags), "a1_image_uri": uri,
            "a1_width": res.shape[1], "a1_height": res.shape[0],
        })
        out_rows.append(row)
    return out_rows, quarantine


def _single_threaded() -> None:
    """Worker start-up: one BLAS thread per process (the pool supplies the parallelism)."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass


def _measure_rows_worker(args: tuple) -> tuple[list[dict], list[dict]]:
    """Process-pool entry point (module level so that it pickles)."""
    return _measure_rows(*args)


def measure_a1_frame(df, data_root: Path | str | None = None, pixel_scale: float = 0.396,
                     progress: bool = True, stage: str = "a1", workers: int = 1, **kwargs):
    """A1 for every row of a manifest DataFrame. Returns ``(measured_df, quarantine_records)``.

    The image is the row's ``fits_uri``/``fits_path`` when present, else ``image_uri`` (resolved
    with :func:`galmorph.manifest.resolve_image_uri`); the expected position comes from ``ra/dec``
    through the FITS WCS; R50/R90 from ``r50_px/r90_px`` or ``r50_arcsec/r90_arcsec`` (or
    ``petroR50_r/petroR90_r``) divided by ``pixel_scale``, else from the curve of growth.
    Rows whose image is missing or unreadable go to the quarantine with the reason; rows that are
    read but give no A1 stay, with NaN and their flags. ``workers`` > 1 measures chunks of rows in
    that many processes (one per core: the measurement is single-threaded); the output order and
    content are the same as with one.
    """
    import pandas as pd

    records = df.to_dict(orient="records")
    workers = max(int(workers), 1)
    if workers == 1 or len(records) < 2 * workers:
        out_rows, quarantine = _measure_rows(records, data_root, pixel_scale, stage, kwargs, progress)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from tqdm import tqdm

        size = max(8, math.ceil(len(records) / (workers * 8)))
        chunks = [records[i:i + size] for i in range(0, len(records), size)]
        out_rows, quarantine = [], []
        # spawn: the caller may hold threads (torch, MLflow) that a fork would copy mid-state
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_single_threaded) as pool:
            jobs = pool.map(_measure_rows_worker,
                            [(c, data_root, pixel_scale, stage, kwargs, False) for c in chunks])
            with tqdm(total=len(records), desc=f"A1 ({workers} processes)", disable=not progress) as bar:
                for chunk, (rows, quar) in zip(chunks, jobs):
                    out_rows += rows
                    quarantine += quar
                    bar.update(len(chunk))
    cols = list(df.columns) + [c for c in A1_COLUMNS if c not in df.columns]
    out = pd.DataFrame(out_rows, columns=cols)
    return out, quarantine


def measure_a1_manifest(manifest_path: str | Path, out_path: str | Path, quarantine_path: str | Path | None = None,
                        data_root: Path | str | None = None, pixel_scale: float = 0.396, progress: bool = True,
                        workers: int = 1, **kwargs) -> dict:
    """Add the A1 columns (:data:`A1_COLUMNS`) to a manifest; unreadable rows are quarantined.

    Writes ``out_path`` (kind ``a1``) and the quarantine table (default ``<out>.quarantine.parquet``).
    Returns counts and paths; rows in = rows out + rows quarantined. ``workers``: processes (see
    :func:`measure_a1_frame`); ``kwargs`` go to :func:`lopsidedness_a1`.
    """
    from galmorph.manifest import manifest_metadata, read_manifest, write_manifest, write_quarantine

    manifest_path, out_path = Path(manifest_path), Path(out_path)
    df = read_manifest(manifest_path)
    out, quarantine = measure_a1_frame(df, data_root=data_root, pixel_scale=pixel_scale, progress=progress,
                                       workers=workers, **kwargs)
    meta = {k: v for k, v in manifest_metadata(manifest_path).items() if k not in ("kind", "schema_version")}
    meta["a1_source"] = str(manifest_path)
    write_manifest(out, out_path, kind="a1", extra_meta=meta)
    qpath = Path(quarantine_path) if quarantine_path else out_path.with_name(out_path.stem + ".quarantine.parquet")
    write_quarantine(quarantine, qpath)
    n_ok = int(np.isfinite(out["a1"].astype(float)).sum()) if len(out) else 0
    log.info("A1: %d rows in, %d out (%d with finite A1), %d quarantined", len(df), len(out), n_ok, len(quarantine))
    return {"rows_in": len(df), "rows_out": len(out), "finite_a1": n_ok, "quarantined": len(quarantine),
            "manifest": out_path, "quarantine": qpath}
