"""Steps 3 and 4 of the A1 measurement on arrays: the centre (brightest pixel + 3x3 first moment)
and R50/R90 from the curve of growth."""

from __future__ import annotations

import math

import numpy as np

from galmorph.imaging.a1.result import A1Error


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

