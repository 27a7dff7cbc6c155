"""Reading survey images (JPEG/PNG renderings and FITS) into float arrays.

Conventions: arrays are ``(H, W)`` for single-band data or ``(H, W, 3)`` for colour renderings,
row 0 at the *top* of the displayed image (as PIL shows it). FITS data (row 0 at the bottom) is
flipped on read so that both formats share one orientation; ``wcs_for`` gives the matching WCS.

Size limit: an image whose header declares more than ``max_pixels`` pixels (default: the process's
limit, :data:`MAX_IMAGE_PIXELS` = 50 Mpx unless :func:`set_max_image_pixels` changed it - the CLI sets
it from ``GALMORPH_MAX_IMAGE_PIXELS``; well below Pillow's decompression-bomb limit) is refused with an
:class:`ImageError` *before* any pixel is decoded, so a 99-byte PNG claiming 20000x20000 pixels
costs no memory. Scaling: 8-bit rasters / 255, 16-bit rasters / 65535, float rasters by their
finite range; an image without a single finite pixel is an :class:`ImageError`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fits.bz2", ".fts")
RASTER_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

#: Default pixel limit (width x height) of one image; Pillow's own bomb warning starts at ~89 Mpx.
MAX_IMAGE_PIXELS = 50_000_000

#: Smallest side (px) of an image the cutout and scoring stages use (drift features need as much; a 1-pixel
#: image upsampled to the model's input would be scored as a flat frame).
MIN_IMAGE_SIDE = 8

_max_image_pixels = [MAX_IMAGE_PIXELS]  # the process's limit (set_max_image_pixels)


class _ProcessLimit:
    """Default of ``max_pixels``: the process's limit (:func:`max_image_pixels`)."""

    def __repr__(self) -> str:
        return "<process max_image_pixels>"


PROCESS_LIMIT = _ProcessLimit()


def set_max_image_pixels(n: int) -> None:
    """Set the pixel limit that :func:`load_image` and :func:`read_fits` use when not given one
    (called once by the CLI from ``Settings.max_image_pixels``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"max_image_pixels must be a positive integer, got {n!r}")
    _max_image_pixels[0] = n


def max_image_pixels() -> int:
    """The process's pixel limit (:data:`MAX_IMAGE_PIXELS` unless :func:`set_max_image_pixels` changed it)."""
    return _max_image_pixels[0]


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


def read_fits(path: str | Path, hdu: int | None = None, require_wcs: bool = False,
              max_pixels: int | None | _ProcessLimit = PROCESS_LIMIT) -> FitsImage:
    """Read the first image HDU of a FITS file with its celestial WCS (if usable).

    The HDU's size is checked from its header against ``max_pixels`` (None: no limit) before the
    data is read."""
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    path = Path(path)
    _check_file(path)
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            idx = hdu
            if idx is None:
                idx = next((i for i, h in enumerate(hdul) if getattr(h, "is_image", False)  # not a table HDU
                            and int(h.header.get("NAXIS", 0) or 0) >= 2
                            and all(int(h.header.get(f"NAXIS{k}", 0) or 0) > 0
                                    for k in range(1, int(h.header["NAXIS"]) + 1))), None)
            if idx is None:
                raise ImageError(f"{path}: FITS file has no 2-D image HDU")
            h = hdul[idx]
            naxis = int(h.header.get("NAXIS", 0) or 0)
            if naxis < 2 or not getattr(h, "is_image", False):  # a table HDU also has NAXIS = 2
                raise ImageError(f"{path}: HDU {idx} is not a 2-D image")
            w, hh = int(h.header.get("NAXIS1", 0) or 0), int(h.header.get("NAXIS2", 0) or 0)
            planes = int(np.prod([int(h.header.get(f"NAXIS{k}", 1) or 1) for k in range(3, naxis + 1)]))
            _check_pixels(path, w, hh * planes, max_pixels)
            data = np.asarray(h.data, dtype=np.float64)
            header = h.header.copy()
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
        if path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link or symlink loop")
        raise ImageError(f"{path}: file does not exist")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: zero-byte file")


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None | _ProcessLimit) -> None:
    if isinstance(max_pixels, _ProcessLimit):
        max_pixels = max_image_pixels()
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{path}: image of {width}x{height} = {width * height} pixels is over the limit of "
                         f"{max_pixels} pixels (oversize image or decompression bomb); not decoded")


def _raster_to_float(im, path: Path) -> np.ndarray:
    """A decoded PIL image as float32: 8-bit / 255, 16-bit / 65535, float by its finite range."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode == "I":  # 32-bit int: 16-bit PNGs read this way on some Pillow versions
        a = np.asarray(im, dtype=np.float64)
        if a.size and a.min() >= 0 and a.max() <= 65535:
            return (a / 65535.0).astype(np.float32)
        return _finite_range(a, path)
    if mode == "F":
        return _finite_range(np.asarray(im, dtype=np.float64), path)
    if mode not in ("L", "RGB"):
        im = im.convert("RGB") if mode in ("RGBA", "P", "CMYK", "YCbCr", "PA", "RGBX") else im.convert("L")
    return np.asarray(im, dtype=np.float32) / 255.0


def _finite_range(a: np.ndarray, path: Path) -> np.ndarray:
    fin = np.isfinite(a)
    if not fin.any():
        raise ImageError(f"{path}: no finite pixels (all NaN/inf)")
    lo, hi = float(a[fin].min()), float(a[fin].max())
    out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return out.astype(np.float32)


def load_image(path: str | Path, greyscale: bool = False, allow_nan: bool = False,
               max_pixels: int | None | _ProcessLimit = PROCESS_LIMIT,
               draft_min_side: int | None = None) -> np.ndarray:
    """Load an image as float32: rasters scaled to 0..1 (8-bit / 255, 16-bit / 65535, float by
    their finite range), FITS as stored (flipped to display order).

    Raises :class:`ImageError` for missing, empty, truncated or undecodable files, for images over
    ``max_pixels`` pixels (checked from the header, before decoding; None: no limit), for images
    without any finite pixel and, unless ``allow_nan``, for any non-finite pixel.

    ``draft_min_side``: JPEGs at least twice that size are decoded at reduced scale (PIL ``draft``:
    the decoder's 1/2, 1/4, 1/8 DCT scaling) with both sides kept >= ``draft_min_side``.
    """
    path = Path(path)
    _check_file(path)
    if is_fits(path):
        arr = np.flipud(read_fits(path, max_pixels=max_pixels).data).astype(np.float32)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                _check_pixels(path, im.size[0], im.size[1], max_pixels)
                if draft_min_side and im.format == "JPEG" and min(im.size) >= 2 * draft_min_side:
                    im.draft(im.mode, (draft_min_side, draft_min_side))
                im.load()  # forces a full decode: truncated files fail here
                arr = _raster_to_float(im, path)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: oversize image or decompression bomb, not decoded ({exc})") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as exc:
            raise ImageError(f"{path}: cannot decode image ({exc})") from exc
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or 0 in arr.shape:
        raise ImageError(f"{path}: not a 2-D image (array of shape {arr.shape})")
    if greyscale and arr.ndim == 3:
        arr = arr.mean(axis=2)
    finite = np.isfinite(arr)
    if not finite.all():
        if not finite.any():
            raise ImageError(f"{path}: no finite pixels (all NaN/inf)")
        if not allow_nan:
            raise ImageError(f"{path}: {int((~finite).sum())} non-finite (NaN/inf) pixel(s)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def to_uint8(img: np.ndarray, lo: float | None = None, hi: float | None = None, asinh: bool = False) -> np.ndarray:
    """Scale an image to 0..255 for display (linear, or asinh stretch for FITS data)."""
    a = np.asarray(img, dtype=np.float64)
    if lo is None or hi is None:
        finite = a[np.isfinite(a)]
        if finite.size == 0:  # nothing to stretch: black
            return np.zeros(a.shape, dtype=np.uint8)
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
