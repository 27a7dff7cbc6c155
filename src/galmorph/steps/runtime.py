"""What a pipeline component needs at run time: the tracking URI, the data root, dataset copies.

Components call these so that their bodies stay one library call. Nothing here imports kfp.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from galmorph.catalogue.manifest import carried_metadata, read_manifest, write_manifest
from galmorph.steps.artifacts import MANIFEST_NAME, dataset_manifest_path, open_dataset, relativize_images

log = logging.getLogger(__name__)


def setup(tracking_uri: str = "", data_root: str = "") -> tuple[str, Path | None]:
    """Resolve the MLflow tracking URI and the data root with :func:`galmorph.settings.resolve_settings`
    (argument, else ``GALMORPH_*``, else ``MLFLOW_TRACKING_URI`` for the URI, else ``.env``, else the
    default; ``""`` means not given), point mlflow (and child processes) at the URI and configure
    logging. Returns both."""
    from galmorph.settings import resolve_settings
    from galmorph.tracking import use_platform_uri

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    uri = s.mlflow_tracking_uri
    use_platform_uri(uri)  # tracking and registry, for this process and its children
    return uri, s.data_root


def as_dir(path: str | Path) -> Path:
    """An output artifact path used as a folder (created)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def subset_dataset(src: str | Path, out_dir: str | Path, object_ids: list[str] | None = None,
                   manifest_path: str | Path | None = None) -> Path:
    """Copy a dataset (or the rows of ``object_ids`` / of ``manifest_path``) with its images into
    ``out_dir`` (``manifest.parquet`` + ``images/``), image URIs relative to ``out_dir``.

    Images are hard-linked when possible, else copied, so the dataset is self-contained whatever
    path the next step receives it at."""
    out = as_dir(out_dir)
    opened = open_dataset(src, work_dir=out / ".open")
    df = read_manifest(manifest_path) if manifest_path is not None else read_manifest(opened)
    if object_ids is not None:
        keep = set(map(str, object_ids))
        df = df[df["object_id"].astype(str).isin(keep)]
    img_dir = out / "images"
    img_dir.mkdir(exist_ok=True)
    new_uris = []
    for oid, uri in zip(df["object_id"].astype(str), df["image_uri"]):
        if uri is None or not str(uri) or str(uri) == "<NA>":
            new_uris.append(uri)
            continue
        srcp = Path(str(uri))
        dst = img_dir / f"{oid.replace('/', '_')}{srcp.suffix}"
        if not dst.exists():
            try:
                os.link(srcp, dst)
            except OSError:
                shutil.copyfile(srcp, dst)
        new_uris.append(str(dst))
    df = df.copy()
    df["image_uri"] = new_uris
    write_manifest(df, out / MANIFEST_NAME, kind="dataset",
                   extra_meta=carried_metadata(manifest_path if manifest_path is not None else opened))
    shutil.rmtree(out / ".open", ignore_errors=True)
    relativize_images(out)
    return out / MANIFEST_NAME


def write_json(path: str | Path, obj: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=str))
    return p


__all__ = ["as_dir", "dataset_manifest_path", "open_dataset", "relativize_images", "setup",
           "subset_dataset", "write_json"]
