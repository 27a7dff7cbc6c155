"""Reading survey images (JPEG/PNG renderings and FITS) into float arrays.

Conventions: arrays are ``(H, W)`` for single-band data or ``(H, W, 3)`` for colour renderings,
row 0 at the *top* of the displayed image (as PIL shows it). FITS data (row 0 at the bottom) is
flipped on read so that both formats share one orientation; ``wcs_for`` gives the matching WCS.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fits.bz2", ".fts")
RASTER_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


class ImageError(ValueError):
    """An image cannot be used; the message names the file and the reason."""


def is_fits(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(FITS_SUFFIXES)


@dataclass
class FitsImage:
    data: np.ndarray  # float64, FITS orientation (row 0 = bottom), as stored
    header: object  # astropy.io.fits.Header
    wcs: object | None  # astropy.wcs.WCS or None when the header has no usable celestial WCS


def read_fits(path: str | Path, hdu: int | None = None, require_wcs: bool = False) -> FitsImage:
    """Read the first image HDU of a FITS file with its celestial WCS (if usable)."""
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    path = Path(path)
    _check_file(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            idx = hdu
            if idx is None:
                idx = next((i for i, h in enumerate(hdul) if getattr(h, "data", None) is not None
                            and getattr(h.data, "ndim", 0) >= 2), None)
            if idx is None:
                raise ImageError(f"{path}: FITS file has no 2-D image HDU")
            data = np.asarray(hdul[idx].data, dtype=np.float64)
            header = hdul[idx].header.copy()
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{path}: unreadable FITS ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 2:
        data = data[0]
    wcs = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header).celestial
            if w.has_celestial and w.naxis == 2:
                wcs = w
        except Exception:  # noqa: BLE001 - no usable WCS
            wcs = None
    if require_wcs and wcs is None:
        raise ImageError(f"{path}: FITS header has no usable celestial WCS")
    return FitsImage(data=data, header=header, wcs=wcs)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path}: file does not exist")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: zero-byte file")


def load_image(path: str | Path, greyscale: bool = False, allow_nan: bool = False) -> np.ndarray:
    """Load an image as float32: rasters scaled to 0..1, FITS as stored (flipped to display order).

    Raises :class:`ImageError` for missing, empty, truncated or undecodable files and, unless
    ``allow_nan``, for non-finite pixels.
    """
    path = Path(path)
    _check_file(path)
    if is_fits(path):
        arr = np.flipud(read_fits(path).data).astype(np.float32)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()  # forces a full decode: truncated files fail here
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB") if im.mode in ("RGBA", "P", "CMYK", "YCbCr") else im.convert("L")
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot decode image ({exc})") from exc
    if greyscale and arr.ndim == 3:
        arr = arr.mean(axis=2)
    if not allow_nan and not np.all(np.isfinite(arr)):
        n = int((~np.isfinite(arr)).sum())
        raise ImageError(f"{path}: {n} non-finite (NaN/inf) pixel(s)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def to_uint8(img: np.ndarray, lo: float | None = None, hi: float | None = None, asinh: bool = False) -> np.ndarray:
    """Scale an image to 0..255 for display (linear, or asinh stretch for FITS data)."""
    a = np.asarray(img, dtype=np.float64)
    if lo is None or hi is None:
        finite = a[np.isfinite(a)]
        lo = float(np.percentile(finite, 1)) if lo is None else lo
        hi = float(np.percentile(finite, 99.7)) if hi is None else hi
    x = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
    if asinh:
        x = np.arcsinh(10 * x) / np.arcsinh(10)
    return (np.nan_to_num(x) * 255 + 0.5).astype(np.uint8)


def save_raster(img: np.ndarray, path: str | Path, quality: int = 95) -> Path:
    """Save a 0..1 float (or uint8) image as PNG/JPEG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(a).save(path, quality=quality) if path.suffix.lower() in (".jpg", ".jpeg") else Image.fromarray(a).save(path)
    return path
