"""The winding measurement on catalogue rows: the winding sense of every row of a manifest (frame or
Parquet file), the process pool and the quarantine. One image is measured by :mod:`galmorph.imaging.winding`."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from galmorph.imaging.winding import (
    WINDING_COLUMNS,
    WindingError,
    WindingOptions,
    measure_winding_file,
    result_columns,
)

log = logging.getLogger(__name__)


def _measure_rows(records: list[dict], data_root, options: WindingOptions, image_column: str,
                  stage: str) -> tuple[list[dict], list[dict]]:
    """Winding for manifest rows (dicts): ``(measured rows, quarantine records)``, in input order."""
    from galmorph.imaging.io import ImageError
    from galmorph.catalogue.manifest import ManifestError, quarantine_record, resolve_image_uri

    out_rows, quarantine = [], []
    for row in records:
        oid = row.get("object_id")
        uri = row.get(image_column)
        if uri is None or (isinstance(uri, float) and math.isnan(uri)) or str(uri) in ("", "<NA>"):
            quarantine.append(quarantine_record(oid, stage, f"object {oid}: no image URI ({image_column})", row))
            continue
        try:
            res = measure_winding_file(resolve_image_uri(str(uri), data_root), options)
        except (ImageError, ManifestError, WindingError, OSError) as exc:
            quarantine.append(quarantine_record(oid, stage, f"object {oid}: {exc}", row))
            continue
        out_rows.append({**row, **result_columns(res, str(uri))})
    return out_rows, quarantine


def _measure_rows_worker(args: tuple) -> tuple[list[dict], list[dict]]:
    """Process-pool entry point (module level so that it pickles)."""
    return _measure_rows(*args)


def measure_winding_manifest(manifest_df, data_root: Path | str | None = None,
                             options: WindingOptions | None = None, workers: int = 1,
                             image_column: str = "image_uri", stage: str = "winding", progress: bool = False):
    """Winding sense of every row of a manifest DataFrame: ``(measured_df, quarantine_records)``.

    The image is the row's ``image_column`` (resolved with
    :func:`galmorph.catalogue.manifest.resolve_image_uri`). Rows whose image is missing or unreadable go to the
    quarantine with the reason (:func:`galmorph.catalogue.manifest.quarantine_record`); rows that are read stay,
    with the :data:`WINDING_COLUMNS` added (``winding`` None and NaN score when nothing could be
    measured; see ``winding_flags``). Rows in = rows out + rows quarantined. ``workers`` > 1 measures
    chunks in that many spawned processes; order and content are the same as with one.
    """
    import pandas as pd
    from tqdm import tqdm

    opt = options or WindingOptions()
    records = manifest_df.to_dict(orient="records")
    workers = max(int(workers), 1)
    size = max(8, math.ceil(len(records) / (workers * 8))) if workers > 1 else 64
    chunks = [records[i:i + size] for i in range(0, len(records), size)]
    args = [(c, data_root, opt, image_column, stage) for c in chunks]
    out_rows: list[dict] = []
    quarantine: list[dict] = []
    with tqdm(total=len(records), desc="winding", disable=not progress) as bar:
        if workers == 1 or len(records) < 2 * workers:
            results = map(_measure_rows_worker, args)
            pool = None
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the caller may hold threads (torch, MLflow) that a fork would copy mid-state
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
            results = pool.map(_measure_rows_worker, args)
        try:
            for chunk, (rows, quar) in zip(chunks, results):
                out_rows += rows
                quarantine += quar
                bar.update(len(chunk))
        finally:
            if pool is not None:
                pool.shutdown()
    cols = list(manifest_df.columns) + [c for c in WINDING_COLUMNS if c not in manifest_df.columns]
    return pd.DataFrame(out_rows, columns=cols), quarantine


def write_winding_manifest(manifest_path: str | Path, out_path: str | Path, quarantine_path: str | Path | None = None,
                           data_root: Path | str | None = None, options: WindingOptions | None = None,
                           workers: int = 1, image_column: str = "image_uri", progress: bool = False) -> dict:
    """Read a manifest, add the winding columns (:func:`measure_winding_manifest`), write ``out_path``
    (kind ``winding``) and the quarantine table (default ``<out>.quarantine.parquet``).
    Returns counts and paths; rows in = rows out + rows quarantined."""
    from galmorph.catalogue.manifest import (
        manifest_metadata,
        read_manifest,
        write_manifest,
        write_quarantine,
    )

    opt = options or WindingOptions()
    manifest_path, out_path = Path(manifest_path), Path(out_path)
    df = read_manifest(manifest_path)
    out, quarantine = measure_winding_manifest(df, data_root=data_root, options=opt, workers=workers,
                                               image_column=image_column, progress=progress)
    meta = {k: v for k, v in manifest_metadata(manifest_path).items() if k not in ("kind", "schema_version")}
    meta["winding_source"] = str(manifest_path)
    meta["winding_options"] = opt.to_dict()
    write_manifest(out, out_path, kind="winding", extra_meta=meta)
    qpath = Path(quarantine_path) if quarantine_path else out_path.with_name(out_path.stem + ".quarantine.parquet")
    write_quarantine(quarantine, qpath)
    n_dec = int(out["winding"].notna().sum()) if len(out) else 0
    log.info("winding: %d rows in, %d out (%d decided), %d quarantined", len(df), len(out), n_dec, len(quarantine))
    return {"rows_in": len(df), "rows_out": len(out), "decided": n_dec, "quarantined": len(quarantine),
            "manifest": out_path, "quarantine": qpath}
