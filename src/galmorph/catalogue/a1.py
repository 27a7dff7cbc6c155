"""The A1 labelling aid on catalogue rows: A1 for every row of a manifest (frame or Parquet file), the
process pool and the quarantine. One image is measured by :mod:`galmorph.imaging.a1` (files and arrays)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from galmorph.imaging.a1 import (
    A1_COLUMNS,
    SDSS_PIXEL_SCALE,
    A1Error,
    A1Options,
    load_for_a1,
    measure_a1_image,
    resolve_options,
)

log = logging.getLogger(__name__)

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


def _measure_rows(records: list[dict], data_root, pixel_scale: float, stage: str, options: A1Options,
                  progress: bool = False) -> tuple[list[dict], list[dict]]:
    """A1 for manifest rows (dicts): ``(measured rows, quarantine records)``, in input order."""
    import pandas as pd
    from tqdm import tqdm

    from galmorph.imaging.io import ImageError
    from galmorph.catalogue.manifest import ManifestError, quarantine_record, resolve_image_uri

    out_rows, quarantine = [], []
    for row in tqdm(records, desc="A1", disable=not progress):
        oid = row.get("object_id")
        uri = _row_image_uri(row)
        if uri is None:
            quarantine.append(quarantine_record(oid, stage, "no image URI (fits_uri/fits_path/image_uri)", row))
            continue
        try:
            path = resolve_image_uri(uri, data_root)
            ra, dec = row.get("ra"), row.get("dec")
            image = load_for_a1(path, None if ra is None or pd.isna(ra) else float(ra),
                                None if dec is None or pd.isna(dec) else float(dec), pixel_scale)
            r50, r90 = _row_radii(row, image.pixel_scale)
            res = measure_a1_image(image, r50=r50, r90=r90, options=options)
        except (ImageError, ManifestError, A1Error, OSError) as exc:
            quarantine.append(quarantine_record(oid, stage, f"object {oid}: {exc}", row))
            continue
        row = dict(row)
        row.update({
            "a1": res.a1, "a1_err": res.a1_err, "a1_phase": res.a1_phase, "a1_x0": res.x0, "a1_y0": res.y0,
            "a1_r50_px": res.r50, "a1_r90_px": res.r90, "a1_radii_source": res.radii_source,
            "a1_masked_fraction": res.masked_fraction, "a1_flags": ",".join(res.flags), "a1_image_uri": uri,
            "a1_width": res.shape[1], "a1_height": res.shape[0], "a1_pixel_scale": res.pixel_scale,
            "a1_pixel_scale_source": res.pixel_scale_source,
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


def measure_a1_frame(df, data_root: Path | str | None = None, pixel_scale: float = SDSS_PIXEL_SCALE,
                     progress: bool = True, stage: str = "a1", workers: int = 1, *,
                     options: A1Options | None = None, **option_overrides: Any):
    """A1 for every row of a manifest DataFrame. Returns ``(measured_df, quarantine_records)``.

    The image is the row's ``fits_uri``/``fits_path`` when present, else ``image_uri`` (resolved
    with :func:`galmorph.catalogue.manifest.resolve_image_uri`); the expected position comes from ``ra/dec``
    through the FITS WCS; R50/R90 from ``r50_px/r90_px`` or ``r50_arcsec/r90_arcsec`` (or
    ``petroR50_r/petroR90_r``) divided by the image's pixel scale, else from the curve of growth.
    The pixel scale is the FITS WCS's where there is one, else ``pixel_scale`` (arcsec/px; columns
    ``a1_pixel_scale`` and ``a1_pixel_scale_source`` = ``"wcs"`` | ``"default"``).
    Rows whose image is missing or unreadable go to the quarantine with the reason; rows that are
    read but give no A1 stay, with NaN and their flags. ``workers`` > 1 measures chunks of rows in
    that many processes (one per core: the measurement is single-threaded); the output order and
    content are the same as with one.
    """
    import pandas as pd

    options = resolve_options(options, option_overrides)
    records = df.to_dict(orient="records")
    workers = max(int(workers), 1)
    if workers == 1 or len(records) < 2 * workers:
        out_rows, quarantine = _measure_rows(records, data_root, pixel_scale, stage, options, progress)
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
                            [(c, data_root, pixel_scale, stage, options, False) for c in chunks])
            with tqdm(total=len(records), desc=f"A1 ({workers} processes)", disable=not progress) as bar:
                for chunk, (rows, quar) in zip(chunks, jobs):
                    out_rows += rows
                    quarantine += quar
                    bar.update(len(chunk))
    cols = list(df.columns) + [c for c in A1_COLUMNS if c not in df.columns]
    out = pd.DataFrame(out_rows, columns=cols)
    return out, quarantine


def measure_a1_manifest(manifest_path: str | Path, out_path: str | Path, quarantine_path: str | Path | None = None,
                        data_root: Path | str | None = None, pixel_scale: float = SDSS_PIXEL_SCALE,
                        progress: bool = True, workers: int = 1, *, options: A1Options | None = None,
                        **option_overrides: Any) -> dict:
    """Add the A1 columns (:data:`A1_COLUMNS`) to a manifest; unreadable rows are quarantined.

    Writes ``out_path`` (kind ``a1``) and the quarantine table (default ``<out>.quarantine.parquet``).
    Returns counts and paths; rows in = rows out + rows quarantined. ``workers``: processes (see
    :func:`measure_a1_frame`); ``pixel_scale``: arcsec/px of images without a WCS;
    ``options``/``option_overrides`` as for :func:`lopsidedness_a1`.
    """
    from galmorph.catalogue.manifest import manifest_metadata, read_manifest, write_manifest, write_quarantine

    manifest_path, out_path = Path(manifest_path), Path(out_path)
    df = read_manifest(manifest_path)
    out, quarantine = measure_a1_frame(df, data_root=data_root, pixel_scale=pixel_scale, progress=progress,
                                       workers=workers, options=resolve_options(options, option_overrides))
    meta = {k: v for k, v in manifest_metadata(manifest_path).items() if k not in ("kind", "schema_version")}
    meta["a1_source"] = str(manifest_path)
    write_manifest(out, out_path, kind="a1", extra_meta=meta)
    qpath = Path(quarantine_path) if quarantine_path else out_path.with_name(out_path.stem + ".quarantine.parquet")
    write_quarantine(quarantine, qpath)
    n_ok = int(np.isfinite(out["a1"].astype(float)).sum()) if len(out) else 0
    log.info("A1: %d rows in, %d out (%d with finite A1), %d quarantined", len(df), len(out), n_ok, len(quarantine))
    return {"rows_in": len(df), "rows_out": len(out), "finite_a1": n_ok, "quarantined": len(quarantine),
            "manifest": out_path, "quarantine": qpath}
