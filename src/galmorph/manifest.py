"""The one dataset format: a Parquet manifest per dataset, plus a quarantine table.

Manifest schema (schema version 1). Required columns:

=============  ========  ==================================================================
column         type      meaning
=============  ========  ==================================================================
object_id      string    unique id within the manifest (survey object id or IAU name)
survey         string    ``sdss`` | ``decals`` | ``sim`` | ...
ra, dec        float64   ICRS degrees (NaN where the source has no coordinates)
z              float64   redshift (NaN where unknown)
z_bin          string    redshift bin label, e.g. ``0.01-0.03``; ``unknown`` for NaN z,
                         ``out_of_range`` outside the bin edges
image_uri      string    ``data://<relative path>`` (under the configured data root), a local
                         path, or ``file://`` URI; empty for catalogue-only manifests
label          string    class label of ``task`` (see :mod:`galmorph.tasks`), null if unlabelled
task           string    task the label belongs to (``lopsided``/``arms``/``chirality``) or null
provenance     string    where the row came from (file and row number, query, simulator seed)
=============  ========  ==================================================================

Any further columns (magnitudes, R50/R90, A1, stellar mass, vote fractions, ...) are kept.
The Parquet file's key-value metadata holds ``galmorph.kind`` and ``galmorph.schema_version``.

Quarantine tables (Parquet) hold every rejected row: ``object_id, stage, reason, row`` (the
original row as JSON), so that rows in = rows out + rows quarantined at every stage.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from galmorph.jsonsafe import finite_json, json_default

SCHEMA_VERSION = "1"
REQUIRED_COLUMNS: tuple[str, ...] = (
    "object_id", "survey", "ra", "dec", "z", "z_bin", "image_uri", "label", "task", "provenance",
)
STRING_COLUMNS = ("object_id", "survey", "z_bin", "image_uri", "label", "task", "provenance")
FLOAT_COLUMNS = ("ra", "dec", "z")
QUARANTINE_COLUMNS: tuple[str, ...] = ("object_id", "stage", "reason", "row")

#: Default redshift-bin edges: the SDSS selection (0.01-0.10) and the higher-z extension (0.10-0.20).
DEFAULT_Z_EDGES: tuple[float, ...] = (0.01, 0.03, 0.05, 0.07, 0.10, 0.12, 0.14, 0.16, 0.20)

DATA_SCHEME = "data://"


class ManifestError(ValueError):
    """A manifest (or a row in it) is unusable; the message names the object and the reason."""


# --------------------------------------------------------------------------------------------
# redshift bins
# --------------------------------------------------------------------------------------------
def z_bin_label(lo: float, hi: float) -> str:
    return f"{lo:.2f}-{hi:.2f}"


def assign_z_bin(z: Iterable[float] | pd.Series, edges: Sequence[float] = DEFAULT_Z_EDGES) -> pd.Series:
    """Label each redshift with its bin ``lo-hi`` (left-closed, last bin closed on the right)."""
    z = pd.Series(z, dtype="float64")
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"z-bin edges must be >= 2 increasing values, got {edges}")
    out = pd.Series(["out_of_range"] * len(z), index=z.index, dtype="object")
    out[z.isna()] = "unknown"
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        last = i == len(edges) - 2
        sel = (z >= lo) & ((z <= hi) if last else (z < hi))
        out[sel] = z_bin_label(lo, hi)
    return out.astype("string")


# --------------------------------------------------------------------------------------------
# image URIs
# --------------------------------------------------------------------------------------------
def data_uri(relpath: str | Path) -> str:
    """``data://`` URI of a file under the data root."""
    return DATA_SCHEME + Path(relpath).as_posix().lstrip("/")


def resolve_image_uri(uri: str, data_root: Path | str | None = None) -> Path:
    """Local path of an image URI (``data://`` is resolved under ``data_root``)."""
    if uri is None or (isinstance(uri, float) and math.isnan(uri)) or str(uri) == "":
        raise ManifestError("empty image URI")
    uri = str(uri)
    if uri.startswith(DATA_SCHEME):
        if data_root is None:
            raise ManifestError(f"image {uri!r} is under the data root, but no data root is configured "
                                "(set GALMORPH_DATA_ROOT)")
        root = Path(data_root).resolve()
        p = (root / uri[len(DATA_SCHEME):]).resolve()
        if root != p and root not in p.parents:
            raise ManifestError(f"image {uri!r} resolves outside the data root")
        return p
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    return Path(uri)


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------
def empty_manifest(extra_columns: Sequence[str] = ()) -> pd.DataFrame:
    cols = list(REQUIRED_COLUMNS) + [c for c in extra_columns if c not in REQUIRED_COLUMNS]
    return conform(pd.DataFrame({c: [] for c in cols}))


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing optional-valued columns and coerce the required ones to their types."""
    df = df.copy()
    for c in REQUIRED_COLUMNS:
        if c not in df.columns:
            if c == "object_id":
                raise ManifestError("manifest has no 'object_id' column")
            df[c] = np.nan if c in FLOAT_COLUMNS else None
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="raise").astype("float64")
    for c in STRING_COLUMNS:
        df[c] = df[c].astype("string")
    ordered = list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]
    return df[ordered].reset_index(drop=True)


def check_schema(df: pd.DataFrame, name: str = "manifest") -> None:
    """Raise :class:`ManifestError` naming the manifest and what is missing or malformed."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{name}: missing required column(s) {missing}")


def write_manifest(df: pd.DataFrame, path: str | Path, kind: str, extra_meta: dict | None = None) -> Path:
    """Write a manifest atomically (temporary file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = conform(df)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"galmorph.kind"] = kind.encode()
    meta[b"galmorph.schema_version"] = SCHEMA_VERSION.encode()
    for k, v in (extra_meta or {}).items():
        meta[f"galmorph.{k}".encode()] = json.dumps(v).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest and check its schema; the error names the file and the reason."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - reraised with the file named
        raise ManifestError(f"manifest {path} is not a readable Parquet file: {exc}") from exc
    check_schema(df, str(path))
    for c in STRING_COLUMNS:
        df[c] = df[c].astype("string")
    return df


def manifest_metadata(path: str | Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    out: dict[str, Any] = {}
    for k, v in meta.items():
        k = k.decode()
        if k.startswith("galmorph."):
            key = k[len("galmorph."):]
            val = v.decode()
            try:
                out[key] = json.loads(val) if key not in ("kind", "schema_version") else val
            except json.JSONDecodeError:
                out[key] = val
    return out


# --------------------------------------------------------------------------------------------
# quarantine
# --------------------------------------------------------------------------------------------
def quarantine_record(object_id: Any, stage: str, reason: str, row: dict | pd.Series | None = None) -> dict:
    row_dict = dict(row) if row is not None else {}
    return {
        "object_id": None if object_id is None else str(object_id),
        "stage": stage,
        "reason": reason,
        "row": json.dumps(finite_json(row_dict), default=json_default),
    }


def quarantine_frame(records: Iterable[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(records), columns=list(QUARANTINE_COLUMNS))
    return df.astype({c: "string" for c in QUARANTINE_COLUMNS})


def write_quarantine(records: Iterable[dict] | pd.DataFrame, path: str | Path) -> Path:
    """Write the quarantine table (always written, possibly empty, so stages have a fixed output)."""
    df = records if isinstance(records, pd.DataFrame) else quarantine_frame(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_quarantine(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)
