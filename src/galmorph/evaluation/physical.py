"""Physical properties of a predicted catalogue against a property table.

The analysis of the lopsided study: join the predicted classes to a table of galaxy properties (for
example the Hart et al. 2017 spirals: stellar mass ``logMstar``, redshift ``Z``) by sky position, then

* per-class medians with quartiles (:func:`class_property_summary`);
* two-sample Kolmogorov-Smirnov and one-tailed Welch t-tests of each class against the parent sample
  (all matched galaxies) (:func:`compare_to_parent`);
* redshift-stratified resampling (:func:`redshift_matched_resampling`): the comparison class is
  resampled in ``dz = 0.01`` bins to the redshift distribution of the reference class, 100 times,
  so that a difference that survives is not a redshift (selection) effect.

:func:`load_lopsided_catalogue` reads the published lopsided catalogue (training labels + model
predictions) and :func:`match_property_table` cross-matches any catalogue with RA/Dec to a property
table (3" by default, with :func:`galmorph.catalogue.crossmatch.crossmatch`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.catalogue.crossmatch import crossmatch
from galmorph.catalogue.ingest import parse_iau_name

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# the published lopsided catalogue
# --------------------------------------------------------------------------------------------
LOPSIDED_FILES = {
    "Training_Lopsided.csv": ("lopsided", "training", None),
    "Symmetric_Lopsided.csv": ("symmetric", "training", None),
    "High_confidence_predicted_lopsided.csv": ("lopsided", "predicted_high", "L_pred"),
    "High_confidence_predicted_symmetric.csv": ("symmetric", "predicted_high", "S_pred"),
    "Below_85prediction_lopsided.csv": ("lopsided", "predicted_low", "L_pred"),
    "Below_85prediction_symmetric.csv": ("symmetric", "predicted_low", "S_pred"),
}


def load_lopsided_catalogue(folder: str | Path) -> pd.DataFrame:
    """All rows of the published lopsided catalogue with ``object_id, sdss_name, ra, dec, label,
    source`` (training / predicted_high (P >= 0.85) / predicted_low), ``p_class`` (the model's
    probability of the listed class; NaN for training rows), ``A1`` (training rows) and ``file``.
    A name that cannot be parsed raises naming the file and row."""
    folder = Path(folder)
    frames = []
    for fname, (label, source, pcol) in LOPSIDED_FILES.items():
        path = folder / fname
        if not path.exists():
            raise FileNotFoundError(f"lopsided catalogue file {path} is missing")
        df = pd.read_csv(path)
        if "SDSS_name" not in df.columns:
            raise ValueError(f"{path}: no SDSS_name column")
        coords = []
        for i, n in enumerate(df["SDSS_name"]):
            try:
                coords.append(parse_iau_name(n))
            except ValueError as exc:
                raise ValueError(f"{path} row {i + 2}: {exc}") from exc
        out = pd.DataFrame({
            "object_id": df["objID"].astype(str) if "objID" in df.columns else df["SDSS_name"].astype(str),
            "sdss_name": df["SDSS_name"].astype(str),
            "ra": [c[0] for c in coords], "dec": [c[1] for c in coords],
            "label": label, "source": source,
            "p_class": pd.to_numeric(df[pcol], errors="coerce") if pcol else np.nan,
            "A1": pd.to_numeric(df["A1"], errors="coerce") if "A1" in df.columns else np.nan,
            "file": fname,
        })
        frames.append(out)
    cat = pd.concat(frames, ignore_index=True)
    log.info("lopsided catalogue: %d rows (%s)", len(cat), cat.groupby(["source", "label"]).size().to_dict())
    return cat


def match_property_table(catalogue: pd.DataFrame, properties: pd.DataFrame, radius_arcsec: float = 3.0,
                         prop_ra: str = "ra", prop_dec: str = "dec", prop_columns: Sequence[str] | None = None,
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nearest-neighbour match (within ``radius_arcsec``) of catalogue rows to the property table.

    Returns ``(matched, unmatched)``: ``matched`` = catalogue columns + the property columns +
    ``sep_arcsec``; ``unmatched`` = catalogue rows with a ``reason``. Each catalogue row is in exactly
    one of them (:func:`galmorph.catalogue.crossmatch.crossmatch`).
    """
    cat = catalogue.reset_index(drop=True).copy()
    cat["_row"] = np.arange(len(cat)).astype(str)
    props = properties.reset_index(drop=True).copy()
    props["_prow"] = np.arange(len(props)).astype(str)
    cols = list(prop_columns) if prop_columns is not None else [c for c in props.columns if c not in ("_prow",)]
    res = crossmatch(cat, props, radius_arcsec=radius_arcsec, left_id="_row", right_id="_prow",
                     left_name="catalogue", right_name="properties", ra="ra", dec="dec",
                     right_ra=prop_ra, right_dec=prop_dec)
    li = res.pairs["left_id"].astype(int).to_numpy()
    ri = res.pairs["right_id"].astype(int).to_numpy()
    sep = res.pairs["sep_arcsec"].to_numpy()
    un = res.unmatched_left.rename(columns={"id": "_row"})
    unmatched = cat.merge(un[["_row", "reason"]], on="_row", how="inner")
    left = cat.iloc[li].reset_index(drop=True)
    right = props.iloc[ri][cols].reset_index(drop=True)
    right.columns = [c if c not in left.columns else f"prop_{c}" for c in right.columns]
    matched = pd.concat([left, right], axis=1)
    matched["sep_arcsec"] = sep
    assert len(matched) + len(unmatched) == len(cat), "rows lost in the cross-match"
    return matched.drop(columns=["_row"]), unmatched.drop(columns=["_row"])


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _finite(x) -> np.ndarray:
    x = pd.to_numeric(pd.Series(x), errors="coerce").to_numpy(dtype=float)
    return x[np.isfinite(x)]


def median_quartiles(x) -> dict:
    x = _finite(x)
    if len(x) == 0:
        return {"n": 0, "median": float("nan"), "q25": float("nan"), "q75": float("nan")}
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return {"n": int(len(x)), "median": float(med), "q25": float(q25), "q75": float(q75)}


def class_property_summary(df: pd.DataFrame, class_col: str, prop: str) -> dict[str, dict]:
    """Per-class (and ``all``) median and quartiles of ``prop`` (non-finite values dropped; ``n`` counts
    the used ones)."""
    if prop not in df.columns:
        raise KeyError(f"property column {prop!r} not in the table (columns: {list(df.columns)[:20]}...)")
    out = {str(c): median_quartiles(g[prop]) for c, g in df.groupby(class_col)}
    out["all"] = median_quartiles(df[prop])
    return out


def compare_samples(a, b) -> dict:
    """Two-sample KS test and one-tailed Welch t-tests of sample ``a`` against ``b``:
    ``t_p_less`` tests mean(a) < mean(b), ``t_p_greater`` mean(a) > mean(b)."""
    from scipy import stats

    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return {"ks_stat": float("nan"), "ks_p": float("nan"), "t_stat": float("nan"), "t_p_less": float("nan"),
                "t_p_greater": float("nan"), "n_a": int(len(a)), "n_b": int(len(b))}
    ks = stats.ks_2samp(a, b)
    tl = stats.ttest_ind(a, b, equal_var=False, alternative="less")
    tg = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    return {"ks_stat": float(ks.statistic), "ks_p": float(ks.pvalue), "t_stat": float(tl.statistic),
            "t_p_less": float(tl.pvalue), "t_p_greater": float(tg.pvalue), "n_a": int(len(a)), "n_b": int(len(b))}


def compare_to_parent(df: pd.DataFrame, class_col: str, prop: str) -> dict[str, dict]:
    """Each class against the parent sample (all rows of ``df``): :func:`compare_samples`."""
    return {str(c): compare_samples(g[prop], df[prop]) for c, g in df.groupby(class_col)}


def redshift_matched_resampling(df: pd.DataFrame, class_col: str, prop: str, reference: str, resampled: str,
                                z_col: str = "Z", dz: float = 0.01, n_realisations: int = 100,
                                seed: int = 0) -> dict:
    """Redshift-stratified resampling: draw from class ``resampled``, in bins of ``dz``, as many objects
    as class ``reference`` has in each bin (with replacement), ``n_realisations`` times.

    For each realisation the median of ``prop`` and the KS / one-tailed t-test against ``reference``
    are computed. Returns the reference median, the mean and standard deviation of the resampled
    medians, the median p-values and the fraction of realisations with KS p < 0.05, plus
    ``n_reference_unmatched`` (reference objects in bins where ``resampled`` has nobody; left out).
    """
    if prop == z_col:
        raise ValueError(f"redshift-matched resampling of the redshift column {z_col!r} itself is meaningless")
    d = df[[class_col, prop, z_col]].copy()
    d[prop] = pd.to_numeric(d[prop], errors="coerce")
    d[z_col] = pd.to_numeric(d[z_col], errors="coerce")
    d = d[np.isfinite(d[prop]) & np.isfinite(d[z_col])]
    ref, pool = d[d[class_col] == reference], d[d[class_col] == resampled]
    if ref.empty or pool.empty:
        raise ValueError(f"redshift resampling needs both classes; {reference!r}: {len(ref)}, "
                         f"{resampled!r}: {len(pool)} objects with finite {prop} and {z_col}")
    lo = np.floor(d[z_col].min() / dz) * dz
    rb = np.floor((ref[z_col].to_numpy() - lo) / dz).astype(int)
    pb = np.floor((pool[z_col].to_numpy() - lo) / dz).astype(int)
    pool_vals = pool[prop].to_numpy()
    need = pd.Series(rb).value_counts().sort_index()
    unmatched = int(sum(cnt for b, cnt in need.items() if not (pb == b).any()))
    ref_used = ref[prop].to_numpy()[np.isin(rb, pb)]
    rng = np.random.default_rng(seed)
    meds, ks_p, t_p = [], [], []
    for _ in range(n_realisations):
        sample = np.concatenate([rng.choice(pool_vals[pb == b], cnt, replace=True)
                                 for b, cnt in need.items() if (pb == b).any()])
        meds.append(float(np.median(sample)))
        cmp_ = compare_samples(sample, ref_used)
        ks_p.append(cmp_["ks_p"])
        t_p.append(cmp_["t_p_greater"] if np.median(sample) >= np.median(ref_used) else cmp_["t_p_less"])
    meds_a = np.array(meds)
    return {"reference": reference, "resampled": resampled, "dz": dz, "n_realisations": n_realisations,
            "reference_median": float(np.median(ref_used)), "n_reference": int(len(ref_used)),
            "n_reference_unmatched": unmatched,
            "resampled_median_mean": float(meds_a.mean()), "resampled_median_std": float(meds_a.std(ddof=1))
            if len(meds_a) > 1 else 0.0,
            "ks_p_median": float(np.median(ks_p)), "t_p_median": float(np.median(t_p)),
            "frac_ks_p_below_0.05": float(np.mean(np.array(ks_p) < 0.05))}


def physical_analysis(df: pd.DataFrame, class_col: str, props: Sequence[str], z_col: str = "Z",
                      pairs: Sequence[tuple[str, str]] = (), dz: float = 0.01, n_realisations: int = 100,
                      seed: int = 0) -> dict:
    """Everything above for several properties: ``{prop: {summary, vs_parent, resampling}}`` where
    ``resampling`` has one entry per ``(reference, resampled)`` pair."""
    out: dict = {}
    for p in props:
        entry = {"summary": class_property_summary(df, class_col, p), "vs_parent": compare_to_parent(df, class_col, p),
                 "resampling": {}}
        classes = [str(c) for c in df[class_col].dropna().unique()]
        for a, b in pairs:
            if a in classes and b in classes and p != z_col:
                entry["resampling"][f"{b}_matched_to_{a}"] = redshift_matched_resampling(
                    df, class_col, p, a, b, z_col=z_col, dz=dz, n_realisations=n_realisations, seed=seed)
        out[p] = entry
    return out
