"""Injection-recovery of A1 on simulated galaxies: amplitude x noise level -> measured mean +- sigma.

    uv run python benchmarks/a1_injection.py [--n 20]

Galaxies: exponential disc (h = 8 px) + bulge, 128x128, PSF FWHM 3 px, sky 100 counts/px with
Poisson noise, arms n in {0, 2, 4} (no odd-m arm content), random sub-pixel centre offsets in
[-0.5, 0.5] px, random m = 1 phase; R50/R90 from the symmetric model (as from a catalogue).
Noise levels are set by the galaxy's total counts and reported as the integrated S/N between R50
and R90. Writes ``benchmarks/results/a1_injection.md`` and ``.json``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from galmorph.imaging.a1 import lopsidedness_a1  # noqa: E402
from galmorph.simulate import GalaxyParams, half_light_radii, render_galaxy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
AMPLITUDES = (0.0, 0.05, 0.1, 0.2, 0.3)
FLUXES = {"very high": 1.6e6, "high": 8e5, "medium": 3e5, "low": 1e5, "very low": 5e4}
SIZE, H = 128, 8.0


def annulus_snr(flux: float, r50: float, r90: float, sky: float = 100.0) -> float:
    """Integrated S/N of the light between R50 and R90 (40% of the flux) with Poisson noise."""
    p = GalaxyParams(size=SIZE, disc_scale=H, n_arms=0, flux=flux, noise=False)
    model = render_galaxy(p)["model"]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    r = np.hypot(xx - (SIZE - 1) / 2, yy - (SIZE - 1) / 2)
    sel = (r >= r50) & (r < r90)
    s = model[sel].sum()
    return float(s / np.sqrt(s + sky * sel.sum()))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="galaxies per cell")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    r50, r90 = half_light_radii(GalaxyParams(size=SIZE, disc_scale=H, n_arms=0))
    c = (SIZE - 1) / 2
    cells = []
    for level, flux in FLUXES.items():
        snr = annulus_snr(flux, r50, r90)
        for amp in AMPLITUDES:
            vals, errs, offs = [], [], []
            for k in range(args.n):
                dx, dy = rng.uniform(-0.5, 0.5, 2)
                p = GalaxyParams(size=SIZE, x0=c + dx, y0=c + dy, flux=flux, disc_scale=H, n_arms=(0, 2, 4)[k % 3],
                                 arm_phase=float(rng.uniform(0, 2 * np.pi)), a1=amp,
                                 a1_phase=float(rng.uniform(0, 2 * np.pi)))
                img = render_galaxy(p, int(rng.integers(1 << 30)))["r"]
                res = lopsidedness_a1(img, r50=r50, r90=r90)
                vals.append(res.a1)
                errs.append(res.a1_err)
                offs.append(float(np.hypot(res.x0 - p.x0, res.y0 - p.y0)))
            v = np.array(vals)
            cells.append({"level": level, "flux": flux, "snr_r50_r90": snr, "a1_injected": amp,
                          "mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)),
                          "bias": float(np.nanmean(v) - amp), "median_err": float(np.nanmedian(errs)),
                          "centre_error_px_median": float(np.median(offs)), "n": int(np.isfinite(v).sum())})
            print(f"{level:9s} S/N {snr:6.0f}  A1_in {amp:.2f}: {cells[-1]['mean']:.3f} +- {cells[-1]['std']:.3f}")
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n_per_cell": args.n,
           "r50_px": r50, "r90_px": r90, "cells": cells}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "a1_injection.json").write_text(json.dumps(res, indent=2))
    md = ["# A1 injection-recovery", "",
          f"{args.n} simulated galaxies per cell (128x128, exponential disc h = 8 px, R50 = {r50:.1f} px, "
          f"R90 = {r90:.1f} px, arms n in {{0, 2, 4}}, sub-pixel centre offsets, random m = 1 phase, "
          "sky 100 counts/px + Poisson noise). Measured A1 as mean +- standard deviation (bias = mean - "
          "injected). S/N = integrated S/N of the light between R50 and R90.", "",
          "| noise level | S/N (R50-R90) | " + " | ".join(f"A1 = {a:.2f}" for a in AMPLITUDES) + " |",
          "|---|---:|" + "---:|" * len(AMPLITUDES)]
    for level in FLUXES:
        row = [c for c in cells if c["level"] == level]
        md.append(f"| {level} | {row[0]['snr_r50_r90']:.0f} | " + " | ".join(
            f"{c['mean']:.3f} +- {c['std']:.3f} ({c['bias']:+.3f})" for c in row) + " |")
    worst = {level: max(abs(c["bias"]) for c in cells if c["level"] == level) for level in FLUXES}
    md += ["", "Largest |bias| per noise level: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()) + ".",
           "For comparison, the 21 raw-count SDSS r-band cutouts in `sdss_fits/cutouts` have an R50-R90 S/N of "
           "62-156 (10th-90th percentile, median 85; sky rms measured, gain 4.7 e-/DN), i.e. between the 'low' "
           "and 'medium' rows. Goal |bias| < 0.02 at the sample's typical S/N.", ""]
    (args.out / "a1_injection.md").write_text("\n".join(md))
    print("\n".join(md))
    return res


if __name__ == "__main__":
    main()
