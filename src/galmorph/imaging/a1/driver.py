"""The A1 measurement on files and manifests: reading images (FITS with their WCS, PNG/JPEG), the
pixel scale, manifest rows, the process pool and the quarantine. The array maths is
:mod:`galmorph.imaging.a1.core`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from galmorph.imaging.a1.core import lopsidedness_a1
from galmorph.imaging.a1.options import A1Options, resolve_options
from galmorph.imaging.a1.result import A1Result

log = logging.getLogger(__name__)

#: arcsec/px of SDSS imaging: the pixel scale of an image without a usable WCS (unless given).
SDSS_PIXEL_SCALE = 0.396


@dataclass(frozen=True)
class A1Image:
    """An image read for A1 (:func:`load_for_a1`)."""

    data: np.ndarray  # greyscale float64, display orientation
    expected: tuple[float, float] | None  # (x, y) of the requested RA/Dec through the WCS
    saturation: float | None  # FITS SATURATE (or SATURAT/SATLEVEL)
    pixel_scale: float  # arcsec/px
    pixel_scale_source: str  # "wcs" (from the FITS WCS) | "default" (no usable WCS: the fallback)


def wcs_pixel_scale(wcs) -> float | None:
    """arcsec/px of a celestial WCS (mean of the two axes' scales from
    ``astropy.wcs.utils.proj_plane_pixel_scales``), None when it gives no finite positive scale."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0  # celestial axes are in degrees
    except Exception:  # noqa: BLE001 - a WCS without a usable celestial part has no pixel scale
        return None
    scale = float(np.mean(scales)) if len(scales) else float("nan")
    return scale if math.isfinite(scale) and scale > 0 else None


def load_for_a1(path: str | Path, ra: float | None = None, dec: float | None = None,
                pixel_scale: float = SDSS_PIXEL_SCALE) -> A1Image:
    """Image (display orientation, greyscale float64), expected ``(x, y)`` from RA/Dec via the FITS
    WCS (None when not given or no WCS), the saturation level from the FITS header (if any) and the
    pixel scale: from the FITS WCS where there is one, else ``pixel_scale`` (source ``"default"``).

    Raises :class:`galmorph.imaging.io.ImageError` naming the file and the reason.
    """
    from galmorph.imaging.io import ImageError, is_fits, load_image, read_fits

    path = Path(path)
    expected = None
    saturation = None
    scale, scale_source = float(pixel_scale), "default"
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
        if fi.wcs is not None:
            wcs_scale = wcs_pixel_scale(fi.wcs)
            if wcs_scale is not None:
                scale, scale_source = wcs_scale, "wcs"
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
    return A1Image(img, expected, saturation, scale, scale_source)


def measure_a1_image(image: A1Image, x0: float | None = None, y0: float | None = None, r50: float | None = None,
                     r90: float | None = None, options: A1Options | None = None) -> A1Result:
    """:func:`lopsidedness_a1` on a loaded image. The expected position is ``(x0, y0)`` when given,
    else the image's RA/Dec position, else the image centre; ``options.saturation`` None takes the
    header's. The result carries the image's pixel scale and its source."""
    options = options if options is not None else A1Options()
    if x0 is None and y0 is None and image.expected is not None:
        x0, y0 = image.expected
    if options.saturation is None and image.saturation is not None:
        options = replace(options, saturation=image.saturation)
    res = lopsidedness_a1(image.data, x0, y0, r50, r90, options=options)
    res.pixel_scale, res.pixel_scale_source = image.pixel_scale, image.pixel_scale_source
    return res


def measure_a1_file(path: str | Path, x0: float | None = None, y0: float | None = None,
                    r50: float | None = None, r90: float | None = None, ra: float | None = None,
                    dec: float | None = None, *, pixel_scale: float = SDSS_PIXEL_SCALE,
                    options: A1Options | None = None, **option_overrides: Any) -> A1Result:
    """:func:`lopsidedness_a1` on an image file (:func:`load_for_a1`, :func:`measure_a1_image`):
    the expected position is ``(x0, y0)`` when given, else the sky position ``(ra, dec)`` through
    the FITS WCS, else the image centre; ``pixel_scale`` (arcsec/px) is used when the file has no
    WCS; ``options``/``option_overrides`` as for :func:`lopsidedness_a1` (a ``saturation`` there
    overrides the header's SATURATE)."""
    image = load_for_a1(path, ra, dec, pixel_scale)
    return measure_a1_image(image, x0, y0, r50, r90, resolve_options(options, option_overrides))


#: Columns :func:`measure_a1_manifest` adds.
A1_COLUMNS = ("a1", "a1_err", "a1_phase", "a1_x0", "a1_y0", "a1_r50_px", "a1_r90_px", "a1_radii_source",
              "a1_masked_fraction", "a1_flags", "a1_image_uri", "a1_width", "a1_height", "a1_pixel_scale",
              "a1_pixel_scale_source")
