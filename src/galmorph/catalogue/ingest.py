"""Catalogue ingest: every source -> one Parquet manifest (:mod:`galmorph.manifest`) + quarantine.

Each ``ingest_<source>`` function reads its catalogue with explicit paths and returns
``(manifest_df, quarantine_records)``; :func:`ingest` dispatches by source name, fills the default
paths under the data root and writes both tables. Rows in = rows out + rows quarantined, always:
a row that cannot be used (non-numeric RA/Dec, unparseable name, duplicate id, ...) is quarantined
with its reason; a catalogue that cannot be used at all (missing file, missing columns, no rows)
raises :class:`IngestError` naming the file and the reason.

Sources (``SOURCES``)::

    gz1_chirality   gz1_chirality/labels.csv + images/<dr7objid>.jpeg     chirality CW/ACW/other
    gz2_arms        gz2_arms/labels.csv + images/<dr7objid>.png           arms 1..4, 5+, cant_tell
    gz2_table       catalogues/gz2_stripe82_table5.csv.gz (clean arm-number sample)   arms
    decals          decals/catalog.csv + images/<iauname>.jpg             (RA/Dec from the IAU name)
    lopsided        catalogues/lopsided/*.csv                             lopsided/symmetric
    hart            catalogues/hart2017_spirals.csv                       arms (from GZ2 flags)
    sdss_fits       sdss_fits/cutouts/*.fits                              (RA/Dec from CRVAL)
    sim:<dir>       a `galmorph simulate` output folder
    folder:<dir>    any image folder (JPEG/PNG/FITS), ids from file names
    catalogue       any table (--path FILE) with an id and an image column, columns mapped with
                    ``columns={"object_id": "objid", "image_uri": "file"}`` (``--map object_id=objid``)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.catalogue import manifest as manifest_module
from galmorph.catalogue.manifest import (
    REQUIRED_COLUMNS,
    ManifestWriter,
    QuarantineWriter,
    assign_z_bin,
    conform,
    data_uri,
    quarantine_frame,
    quarantine_record,
    repeated_keys,
    write_manifest,
    write_quarantine,
)

log = logging.getLogger(__name__)

STAGE = "ingest"

GZ1_CHIRALITY = {"clockwise": "CW", "anticlockwise": "ACW"}

ARM_FLAG_COLUMNS = {
    "1": "t11_arms_number_a31_1_flag",
    "2": "t11_arms_number_a32_2_flag",
    "3": "t11_arms_number_a33_3_flag",
    "4": "t11_arms_number_a34_4_flag",
    "5+": "t11_arms_number_a36_more_than_4_flag",
    "cant_tell": "t11_arms_number_a37_cant_tell_flag",
}
ARM_ANSWER_PREFIX = {
    "1": "t11_arms_number_a31_1",
    "2": "t11_arms_number_a32_2",
    "3": "t11_arms_number_a33_3",
    "4": "t11_arms_number_a34_4",
    "5+": "t11_arms_number_a36_more_than_4",
    "cant_tell": "t11_arms_number_a37_cant_tell",
}

IAU_RE = re.compile(
    r"J(?P<h>\d{2})(?P<m>\d{2})(?P<s>\d{2}(?:\.\d*)?)(?P<sign>[+-])(?P<d>\d{2})(?P<dm>\d{2})(?P<ds>\d{2}(?:\.\d*)?)"
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".fits", ".fit", ".fits.gz", ".fits.bz2")

Records = list[dict]


class IngestError(ValueError):
    """A catalogue cannot be ingested; the message names the file and the reason."""


@dataclass
class IngestResult:
    """What :func:`ingest` wrote."""

    source: str
    kind: str
    manifest_path: Path
    quarantine_path: Path
    n_in: int
    n_out: int
    n_quarantined: int
    label_counts: dict[str, int] = field(default_factory=dict)
    manifest: pd.DataFrame | None = field(default=None, repr=False)
    quarantine: pd.DataFrame | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "manifest": str(self.manifest_path),
                "quarantine": str(self.quarantine_path), "rows_in": self.n_in, "rows_out": self.n_out,
                "rows_quarantined": self.n_quarantined, "labels": self.label_counts}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def parse_iau_name(name: str) -> tuple[float, float]:
    """RA, Dec (degrees) of an IAU-style name ``[SDSS ]Jhhmmss.ss+ddmmss.s``.

    Raises ``ValueError`` naming the string when it does not parse or is out of range."""
    m = IAU_RE.search(str(name))
    if not m:
        raise ValueError(f"cannot parse RA/Dec from name {name!r} (expected Jhhmmss.ss+ddmmss.s)")
    h, mi, s = int(m["h"]), int(m["m"]), float(m["s"])
    d, dm, ds = int(m["d"]), int(m["dm"]), float(m["ds"])
    if h > 23 or mi > 59 or s >= 60 or d > 90 or dm > 59 or ds >= 60:
        raise ValueError(f"name {name!r} encodes an out-of-range position")
    ra = 15.0 * (h + mi / 60 + s / 3600)
    dec = (d + dm / 60 + ds / 3600) * (-1 if m["sign"] == "-" else 1)
    if abs(dec) > 90:
        raise ValueError(f"name {name!r} encodes |Dec| > 90")
    return ra, dec


def read_table(path: str | Path, bad_rows: Records | None = None, id_column: str | None = None) -> pd.DataFrame:
    """Read a catalogue (CSV, CSV.gz, TSV, Parquet or FITS table) with ids kept as strings.

    Ragged CSV lines (wrong number of fields) are appended to ``bad_rows`` as quarantine records under
    the value at ``id_column``'s position (or their line number); without ``bad_rows`` they are an error."""
    from galmorph.catalogue.manifest import ManifestError, is_csv, read_csv_rows

    path = Path(path)
    if not path.exists():
        raise IngestError(f"catalogue {path} does not exist")
    if path.stat().st_size == 0:
        raise IngestError(f"catalogue {path} is empty (zero bytes)")
    name = path.name.lower()
    ragged: Records = []
    try:
        if name.endswith(".parquet"):
            df = pd.read_parquet(path)
        elif name.endswith((".fits", ".fit", ".fits.gz")):
            from astropy.table import Table

            df = Table.read(path).to_pandas()
        elif is_csv(path) or not name.endswith((".parquet", ".fits", ".fit")):
            df, ragged = read_csv_rows(path, id_column)
            df = df.fillna(np.nan)
    except ManifestError as exc:
        raise IngestError(str(exc).replace("table ", "catalogue ", 1)) from exc
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"catalogue {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if ragged:
        if bad_rows is None:
            raise IngestError(f"catalogue {path}: {len(ragged)} ragged line(s) ({ragged[0]['reason']})")
        for r in ragged:
            r["stage"] = STAGE
        bad_rows.extend(ragged)
    if df.empty and not ragged:
        raise IngestError(f"catalogue {path} has no rows")
    return df


def require_columns(df: pd.DataFrame, columns: list[str] | tuple[str, ...], name: str | Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IngestError(f"catalogue {name}: missing column(s) {missing}; has {list(df.columns)[:20]}")


def image_uri_for(path: Path, data_root: Path | None) -> str:
    """``data://`` URI when ``path`` is under the data root, else the absolute path."""
    path = Path(path).resolve()
    if data_root is not None:
        root = Path(data_root).resolve()
        if root == path or root in path.parents:
            return data_uri(path.relative_to(root))
    return str(path)


def _num(v: Any) -> float:
    """Float of a catalogue cell; NaN for empty; ValueError for text."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return math.nan
    s = str(v).strip()
    if s == "" or s.lower() in ("nan", "null", "none"):
        return math.nan
    return float(s)


def _row_dict(df: pd.DataFrame, i: int) -> dict:
    return {k: v for k, v in df.iloc[i].to_dict().items()}


def _finalise(rows: list[dict], quarantine: Records, df_in_len: int, source: str,
              coords_required: bool = True) -> tuple[pd.DataFrame, Records]:
    """Check coordinates and duplicate ids, add z bins, conform types. Keeps rows in = out + quarantined."""
    good: list[dict] = []
    seen: dict[str, str] = {}
    for r in rows:
        oid = str(r["object_id"]).strip() if r.get("object_id") is not None else ""
        prov = r.get("provenance", "")
        if oid == "" or oid.lower() == "nan":
            quarantine.append(quarantine_record(None, STAGE, f"{source}: empty object id ({prov})", r))
            continue
        r["object_id"] = oid
        bad = None
        for c in ("ra", "dec", "z"):
            try:
                r[c] = _num(r.get(c))
            except (TypeError, ValueError):
                bad = f"{source} object {oid}: non-numeric {c} {r.get(c)!r} ({prov})"
                break
        if bad is None and coords_required and (math.isnan(r["ra"]) or math.isnan(r["dec"])):
            bad = f"{source} object {oid}: missing ra/dec ({prov})"
        if bad:
            quarantine.append(quarantine_record(oid, STAGE, bad, r))
            continue
        if oid in seen:
            quarantine.append(quarantine_record(
                oid, STAGE, f"{source} object {oid}: duplicate object_id (first seen in {seen[oid]}; "
                f"this one {prov})", r))
            continue
        seen[oid] = str(prov)
        good.append(r)
    df = pd.DataFrame(good) if good else pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    if "z" not in df.columns:
        df["z"] = np.nan
    df["z_bin"] = assign_z_bin(df["z"]) if len(df) else pd.Series([], dtype="string")
    return conform(df), quarantine


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
def ingest_gz1_chirality(labels_csv: str | Path, images_dir: str | Path, data_root: Path | None = None,
                         image_suffix: str = ".jpeg") -> tuple[pd.DataFrame, Records]:
    """GZ1 classes -> chirality labels (clockwise = CW, anticlockwise = ACW, every other class = other).
    No coordinates are available: ra/dec/z are NaN."""
    q: Records = []
    df = read_table(labels_csv, q, "dr7objid")
    require_columns(df, ["dr7objid", "gz1_class"], labels_csv)
    images_dir = Path(images_dir)
    rows = []
    for i in range(len(df)):
        oid = str(df["dr7objid"].iat[i]).strip()
        cls = str(df["gz1_class"].iat[i]).strip() if pd.notna(df["gz1_class"].iat[i]) else ""
        prov = f"{Path(labels_csv).name} row {i + 2}"
        if cls == "":
            q.append(quarantine_record(oid, STAGE, f"gz1_chirality object {oid}: empty gz1_class ({prov})",
                                       _row_dict(df, i)))
            continue
        rows.append({"object_id": oid, "survey": "sdss", "ra": np.nan, "dec": np.nan, "z": np.nan,
                     "image_uri": image_uri_for(images_dir / f"{oid}{image_suffix}", data_root),
                     "label": GZ1_CHIRALITY.get(cls, "other"), "task": "chirality", "provenance": prov,
                     "gz1_class": cls, "dr7objid": oid})
    return _finalise(rows, q, len(df), "gz1_chirality", coords_required=False)


def arms_label_from_mean(n_arms_mean: float) -> str | None:
    """Round the volunteer-weighted mean arm count to a class: 1..4, 5+ (0 -> cant_tell)."""
    if n_arms_mean is None or not np.isfinite(n_arms_mean):
        return None
    n = int(math.floor(n_arms_mean + 0.5))
    if n <= 0:
        return "cant_tell"
    return "5+" if n >= 5 else str(n)


def arms_label_from_flags(row: dict) -> str | None:
    """The GZ2 arm-number class whose clean-sample flag is set (None unless exactly one is)."""
    set_ = [k for k, c in ARM_FLAG_COLUMNS.items() if c in row and _flag(row[c])]
    return set_[0] if len(set_) == 1 else None


def _flag(v: Any) -> bool:
    try:
        return _num(v) == 1
    except (TypeError, ValueError):
        return False


def ingest_gz2_arms(labels_csv: str | Path, images_dir: str | Path, data_root: Path | None = None,
                    image_suffix: str = ".png") -> tuple[pd.DataFrame, Records]:
    """GZ2 spirals with Galaxy Builder arm counts: label = round(n_arms_mean) (1..4, 5+), falling
    back to the single set GZ2 ``t11`` flag when the mean is missing (else unlabelled)."""
    q: Records = []
    df = read_table(labels_csv, q, "dr7objid")
    require_columns(df, ["dr7objid", "ra", "dec", "z", "n_arms_mean"], labels_csv)
    images_dir = Path(images_dir)
    rows = []
    for i in range(len(df)):
        r = _row_dict(df, i)
        oid = str(r["dr7objid"]).strip()
        prov = f"{Path(labels_csv).name} row {i + 2}"
        try:
            mean = _num(r["n_arms_mean"])
        except ValueError:
            q.append(quarantine_record(oid, STAGE, f"gz2_arms object {oid}: non-numeric n_arms_mean "
                                       f"{r['n_arms_mean']!r} ({prov})", r))
            continue
        label = arms_label_from_mean(mean)
        label_source = "n_arms_mean"
        if label is None:
            label = arms_label_from_flags(r)
            label_source = "gz2_flag" if label else "none"
        out = {"object_id": oid, "survey": "sdss", "ra": r["ra"], "dec": r["dec"], "z": r["z"],
               "image_uri": image_uri_for(images_dir / f"{oid}{image_suffix}", data_root),
               "label": label, "task": "arms", "provenance": prov, "dr7objid": oid,
               "n_arms_mean": mean, "label_source": label_source}
        for c in ("log_mstar", "petro_theta_arcsec", *ARM_FLAG_COLUMNS.values()):
            if c in r:
                try:
                    out[c] = _num(r[c])
                except ValueError:
                    out[c] = np.nan
        rows.append(out)
    return _finalise(rows, q, len(df), "gz2_arms")


def gz2_arm_clean_sample(df: pd.DataFrame, features_min: float = 0.430, not_edge_on_min: float = 0.715,
                         spiral_min: float = 0.715, n_spiral_min: int = 20, rho_m_min: float = 0.8,
                         fraction_kind: str = "weighted_fraction") -> tuple[pd.Series, pd.Series, pd.Series]:
    """Clean-sample cuts of the GZ2 arm-number study on a GZ2 table.

    ``rho_features/disc > 0.430``, ``rho_not-edge-on > 0.715``, ``rho_spiral > 0.715`` (debiased
    fractions), ``N_spiral > 20`` (votes on the spiral question), ``rho_m > 0.8`` where rho_m is the
    highest arm-number ``fraction_kind`` fraction; label = that answer.
    Returns ``(mask, label, rho_m)``."""
    need = ["t01_smooth_or_features_a02_features_or_disk_debiased", "t02_edgeon_a05_no_debiased",
            "t04_spiral_a08_spiral_debiased", "t04_spiral_a08_spiral_count",
            *[f"{p}_{fraction_kind}" for p in ARM_ANSWER_PREFIX.values()]]
    require_columns(df, need, "GZ2 table")
    num = {c: pd.to_numeric(df[c], errors="coerce") for c in need}
    fr = pd.DataFrame({k: num[f"{p}_{fraction_kind}"] for k, p in ARM_ANSWER_PREFIX.items()})
    rho_m = fr.max(axis=1)
    label = fr.idxmax(axis=1).where(rho_m.notna())
    mask = ((num["t01_smooth_or_features_a02_features_or_disk_debiased"] > features_min)
            & (num["t02_edgeon_a05_no_debiased"] > not_edge_on_min)
            & (num["t04_spiral_a08_spiral_debiased"] > spiral_min)
            & (num["t04_spiral_a08_spiral_count"] > n_spiral_min)
            & (rho_m > rho_m_min))
    return mask.fillna(False), label, rho_m


def ingest_gz2_table(table_path: str | Path, clean_sample: bool = True, survey: str = "sdss",
                     **cuts: Any) -> tuple[pd.DataFrame, Records]:
    """A GZ2 table (e.g. the Stripe 82 table 5). With ``clean_sample`` only the arm-number clean sample
    is kept; the rows cut are *selection*, not errors, and are not quarantined (the manifest's metadata
    records the counts). Label = the arm-number answer with the highest weighted fraction."""
    df = read_table(table_path)
    id_col = "objid" if "objid" in df.columns else "dr7objid"
    require_columns(df, [id_col, "ra", "dec"], table_path)
    mask, label, rho_m = gz2_arm_clean_sample(df, **cuts)
    rows, q = [], []
    idx = np.flatnonzero(mask.to_numpy()) if clean_sample else np.arange(len(df))
    keep_cols = [c for c in df.columns if c.startswith("t11_") or c in (
        "sample", "t04_spiral_a08_spiral_debiased", "t04_spiral_a08_spiral_count",
        "t01_smooth_or_features_a02_features_or_disk_debiased", "t02_edgeon_a05_no_debiased")]
    for i in idx:
        oid = str(df[id_col].iat[i]).strip()
        out = {"object_id": oid, "survey": survey, "ra": df["ra"].iat[i], "dec": df["dec"].iat[i],
               "z": df["z"].iat[i] if "z" in df.columns else np.nan, "image_uri": "",
               "label": label.iat[i] if bool(mask.iat[i]) else None, "task": "arms",
               "provenance": f"{Path(table_path).name} row {i + 2}", "rho_m": float(rho_m.iat[i]),
               "clean_sample": bool(mask.iat[i])}
        for c in keep_cols:
            v = pd.to_numeric(pd.Series([df[c].iat[i]]), errors="coerce").iat[0]
            out[c] = df[c].iat[i] if (pd.isna(v) and c == "sample") else v
        rows.append(out)
    man, q = _finalise(rows, q, len(idx), "gz2_table")
    man.attrs["n_table_rows"] = len(df)
    return man, q


def ingest_decals(catalog_csv: str | Path, images_dir: str | Path, data_root: Path | None = None,
                  image_suffix: str = ".jpg") -> tuple[pd.DataFrame, Records]:
    """DECaLS JPEGs named by IAU name; RA/Dec parsed from the name. Ring flag and GZ DECaLS vote
    fractions kept as columns (no task label)."""
    q: Records = []
    df = read_table(catalog_csv, q, "iauname")
    require_columns(df, ["iauname"], catalog_csv)
    images_dir = Path(images_dir)
    rows = []
    for i in range(len(df)):
        r = _row_dict(df, i)
        name = str(r["iauname"]).strip()
        prov = f"{Path(catalog_csv).name} row {i + 2}"
        try:
            ra, dec = parse_iau_name(name)
        except ValueError as exc:
            q.append(quarantine_record(name, STAGE, f"decals object {name}: {exc} ({prov})", r))
            continue
        out = {"object_id": name, "survey": "decals", "ra": ra, "dec": dec, "z": np.nan,
               "image_uri": image_uri_for(images_dir / f"{name}{image_suffix}", data_root),
               "label": None, "task": None, "provenance": prov, "iauname": name}
        for c, v in r.items():
            if c != "iauname":
                try:
                    out[c] = _num(v)
                except ValueError:
                    out[c] = v
        rows.append(out)
    return _finalise(rows, q, len(df), "decals")


LOPSIDED_TRAINING = {"Training_Lopsided.csv": "lopsided", "Symmetric_Lopsided.csv": "symmetric"}
LOPSIDED_PREDICTED = {
    "High_confidence_predicted_lopsided.csv": ("lopsided", "L_pred", "high"),
    "High_confidence_predicted_symmetric.csv": ("symmetric", "S_pred", "high"),
    "Below_85prediction_lopsided.csv": ("lopsided", "L_pred", "below_0.85"),
    "Below_85prediction_symmetric.csv": ("symmetric", "S_pred", "below_0.85"),
}


def ingest_lopsided(catalogue_dir: str | Path, include_predicted: bool = False) -> tuple[pd.DataFrame, Records]:
    """The lopsided-galaxy catalogue: the visual training labels (``Training_Lopsided`` -> lopsided,
    ``Symmetric_Lopsided`` -> symmetric, with A1); optionally the CNN-predicted rest of the sample
    (unlabelled rows with ``predicted_class`` and ``p_pred``). RA/Dec from ``SDSS_name``."""
    catalogue_dir = Path(catalogue_dir)
    files: list[tuple[str, dict]] = [(f, {"label": lab}) for f, lab in LOPSIDED_TRAINING.items()]
    if include_predicted:
        files += [(f, {"pred": v}) for f, v in LOPSIDED_PREDICTED.items()]
    rows, q = [], []
    n_in = 0
    for fname, info in files:
        path = catalogue_dir / fname
        df = read_table(path, q, "objID")
        need = ["SDSS_name", "objID"] + (["A1"] if "label" in info else [info["pred"][1]])
        require_columns(df, need, path)
        n_in += len(df)
        for i in range(len(df)):
            r = _row_dict(df, i)
            name = str(r["SDSS_name"]).strip()
            oid = str(r["objID"]).strip()
            prov = f"{fname} row {i + 2}"
            try:
                ra, dec = parse_iau_name(name)
            except ValueError as exc:
                q.append(quarantine_record(oid, STAGE, f"lopsided object {oid}: {exc} ({prov})", r))
                continue
            out = {"object_id": oid, "survey": "sdss", "ra": ra, "dec": dec, "z": np.nan, "image_uri": "",
                   "task": "lopsided", "provenance": prov, "sdss_name": name}
            try:
                if "label" in info:
                    out.update(label=info["label"], A1=_num(r["A1"]), label_source="visual")
                else:
                    cls, col, conf = info["pred"]
                    out.update(label=None, predicted_class=cls, p_pred=_num(r[col]), pred_confidence=conf,
                               label_source="cnn_prediction")
            except ValueError as exc:
                q.append(quarantine_record(oid, STAGE, f"lopsided object {oid}: non-numeric value ({exc}) ({prov})", r))
                continue
            rows.append(out)
    return _finalise(rows, q, n_in, "lopsided")


def ingest_hart(catalogue_csv: str | Path) -> tuple[pd.DataFrame, Records]:
    """The Hart et al. (2017) GZ2 spirals: z from ``Z``, ``logMstar``; arm-number label from the GZ2
    clean flags (when exactly one is set; else unlabelled)."""
    q: Records = []
    df = read_table(catalogue_csv, q, "dr7objid")
    require_columns(df, ["dr7objid", "ra", "dec", "Z"], catalogue_csv)
    rows = []
    extra = [c for c in ("logMstar", "PETRO_THETA", "SERSIC_BA", "p_bar", "psi_gz2", "psi_sparcfire",
                         "t04_spiral_a08_spiral_debiased", *ARM_FLAG_COLUMNS.values()) if c in df.columns]
    for i in range(len(df)):
        r = _row_dict(df, i)
        oid = str(r["dr7objid"]).strip()
        out = {"object_id": oid, "survey": "sdss", "ra": r["ra"], "dec": r["dec"], "z": r["Z"], "image_uri": "",
               "label": arms_label_from_flags(r), "task": "arms",
               "provenance": f"{Path(catalogue_csv).name} row {i + 2}", "dr7objid": oid,
               "iauname": r.get("IAUNAME")}
        bad = None
        for c in extra:
            try:
                out[c] = _num(r[c])
            except ValueError:
                bad = f"hart object {oid}: non-numeric {c} {r[c]!r} ({out['provenance']})"
        if bad:
            q.append(quarantine_record(oid, STAGE, bad, r))
            continue
        rows.append(out)
    return _finalise(rows, q, len(df), "hart")


def _fits_centre(path: Path) -> tuple[float, float]:
    from galmorph.imaging.io import read_fits

    im = read_fits(path, require_wcs=True)
    ra, dec = (float(v) for v in im.wcs.wcs.crval)
    return ra, dec


#: File names a folder listing sorts in memory before it spills a sorted run to disk.
LISTING_RUN = 16_384
_MERGE_FAN_IN = 64  # sorted runs merged at once (open files)


class _FolderNames:
    """The image files of ``folder`` matching ``pattern``, by name (sorted; names only), in bounded memory: the
    listing is read in runs of :data:`LISTING_RUN` names, each sorted and spilled to a temporary file
    (``$TMPDIR``), and the runs are merged as the names are iterated (any number of times); a folder of one run
    stays in memory. Memory holds one run and a line per open run, not the folder's names."""

    def __init__(self, folder: Path, pattern: str):
        import fnmatch
        import tempfile

        self._dir: Path | None = None
        self._runs: list[Path] = []
        self._names: list[str] = []
        self._n_written = 0
        self.count = 0
        run_rows = int(LISTING_RUN)
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if fnmatch.fnmatchcase(e.name, pattern) and e.name.lower().endswith(IMAGE_SUFFIXES) \
                            and e.is_file():
                        self._names.append(e.name)
                        self.count += 1
                        if len(self._names) >= run_rows:
                            if self._dir is None:
                                self._dir = Path(tempfile.mkdtemp(prefix="galmorph-listing-"))
                            self._runs.append(self._spill(self._names))
                            self._names = []
            self._names.sort()
            if self._runs and self._names:
                self._runs.append(self._spill(self._names))
                self._names = []
            while len(self._runs) > _MERGE_FAN_IN:  # merge runs in groups first: a bounded number of open files
                head, self._runs = self._runs[:_MERGE_FAN_IN], self._runs[_MERGE_FAN_IN:]
                self._runs.append(self._write_run(self._merged(head)))
                for r in head:
                    r.unlink()
        except BaseException:
            self.close()
            raise

    def _write_run(self, names: Iterable[str]) -> Path:
        self._n_written += 1
        path = self._dir / f"run{self._n_written:06d}.txt"  # type: ignore[operator]
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            for n in names:
                f.write(json.dumps(n) + "\n")  # escaped: a name may hold any character
        return path

    def _spill(self, names: list[str]) -> Path:
        names.sort()
        return self._write_run(names)

    @staticmethod
    def _read_run(path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8", errors="surrogatepass") as f:
            for line in f:
                yield json.loads(line)

    def _merged(self, runs: list[Path]) -> Iterator[str]:
        import heapq

        return heapq.merge(*(self._read_run(r) for r in runs))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        return self._merged(self._runs) if self._runs else iter(self._names)

    def close(self) -> None:
        import shutil

        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_image_folder(folder: str | Path, data_root: Path | None = None, survey: str = "unknown",
                      pattern: str = "*", id_from_name: Callable[[str], str] | None = None,
                      source: str = "folder", task: str | None = None, label: str | None = None,
                      chunk_rows: int | None = None) -> Iterator[tuple[pd.DataFrame, Records]]:
    """:func:`ingest_image_folder` in chunks of ``chunk_rows`` files (default
    :data:`~galmorph.catalogue.manifest.CHUNK_ROWS`): ``(manifest rows, quarantine records)`` per
    chunk, so a release of any size is ingested in bounded memory (the listing too, :class:`_FolderNames`). An
    object id repeating another file's (found first, in bounded memory:
    :func:`~galmorph.catalogue.manifest.repeated_keys`) is quarantined as a duplicate; the first of its files
    that is ingested keeps it."""
    from galmorph.imaging.io import ImageError, is_fits

    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(f"image folder {folder} does not exist")
    names = _FolderNames(folder, pattern)
    try:
        if not len(names):
            raise IngestError(f"image folder {folder} holds no images matching {pattern!r} ({IMAGE_SUFFIXES})")

        def object_id(name: str) -> str:
            stem = name.split(".")[0]
            return id_from_name(stem) if id_from_name else re.sub(r"_[ugriz]$", "", stem)

        step = int(chunk_rows or manifest_module.CHUNK_ROWS)
        repeats = repeated_keys([object_id(n) for n in b] for b in _batched(names, step))
        shared = repeats.first_rows()
        owner: dict[int, str] = {}  # first file of a repeated id -> the file ingested under it
        pos = 0
        for batch in _batched(names, step):
            firsts = repeats.first_of(np.arange(pos, pos + len(batch)))
            rows, q = [], []
            groups: dict[str, int] = {}  # file name -> first row of its repeated id, within the chunk
            for k, name in enumerate(batch):
                p = folder / name
                oid = object_id(name)
                prov = f"{folder.name}/{name}"
                row = {"object_id": oid, "survey": survey, "ra": np.nan, "dec": np.nan, "z": np.nan,
                       "image_uri": image_uri_for(p, data_root), "label": label, "task": task,
                       "provenance": prov, "file_name": name}
                group = int(firsts[k]) if firsts[k] >= 0 else pos + k
                if group in owner:
                    q.append(quarantine_record(oid, STAGE, f"{source} object {oid}: duplicate object_id (first seen "
                                               f"in {folder.name}/{owner[group]}; this one {prov})", row))
                    continue
                if group in shared:
                    groups[name] = group
                if is_fits(p):
                    try:
                        row["ra"], row["dec"] = _fits_centre(p)
                    except ImageError as exc:
                        q.append(quarantine_record(oid, STAGE, f"{source} object {oid}: {exc}", {"path": str(p)}))
                        continue
                elif IAU_RE.search(stem := name.split(".")[0]):
                    row["ra"], row["dec"] = parse_iau_name(stem)
                rows.append(row)
            df, q = _finalise(rows, q, len(rows) + len(q), source, coords_required=False)
            for name in (df["file_name"] if len(df) and groups else ()):
                if name in groups:  # the file ingested under a repeated id: its later files are duplicates
                    owner[groups[name]] = name
            pos += len(batch)
            yield df, q
    finally:
        names.close()


def ingest_image_folder(folder: str | Path, data_root: Path | None = None, survey: str = "unknown",
                        pattern: str = "*", id_from_name: Callable[[str], str] | None = None,
                        source: str = "folder", task: str | None = None,
                        label: str | None = None) -> tuple[pd.DataFrame, Records]:
    """Any folder of images: object id = file stem (``_r`` band suffix of FITS dropped); RA/Dec from
    the FITS WCS reference value (CRVAL) or from an IAU name in the file name when there is one.
    A FITS without a usable WCS is quarantined. (:func:`ingest` streams a folder in chunks instead:
    :func:`iter_image_folder`.)"""
    parts, q = [], []
    for df, qq in iter_image_folder(folder, data_root, survey, pattern, id_from_name, source, task, label):
        parts.append(df)
        q.extend(qq)
    parts = [d for d in parts if len(d)] or parts[:1]
    return conform(pd.concat(parts, ignore_index=True)), q


def ingest_sdss_fits(cutouts_dir: str | Path, data_root: Path | None = None) -> tuple[pd.DataFrame, Records]:
    """The SDSS r-band FITS cutouts: id = DR8 objid from the file name, RA/Dec = WCS CRVAL."""
    man, q = ingest_image_folder(cutouts_dir, data_root, survey="sdss", pattern="*.fits", source="sdss_fits")
    man["band"] = "r"
    return man, q


def ingest_sim(sim_dir: str | Path, task: str | None = None, image: str = "jpg") -> tuple[pd.DataFrame, Records]:
    """A ``galmorph simulate`` output folder: truth table -> manifest, image = ``jpg`` | ``png`` | ``fits``,
    label from the truth column of ``task`` (default: the task it was simulated for)."""
    from galmorph.tasks import TASK_LABEL_COLUMNS

    sim_dir = Path(sim_dir)
    truth_path = sim_dir / "truth.parquet"
    if not truth_path.exists():
        raise IngestError(f"simulator folder {sim_dir} has no truth.parquet (run `galmorph simulate --out {sim_dir}`)")
    truth = pd.read_parquet(truth_path)
    if truth.empty:
        raise IngestError(f"simulator truth table {truth_path} has no rows")
    if task is None and (sim_dir / "manifest.parquet").exists():
        from galmorph.catalogue.manifest import manifest_metadata

        task = manifest_metadata(sim_dir / "manifest.parquet").get("task")
    if image not in ("jpg", "png", "fits"):
        raise IngestError(f"simulator image kind must be jpg, png or fits, got {image!r}")
    rows = []
    for i, r in enumerate(truth.drop(columns=["params"], errors="ignore").to_dict("records")):
        # paths are stored absolute; re-anchor to the folder so a moved/copied folder still works
        rel = Path(image) / Path(r[f"{image}_path"]).name
        r.update(image_uri=str(sim_dir / rel), task=task,
                 label=r[TASK_LABEL_COLUMNS[task]] if task else None,
                 provenance=f"{sim_dir.name}/truth.parquet row {i} (seed {r.get('seed')})")
        rows.append(r)
    return _finalise(rows, [], len(truth), "sim")


CATALOGUE_FIELDS = ("object_id", "image_uri", "ra", "dec", "z", "label", "task", "survey")


def parse_column_map(items: Any) -> dict[str, str]:
    """``["object_id=objid", "image_uri=file"]`` (or a dict) -> ``{manifest column: catalogue column}``."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for it in items or ():
            if "=" not in str(it):
                raise IngestError(f"column map {it!r} must be MANIFEST_COLUMN=CATALOGUE_COLUMN")
            a, b = str(it).split("=", 1)
            pairs.append((a.strip(), b.strip()))
    out: dict[str, str] = {}
    for a, b in pairs:
        if a not in CATALOGUE_FIELDS:
            raise IngestError(f"column map {a}={b}: {a!r} is not a manifest column; map one of {CATALOGUE_FIELDS}")
        if not b:
            raise IngestError(f"column map {a}=: the catalogue column is empty")
        out[a] = b
    return out


def ingest_catalogue(path: str | Path, columns: dict[str, str] | None = None, data_root: Path | None = None,
                     images_dir: str | Path | None = None, survey: str = "unknown", task: str | None = None,
                     coords_required: bool = False) -> tuple[pd.DataFrame, Records]:
    """Any catalogue table (CSV/TSV/Parquet/FITS) with an id and an image column.

    ``columns`` maps manifest columns to the catalogue's (``{"object_id": "objid", "image_uri": "file"}``);
    unmapped manifest columns are taken from same-named catalogue columns when present. A relative image
    path is resolved under ``images_dir`` (default: the catalogue's folder); ``data://``, ``file://`` and
    absolute paths are kept. Every other catalogue column is kept. RA/Dec/z that are present but not
    numbers are quarantined; missing ones stay NaN unless ``coords_required``."""
    path = Path(path)
    cmap = {c: c for c in CATALOGUE_FIELDS}
    cmap.update(parse_column_map(columns or {}))
    q: Records = []
    df = read_table(path, q, cmap["object_id"])
    require_columns(df, [cmap["object_id"]], path)
    if "image_uri" in (columns or {}):
        require_columns(df, [cmap["image_uri"]], path)
    for k in ("ra", "dec", "z", "label", "task", "survey"):
        if k in (columns or {}):
            require_columns(df, [cmap[k]], path)
    img_root = Path(images_dir) if images_dir is not None else path.parent
    mapped = set(cmap.values())
    rows = []
    for i in range(len(df)):
        r = _row_dict(df, i)
        oid = r.get(cmap["object_id"])
        prov = f"{path.name} row {i + 2}"
        img = r.get(cmap["image_uri"])
        img = "" if img is None or (isinstance(img, float) and math.isnan(img)) else str(img).strip()
        if img and not (img.startswith(("data://", "file://", "s3://", "gs://")) or Path(img).is_absolute()):
            img = image_uri_for(img_root / img, data_root)
        out = {"object_id": None if oid is None or (isinstance(oid, float) and math.isnan(oid)) else str(oid),
               "survey": r.get(cmap["survey"]) or survey, "ra": r.get(cmap["ra"]), "dec": r.get(cmap["dec"]),
               "z": r.get(cmap["z"]), "image_uri": img, "label": r.get(cmap["label"]),
               "task": r.get(cmap["task"]) or task, "provenance": prov}
        for c, v in r.items():
            if c not in mapped and c not in out:
                out[c] = v
        rows.append(out)
    return _finalise(rows, q, len(df), "catalogue", coords_required=coords_required)


# --------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------
SOURCES = ("gz1_chirality", "gz2_arms", "gz2_table", "decals", "lopsided", "hart", "sdss_fits", "sim:<dir>",
           "folder:<dir>", "catalogue")


def _root(data_root: Path | None, source: str) -> Path:
    if data_root is None or not Path(data_root).is_dir():
        raise IngestError(f"source {source!r} lives under the data root, which is not set or missing "
                          f"({data_root}); set GALMORPH_DATA_ROOT")
    return Path(data_root)


def load_source(source: str, data_root: Path | str | None = None, **opts: Any) -> tuple[pd.DataFrame, Records, str]:
    """Run one source's ingest; returns ``(manifest_df, quarantine_records, kind)``."""
    dr = Path(data_root) if data_root is not None else None
    if source.startswith("sim:"):
        return (*ingest_sim(source[4:], task=opts.get("task"), image=opts.get("image", "jpg")),
                f"sim-{opts.get('task') or 'all'}")
    if source.startswith("folder:"):
        return (*ingest_image_folder(source[7:], dr, survey=opts.get("survey", "unknown"),
                                     pattern=opts.get("pattern", "*"), task=opts.get("task"),
                                     label=opts.get("label")), "images")
    if source == "catalogue" or source.startswith("catalogue:"):
        path = opts.get("path") or (source.split(":", 1)[1] if ":" in source else None)
        if not path:
            raise IngestError("source 'catalogue' needs the table: --path FILE (or catalogue:FILE)")
        return (*ingest_catalogue(path, opts.get("columns"), dr, images_dir=opts.get("images"),
                                  survey=opts.get("survey") or "unknown", task=opts.get("task"),
                                  coords_required=bool(opts.get("coords_required", False))), "catalogue")
    if source == "gz1_chirality":
        root = _root(dr, source)
        return (*ingest_gz1_chirality(opts.get("labels", root / "gz1_chirality/labels.csv"),
                                      opts.get("images", root / "gz1_chirality/images"), dr), "gz1_chirality")
    if source == "gz2_arms":
        root = _root(dr, source)
        return (*ingest_gz2_arms(opts.get("labels", root / "gz2_arms/labels.csv"),
                                 opts.get("images", root / "gz2_arms/images"), dr), "gz2_arms")
    if source == "gz2_table":
        root = _root(dr, source) if "table" not in opts else dr
        table = opts.pop("table", None) or root / "catalogues/gz2_stripe82_table5.csv.gz"
        cuts = {k: v for k, v in opts.items() if k in ("features_min", "not_edge_on_min", "spiral_min",
                                                       "n_spiral_min", "rho_m_min", "fraction_kind", "clean_sample")}
        return (*ingest_gz2_table(table, **cuts), "gz2_table")
    if source == "decals":
        root = _root(dr, source)
        return (*ingest_decals(opts.get("catalog", root / "decals/catalog.csv"),
                               opts.get("images", root / "decals/images"), dr), "decals")
    if source == "lopsided":
        root = _root(dr, source)
        return (*ingest_lopsided(opts.get("catalogue_dir", root / "catalogues/lopsided"),
                                 include_predicted=bool(opts.get("include_predicted", False))), "lopsided")
    if source == "hart":
        root = _root(dr, source)
        return (*ingest_hart(opts.get("catalogue", root / "catalogues/hart2017_spirals.csv")), "hart")
    if source == "sdss_fits":
        root = _root(dr, source)
        return (*ingest_sdss_fits(opts.get("images", root / "sdss_fits/cutouts"), dr), "sdss_fits")
    if Path(source).is_dir():
        return (*ingest_image_folder(source, dr, survey=opts.get("survey", "unknown")), "images")
    raise IngestError(f"unknown source {source!r}; expected one of {SOURCES} or an image folder")


def _count_labels(counts: dict[str, int], labels: pd.Series) -> None:
    for k, v in labels.value_counts(dropna=False).items():
        k = "null" if str(k) in ("<NA>", "nan", "None") else str(k)
        counts[k] = counts.get(k, 0) + int(v)


def _folder_source(source: str, opts: dict[str, Any]) -> str | None:
    """The image folder of a ``folder:`` source (or of a plain folder path), else None."""
    if source.startswith("folder:"):
        return source[7:]
    known = source.startswith(("sim:", "catalogue")) or source in SOURCES
    return source if not known and Path(source).is_dir() else None


def _ingest_folder_streamed(folder: str, source: str, out_manifest: Path, quarantine_path: Path,
                            data_root: Path | str | None, **opts: Any) -> IngestResult:
    """:func:`ingest` of an image folder, chunk by chunk (:func:`iter_image_folder`): memory bounded by a chunk."""
    dr = Path(data_root) if data_root is not None else None
    labels: dict[str, int] = {}
    n_out = n_q = 0
    with ManifestWriter(out_manifest, "images") as w, QuarantineWriter(quarantine_path) as qw:
        for df, q in iter_image_folder(folder, dr, survey=opts.get("survey", "unknown"),
                                       pattern=opts.get("pattern", "*"), task=opts.get("task"),
                                       label=opts.get("label")):
            w.write(df)
            qw.write(q)
            _count_labels(labels, df["label"])
            n_out, n_q = n_out + len(df), n_q + len(q)
        w.close({"source": source, "rows_in": n_out + n_q, "rows_quarantined": n_q, "labels": labels})
        qw.close()
    log.info("ingest %s: %d rows in, %d out, %d quarantined -> %s", source, n_out + n_q, n_out, n_q, out_manifest)
    return IngestResult(source=source, kind="images", manifest_path=out_manifest, quarantine_path=quarantine_path,
                        n_in=n_out + n_q, n_out=n_out, n_quarantined=n_q, label_counts=labels)


def ingest(source: str, out_manifest: str | Path, quarantine_path: str | Path | None = None,
           data_root: Path | str | None = None, **opts: Any) -> IngestResult:
    """Ingest ``source`` and write its manifest (Parquet) and quarantine table.

    ``quarantine_path`` defaults to ``<manifest stem>.quarantine.parquet`` beside the manifest. An image folder
    (a survey release) is streamed in chunks of :data:`~galmorph.catalogue.manifest.CHUNK_ROWS` files: the
    result then holds the counts, not the frames."""
    out_manifest = Path(out_manifest)
    quarantine_path = Path(quarantine_path) if quarantine_path else out_manifest.with_name(
        out_manifest.stem + ".quarantine.parquet")
    folder = _folder_source(source, opts)
    if folder is not None:
        return _ingest_folder_streamed(folder, source, out_manifest, quarantine_path, data_root, **opts)
    man, q, kind = load_source(source, data_root, **opts)
    n_in = len(man) + len(q)  # for gz2_table: rows of the clean sample (the cut is a selection)
    labels: dict[str, int] = {}
    if len(man):
        _count_labels(labels, man["label"])
    meta = {"source": source, "rows_in": n_in, "rows_quarantined": len(q), "labels": labels}
    if "n_table_rows" in man.attrs:
        meta["table_rows"] = man.attrs["n_table_rows"]
    write_manifest(man, out_manifest, kind=kind, extra_meta=meta)
    qdf = quarantine_frame(q)
    write_quarantine(qdf, quarantine_path)
    log.info("ingest %s: %d rows in, %d out, %d quarantined -> %s", source, n_in, len(man), len(q), out_manifest)
    return IngestResult(source=source, kind=kind, manifest_path=out_manifest, quarantine_path=quarantine_path,
                        n_in=n_in, n_out=len(man), n_quarantined=len(q), label_counts=labels, manifest=man,
                        quarantine=qdf)
