"""Steps 1 and 2 of the A1 measurement on arrays: sky background (``sep``, two passes), padding,
source detection, and the interpolation over masked sources."""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


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


def masked_background(data: np.ndarray, mask: np.ndarray, mesh: int, filter_size: int):
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


def dilate_mask(mask: np.ndarray, k: int) -> np.ndarray:
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

