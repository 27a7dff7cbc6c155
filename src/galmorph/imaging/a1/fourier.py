"""Steps 5 and 6 of the A1 measurement on arrays: the least-squares Fourier fit of the annuli, the
amplitudes and their noise-debiased, error-weighted mean; :func:`annulus_snr`."""

from __future__ import annotations

import math

import numpy as np

from galmorph.imaging.a1.result import A1Error


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

