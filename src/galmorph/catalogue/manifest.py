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
from collections.abc import Iterable, Iterator, Sequence
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

#: Highest plausible redshift of a galaxy in a manifest; above it a z value is an error, not a selection.
Z_MAX_PHYSICAL = 15.0


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
    if uri is None or uri is pd.NA or (isinstance(uri, float) and math.isnan(uri)) or str(uri).strip() == "":
        raise ManifestError("empty image URI")
    uri = str(uri)
    if uri.startswith(DATA_SCHEME):
        if data_root is None:
            raise ManifestError(f"image {uri!r} is under the data root, but no data root is configured "
                                "(set GALMORPH_DATA_ROOT)")
        try:
            root = Path(data_root).resolve()
            p = (root / uri[len(DATA_SCHEME):]).resolve()
        except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a symlink loop
            raise ManifestError(f"image {uri!r} cannot be resolved under the data root ({exc})") from exc
        if root != p and root not in p.parents:
            raise ManifestError(f"image {uri!r} resolves outside the data root")
        return p
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    return Path(uri)


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------
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
    meta = {**(table.schema.metadata or {}), **_meta_bytes(kind, extra_meta)}
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


#: Rows a streaming step reads, checks and writes at a time (one Parquet row group each): the steps that rewrite a
#: whole release (ingest, validate, cutout, drift) hold this many rows, not the release.
CHUNK_ROWS = 10_000


def stream_parquet(path: str | Path) -> pq.ParquetFile:
    """A Parquet file opened to be read batch by batch: without pre-buffering, which would read the column chunks
    of every row group ahead (about 10 MB more per 200 000 manifest rows), so memory would grow with the file."""
    return pq.ParquetFile(path, pre_buffer=False)


def manifest_num_rows(path: str | Path) -> int:
    """Rows of a Parquet manifest, from its footer (nothing read)."""
    return int(pq.ParquetFile(path).metadata.num_rows)


def iter_manifest(path: str | Path, columns: Sequence[str] | None = None,
                  chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """A Parquet manifest in chunks of at most ``chunk_rows`` (default :data:`CHUNK_ROWS`) rows, typed as :func:`read_manifest` types them;
    each chunk's index is its rows' positions in the file (the first chunk starts at 0). ``columns``: only these
    (those the file has)."""
    path = Path(path)
    try:
        pf = stream_parquet(path)
    except Exception as exc:  # noqa: BLE001 - reraised with the file named
        raise ManifestError(f"manifest {path} is not a readable Parquet file: {exc}") from exc
    names = pf.schema_arrow.names
    cols = None if columns is None else [c for c in columns if c in names]
    start = 0
    for batch in pf.iter_batches(batch_size=int(chunk_rows or CHUNK_ROWS), columns=cols):
        df = batch.to_pandas()
        if columns is None:
            df = _fill_columns(df, f"manifest {path}")
        for c in STRING_COLUMNS:
            if c in df.columns:
                df[c] = df[c].astype("string")
        for c in FLOAT_COLUMNS:
            if c in df.columns and not pd.api.types.is_float_dtype(df[c].dtype):
                df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        df.index = pd.RangeIndex(start, start + len(df))
        start += len(df)
        yield df


def _meta_bytes(kind: str | None, extra_meta: dict | None) -> dict[bytes, bytes]:
    meta: dict[bytes, bytes] = {}
    if kind is not None:
        meta[b"galmorph.kind"] = kind.encode()
        meta[b"galmorph.schema_version"] = SCHEMA_VERSION.encode()
    for k, v in (extra_meta or {}).items():
        meta[f"galmorph.{k}".encode()] = json.dumps(v).encode()
    return meta


class ManifestWriter:
    """A manifest written chunk by chunk (one Parquet row group per :meth:`write`), for steps that stream a
    release: the first chunk fixes the columns and their types (later chunks are cast to them; a column the first
    chunk lacks is an error naming it), the metadata is given at :meth:`close`, and the file appears atomically
    then (temporary file, rename). With no rows written the manifest is empty with the schema's columns.
    Use as a context manager: an exception leaves no file."""

    def __init__(self, path: str | Path, kind: str, extra_meta: dict | None = None):
        self.path = Path(path)
        self.kind = kind
        self.extra_meta = dict(extra_meta or {})
        self.rows = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._writer: pq.ParquetWriter | None = None

    def write(self, df: pd.DataFrame) -> None:
        if df is None or not len(df):
            return
        df = conform(df)
        if self._writer is None:
            table = pa.Table.from_pandas(df, preserve_index=False)
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema],
                               metadata=table.schema.metadata)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, schema)
        schema = self._writer.schema
        extra = [c for c in df.columns if c not in schema.names]
        if extra:
            raise ManifestError(f"manifest {self.path}: column(s) {extra} appear after its first "
                                f"{self.rows} rows were written without them")
        df = df.reindex(columns=schema.names)
        table = pa.Table.from_pandas(df, preserve_index=False)
        try:
            table = table.cast(schema) if table.schema != schema else table
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ManifestError(f"manifest {self.path}: rows {self.rows}.. do not have the types of its first rows "
                                f"({exc})") from exc
        self._writer.write_table(table)
        self.rows += len(df)

    def close(self, extra_meta: dict | None = None) -> Path:
        self.extra_meta.update(extra_meta or {})
        if self._writer is None:
            return write_manifest(pd.DataFrame(columns=list(REQUIRED_COLUMNS)), self.path, self.kind,
                                  self.extra_meta)
        self._writer.add_key_value_metadata(_meta_bytes(self.kind, self.extra_meta))
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


#: Keys :class:`RepeatedKeys` holds in memory before it spills them to disk (16 bytes each).
SPILL_ROWS = 65_536
_PARTITION_BITS = 8  # 256 partition files once spilled


def key_hashes(keys: Sequence[Any] | pd.Series) -> np.ndarray:
    """64-bit hashes of ``keys`` as text (the same text always gives the same hash)."""
    return pd.util.hash_pandas_object(pd.Series(keys, dtype="object").astype(str), index=False
                                      ).to_numpy(dtype=np.uint64)


class Repeats:
    """The rows whose key repeats an earlier row's, each with the row its key was first met at (sorted by row; 16
    bytes per repeat)."""

    def __init__(self, rows: np.ndarray, firsts: np.ndarray):
        order = np.argsort(rows, kind="stable")
        self.rows, self.firsts = rows[order].astype(np.int64), firsts[order].astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def first_of(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Per row: the first row of its key when it is a repeat, else -1."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self.rows) or not len(rows):
            return np.full(len(rows), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.rows, rows), 0, len(self.rows) - 1)
        return np.where(self.rows[pos] == rows, self.firsts[pos], -1)

    def first_rows(self) -> set[int]:
        """The rows met first by a key that repeats."""
        return set(np.unique(self.firsts).tolist())


class RepeatedKeys:
    """Finds the rows whose key (an object id, a file name) repeats an earlier row's, in memory bounded whatever the
    release's size: feed the keys in row order chunk by chunk (:meth:`add`; a null or blank key is skipped but
    keeps its row number), then :meth:`repeats`.

    Keys are held as 64-bit hashes with their row (16 bytes each) up to :data:`SPILL_ROWS`; past that they are
    partitioned by hash into 256 files in a temporary folder (``workdir``, else ``$TMPDIR``) and each partition is
    sorted on its own, so memory holds one spill buffer and one partition, not the release. Two different keys
    sharing a hash would read as a repeat: for 10 million different keys the chance that any two do is about 3 in
    a million."""

    def __init__(self, spill_rows: int | None = None, workdir: str | Path | None = None):
        self._spill = int(spill_rows or SPILL_ROWS)
        self._workdir = workdir
        self._h: list[np.ndarray] = []
        self._r: list[np.ndarray] = []
        self._held = 0
        self._dir: Path | None = None
        self.rows = 0

    def add(self, keys: Sequence[Any] | pd.Series) -> None:
        text = pd.Series(keys, dtype="object").astype("string")
        ok = (text.notna() & text.str.strip().ne("")).fillna(False).to_numpy(dtype=bool)
        pos = np.flatnonzero(ok)
        if len(pos):
            self._h.append(key_hashes(text[ok].tolist()))
            self._r.append(pos.astype(np.int64) + self.rows)
            self._held += len(pos)
            if self._held >= self._spill:
                self._flush()
        self.rows += len(text)

    def _flush(self) -> None:
        import tempfile

        if not self._h:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="galmorph-keys-", dir=self._workdir))
        rec = np.empty(self._held, dtype=[("h", "<u8"), ("r", "<i8")])
        rec["h"], rec["r"] = np.concatenate(self._h), np.concatenate(self._r)
        self._h, self._r, self._held = [], [], 0
        part = (rec["h"] >> np.uint64(64 - _PARTITION_BITS)).astype(np.int64)
        order = np.argsort(part, kind="stable")  # rows stay in order within a partition
        rec, part = rec[order], part[order]
        bounds = np.searchsorted(part, np.arange((1 << _PARTITION_BITS) + 1))
        for k in range(1 << _PARTITION_BITS):
            if bounds[k + 1] > bounds[k]:
                with open(self._dir / f"{k:03d}.bin", "ab") as f:
                    rec[bounds[k]:bounds[k + 1]].tofile(f)

    @staticmethod
    def _repeats_in(h: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(h, kind="stable")  # rows ascending within a hash
        h, r = h[order], r[order]
        new = np.ones(len(h), dtype=bool)
        new[1:] = h[1:] != h[:-1]
        first = r[new][np.cumsum(new) - 1]
        return r[~new], first[~new]

    def repeats(self) -> Repeats:
        """The repeated rows and their first rows (the temporary files are removed)."""
        import shutil

        try:
            if self._dir is None:
                h = np.concatenate(self._h) if self._h else np.empty(0, dtype=np.uint64)
                r = np.concatenate(self._r) if self._r else np.empty(0, dtype=np.int64)
                return Repeats(*self._repeats_in(h, r))
            self._flush()
            rows, firsts = [], []
            for f in sorted(self._dir.glob("*.bin")):
                rec = np.fromfile(f, dtype=[("h", "<u8"), ("r", "<i8")])
                a, b = self._repeats_in(rec["h"], rec["r"])
                rows.append(a)
                firsts.append(b)
            return Repeats(np.concatenate(rows) if rows else np.empty(0, dtype=np.int64),
                           np.concatenate(firsts) if firsts else np.empty(0, dtype=np.int64))
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            self._h, self._r, self._held = [], [], 0


def repeated_keys(chunks: Iterable[Sequence[Any] | pd.Series], spill_rows: int | None = None,
                  workdir: str | Path | None = None) -> Repeats:
    """:class:`RepeatedKeys` of the keys in ``chunks`` (in row order)."""
    finder = RepeatedKeys(spill_rows, workdir)
    for keys in chunks:
        finder.add(keys)
    return finder.repeats()


def repeated_ids(path: str | Path, column: str = "object_id", key=None,
                 workdir: str | Path | None = None) -> Repeats:
    """:func:`repeated_keys` of a Parquet manifest's ``column`` (read alone, chunk by chunk: rows are the file's
    positions; a file without the column has no keys, so no repeats); ``key`` maps each non-blank value to the key
    compared instead (e.g. the file name an id gives)."""
    pf = stream_parquet(path)
    if column not in pf.schema_arrow.names:
        return Repeats(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))

    def chunks():
        for batch in pf.iter_batches(batch_size=int(CHUNK_ROWS), columns=[column]):
            vals = batch.column(0).to_pylist()
            if key is not None:
                vals = [None if v is None or not str(v).strip() else key(str(v)) for v in vals]
            yield vals
    return repeated_keys(chunks(), workdir=workdir)


CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")


def is_csv(path: str | Path) -> bool:
    """Whether ``path`` names a delimited-text table (CSV/TSV, optionally gzipped)."""
    return Path(path).name.lower().endswith(CSV_SUFFIXES)


def read_csv_rows(path: str | Path, id_column: str | None = "object_id") -> tuple[pd.DataFrame, list[dict]]:
    """Read a CSV/TSV with every cell as a string (ids keep their leading zeros and full precision).

    A ragged line (more or fewer fields than the header) is not parsed into the table (pandas would
    shift its fields or take the first column as the index); it comes back as a quarantine record
    under the value of ``id_column`` at that column's position, or under ``line N`` when the line is
    too short to hold it. Returns ``(table, ragged_records)``; the error names the file otherwise."""
    import csv
    import gzip
    import io

    path = Path(path)
    if not path.exists():
        raise ManifestError(f"table {path} does not exist")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    delim = "\t" if ".tsv" in path.name.lower() else ","
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise ManifestError(f"table {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(f"table {path} is empty (no header)") from None
    except csv.Error as exc:
        raise ManifestError(f"table {path}: unreadable header: {exc}") from exc
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ManifestError(f"table {path}: duplicate column name(s) {dup}")
    pos = header.index(id_column) if id_column in header else None
    rows: list[list[str]] = []
    ragged: list[dict] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ManifestError(f"table {path} line {reader.line_num}: {exc}") from exc
        line = reader.line_num
        if not fields or all(f.strip() == "" for f in fields):
            if len(fields) <= 1:
                continue  # blank line
        if len(fields) != len(header):
            oid = fields[pos].strip() if pos is not None and pos < len(fields) else ""
            where = f"{path.name} line {line}"
            ragged.append(quarantine_record(
                oid or None, "read",
                f"{where}: {len(fields)} field(s), the header has {len(header)}"
                + ("" if oid else f" (no readable {id_column}; object named by its line)"),
                {"line": line, "fields": fields}))
            continue
        rows.append(fields)
    df = pd.DataFrame(rows, columns=header, dtype="object")
    df = df.replace({"": None})
    return df, ragged


def _fill_columns(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Require ``object_id`` and ``image_uri``; add the other required columns (NaN / null, ``z_bin`` from
    ``z``) and coerce numbers, so a CSV with just ``object_id,image_uri`` is a manifest."""
    if "object_id" not in df.columns:
        raise ManifestError(f"{name}: no 'object_id' column (columns: {list(df.columns)[:20]}); "
                            "every manifest row needs an object id")
    if "image_uri" not in df.columns:
        raise ManifestError(f"{name}: no 'image_uri' column (columns: {list(df.columns)[:20]}); "
                            "add one (empty for catalogue-only rows)")
    df = df.copy()
    for c in FLOAT_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    if "z_bin" not in df.columns:
        df["z_bin"] = assign_z_bin(pd.to_numeric(df["z"], errors="coerce"))
    for c in REQUIRED_COLUMNS:
        if c not in df.columns:
            df[c] = None
    return df


def numeric_problems(df: pd.DataFrame, columns: Sequence[str] = FLOAT_COLUMNS) -> dict[int, list[str]]:
    """Row position -> ``["ra 'abc' is not a number", ...]`` for cells present but not numbers."""
    out: dict[int, list[str]] = {}
    for c in columns:
        if c not in df.columns or pd.api.types.is_numeric_dtype(df[c].dtype):
            continue
        raw = df[c]
        num = pd.to_numeric(raw, errors="coerce")
        present = raw.notna() & (raw.astype("string").str.strip() != "")
        for i in np.flatnonzero((present & num.isna()).to_numpy()):
            out.setdefault(int(i), []).append(f"{c} {raw.iat[i]!r} is not a number")
    return out


def read_manifest_table(path: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """A manifest (Parquet, or CSV/TSV) as stored: ``(frame, ragged_line_records)``.

    Only ``object_id`` and ``image_uri`` are required; missing optional columns are added. Numeric
    columns of a CSV stay text here (see :func:`numeric_problems`); :func:`read_manifest` converts them."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    ragged: list[dict] = []
    if is_csv(path):
        df, ragged = read_csv_rows(path)
    else:
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - reraised with the file named
            raise ManifestError(f"manifest {path} is not a readable Parquet file (or a .csv): {exc}") from exc
    df = _fill_columns(df, f"manifest {path}")
    for c in STRING_COLUMNS:
        df[c] = df[c].astype("string")
    return df, ragged


def read_manifest(path: str | Path, bad_rows: list[dict] | None = None) -> pd.DataFrame:
    """Read a manifest (Parquet or CSV/TSV); the error names the file and the reason.

    ``object_id`` (read as a string) and ``image_uri`` are required, the other schema columns are
    filled when absent. Rows that cannot be read (ragged CSV lines) are appended to ``bad_rows`` as
    quarantine records; without ``bad_rows`` they are an error naming their lines. ``ra``/``dec``/``z``
    cells that are not numbers become NaN with a warning (``galmorph validate`` quarantines them)."""
    df, ragged = read_manifest_table(path)
    if ragged:
        if bad_rows is None:
            lines = ", ".join(r["reason"].split(":", 1)[0] for r in ragged[:5])
            raise ManifestError(f"manifest {path}: {len(ragged)} unreadable row(s) ({lines}"
                                f"{', ...' if len(ragged) > 5 else ''}); run `galmorph validate` to quarantine them")
        bad_rows.extend(ragged)
    probs = numeric_problems(df)
    if probs:
        import logging

        first = next(iter(probs))
        logging.getLogger(__name__).warning(
            "manifest %s: %d row(s) with non-numeric ra/dec/z read as NaN (first: object %s, %s)", path,
            len(probs), df["object_id"].iat[first], probs[first][0])
    for c in FLOAT_COLUMNS:
        if not pd.api.types.is_float_dtype(df[c].dtype):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


#: Metadata keys that travel with a manifest's rows through every step that rewrites it (validate, cutout,
#: dataset copies, the train/test split): what training must know about the catalogue a selection was drawn
#: from (``catalogue_label_counts``: the label counts before any down-sampling, :mod:`galmorph.training.defaults`).
CARRIED_METADATA = ("catalogue_label_counts",)


def carried_metadata(manifest: "str | Path | pd.DataFrame | None") -> dict[str, Any]:
    """The :data:`CARRIED_METADATA` entries of the manifest file ``manifest`` ({} for a frame, None or a CSV)."""
    if manifest is None or isinstance(manifest, pd.DataFrame):
        return {}
    meta = manifest_metadata(manifest)
    return {k: meta[k] for k in CARRIED_METADATA if k in meta}


def manifest_metadata(path: str | Path) -> dict[str, Any]:
    """The ``galmorph.*`` metadata of a Parquet manifest ({} for a CSV/TSV manifest, which has none)."""
    if is_csv(path):
        return {}
    # the file's key-value metadata: the schema's (write_manifest) and any added at the end (ManifestWriter)
    meta = pq.ParquetFile(path).metadata.metadata or {}
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


class QuarantineWriter:
    """A quarantine table written as it grows (records or frames appended), atomically at :meth:`close`; always
    written, possibly empty. Use as a context manager: an exception leaves no file."""

    _SCHEMA = pa.Table.from_pandas(quarantine_frame([]), preserve_index=False).schema

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._writer = pq.ParquetWriter(self._tmp, self._SCHEMA)

    def write(self, records: Iterable[dict] | pd.DataFrame) -> None:
        df = records if isinstance(records, pd.DataFrame) else quarantine_frame(records)
        if not len(df):
            return
        df = df[list(QUARANTINE_COLUMNS)].astype({c: "string" for c in QUARANTINE_COLUMNS})
        self._writer.write_table(pa.Table.from_pandas(df, preserve_index=False).cast(self._SCHEMA))
        self.rows += len(df)

    def close(self) -> Path:
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self) -> "QuarantineWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)


def read_quarantine(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)
