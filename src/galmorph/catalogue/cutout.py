"""Cutouts: model-ready image sets from a manifest.

* FITS rows with a celestial WCS: ``astropy.nddata.Cutout2D`` at the row's (ra, dec) with a size in
  arcsec, in multiples of R90 (a column in arcsec), or the full frame. Partial overlap is filled
  (median of the valid pixels) and flagged (``cutout_partial``, ``cutout_fill_fraction``). The cutout
  is written as FITS (physical values, cutout WCS) and as a linearly 0-1 scaled PNG (percentile
  clip, display orientation) for model input.
* Raster rows (JPEG/PNG): centre crop by ``crop_fraction`` (424 -> 224 is 0.528) and resize.

A row that fails (missing/corrupt image, NaN pixels, no WCS, position off the image, missing R90)
goes to the quarantine table with its reason. The cutout manifest is the input manifest with
``image_uri`` pointing at the cutout PNG (the source kept as ``source_image_uri``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.catalogue.manifest import (
    ManifestError,
    ManifestWriter,
    QuarantineWriter,
    Repeats,
    is_csv,
    iter_manifest,
    manifest_num_rows,
    carried_metadata,
    manifest_metadata,
    quarantine_frame,
    quarantine_record,
    read_manifest,
    repeated_ids,
    repeated_keys,
    resolve_image_uri,
)

log = logging.getLogger(__name__)

STAGE = "cutout"


class CutoutError(ValueError):
    """A cutout cannot be made; the message names the object and the reason."""


@dataclass
class CutoutConfig:
    size_arcsec: float | None = None  # FITS: side in arcsec
    size_r90: float | None = None  # FITS: side in multiples of R90 (takes precedence over size_arcsec)
    r90_column: str = "r90_arcsec"  # column with R90 in arcsec
    size_px: int | None = None  # output PNG side (resize); None keeps the cut size
    crop_fraction: float = 1.0  # raster: central fraction kept before the resize
    greyscale: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)  # FITS linear scaling to 0-1
    write_fits: bool = True
    # framing check: the model's input size and crop; each row's galaxy extent (2 R90 from the light's
    # growth curve) is scaled into the model input and rows below min_extent_px are counted and flagged
    model_image_size: int | None = None
    model_crop_fraction: float = 1.0
    min_extent_px: float = 40.0
    # raster rows (JPEG/PNG) are not decoded or written: their row passes through with its own image, which the
    # scoring pass decodes once and frames itself (crop_fraction 1.0 only: the model's crop is the framing);
    # FITS rows are still cut at their WCS position (the frame is not the galaxy's)
    raster_passthrough: bool = False

    def __post_init__(self) -> None:
        if self.size_arcsec is not None and self.size_arcsec <= 0:
            raise ValueError(f"size_arcsec must be > 0, got {self.size_arcsec}")
        if self.size_r90 is not None and self.size_r90 <= 0:
            raise ValueError(f"size_r90 must be > 0, got {self.size_r90}")
        if self.size_px is not None and self.size_px < 8:
            raise ValueError(f"size_px must be >= 8, got {self.size_px}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.raster_passthrough and (self.crop_fraction < 1 or self.greyscale):
            raise ValueError("raster_passthrough keeps the source images: crop_fraction must be 1.0 and greyscale off "
                             "(the model frames its input)")


@dataclass
class Cutout:
    image: np.ndarray  # float32 0..1, display orientation, (S,S) or (S,S,3)
    fits_data: np.ndarray | None = None  # physical values, FITS orientation
    fits_header: Any = None
    partial: bool = False
    fill_fraction: float = 0.0
    size_arcsec: float | None = None
    centre_pixel: tuple[float, float] | None = None  # (x, y) of (ra, dec) in the source FITS (0-based)


@dataclass
class CutoutResult:
    out_dir: Path
    manifest_path: Path
    quarantine_path: Path
    n_in: int
    n_out: int
    n_quarantined: int
    n_partial: int
    manifest: pd.DataFrame | None = field(default=None, repr=False)
    quarantine: pd.DataFrame | None = field(default=None, repr=False)
    n_small_extent: int = 0  # galaxies below CutoutConfig.min_extent_px in the model's input

    def summary(self) -> dict:
        return {"out_dir": str(self.out_dir), "manifest": str(self.manifest_path),
                "quarantine": str(self.quarantine_path), "rows_in": self.n_in, "rows_out": self.n_out,
                "rows_quarantined": self.n_quarantined, "partial": self.n_partial,
                "n_small_extent": self.n_small_extent}


def linear_scale(data: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Linear 0-1 scaling between two percentiles of the finite pixels (clipped)."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        raise CutoutError("no finite pixels to scale")
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        hi = lo + 1e-12
    return np.clip((data - lo) / (hi - lo), 0, 1).astype(np.float32)


def fits_cutout(path: str | Path, ra: float, dec: float, size_arcsec: float | None = None,
                percentiles: tuple[float, float] = (0.5, 99.5)) -> Cutout:
    """Cut a FITS image at (ra, dec). ``size_arcsec`` None keeps the full frame's size."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D
    from astropy.nddata.utils import NoOverlapError

    from galmorph.imaging.io import ImageError, read_fits

    path = Path(path)
    im = read_fits(path)
    if im.wcs is None:
        raise ImageError(f"{path.name}: FITS header has no usable celestial WCS")
    data = im.data
    if not np.all(np.isfinite(data)):
        raise ImageError(f"{path.name}: {int((~np.isfinite(data)).sum())} NaN/inf pixel(s)")
    if not (np.isfinite(ra) and np.isfinite(dec)):
        raise CutoutError(f"{path.name}: no ra/dec to cut at")
    from astropy.wcs.utils import proj_plane_pixel_scales

    scale = float(np.mean(np.abs(proj_plane_pixel_scales(im.wcs)))) * 3600  # arcsec/px (CUNIT deg)
    if size_arcsec is None:
        npx = max(data.shape)
    else:
        npx = max(3, int(round(size_arcsec / scale)))
    pos = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    try:
        cut = Cutout2D(data, pos, (npx, npx), wcs=im.wcs, mode="partial", fill_value=np.nan, copy=True)
    except NoOverlapError:
        raise CutoutError(f"{path.name}: position ({ra:.5f}, {dec:.5f}) lies outside the image") from None
    cdata = cut.data.astype(np.float64)
    bad = ~np.isfinite(cdata)
    fill_fraction = float(bad.mean())
    if fill_fraction >= 1:
        raise CutoutError(f"{path.name}: cutout at ({ra:.5f}, {dec:.5f}) has no overlap with the image")
    if bad.any():
        cdata[bad] = float(np.median(cdata[~bad]))
    header = cut.wcs.to_header()
    header["CUTPART"] = (bool(bad.any()), "cutout partially outside the source image")
    header["CUTFILL"] = (fill_fraction, "fraction of filled pixels")
    header["SRCFILE"] = path.name[:60]
    img = linear_scale(np.flipud(cdata), percentiles)
    x, y = im.wcs.world_to_pixel(pos)
    return Cutout(image=img, fits_data=cdata.astype(np.float32), fits_header=header, partial=bool(bad.any()),
                  fill_fraction=fill_fraction, size_arcsec=npx * scale, centre_pixel=(float(x), float(y)))


def raster_cutout(path: str | Path, crop_fraction: float = 1.0, greyscale: bool = False) -> Cutout:
    """Centre crop of a JPEG/PNG rendering (values already 0..1)."""
    from galmorph.imaging.io import load_image
    from galmorph.imaging.preprocess import centre_crop

    img = load_image(path, greyscale=greyscale)
    if crop_fraction < 1:
        img = centre_crop(img, crop_fraction)
    return Cutout(image=np.clip(img, 0, 1).astype(np.float32))


def _object_id(value: Any) -> str | None:
    """A manifest cell as an object id, or None when it is null or blank."""
    if value is None or (not isinstance(value, str) and pd.isna(value)) or not str(value).strip():
        return None
    return str(value)


def _safe_name(oid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(oid))


def cutout_row(row: dict, cfg: CutoutConfig, data_root: Path | None = None) -> Cutout:
    """The cutout of one manifest row (raises ``ImageError``/``CutoutError``/``ManifestError``)."""
    from galmorph.imaging.io import is_fits
    from galmorph.imaging.preprocess import resize

    path = resolve_image_uri(row.get("image_uri"), data_root)
    if is_fits(path):
        size = cfg.size_arcsec
        if cfg.size_r90 is not None:
            r90 = row.get(cfg.r90_column)
            try:
                r90 = float(r90)
            except (TypeError, ValueError):
                r90 = math.nan
            if not math.isfinite(r90) or r90 <= 0:
                raise CutoutError(f"{path.name}: no usable R90 in column {cfg.r90_column!r} "
                                  f"(value {row.get(cfg.r90_column)!r}) for a {cfg.size_r90} x R90 cutout")
            size = cfg.size_r90 * r90
        c = fits_cutout(path, float(row.get("ra")), float(row.get("dec")), size, cfg.percentiles)
    else:
        c = raster_cutout(path, cfg.crop_fraction, cfg.greyscale)
    from galmorph.imaging.io import MIN_IMAGE_SIDE

    if min(c.image.shape[:2]) < MIN_IMAGE_SIDE:
        raise CutoutError(f"{path.name}: cutout of {c.image.shape[0]}x{c.image.shape[1]} px is too small "
                          f"(under {MIN_IMAGE_SIDE} px a side)")
    if cfg.greyscale and c.image.ndim == 3:
        c.image = c.image.mean(axis=2)
    if cfg.size_px is not None:
        c.image = np.clip(resize(c.image, cfg.size_px), 0, 1).astype(np.float32)
    return c


#: Below this many pixels across in the model's input the arms of a galaxy are not resolved (#12).
MIN_EXTENT_PX = 40.0


def model_framing(image_size: int, crop_fraction: float) -> tuple[int, float]:
    """Cutout ``(size_px, crop_fraction)`` for a model that crops ``crop_fraction`` of its input and resizes
    to ``image_size``: the full frame (crop 1.0, the model crops) at ``ceil(image_size / crop_fraction)``
    px, so that the model's crop holds about ``image_size`` px and nothing is cropped twice."""
    if not 0 < crop_fraction <= 1 or image_size < 1:
        raise CutoutError(f"bad model framing: image_size {image_size}, crop_fraction {crop_fraction}")
    return int(math.ceil(image_size / crop_fraction - 1e-9)), 1.0


def check_framing(cutout_crop_fraction: float, model_crop_fraction: float, what: str = "framing") -> None:
    """Refuse a galaxy cropped twice: cutouts already cropped (``cutout_crop_fraction`` < 1) fed to a model
    that crops again (``model_crop_fraction`` < 1)."""
    if float(cutout_crop_fraction) < 1 and float(model_crop_fraction) < 1:
        raise CutoutError(
            f"{what}: the cutouts are already cropped to {float(cutout_crop_fraction):g} of the frame and the model "
            f"crops {float(model_crop_fraction):g} again, so the galaxy would be cropped twice (the model sees "
            f"{float(cutout_crop_fraction) * float(model_crop_fraction):.3g} of the frame); make the cutouts with "
            "crop_fraction 1.0 (the pipelines take the framing from the preset or the model) or use a model "
            "that does not crop")


def galaxy_extent_px(image: np.ndarray, fraction: float = 0.9) -> float:
    """Quick galaxy extent in pixels of ``image``: twice the radius enclosing ``fraction`` of the
    sky-subtracted light around the light-weighted centre (about 2 R90), counting only the connected
    region of the central source that stands above three times the sky noise after a light smoothing
    (border median and MAD). Noise peaks and other sources elsewhere in the frame are not counted, so
    a small galaxy in a large noisy frame is not made larger by its sky. NaN when no light is above the sky."""
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    img = np.where(np.isfinite(img), img, np.nan)
    b = max(1, int(0.05 * min(img.shape)))

    def sky_noise(a: np.ndarray) -> tuple[float, float]:
        border = np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[:, :b].ravel(), a[:, -b:].ravel()])
        sky = float(np.nanmedian(border))
        return sky, float(1.4826 * np.nanmedian(np.abs(border - sky)))

    sky, _ = sky_noise(img)
    smooth = ndimage.gaussian_filter(np.nan_to_num(img, nan=sky), 1.5)
    s_sky, s_noise = sky_noise(smooth)
    mask = smooth - s_sky > 3.0 * s_noise
    if not mask.any():
        return float("nan")
    labels, _n = ndimage.label(mask)
    # the source: the detected region with the most light, i.e. the galaxy rather than a noise peak
    sums = ndimage.sum(smooth - s_sky, labels, index=np.arange(1, labels.max() + 1))
    keep = labels == (int(np.argmax(sums)) + 1)
    w = np.where(keep, np.nan_to_num(img - sky, nan=0.0), 0.0)
    w[w < 0] = 0.0
    tot = w.sum()
    if not tot > 0:
        return float("nan")
    yy, xx = np.indices(w.shape)
    x0, y0 = (w * xx).sum() / tot, (w * yy).sum() / tot
    r = np.hypot(xx - x0, yy - y0).ravel()
    order = np.argsort(r)
    cum = np.cumsum(w.ravel()[order])
    return float(2.0 * r[order][np.searchsorted(cum, fraction * cum[-1])])


def extent_in_model_px(extent_px: float, cutout_size_px: int, model_image_size: int,
                       model_crop_fraction: float = 1.0) -> float:
    """A cutout extent (px) as seen in the model's input (the model crops ``model_crop_fraction`` and
    resizes to ``model_image_size``), at most the input size."""
    scale = model_image_size / (cutout_size_px * model_crop_fraction)
    return float(min(extent_px * scale, model_image_size))


def _passthrough_row(row: dict) -> dict:
    """A raster row kept with its own image (:attr:`CutoutConfig.raster_passthrough`): nothing decoded; a plain
    relative path is made absolute (the dataset folder's relative URIs are its own files)."""
    new = dict(row)
    uri = str(row.get("image_uri") or "")
    if uri and "://" not in uri and not Path(uri).is_absolute():
        new["image_uri"] = str(Path(uri).resolve())
    new["source_image_uri"] = row.get("image_uri")
    new.update(cutout_partial=False, cutout_fill_fraction=0.0, cutout_size_px=-1, cutout_size_arcsec=np.nan,
               cutout_fits_uri="")
    return new


def _write_cutout(out: Path, name: str, row: dict, c: Cutout, cfg: CutoutConfig, write_fits: bool) -> dict:
    """Write one cutout (PNG, and FITS when it has physical data) and return its manifest row."""
    from galmorph.imaging.io import save_raster

    png = out / "png" / f"{name}.png"
    save_raster(c.image, png)
    new = dict(row)
    new["source_image_uri"] = row.get("image_uri")
    new["image_uri"] = str(png)
    new["cutout_partial"] = c.partial
    new["cutout_fill_fraction"] = c.fill_fraction
    new["cutout_size_px"] = int(c.image.shape[0])
    new["cutout_size_arcsec"] = c.size_arcsec if c.size_arcsec is not None else np.nan
    if cfg.model_image_size:
        ext = extent_in_model_px(galaxy_extent_px(c.image), int(c.image.shape[0]), cfg.model_image_size,
                                 cfg.model_crop_fraction)
        new["extent_model_px"] = ext
        new["small_extent"] = bool(ext < cfg.min_extent_px)
    if c.fits_data is not None and write_fits:
        from astropy.io import fits

        (out / "fits").mkdir(exist_ok=True)
        fpath = out / "fits" / f"{name}.fits"
        fits.PrimaryHDU(c.fits_data, header=c.fits_header).writeto(fpath, overwrite=True)
        new["cutout_fits_uri"] = str(fpath)
    else:
        new["cutout_fits_uri"] = ""
    return new


class _CutoutChunks:
    """The row-by-row work of :func:`make_cutouts` on one chunk at a time. ``repeats``: the input rows whose file
    name (:func:`_safe_name` of the object id) an earlier row's gives too, found before cutting
    (:func:`~galmorph.catalogue.manifest.repeated_keys`): the first of them that is cut keeps the name, the
    others are quarantined (a repeated object id, or a second object whose id gives the same file name), so a
    cutout is never overwritten; memory holds only the repeated names' owners."""

    def __init__(self, out: Path, cfg: CutoutConfig, data_root: Path | None, repeats: Repeats):
        self.out, self.cfg, self.dr = out, cfg, data_root
        self.repeats, self.shared = repeats, repeats.first_rows()
        self.owner: dict[int, tuple[str, int]] = {}  # first row of a repeated name -> (object id, row) cut under it
        self.row = 0  # input position of the chunk's first row
        self.n_out = self.n_partial = self.n_small = self.n_passed = 0

    def cut(self, df: pd.DataFrame, bar) -> tuple[list[dict], list[dict]]:
        from galmorph.imaging.io import ImageError, is_fits

        cfg, out = self.cfg, self.out
        recs = df.to_dict("records")
        firsts = self.repeats.first_of(np.arange(self.row, self.row + len(recs)))
        rows, q = [], []
        for k, row in enumerate(recs):
            bar.update(1)
            oid = _object_id(row.get("object_id"))
            if oid is None:
                q.append(quarantine_record(None, STAGE, "object_id is null or empty", row))
                continue
            name, pos = _safe_name(oid), self.row + k
            group = int(firsts[k]) if firsts[k] >= 0 else pos
            if group in self.owner:
                o0, r0 = self.owner[group]
                why = (f"duplicate object_id (first at input row {r0})" if o0 == oid
                       else f"its file name {name}.png is already the cutout of object {o0} (input row {r0})")
                q.append(quarantine_record(oid, STAGE, f"object {oid}: {why}", row))
                continue
            if cfg.raster_passthrough and not is_fits(str(row.get("image_uri") or "")):
                new = _passthrough_row(row)
                self.n_passed += 1
            else:
                try:
                    c = cutout_row(row, cfg, self.dr)
                except (ImageError, CutoutError, ManifestError, ValueError) as exc:
                    q.append(quarantine_record(oid, STAGE, f"object {oid}: {exc}", row))
                    continue
                new = _write_cutout(out, name, row, c, cfg, write_fits=cfg.write_fits)
                self.n_small += int(bool(new.get("small_extent", False)))
                self.n_partial += int(c.partial)
            if group in self.shared:
                self.owner[group] = (oid, pos)
            rows.append(new)
        self.row += len(recs)
        self.n_out += len(rows)
        return rows, q


def _name_repeats(manifest: str | Path | pd.DataFrame | None, frame: pd.DataFrame | None) -> Repeats:
    """The input rows whose cutout file name repeats an earlier row's (a frame in memory, else the Parquet
    manifest's id column read alone)."""
    if frame is None:
        return repeated_ids(manifest, key=_safe_name)
    ids = [None if (o := _object_id(v)) is None else _safe_name(o) for v in frame["object_id"]] \
        if "object_id" in frame.columns else []
    return repeated_keys([ids])


def make_cutouts(manifest: str | Path | pd.DataFrame, out_dir: str | Path, cfg: CutoutConfig | None = None,
                 data_root: Path | str | None = None, progress: bool = True) -> CutoutResult:
    """Cut every row of a manifest into ``out_dir`` (``png/``, ``fits/``, ``manifest.parquet``,
    ``quarantine.parquet``). Rows in = rows out + rows quarantined. A Parquet manifest is read, cut and written
    in chunks of :data:`~galmorph.catalogue.manifest.CHUNK_ROWS` rows (memory bounded by a chunk, whatever the
    release's size); the result then holds the counts, not the frames."""
    from tqdm import tqdm

    cfg = cfg or CutoutConfig()
    dr = Path(data_root) if data_root is not None else None
    if isinstance(manifest, pd.DataFrame):
        chunks, n_in, kind = [manifest.reset_index(drop=True)], len(manifest), "cutouts"
    elif is_csv(manifest):
        df = read_manifest(manifest)
        chunks, n_in, kind = [df], len(df), "manifest-cutouts"
    else:
        n_in = manifest_num_rows(manifest)
        chunks = iter_manifest(manifest)
        kind = f"{manifest_metadata(manifest).get('kind', 'manifest')}-cutouts"
    one_frame = not isinstance(chunks, Iterator)  # a frame or a CSV in memory already: the result keeps the frames
    if n_in == 0:
        raise ManifestError(f"manifest {manifest if not isinstance(manifest, pd.DataFrame) else ''} has no rows to cut")
    out = Path(out_dir)
    (out / "png").mkdir(parents=True, exist_ok=True)
    work = _CutoutChunks(out, cfg, dr, _name_repeats(manifest, chunks[0] if one_frame else None))
    kept_rows: list[dict] = []
    q_all: list[dict] = []
    first_chunk: pd.DataFrame | None = None
    with ManifestWriter(out / "manifest.parquet", kind) as w, QuarantineWriter(out / "quarantine.parquet") as qw, \
            tqdm(total=n_in, desc="cutouts", disable=not progress) as bar:
        for df in chunks:
            first_chunk = df.iloc[0:0] if first_chunk is None else first_chunk
            rows, q = work.cut(df, bar)
            w.write(pd.DataFrame(rows) if rows else None)
            qw.write(q)
            if one_frame:
                kept_rows.extend(rows)
                q_all.extend(q)
        if not work.n_out and first_chunk is not None:
            w.write(first_chunk)  # no rows: the input's columns, empty
        mpath = w.close({**carried_metadata(manifest), "cutout": {k: v for k, v in cfg.__dict__.items()},
                         "rows_in": n_in, "rows_quarantined": qw.rows, "n_small_extent": work.n_small,
                         "n_passthrough": work.n_passed})
        n_q = qw.rows
        qpath = qw.close()
    if work.n_small:
        log.warning("cutouts: %d of %d galaxies are smaller than %g px across in the model's input (%d px, crop "
                    "%g): their arms are probably not resolved; use a tighter crop or a larger input",
                    work.n_small, work.n_out, cfg.min_extent_px, cfg.model_image_size, cfg.model_crop_fraction)
    log.info("cutouts: %d rows in, %d out (%d passed through undecoded), %d quarantined, %d partial -> %s", n_in,
             work.n_out, work.n_passed, n_q, work.n_partial, out)
    man = (pd.DataFrame(kept_rows) if kept_rows else chunks[0].iloc[0:0].copy()) if one_frame else None
    return CutoutResult(out_dir=out, manifest_path=mpath, quarantine_path=qpath, n_in=n_in, n_out=work.n_out,
                        n_quarantined=n_q, n_partial=work.n_partial, manifest=man,
                        quarantine=quarantine_frame(q_all) if one_frame else None, n_small_extent=work.n_small)
