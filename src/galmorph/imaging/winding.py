"""Winding sense (chirality) of spiral arms from the image's orientation field, with no training.

The measurement (:func:`winding_sense`), step by step:

1. **Grey image, sky, centre.** Colour images are averaged to grey. The sky is the median of the
   image border (``border_fraction`` of the size) and is subtracted. The centre is the brightest
   pixel of the image smoothed with a Gaussian of ``profile_sigma`` px within ``search_radius`` px
   of the expected position (default: the image centre). With ``stretch="asinh"`` (the file
   helpers use ``fits_stretch`` for FITS files, i.e. linear counts) the image is measured as
   ``asinh(a x / peak) / asinh(a)``, like the display renderings (JPEG/PNG) the defaults were tuned on.
2. **Annulus.** The azimuthally averaged profile around the centre (smoothed along the radius with
   ``profile_sigma``) gives the radii where the brightness falls to ``inner_fraction`` and
   ``outer_fraction`` of the peak (``r_inner`` >= ``min_inner_radius``; with a stretch, fractions
   of the stretched brightness). Only pixels between them are used.
3. **Orientation field.** On a square cut around the annulus (padded by 3 ``sigma_high`` +
   3 ``tensor_sigma``), the image is band-pass filtered with a difference of Gaussians
   ``G(sigma_low) - G(sigma_high)`` and differentiated, both in Fourier space (one real FFT, one
   complex inverse FFT gives ``gx + i gy``). The structure tensor is smoothed with a Gaussian of
   ``tensor_sigma`` px; in complex form ``J20 = <(gx + i gy)^2>``, ``J11 = <gx^2 + gy^2>``.
4. **Tilt.** The arms run across the gradient, so the arm orientation relative to the radial
   direction ``phi`` has the double angle ``2 alpha = arg(-J20 e^{-2 i phi})``. A Z-wise arm
   (counter-clockwise going outward, GZ "clockwise") has ``0 < alpha < 90 deg`` (tilted
   counter-clockwise from the outward radial direction), an S-wise arm the opposite.
   ``v = sin(2 alpha)`` (``aggregate="sin2a"``) or its sign (``aggregate="sign"``) is averaged
   over the annulus with the weight ``weight`` (coherence ``|J20|/J11``, energy ``J11``, their
   product ``|J20|``, or none). With ``deproject`` the tensor and the positions are first mapped to
   the disc plane with the axis ratio and position angle of the light's second moments.
5. **Score and confidence.** ``score`` in [-1, 1] is the weighted mean (positive: Z-wise = CW).
   The annulus is cut into ``n_sectors`` equal angular sectors; the standard error of the weighted
   mean over the sectors (a cluster estimate: neighbouring pixels are correlated, sectors much
   less) gives ``z = score / SE``, and ``confidence = |z|``, a z-like statistic (about |N(0, 1)|
   for a featureless disc). ``winding`` is ``"CW"``/``"ACW"`` when ``confidence >=
   min_confidence``, else ``None`` (also ``None`` when no annulus could be found).

Orientation: display orientation, as :mod:`galmorph.simulate` and
:func:`galmorph.imaging.io.load_image` (row 0 at the top, ``x`` = column, ``y`` up on the
display). GZ1 "clockwise" = Z-wise = CW; ``np.fliplr`` turns one into the other. FITS files must be
loaded with :func:`load_for_winding` (or ``load_image``), which flips them to display orientation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import fft as sfft

log = logging.getLogger(__name__)

#: Quality flags :func:`winding_sense` can raise (``WindingResult.flags``).
FLAG_DESCRIPTIONS: dict[str, str] = {
    "no_signal": "the smoothed peak is not above the sky: no galaxy to measure",
    "no_annulus": "the profile gives no usable annulus (outer radius <= inner radius)",
    "annulus_truncated": "the brightness never falls to outer_fraction of the peak inside the image; "
                         "the annulus stops at the image edge",
    "centre_at_search_edge": "the brightest pixel lies on the rim of the search radius (centre may be elsewhere)",
    "few_pixels": "fewer than min_pixels pixels in the annulus; no measurement",
    "nonfinite_pixels": "the image has NaN/inf pixels (set to the sky)",
    "low_confidence": "confidence below min_confidence: winding is None",
}

AGGREGATES = ("sin2a", "sign")
STRETCHES = ("none", "asinh")
WEIGHTS = ("coherence", "energy", "coherence_energy", "none")


class WindingError(ValueError):
    """The winding measurement cannot run on this input (bad array or options)."""


@dataclass(frozen=True)
class WindingOptions:
    """Settings of :func:`winding_sense` (lengths in pixels of the image given).

    Defaults were chosen on one half of the public GZ1 CW/ACW set (``benchmarks/winding.py``).
    """

    sigma_low: float = 2.5  #: small Gaussian of the difference-of-Gaussians band-pass
    sigma_high: float = 12.0  #: large Gaussian of the band-pass
    tensor_sigma: float = 3.0  #: smoothing of the structure tensor
    profile_sigma: float = 2.0  #: smoothing for the peak and the brightness profile
    inner_fraction: float = 0.95  #: annulus starts where the profile falls to this fraction of the peak
    outer_fraction: float = 0.10  #: and ends where it falls to this fraction
    min_inner_radius: float = 2.0  #: the annulus never starts closer to the centre than this
    search_radius: float = 10.0  #: peak search around the expected centre
    border_fraction: float = 0.05  #: width of the border used for the sky median (fraction of the size)
    stretch: str = "none"  #: "asinh": measure asinh(a x / peak) / asinh(a) of the sky-subtracted image
    fits_stretch: str = "asinh"  #: stretch used instead for FITS files (linear counts) by the file helpers
    stretch_softening: float = 8.0  #: ``a`` of the asinh stretch
    aggregate: str = "sin2a"  #: "sin2a" (sin of the doubled tilt) or "sign" (its sign)
    weight: str = "coherence"  #: "coherence", "energy", "coherence_energy" or "none"
    deproject: bool = True  #: measure the tilt in the disc plane (second-moment axis ratio and angle)
    min_axis_ratio: float = 0.3  #: deprojection never stretches by more than 1 / this
    n_sectors: int = 16  #: angular sectors for the standard error
    min_pixels: int = 30  #: fewer annulus pixels: no measurement
    min_confidence: float = 2.0  #: |z| below this: winding None

    def __post_init__(self) -> None:
        if not (0 < self.sigma_low < self.sigma_high):
            raise WindingError(f"need 0 < sigma_low < sigma_high, got {self.sigma_low}, {self.sigma_high}")
        if self.tensor_sigma < 0 or self.profile_sigma < 0:
            raise WindingError("tensor_sigma and profile_sigma must be >= 0")
        if not (0 < self.outer_fraction < self.inner_fraction <= 1):
            raise WindingError(f"need 0 < outer_fraction < inner_fraction <= 1, got "
                               f"{self.outer_fraction}, {self.inner_fraction}")
        if self.aggregate not in AGGREGATES:
            raise WindingError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.weight not in WEIGHTS:
            raise WindingError(f"weight must be one of {WEIGHTS}, got {self.weight!r}")
        for name in ("stretch", "fits_stretch"):
            if getattr(self, name) not in STRETCHES:
                raise WindingError(f"{name} must be one of {STRETCHES}, got {getattr(self, name)!r}")
        if self.n_sectors < 2:
            raise WindingError("n_sectors must be >= 2")
        if not (0 < self.min_axis_ratio <= 1):
            raise WindingError("min_axis_ratio must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WindingOptions:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise WindingError(f"unknown winding option(s) {sorted(unknown)}")
        return cls(**d)


@dataclass
class WindingResult:
    """Result of :func:`winding_sense`. ``score`` in [-1, 1], > 0: Z-wise = CW; ``z`` = score / its
    standard error over the sectors; ``confidence`` = ``|z|``. ``x0, y0``: centre used (column, row from
    the top); ``r_inner, r_outer``: annulus radii (px); ``axis_ratio, position_angle_deg``: disc shape
    used for the deprojection (1 and 0 when ``deproject`` is off). NaN/None when not measured."""

    winding: str | None
    score: float
    z: float
    confidence: float
    x0: float
    y0: float
    r_inner: float
    r_outer: float
    n_pixels: int
    axis_ratio: float
    position_angle_deg: float
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A score was measured (it may still be below the confidence threshold)."""
        return bool(np.isfinite(self.score))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _grey(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(axis=-1)
    if a.ndim != 2:
        raise WindingError(f"expected a 2-D image or (H, W, 3), got shape {a.shape}")
    if min(a.shape) < 8:
        raise WindingError(f"image too small ({a.shape})")
    return a.astype(np.float64, copy=False)


def _gauss_ft(shape: tuple[int, int], sigma: float, real: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequencies (cycles/px) ``fy, fx`` for an (r)fft2 of ``shape`` and the Gaussian transfer function."""
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = (sfft.rfftfreq if real else sfft.fftfreq)(shape[1])[None, :]
    f2 = fy * fy + fx * fx
    return fy, fx, np.exp(-2 * math.pi**2 * sigma * sigma * f2)


def _smooth(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma, mode="nearest", truncate=3.0)


@lru_cache(maxsize=4)
def _ring_index(half: int) -> np.ndarray:
    """Rounded distance from the centre of a (2 half + 1)^2 grid (read-only, cached)."""
    o = np.arange(-half, half + 1)
    r = np.rint(np.sqrt(o[:, None] ** 2 + o[None, :] ** 2)).astype(np.intp)
    r.setflags(write=False)
    return r


def _profile(img: np.ndarray, ix: int, iy: int) -> np.ndarray:
    """Azimuthal mean of ``img`` in 1-px rings around the pixel (ix, iy) (NaN where a ring is empty)."""
    h, w = img.shape
    half = max(h, w)
    rb = _ring_index(half)[half - iy:half - iy + h, half - ix:half - ix + w].ravel()
    n = np.bincount(rb)
    s = np.bincount(rb, weights=img.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _crossing(profile: np.ndarray, level: float, start: int = 0) -> float | None:
    """First radius >= start where the profile falls to ``level`` (linear interpolation), or None."""
    p = profile
    for r in range(max(start, 1), len(p)):
        if np.isfinite(p[r]) and p[r] <= level:
            a = p[r - 1]
            if np.isfinite(a) and a > p[r]:
                return float(r - 1 + (a - level) / (a - p[r]))
            return float(r)
    return None


def _moments_shape(img: np.ndarray, mask: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[float, float]:
    """Axis ratio and position angle (radians, counter-clockwise from +x, y up) of the positive light
    in ``mask`` from its second moments about the centre."""
    w = np.clip(img[mask], 0, None)
    if w.sum() <= 0:
        return 1.0, 0.0
    x, y = dx[mask], dy[mask]
    r2 = np.maximum(x * x + y * y, 1e-6)
    # moments of direction only (each ring weighted by its light, not by r^2): stable for discs
    mxx = np.sum(w * x * x / r2)
    myy = np.sum(w * y * y / r2)
    mxy = np.sum(w * x * y / r2)
    tr = mxx + myy
    e1, e2 = (mxx - myy) / tr, 2 * mxy / tr
    e = min(math.hypot(e1, e2), 0.999)
    # for an ellipse of axis ratio q, directional moments give e = (1 - q) / (1 + q)
    q = (1 - e) / (1 + e)
    pa = 0.5 * math.atan2(e2, e1)
    return q, pa


#: Fields of a :class:`WindingResult` with nothing measured (a step that cannot go on fills in what it has).
_NOT_MEASURED = dict(winding=None, score=float("nan"), z=float("nan"), confidence=float("nan"), r_inner=float("nan"),
                     r_outer=float("nan"), n_pixels=0, axis_ratio=float("nan"), position_angle_deg=float("nan"))


@dataclass(frozen=True)
class _Centre:
    """The measured centre: pixel ``(ix, iy)`` (= ``(cx, cy)``) and the smoothed peak above the sky."""

    ix: int
    iy: int
    cx: float
    cy: float
    peak: float


@dataclass(frozen=True)
class _Cut:
    """The square cut around the annulus (step 3): the (stretched) image, its band-passed gradients,
    pixel positions relative to the centre (y up), which pixels lie in the image, and the slices
    (cut, image) of the part copied from the image."""

    image: np.ndarray
    gx: np.ndarray
    gy: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    inside: np.ndarray
    in_cut: tuple[slice, slice]
    in_image: tuple[slice, slice]


@dataclass(frozen=True)
class _Field:
    """The smoothed structure tensor on the annulus pixels (complex ``J20``, ``J11``), the pixel
    positions ``(ax, ay)``, both in the disc plane when deprojected, and the disc shape ``(q, pa)``."""

    j20: np.ndarray
    j11: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    q: float
    pa: float


def winding_sense(image: np.ndarray, options: WindingOptions | None = None, x0: float | None = None,
                  y0: float | None = None) -> WindingResult:
    """Winding sense of the galaxy near ``(x0, y0)`` (default: the image centre) of ``image``
    (display orientation; (H, W) or (H, W, 3), any linear or stretched scale). See the module doc.
    """
    opt = options or WindingOptions()
    img, finite, flags = _sky_subtracted(image, opt)
    c = _find_centre(img, opt, x0, y0, flags)
    if not (c.peak > 0):
        flags.append("no_signal")
        return _not_measured(c, flags)
    r_in, r_out = _annulus_radii(img, c, opt, flags)
    if not (r_out > r_in + 1):
        flags.append("no_annulus")
        return _not_measured(c, flags, r_inner=r_in, r_outer=r_out)
    cut = _filtered_cut(img, c, r_out, opt)
    ann = _annulus_mask(cut, r_in, r_out, finite if "nonfinite_pixels" in flags else None)
    n_pix = int(ann.sum())
    if n_pix < opt.min_pixels:
        flags.append("few_pixels")
        return _not_measured(c, flags, r_inner=r_in, r_outer=r_out, n_pixels=n_pix)
    fld = _orientation_field(cut, ann, opt)
    measured = _sector_score(fld, opt)
    if measured is None:
        flags.append("no_signal")
        return _not_measured(c, flags, r_inner=r_in, r_outer=r_out, n_pixels=n_pix)
    score, z, conf = measured
    winding = None
    if np.isfinite(conf) and conf >= opt.min_confidence and score != 0:
        winding = "CW" if score > 0 else "ACW"
    else:
        flags.append("low_confidence")
    return WindingResult(winding=winding, score=score, z=float(z), confidence=float(conf), x0=c.cx, y0=c.cy,
                         r_inner=float(r_in), r_outer=float(r_out), n_pixels=n_pix, axis_ratio=float(fld.q),
                         position_angle_deg=float(math.degrees(fld.pa)), flags=flags)


def _not_measured(c: _Centre, flags: list[str], **measured) -> WindingResult:
    return WindingResult(x0=c.cx, y0=c.cy, flags=flags, **{**_NOT_MEASURED, **measured})


def _sky_subtracted(image: np.ndarray, opt: WindingOptions) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Step 1a: the grey image minus the sky (median of the border), non-finite pixels set to the sky;
    returns it, the finite-pixel mask and the flags so far."""
    img = _grey(image)
    h, w = img.shape
    flags: list[str] = []
    finite = np.isfinite(img)
    if not finite.all():
        if not finite.any():
            raise WindingError("image has no finite pixels")
        flags.append("nonfinite_pixels")
    b = max(1, int(round(opt.border_fraction * min(h, w))))
    border = np.concatenate([img[:b].ravel(), img[-b:].ravel(), img[b:-b, :b].ravel(), img[b:-b, -b:].ravel()])
    border = border[np.isfinite(border)]
    sky = float(np.median(border)) if border.size else float(np.nanmedian(img))
    img = img - sky
    if flags:
        img = np.where(finite, img, 0.0)
    return img, finite, flags


def _find_centre(img: np.ndarray, opt: WindingOptions, x0: float | None, y0: float | None,
                 flags: list[str]) -> _Centre:
    """Step 1b: the peak of the smoothed image within ``search_radius`` of the expected centre."""
    h, w = img.shape
    xc = (w - 1) / 2 if x0 is None else float(x0)
    yc = (h - 1) / 2 if y0 is None else float(y0)
    sr = max(int(math.ceil(opt.search_radius)), 1)
    pad = int(math.ceil(3 * opt.profile_sigma)) + 1
    ya, yb = max(int(yc) - sr - pad, 0), min(int(yc) + sr + pad + 2, h)
    xa, xb = max(int(xc) - sr - pad, 0), min(int(xc) + sr + pad + 2, w)
    cen = _smooth(img[ya:yb, xa:xb], opt.profile_sigma)
    yy = np.arange(ya, yb)[:, None] - yc
    xx = np.arange(xa, xb)[None, :] - xc
    within = (yy * yy + xx * xx) <= opt.search_radius**2
    if not within.any():
        raise WindingError(f"expected centre ({xc:.1f}, {yc:.1f}) is outside the image {img.shape}")
    k = int(np.argmax(np.where(within, cen, -np.inf)))
    ky, kx = divmod(k, cen.shape[1])
    iy, ix = ya + ky, xa + kx
    cy, cx = float(iy), float(ix)
    if math.hypot(cy - yc, cx - xc) > opt.search_radius - 1.5:
        flags.append("centre_at_search_edge")
    return _Centre(ix=ix, iy=iy, cx=cx, cy=cy, peak=float(cen[ky, kx]))


def _annulus_radii(img: np.ndarray, c: _Centre, opt: WindingOptions, flags: list[str]) -> tuple[float, float]:
    """Step 2: ``(r_inner, r_outer)`` from the azimuthal profile (smoothed along the radius); the
    fractions are of the stretched brightness: level(f) = S^-1(f S(peak)). ``r_outer`` stops at the
    image edge (flag ``annulus_truncated``)."""
    a = opt.stretch_softening
    if opt.stretch == "asinh":
        def level(f: float) -> float:
            return c.peak * math.sinh(f * math.asinh(a)) / a
    else:
        def level(f: float) -> float:
            return f * c.peak
    prof = _profile(img, c.ix, c.iy)
    if opt.profile_sigma > 0:
        from scipy.ndimage import gaussian_filter1d

        good = np.isfinite(prof)
        prof = gaussian_filter1d(np.where(good, prof, 0.0), opt.profile_sigma, mode="nearest")
        norm = gaussian_filter1d(good.astype(float), opt.profile_sigma, mode="nearest")
        prof = np.where(norm > 0, prof / np.maximum(norm, 1e-12), np.nan)
    r_in = _crossing(prof, level(opt.inner_fraction)) or opt.min_inner_radius
    r_in = max(r_in, opt.min_inner_radius)
    r_out = _crossing(prof, level(opt.outer_fraction), start=int(r_in))
    h, w = img.shape
    r_edge = float(min(c.cx, c.cy, w - 1 - c.cx, h - 1 - c.cy))
    if r_out is None or r_out > r_edge:
        flags.append("annulus_truncated")
        r_out = r_edge if r_out is None else min(r_out, r_edge)
    return r_in, r_out


def _filtered_cut(img: np.ndarray, c: _Centre, r_out: float, opt: WindingOptions) -> _Cut:
    """Step 3a: a square cut around the annulus, padded for the filters (sky = 0 outside the image),
    band-passed and differentiated in Fourier space (y up on the display: d/dy = -d/drow)."""
    h, w = img.shape
    half = int(math.ceil(r_out + 3 * opt.sigma_high + 3 * opt.tensor_sigma)) + 1
    n = sfft.next_fast_len(2 * half + 1, real=True)
    top, left = c.iy - n // 2, c.ix - n // 2
    cut = np.zeros((n, n))
    sy0, sy1 = max(top, 0), min(top + n, h)
    sx0, sx1 = max(left, 0), min(left + n, w)
    in_cut, in_image = (slice(sy0 - top, sy1 - top), slice(sx0 - left, sx1 - left)), (slice(sy0, sy1), slice(sx0, sx1))
    cut[in_cut] = img[in_image]
    if opt.stretch == "asinh":
        a = opt.stretch_softening
        cut = np.arcsinh(cut * (a / c.peak)) / math.asinh(a)
    fy, fx, g_lo = _gauss_ft(cut.shape, opt.sigma_low, real=True)
    g_hi = np.exp(-2 * math.pi**2 * opt.sigma_high**2 * (fy * fy + fx * fx))
    F = sfft.rfft2(cut) * (g_lo - g_hi)
    gx = sfft.irfft2(F * (2j * math.pi * fx), s=cut.shape)
    gy = -sfft.irfft2(F * (2j * math.pi * fy), s=cut.shape)
    # positions relative to the centre with y up, in the cut's frame
    rows = np.arange(n)[:, None] + top
    cols = np.arange(n)[None, :] + left
    dx = np.broadcast_to(cols - c.cx, (n, n))
    dy = np.broadcast_to(-(rows - c.cy), (n, n))
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return _Cut(cut, gx, gy, dx, dy, inside, in_cut, in_image)


def _annulus_mask(cut: _Cut, r_in: float, r_out: float, finite: np.ndarray | None) -> np.ndarray:
    """Step 3b: the annulus pixels of the cut that lie in the image (and are finite, given the image's
    finite-pixel mask)."""
    r2 = cut.dx * cut.dx + cut.dy * cut.dy
    ann = (r2 >= r_in * r_in) & (r2 <= r_out * r_out) & cut.inside
    if finite is not None:
        fin_cut = np.zeros(cut.image.shape, dtype=bool)
        fin_cut[cut.in_cut] = finite[cut.in_image]
        ann &= fin_cut
    return ann


def _orientation_field(cut: _Cut, ann: np.ndarray, opt: WindingOptions) -> _Field:
    """Step 3c-4: the structure tensor, smoothed: ``J20 = <(gx + i gy)^2>`` (complex),
    ``J11 = <gx^2 + gy^2>``, on the annulus pixels; with ``deproject`` mapped to the disc plane."""
    gx, gy = cut.gx, cut.gy
    g = gx + 1j * gy
    j20 = g * g
    j11 = gx * gx + gy * gy
    if opt.tensor_sigma > 0:
        _, _, gt = _gauss_ft(cut.image.shape, opt.tensor_sigma, real=False)
        j20 = sfft.ifft2(sfft.fft2(j20) * gt)
        _, _, gtr = _gauss_ft(cut.image.shape, opt.tensor_sigma, real=True)
        j11 = sfft.irfft2(sfft.rfft2(j11) * gtr, s=cut.image.shape)
    fld = _Field(j20[ann], j11[ann], cut.dx[ann], cut.dy[ann], 1.0, 0.0)
    if not opt.deproject:
        return fld
    sm = _smooth(cut.image, opt.profile_sigma)
    q, pa = _moments_shape(sm, ann, cut.dx, cut.dy)
    return _deproject(fld, max(q, opt.min_axis_ratio), pa)


def _deproject(fld: _Field, q: float, pa: float) -> _Field:
    """The field in the disc plane of axis ratio ``q`` and position angle ``pa``: rotate by -pa (major
    axis on +x), stretch the minor axis by 1/q. Positions p_d = S R p; gradients (covectors)
    g_d = S^-1 R g (S = diag(1, 1/q))."""
    rot = np.exp(-1j * pa)
    p = (fld.ax + 1j * fld.ay) * rot
    ax, ay = p.real, p.imag / q
    # tensor in complex form: J20 = Jxx - Jyy + 2i Jxy, J11 = Jxx + Jyy; rotate then scale y by q
    j20 = fld.j20 * rot * rot
    j11 = fld.j11
    jxx, jyy, jxy = (j11 + j20.real) / 2, (j11 - j20.real) / 2, j20.imag / 2
    jyy, jxy = jyy * q * q, jxy * q
    return _Field((jxx - jyy) + 2j * jxy, jxx + jyy, ax, ay, q, pa)


def _sector_score(fld: _Field, opt: WindingOptions) -> tuple[float, float, float] | None:
    """Step 4-5: ``(score, z, confidence)`` of the weighted mean tilt ``v`` over the annulus with its
    standard error over ``n_sectors`` angular sectors; None when the weights sum to 0."""
    u2 = (fld.ax + 1j * fld.ay) ** 2
    u2 /= np.maximum(np.abs(u2), 1e-12)
    t = -fld.j20 * np.conj(u2)  # arg = 2 alpha, alpha = arm orientation minus radial direction
    mag = np.abs(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        s2a = np.where(mag > 0, t.imag / np.maximum(mag, 1e-300), 0.0)
    v = np.sign(s2a) if opt.aggregate == "sign" else s2a
    if opt.weight == "coherence":
        wgt = np.where(fld.j11 > 0, mag / np.maximum(fld.j11, 1e-300), 0.0)
    elif opt.weight == "energy":
        wgt = fld.j11
    elif opt.weight == "coherence_energy":
        wgt = mag
    else:
        wgt = np.ones_like(mag)
    sector = ((np.arctan2(fld.ay, fld.ax) + math.pi) * (opt.n_sectors / (2 * math.pi))).astype(np.int64)
    sector = np.clip(sector, 0, opt.n_sectors - 1)
    sw = np.bincount(sector, weights=wgt, minlength=opt.n_sectors)
    swv = np.bincount(sector, weights=wgt * v, minlength=opt.n_sectors)
    wsum = float(sw.sum())
    if not (wsum > 0):
        return None
    score = float(swv.sum() / wsum)
    used = sw > 0
    m = int(used.sum())
    resid = swv[used] - score * sw[used]
    se = math.sqrt(m / max(m - 1, 1) * float(np.sum(resid * resid))) / wsum if m > 1 else float("nan")
    z = score / se if se > 0 else (math.copysign(float("inf"), score) if score else 0.0)
    conf = abs(z) if np.isfinite(se) else float("nan")
    return score, z, conf


# ---------------------------------------------------------------------------------------------
# files and manifests
# ---------------------------------------------------------------------------------------------
def load_for_winding(path: str | Path) -> tuple[np.ndarray, bool]:
    """Greyscale image of a file in display orientation and whether it holds linear counts (FITS).

    Raises :class:`galmorph.imaging.io.ImageError` naming the file and the reason.
    """
    from galmorph.imaging.io import ImageError, is_fits, load_image

    path = Path(path)
    linear = is_fits(path)
    img = load_image(path, greyscale=True, allow_nan=linear)
    if img.ndim != 2:
        raise ImageError(f"{path}: expected a 2-D image, got shape {img.shape}")
    if linear and not np.isfinite(img).any():
        raise ImageError(f"{path}: no finite pixels")
    return img, linear


def options_for_file(options: WindingOptions, linear: bool) -> WindingOptions:
    """``options`` with ``stretch`` set to ``fits_stretch`` for linear (FITS) images."""
    if linear and options.stretch != options.fits_stretch:
        return replace(options, stretch=options.fits_stretch)
    return options


def measure_winding_file(path: str | Path, options: WindingOptions | None = None, x0: float | None = None,
                         y0: float | None = None) -> WindingResult:
    """:func:`winding_sense` on an image file (FITS flipped to display orientation and measured with
    ``options.fits_stretch``; JPEG/PNG as displayed, greyscaled)."""
    opt = options or WindingOptions()
    img, linear = load_for_winding(path)
    try:
        return winding_sense(img, options_for_file(opt, linear), x0=x0, y0=y0)
    except WindingError as exc:
        raise WindingError(f"{path}: {exc}") from exc


#: Columns :func:`measure_winding_manifest` adds.
WINDING_COLUMNS = ("winding", "winding_score", "winding_z", "winding_confidence", "winding_r_inner",
                   "winding_r_outer", "winding_n_pixels", "winding_axis_ratio", "winding_flags",
                   "winding_image_uri")


def result_columns(res: WindingResult, uri: str | None = None) -> dict:
    """The :data:`WINDING_COLUMNS` values of one result."""
    return {"winding": res.winding, "winding_score": res.score, "winding_z": res.z,
            "winding_confidence": res.confidence, "winding_r_inner": res.r_inner, "winding_r_outer": res.r_outer,
            "winding_n_pixels": res.n_pixels, "winding_axis_ratio": res.axis_ratio,
            "winding_flags": ",".join(res.flags), "winding_image_uri": uri}
