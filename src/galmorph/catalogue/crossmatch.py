"""Positional cross-match of two catalogues/manifests (astropy ``SkyCoord``).

Every row of the left table is matched to its nearest neighbour in the right table; pairs closer
than ``radius_arcsec`` (default 3") are matches. Unmatched rows of both sides are reported with a
reason (no coordinates, nearest neighbour too far and how far), so nothing is silently lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_RADIUS_ARCSEC = 3.0


class CrossmatchError(ValueError):
    """A table cannot be cross-matched; the message names it and the reason."""


@dataclass
class CrossmatchResult:
    pairs: pd.DataFrame  # left_id, right_id, sep_arcsec + prefixed columns of both sides
    unmatched_left: pd.DataFrame  # id, reason, nearest_arcsec
    unmatched_right: pd.DataFrame
    radius_arcsec: float
    n_left: int
    n_right: int
    stats: dict = field(default_factory=dict)

    @property
    def n_matches(self) -> int:
        return len(self.pairs)

    def summary(self) -> dict:
        return {"radius_arcsec": self.radius_arcsec, "n_left": self.n_left, "n_right": self.n_right,
                "matches": self.n_matches, "unmatched_left": len(self.unmatched_left),
                "unmatched_right": len(self.unmatched_right), **self.stats}


def _coords(df: pd.DataFrame, name: str, ra: str, dec: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = [c for c in (ra, dec) if c not in df.columns]
    if missing:
        raise CrossmatchError(f"{name}: missing coordinate column(s) {missing}")
    r = pd.to_numeric(df[ra], errors="coerce").to_numpy(dtype=float)
    d = pd.to_numeric(df[dec], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(r) & np.isfinite(d) & (d >= -90) & (d <= 90)
    return r, d, ok


def crossmatch(left: pd.DataFrame, right: pd.DataFrame, radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
               left_id: str = "object_id", right_id: str = "object_id", left_name: str = "left",
               right_name: str = "right", ra: str = "ra", dec: str = "dec", right_ra: str | None = None,
               right_dec: str | None = None, one_to_one: bool = False) -> CrossmatchResult:
    """Nearest-neighbour sky match of ``left`` rows to ``right`` rows within ``radius_arcsec``.

    With ``one_to_one`` a right row claimed by several left rows keeps only the closest; the others are
    reported unmatched. Columns of both sides are carried into ``pairs`` prefixed ``<name>_``."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    if radius_arcsec <= 0:
        raise CrossmatchError(f"cross-match radius must be > 0 arcsec, got {radius_arcsec}")
    for df, n, idc in ((left, left_name, left_id), (right, right_name, right_id)):
        if idc not in df.columns:
            raise CrossmatchError(f"{n}: missing id column {idc!r}")
        if df.empty:
            raise CrossmatchError(f"{n}: table has no rows")
    lra, ldec, lok = _coords(left, left_name, ra, dec)
    rra, rdec, rok = _coords(right, right_name, right_ra or ra, right_dec or dec)
    li, ri = np.flatnonzero(lok), np.flatnonzero(rok)
    unl: list[dict] = [{"id": str(left[left_id].iat[i]), "reason": f"{left_name}: no usable ra/dec",
                        "nearest_arcsec": np.nan} for i in np.flatnonzero(~lok)]
    unr: list[dict] = [{"id": str(right[right_id].iat[i]), "reason": f"{right_name}: no usable ra/dec",
                        "nearest_arcsec": np.nan} for i in np.flatnonzero(~rok)]
    pairs_idx: list[tuple[int, int, float]] = []
    if len(li) and len(ri):
        lc = SkyCoord(lra[li] * u.deg, ldec[li] * u.deg)
        rc = SkyCoord(rra[ri] * u.deg, rdec[ri] * u.deg)
        idx, sep, _ = lc.match_to_catalog_sky(rc)
        sep_as = sep.arcsec
        for k, (j, s) in enumerate(zip(idx, sep_as)):
            if s <= radius_arcsec:
                pairs_idx.append((int(li[k]), int(ri[j]), float(s)))
            else:
                unl.append({"id": str(left[left_id].iat[li[k]]),
                            "reason": f"nearest {right_name} object {right[right_id].iat[ri[j]]} at {s:.2f}\" "
                                      f"> {radius_arcsec}\"", "nearest_arcsec": float(s)})
    else:
        unl += [{"id": str(left[left_id].iat[i]), "reason": f"{right_name} has no usable coordinates",
                 "nearest_arcsec": np.nan} for i in li]
    n_multi = 0
    if pairs_idx:
        claimed = pd.Series([p[1] for p in pairs_idx])
        n_multi = int(claimed.duplicated(keep=False).sum())
        if one_to_one:
            best: dict[int, tuple[int, int, float]] = {}
            for p in pairs_idx:
                if p[1] not in best or p[2] < best[p[1]][2]:
                    best[p[1]] = p
            keep = set(best.values())
            for p in pairs_idx:
                if p not in keep:
                    unl.append({"id": str(left[left_id].iat[p[0]]),
                                "reason": f"{right_name} object {right[right_id].iat[p[1]]} is closer to another "
                                          f"{left_name} row", "nearest_arcsec": p[2]})
            pairs_idx = [p for p in pairs_idx if p in keep]
    matched_right = {p[1] for p in pairs_idx}
    unr += [{"id": str(right[right_id].iat[j]), "reason": f"no {left_name} object within {radius_arcsec}\"",
             "nearest_arcsec": np.nan} for j in ri if j not in matched_right]
    L = left.iloc[[p[0] for p in pairs_idx]].reset_index(drop=True).add_prefix(f"{left_name}_")
    R = right.iloc[[p[1] for p in pairs_idx]].reset_index(drop=True).add_prefix(f"{right_name}_")
    pairs = pd.concat([
        pd.DataFrame({"left_id": [str(left[left_id].iat[p[0]]) for p in pairs_idx],
                      "right_id": [str(right[right_id].iat[p[1]]) for p in pairs_idx],
                      "sep_arcsec": [p[2] for p in pairs_idx]}), L, R], axis=1)
    res = CrossmatchResult(
        pairs=pairs, unmatched_left=pd.DataFrame(unl, columns=["id", "reason", "nearest_arcsec"]),
        unmatched_right=pd.DataFrame(unr, columns=["id", "reason", "nearest_arcsec"]), radius_arcsec=radius_arcsec,
        n_left=len(left), n_right=len(right),
        stats={"right_rows_claimed_twice": n_multi,
               "median_sep_arcsec": float(np.median(pairs["sep_arcsec"])) if len(pairs) else None})
    assert res.n_matches + len(res.unmatched_left) == len(left)
    log.info("cross-match %s x %s at %.2f\": %d matches, %d/%d unmatched", left_name, right_name, radius_arcsec,
             res.n_matches, len(res.unmatched_left), len(res.unmatched_right))
    return res


def read_any(path: str | Path) -> pd.DataFrame:
    """A manifest (Parquet) or catalogue (CSV/FITS) for cross-matching."""
    from galmorph.catalogue.ingest import read_table

    return read_table(path)


def crossmatch_files(left_path: str | Path, right_path: str | Path, radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
                     out: str | Path | None = None, **kw) -> CrossmatchResult:
    """Cross-match two manifest/catalogue files; ``out`` (Parquet) receives the pairs, and
    ``<out stem>.unmatched.parquet`` both sides' unmatched rows."""
    left, right = read_any(left_path), read_any(right_path)
    kw.setdefault("left_name", Path(left_path).name.split(".")[0])
    kw.setdefault("right_name", Path(right_path).name.split(".")[0])
    if kw["left_name"] == kw["right_name"]:
        kw["right_name"] += "_2"
    res = crossmatch(left, right, radius_arcsec, **kw)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        res.pairs.astype({c: "string" for c in res.pairs.columns if res.pairs[c].dtype == object}).to_parquet(
            out, index=False)
        un = pd.concat([res.unmatched_left.assign(side=kw["left_name"]),
                        res.unmatched_right.assign(side=kw["right_name"])], ignore_index=True)
        un.to_parquet(out.with_name(out.stem + ".unmatched.parquet"), index=False)
    return res
