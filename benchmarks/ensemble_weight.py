"""The winding ensemble's weight, chosen on the winding benchmark's tuning half and reported on the other.

    uv run python benchmarks/ensemble_weight.py [--data-root PATH]

Reads the per-galaxy probabilities that ``benchmarks/reference.py`` saved for the chirality ``reference``
preset (``results/reference_predictions/chirality_pretrained_<seed>.parquet``, one file per split),
measures the winding ``z`` of every CW/ACW test galaxy (:func:`galmorph.scoring.ensemble.measure_winding_table`),
then, per ``min_confidence``, picks the weight with :func:`galmorph.scoring.ensemble.fit_winding_weight` on the
test galaxies of the winding benchmark's **tuning** half (``results/winding.json``) pooled over splits,
and reports CW-vs-ACW accuracy at 100 % and 80 % coverage on the **held-out** half for the network,
the measurement and the combination with the chosen weight (mean ± σ over splits). No training.
Results: ``results/ensemble_weight.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
from _common import machine

CLASSES = ["CW", "ACW", "other"]
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
MIN_CONF = (0.0, 1.0, 2.0)


def sense_accuracy(p: np.ndarray, y: np.ndarray, coverage: float) -> float:
    pcw = p[:, 0] / np.maximum(p[:, 0] + p[:, 1], 1e-12)
    ok = (pcw >= 0.5) == (y == "CW")
    conf = np.abs(pcw - 0.5)
    k = int(round(coverage * len(y)))
    return float(ok[np.argsort(-conf, kind="stable")[:k]].mean()) if k else float("nan")


def main(argv=None) -> int:
    from galmorph.scoring.ensemble import combine_winding, fit_winding_weight, measure_winding_table
    from galmorph.catalogue.ingest import load_source
    from galmorph.settings import resolve_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=None)
    args = ap.parse_args(argv)
    data_root = Path(args.data_root or resolve_settings().data_root)
    files = sorted((HERE / "results" / "reference_predictions").glob("chirality_pretrained_*.parquet"))
    if not files:
        print("run benchmarks/reference.py first (no saved chirality predictions)", file=sys.stderr)
        return 2
    tuning = set(json.loads((HERE / "results" / "winding.json").read_text())["tuning_ids"])
    gz1, _q, _k = load_source("gz1_chirality", data_root, task="chirality")
    gz1 = gz1.set_index(gz1["object_id"].astype(str))
    splits = []
    for f in files:
        pred = pd.read_parquet(f)
        pred["object_id"] = pred["object_id"].astype(str)
        sp = pred[pred["label"].astype(str).isin(["CW", "ACW"])].reset_index(drop=True)
        rows = gz1.loc[sp["object_id"]].reset_index(drop=True)
        z = measure_winding_table(rows, data_root=data_root)["winding_z"].to_numpy(float)
        splits.append({"seed": f.stem.rsplit("_", 1)[1], "p": sp[[f"p_{c}" for c in CLASSES]].to_numpy(float),
                       "z": z, "y": sp["label"].astype(str).to_numpy(),
                       "tuning": sp["object_id"].isin(tuning).to_numpy()})
    out: dict = {"machine": machine(), "splits": [s["seed"] for s in splits], "grid": list(GRID), "by_min_confidence": {}}
    for mc in MIN_CONF:
        p_t = np.concatenate([s["p"][s["tuning"]] for s in splits])
        z_t = np.concatenate([s["z"][s["tuning"]] for s in splits])
        y_t = np.concatenate([s["y"][s["tuning"]] for s in splits])
        w, table = fit_winding_weight(p_t, z_t, y_t, CLASSES, grid=GRID, min_confidence=mc)
        per = []
        for s in splits:
            h = ~s["tuning"]
            p, z, y = s["p"][h], s["z"][h], s["y"][h]
            comb, _ = combine_winding(p, z, CLASSES, weight=w, min_confidence=mc)
            wind = np.where(np.isfinite(z), z, 0.0)
            pw = np.stack([1 / (1 + np.exp(-wind)), 1 / (1 + np.exp(wind)), np.zeros_like(wind)], axis=1)
            per.append({m: {str(int(c * 100)): sense_accuracy(q, y, c) for c in (1.0, 0.8)}
                        for m, q in (("network", p), ("winding", pw), ("combined", comb))} | {"n": int(h.sum())})
        summ = {m: {c: {"mean": float(np.mean([r[m][c] for r in per])), "std": float(np.std([r[m][c] for r in per], ddof=1))}
                    for c in ("100", "80")} for m in ("network", "winding", "combined")}
        out["by_min_confidence"][str(mc)] = {"weight": w, "tuning_table": table.to_dict("records"), "held_out": summ,
                                            "per_split": per}
    (HERE / "results" / "ensemble_weight.json").write_text(json.dumps(out, indent=2, default=str))
    lines = ["# Winding ensemble weight (chosen on the tuning half, reported on the held-out half)", "",
             f"{out['machine']['date']}; splits {', '.join(out['splits'])} of `benchmarks/reference.py` (chirality, "
             "pretrained); CW/ACW test galaxies; weight chosen by the CW/ACW log-likelihood on the tuning half "
             "pooled over splits. CW-vs-ACW accuracy on the held-out half, mean ± σ over splits:", "",
             "| min_confidence | chosen weight | network 100 % | winding 100 % | combined 100 % | network 80 % | "
             "winding 80 % | combined 80 % |", "|---|---|---|---|---|---|---|---|"]
    for mc, r in out["by_min_confidence"].items():
        h = r["held_out"]
        cell = lambda m, c: f"{h[m][c]['mean']:.3f} ± {h[m][c]['std']:.3f}"  # noqa: E731
        lines.append(f"| {mc} | {r['weight']:g} | {cell('network', '100')} | {cell('winding', '100')} | "
                     f"{cell('combined', '100')} | {cell('network', '80')} | {cell('winding', '80')} | "
                     f"{cell('combined', '80')} |")
    lines.append("")
    (HERE / "results" / "ensemble_weight.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
