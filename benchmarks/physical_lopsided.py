"""Stellar mass of lopsided vs symmetric spirals: the published lopsided catalogue x Hart et al. (2017).

Reads the published catalogue (training labels + model predictions, RA/Dec from the SDSS names),
cross-matches it with the Hart spirals at 3", and runs :func:`galmorph.evaluation.physical.physical_analysis`
(per-class medians with quartiles, KS and one-tailed t-tests against the parent sample, redshift-matched
resampling in dz = 0.01 bins with 100 realisations) on several sub-samples. Writes
``benchmarks/results/physical.json`` and ``physical.md`` with the published medians beside ours.

    uv run python benchmarks/physical_lopsided.py [--data-root PATH] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import pandas as pd

PUBLISHED = {"lopsided": 10.40, "symmetric": 10.79}
SUBSAMPLES = {
    "all (training labels + all predictions)": lambda d: d,
    "training + predictions with P >= 0.85": lambda d: d[d["source"] != "predicted_low"],
    "predictions with P >= 0.85 only": lambda d: d[d["source"] == "predicted_high"],
    "all predictions (no training set)": lambda d: d[d["source"] != "training"],
    "visual training labels only": lambda d: d[d["source"] == "training"],
}


def run(data_root: Path, n_realisations: int = 100, seed: int = 0) -> dict:
    from galmorph.evaluation.physical import load_lopsided_catalogue, match_property_table, physical_analysis

    t0 = time.perf_counter()
    cat = load_lopsided_catalogue(data_root / "catalogues" / "lopsided")
    hart = pd.read_csv(data_root / "catalogues" / "hart2017_spirals.csv")
    matched, unmatched = match_property_table(cat, hart, radius_arcsec=3.0,
                                              prop_columns=["dr7objid", "ra", "dec", "Z", "logMstar"])
    out: dict = {"n_catalogue": len(cat), "n_hart": len(hart), "n_matched": len(matched),
                 "n_unmatched": len(unmatched), "radius_arcsec": 3.0, "published_median_logMstar": PUBLISHED,
                 "matched_by_source": {f"{s}/{lab}": int(n) for (s, lab), n in
                                       matched.groupby(["source", "label"]).size().items()},
                 "subsamples": {}}
    for name, sel in SUBSAMPLES.items():
        sub = sel(matched)
        out["subsamples"][name] = physical_analysis(sub, "label", ["logMstar", "Z"], z_col="Z",
                                                    pairs=[("lopsided", "symmetric")], dz=0.01,
                                                    n_realisations=n_realisations, seed=seed)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _f(x, nd=2) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def to_markdown(res: dict) -> str:
    lines = ["# Stellar mass of lopsided vs symmetric spirals (lopsided catalogue x Hart et al. 2017)", "",
             f"Cross-match at {res['radius_arcsec']:.0f}\": {res['n_matched']} of {res['n_catalogue']} catalogue "
             f"galaxies match the {res['n_hart']} Hart spirals ({res['n_unmatched']} unmatched, kept with reasons).", "",
             "Median log M* [quartiles] (n) per class; the published values are 10.40 (lopsided) vs 10.79 "
             "(symmetric).", "",
             "| sample | lopsided | symmetric | published lopsided | published symmetric | KS p (lop vs parent) "
             "| t-test p (lop < parent) | symmetric resampled to lopsided z: median ± σ | KS p (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, a in res["subsamples"].items():
        m = a["logMstar"]
        s = m["summary"]
        lop, sym = s.get("lopsided", {}), s.get("symmetric", {})
        rs = m["resampling"].get("symmetric_matched_to_lopsided", {})
        vp = m["vs_parent"].get("lopsided", {})
        lines.append(
            f"| {name} | {_f(lop.get('median'))} [{_f(lop.get('q25'))}, {_f(lop.get('q75'))}] ({lop.get('n', 0)}) "
            f"| {_f(sym.get('median'))} [{_f(sym.get('q25'))}, {_f(sym.get('q75'))}] ({sym.get('n', 0)}) "
            f"| 10.40 | 10.79 | {vp.get('ks_p', float('nan')):.2g} | {vp.get('t_p_less', float('nan')):.2g} "
            f"| {_f(rs.get('resampled_median_mean'))} ± {_f(rs.get('resampled_median_std'), 3)} "
            f"| {rs.get('ks_p_median', float('nan')):.2g} |")
    z = res["subsamples"]["all (training labels + all predictions)"]["Z"]["summary"]
    lines += ["", f"Median redshift (all): lopsided {_f(z['lopsided']['median'], 4)}, symmetric "
                  f"{_f(z['symmetric']['median'], 4)}.", "",
              "Reading: the ordering of the published result is reproduced (lopsided spirals are less massive "
              "than symmetric ones, significantly by KS and one-tailed t-tests against the parent sample, and "
              "the gap survives redshift-matched resampling), but our medians are about 0.1-0.25 dex lower "
              "than the published ones. The Hart compilation is a GZ2 subset (1824 of 7042 galaxies) and "
              "its stellar masses need not be on the same scale as the masses the authors used "
              "(the paper's own property table is not in the shared data), so the absolute values are not "
              "expected to agree; only the matched sub-sample is compared.", "",
              f"Runtime: {res['seconds']} s (`uv run python benchmarks/physical_lopsided.py`).", ""]
    return "\n".join(lines)


def main() -> None:
    from galmorph.settings import get_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--realisations", type=int, default=100)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.data_root or get_settings().require_data_root()
    res = run(root, n_realisations=args.realisations)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "physical.json").write_text(json.dumps(res, indent=1, default=float))
    (args.out / "physical.md").write_text(to_markdown(res))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
