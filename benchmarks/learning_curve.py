"""Learning curve of the chirality ``reference`` preset on the public GZ1 images: is its three-class
accuracy limited by the number of labelled galaxies? (#12)

    uv run python benchmarks/learning_curve.py [--fractions 0.25,0.5] [--splits 3] [--summarise-only]

For each fraction f < 1, ``reference.py --tasks chirality --weights pretrained --train-fraction f`` trains
on a stratified f of each split's training part (all CW/ACW + 500 "other" at f = 1) and scores the same
full test quarter; its results go to results/learning_curve/f<f>/. The f = 1 point is the committed
reference benchmark (results/reference.json), on the same splits. The summary,
results/learning_curve.{json,md}, gives per fraction the mean ± σ of the three-class accuracy with the
catalogue prior, its error reduction against the majority class, macro-F1 and CW-vs-ACW accuracy, and a
power law fitted to the three-class error rate e = a n^-b (n = training galaxies) with the n at which it
would reach the goal's 0.05. A power law has no floor (label noise puts one under it), so that n is a
lower bound on what the goal needs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOAL_ERROR = 0.05  # #12: three-class accuracy >= 0.95


def _points(cases: list[dict], splits: set[int]) -> list[dict]:
    out = []
    for c in cases:
        if c["task"] != "chirality" or c["weights"] != "pretrained" or int(c["split"]) - 1000 not in splits:
            continue
        # results of the earlier route (the benchmark moved the probabilities to the catalogue prior itself)
        # carry "prior_adjusted"; those of `galmorph score`'s defaults (#26.4) carry the figures at the top
        adj = c["chirality"].get("prior_adjusted") or c["chirality"]
        out.append({"split": int(c["split"]) - 1000, "n_train": int(c["n_train"]),
                    "route": "benchmark prior" if "prior_adjusted" in c["chirality"] else "galmorph score defaults",
                    "three_class_accuracy": adj["three_class_accuracy"],
                    "error_reduction_vs_majority": adj["error_reduction_vs_majority"],
                    "macro_f1": adj["macro_f1"], "cw_acw_accuracy": c["chirality"]["cw_acw_accuracy"],
                    "train_minutes": c["train_minutes"]})
    return out


def fit_power_law(n: np.ndarray, error: np.ndarray) -> tuple[float, float]:
    """Least squares of log e = log a - b log n; returns (a, b)."""
    slope, intercept = np.polyfit(np.log(n), np.log(error), 1)
    return float(np.exp(intercept)), float(-slope)


def summarise(fractions: list[float], splits: set[int], results: Path = RESULTS) -> dict:
    full = json.loads((results / "reference.json").read_text())
    per: dict[str, dict] = {}
    quiet = {"1": full["quiet"]}
    points = {"1": _points(full["cases"], splits)}
    for f in fractions:
        r = json.loads((results / "learning_curve" / f"f{f:g}" / "reference.json").read_text())
        if float(r.get("train_fraction", 1)) != f:
            raise SystemExit(f"learning_curve/f{f:g}/reference.json was trained with train_fraction "
                             f"{r.get('train_fraction')}, not {f}")
        points[f"{f:g}"], quiet[f"{f:g}"] = _points(r["cases"], splits), r["quiet"]
    routes = {key: {p["route"] for p in pts} for key, pts in points.items()}
    if len(set().union(*routes.values())) > 1:
        raise SystemExit("the fractions were measured through different routes ("
                         + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in routes.items())
                         + "): rerun the smaller fractions with this reference.py")
    for key, pts in points.items():
        for p in pts:
            p.pop("route")
        if {p["split"] for p in pts} != splits:
            raise SystemExit(f"fraction {key}: splits {sorted(p['split'] for p in pts)}, expected {sorted(splits)}")
        per[key] = {k: {"mean": float(np.mean([p[k] for p in pts])), "std": float(np.std([p[k] for p in pts], ddof=1))}
                    for k in pts[0] if k != "split"}
    n = np.array([p["n_train"] for pts in points.values() for p in pts], float)
    e = np.array([1 - p["three_class_accuracy"] for pts in points.values() for p in pts])
    a, b = fit_power_law(n, e)
    n_goal = (a / GOAL_ERROR) ** (1 / b) if b > 0 else float("inf")
    return {"splits": sorted(splits), "fractions": {k: per[k] for k in sorted(per, key=float)},
            "quiet": quiet, "points": points, "power_law": {"a": a, "b": b, "n_train_for_goal": n_goal,
                                                           "goal_error": GOAL_ERROR,
                                                           "n_train_full": per["1"]["n_train"]["mean"]}}


def write_md(s: dict, path: Path) -> None:
    pl = s["power_law"]

    def ms(v: dict, d: int = 3) -> str:
        return f"{v['mean']:.{d}f} ± {v['std']:.{d}f}"

    lines = ["# Learning curve: the chirality `reference` preset against the size of its training set", "",
             f"Splits {', '.join(map(str, s['splits']))} of `benchmarks/reference.py` (mean ± σ); the same full test "
             "quarter at every fraction (1323 galaxies, 87 % \"other\"). Fraction 1 is the committed reference "
             "benchmark (515 CW/ACW + 500 \"other\"); smaller fractions keep those proportions "
             "(`reference.py --train-fraction`). Three-class figures with the catalogue prior.", "",
             "| fraction | galaxies trained on | three-class accuracy | fewer errors than the majority class | "
             "macro-F1 | CW vs ACW | training min |", "|---|---|---|---|---|---|---|"]
    for k, v in s["fractions"].items():
        mins = ms(v["train_minutes"], 1) + ("" if s["quiet"][k] else " (under load: not a speed result)")
        lines.append(f"| {k} | {v['n_train']['mean']:.0f} | {ms(v['three_class_accuracy'])} | "
                     f"{ms(v['error_reduction_vs_majority'])} | {ms(v['macro_f1'])} | {ms(v['cw_acw_accuracy'])} | "
                     f"{mins} |")
    lines += ["", f"Power law fitted to the three-class error rate over all {sum(map(len, s['points'].values()))} "
              f"points: e = {pl['a']:.3g} n^-{pl['b']:.3f}. It reaches the goal's {pl['goal_error']:g} "
              f"(accuracy 0.95) at n ≈ {pl['n_train_for_goal']:,.0f} training galaxies, "
              f"{pl['n_train_for_goal'] / pl['n_train_full']:.1f}× the {pl['n_train_full']:.0f} the preset trains on "
              "now. A power law has no floor, and label noise puts one under the real curve, so this is a lower "
              "bound. The public GZ1 set has 687 CW/ACW galaxies in all.", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", default="0.25,0.5")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--summarise-only", action="store_true", help="no training: summarise the existing results")
    ap.add_argument("--data-root", type=Path, default=None)
    a = ap.parse_args(argv)
    fractions = [float(x) for x in a.fractions.split(",") if x]
    if any(not 0 < f < 1 for f in fractions):
        ap.error(f"--fractions must lie in (0, 1): {fractions}")
    splits = set(range(a.splits))
    if not a.summarise_only:
        for f in fractions:
            cmd = [sys.executable, str(HERE / "reference.py"), "--tasks", "chirality", "--weights", "pretrained",
                   "--splits", str(a.splits), "--train-fraction", f"{f:g}",
                   "--out", str(RESULTS / "learning_curve" / f"f{f:g}")]
            if a.data_root:
                cmd += ["--data-root", str(a.data_root)]
            print("==", " ".join(cmd[1:]), flush=True)
            if rc := subprocess.call(cmd):
                return rc
    s = summarise(fractions, splits)
    (RESULTS / "learning_curve.json").write_text(json.dumps(s, indent=2))
    write_md(s, RESULTS / "learning_curve.md")
    print((RESULTS / "learning_curve.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
