"""SkyServer SQL for the SDSS selection of the lopsided-galaxy study, and offline reading of its result.

The selection (SDSS DR18 ``SpecPhotoAll``/``PhotoObj`` + ``SpecObj``):

* ``0.01 < z < 0.1`` (spectroscopic redshift),
* extinction-corrected ``modelMag_g - extinction_g < 16``,
* ``petroR90_g >= 3`` arcsec (resolved),
* ``fracDeV_g <= 0.5`` (disc dominated),
* ``expAB_g >= 0.6`` (close to face-on).

The GZ2 fallback selects debiased spirals instead: ``t04_spiral_a08_spiral_debiased > 0.6`` from the
Galaxy Zoo 2 table (``zoo2MainSpecz``), with the same redshift range.

Fetching (``astroquery.sdss.SDSS.query_sql``) is optional: install the ``fetch`` extra. Without it,
a saved result (CSV or FITS table) is read with :func:`read_query_result`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SdssSelection:
    """Cuts of the lopsided study (defaults) — every value is a parameter."""

    z_min: float = 0.01
    z_max: float = 0.1
    mag_g_max: float = 16.0  # extinction-corrected modelMag_g
    petro_r90_g_min: float = 3.0  # arcsec
    frac_dev_g_max: float = 0.5
    exp_ab_g_min: float = 0.6
    spiral_debiased_min: float = 0.6  # GZ2 fallback
    top: int | None = None  # TOP n (None: all rows)

    def __post_init__(self) -> None:
        if not self.z_min < self.z_max:
            raise ValueError(f"z_min ({self.z_min}) must be below z_max ({self.z_max})")
        if self.top is not None and self.top < 1:
            raise ValueError(f"top must be >= 1, got {self.top}")


PHOTO_COLUMNS = (
    "p.objID", "p.ra", "p.dec", "s.z", "p.modelMag_g", "p.extinction_g",
    "p.modelMag_g - p.extinction_g AS modelMag_g_corr", "p.modelMag_r", "p.petroR50_g",
    "p.petroR90_g", "p.petroR50_r", "p.petroR90_r", "p.fracDeV_g", "p.expAB_g", "p.run", "p.rerun",
    "p.camcol", "p.field",
)


def build_selection_sql(sel: SdssSelection | None = None) -> str:
    """SkyServer SQL of the lopsided study's photometric + spectroscopic selection."""
    sel = sel or SdssSelection()
    top = f"TOP {int(sel.top)} " if sel.top else ""
    cols = ",\n  ".join(PHOTO_COLUMNS)
    return (
        f"SELECT {top}\n  {cols}\n"
        "FROM PhotoObj AS p\n"
        "JOIN SpecObj AS s ON s.bestObjID = p.objID\n"
        "WHERE p.type = 3\n"
        f"  AND s.z > {sel.z_min:g} AND s.z < {sel.z_max:g}\n"
        "  AND s.zWarning = 0\n"
        f"  AND (p.modelMag_g - p.extinction_g) < {sel.mag_g_max:g}\n"
        f"  AND p.petroR90_g >= {sel.petro_r90_g_min:g}\n"
        f"  AND p.fracDeV_g <= {sel.frac_dev_g_max:g}\n"
        f"  AND p.expAB_g >= {sel.exp_ab_g_min:g}\n"
        "ORDER BY p.objID"
    )


def build_gz2_fallback_sql(sel: SdssSelection | None = None) -> str:
    """SkyServer SQL of the GZ2 spiral fallback (debiased spiral fraction above the threshold)."""
    sel = sel or SdssSelection()
    top = f"TOP {int(sel.top)} " if sel.top else ""
    return (
        f"SELECT {top}\n  g.dr7objid, g.ra, g.dec, s.z, p.objID, p.petroR90_r, p.petroR90_g,\n"
        "  g.t04_spiral_a08_spiral_debiased, g.t11_arms_number_a31_1_debiased,\n"
        "  g.t11_arms_number_a32_2_debiased, g.t11_arms_number_a33_3_debiased,\n"
        "  g.t11_arms_number_a34_4_debiased, g.t11_arms_number_a36_more_than_4_debiased\n"
        "FROM zoo2MainSpecz AS g\n"
        "JOIN SpecObj AS s ON s.specObjID = g.specobjid\n"
        "JOIN PhotoObj AS p ON p.objID = s.bestObjID\n"
        f"WHERE g.t04_spiral_a08_spiral_debiased > {sel.spiral_debiased_min:g}\n"
        f"  AND s.z > {sel.z_min:g} AND s.z < {sel.z_max:g}\n"
        "ORDER BY g.dr7objid"
    )


def build_sql(sel: SdssSelection | None = None, fallback_gz2: bool = False) -> str:
    return build_gz2_fallback_sql(sel) if fallback_gz2 else build_selection_sql(sel)


def fetch(sql: str, data_release: int = 18, timeout: float = 600.0) -> pd.DataFrame:
    """Run the query on SkyServer through astroquery (needs the ``fetch`` extra and network)."""
    try:
        from astroquery.sdss import SDSS
    except ImportError as exc:
        raise RuntimeError(
            "fetching from SkyServer needs astroquery: install the extra with "
            "`uv sync --extra fetch` (or `pip install 'galmorph[fetch]'`); "
            "or save the query result as CSV/FITS and read it with --result"
        ) from exc
    log.info("querying SkyServer DR%d", data_release)
    table = SDSS.query_sql(sql, data_release=data_release, timeout=timeout)
    if table is None:
        raise RuntimeError("SkyServer returned no rows for the query")
    return table.to_pandas()


def read_query_result(path: str | Path) -> pd.DataFrame:
    """Read a saved query result: CSV (SkyServer's CSV output may start with a ``#Table1`` line),
    CSV.gz, or a FITS table."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"query result {path} does not exist")
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fits.gz")):
        from astropy.table import Table

        try:
            df = Table.read(path).to_pandas()
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"query result {path}: unreadable FITS table ({exc})") from exc
    else:
        with open(path, "rb") as fh:
            first = fh.readline()
        skip = 1 if first.lstrip().startswith(b"#Table") else 0
        try:
            df = pd.read_csv(path, skiprows=skip, comment=None)
        except pd.errors.EmptyDataError:
            raise ValueError(f"query result {path} is empty") from None
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: v.decode() if isinstance(v, bytes) else v)
    if df.empty:
        raise ValueError(f"query result {path} has no rows")
    return df


def apply_selection(df: pd.DataFrame, sel: SdssSelection | None = None) -> pd.Series:
    """Boolean mask of the rows of a saved photometric result that pass the selection (same cuts
    as the SQL; a result fetched with the SQL passes entirely)."""
    sel = sel or SdssSelection()
    cols = {c.lower(): c for c in df.columns}

    def col(*names: str) -> pd.Series:
        for n in names:
            if n.lower() in cols:
                return pd.to_numeric(df[cols[n.lower()]], errors="coerce")
        raise KeyError(f"query result lacks column(s) {list(names)}")

    if "modelmag_g_corr" in cols:
        mag = col("modelMag_g_corr")
    else:
        mag = col("modelMag_g") - col("extinction_g")
    z = col("z")
    return ((z > sel.z_min) & (z < sel.z_max) & (mag < sel.mag_g_max) & (col("petroR90_g") >= sel.petro_r90_g_min)
            & (col("fracDeV_g") <= sel.frac_dev_g_max) & (col("expAB_g") >= sel.exp_ab_g_min))
