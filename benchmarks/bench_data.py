"""Data-foundation benchmark on real data: cutouts/s and validated rows/s on this machine.

* cutouts/s: gz1_chirality JPEGs (centre crop 424 -> 224 equivalent, resize to 128, PNG written) and
  the 27 sdss_fits FITS cutouts (Cutout2D at CRVAL, 40" box, FITS + PNG written);
* validated rows/s: gz1_chirality rows with the full per-row image checks (decode, size, blank, NaN)
  and the Hart catalogue (6222 rows, great-expectations suite only, no images).

Writes benchmarks/results/data.json and data.md. The machine load is recorded beside the numbers:
on a shared machine they scale with the free CPU.

    uv run python benchmarks/bench_data.py [--n-jpeg 500] [--n-validate 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from galmorph.catalogue.cutout import CutoutConfig, make_cutouts
from galmorph.catalogue.ingest import ingest
from galmorph.catalogue.manifest import read_manifest
from galmorph.settings import REPO_ROOT, get_settings
from galmorph.catalogue.validation import ValidationConfig, validate_frame

RESULTS = REPO_ROOT / "benchmarks" / "results"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(n_jpeg: int, n_validate: int, data_root: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    gz1 = read_manifest(ingest("gz1_chirality", tmp / "gz1.parquet", data_root=data_root).manifest_path)
    fits = read_manifest(ingest("sdss_fits", tmp / "fits.parquet", data_root=data_root).manifest_path)
    hart = read_manifest(ingest("hart", tmp / "hart.parquet", data_root=data_root).manifest_path)
    sub = gz1.sample(n=min(n_jpeg, len(gz1)), random_state=0)
    rows = []

    res, dt = _timed(lambda: make_cutouts(sub, tmp / "c_jpeg", CutoutConfig(crop_fraction=224 / 424, size_px=128),
                                          data_root=data_root, progress=False))
    rows.append({"what": "cutouts", "data": f"gz1_chirality JPEG 423 px -> crop 0.528 -> 128 px PNG",
                 "n": res.n_out, "seconds": dt, "per_s": res.n_out / dt})
    res, dt = _timed(lambda: make_cutouts(fits, tmp / "c_fits", CutoutConfig(size_arcsec=40, size_px=64),
                                          data_root=data_root, progress=False))
    rows.append({"what": "cutouts", "data": "sdss_fits r-band FITS, Cutout2D 40\" at CRVAL -> FITS + 64 px PNG",
                 "n": res.n_out, "seconds": dt, "per_s": res.n_out / dt})

    vsub = gz1.sample(n=min(n_validate, len(gz1)), random_state=1)
    cfg = ValidationConfig(expected_size=(423, 423), max_failure_fraction=0.0)
    validate_frame(vsub.head(20), cfg, data_root, progress=False)  # warm up GX (import, context)
    for workers in (1, 2):
        v, dt = _timed(lambda: validate_frame(vsub, cfg, data_root, progress=False, workers=workers))
        assert v.success and v.passed == len(vsub)
        rows.append({"what": "validated rows", "data": f"gz1_chirality rows + image checks ({workers} thread(s))",
                     "n": v.rows, "seconds": dt, "per_s": v.rows / dt})
    v, dt = _timed(lambda: validate_frame(hart, ValidationConfig(), data_root, progress=False))
    rows.append({"what": "validated rows", "data": "Hart catalogue, GX suite only (no images)",
                 "n": v.rows, "seconds": dt, "per_s": v.rows / dt})
    v, dt = _timed(lambda: validate_frame(fits, ValidationConfig(require_coords=True), data_root, progress=False))
    rows.append({"what": "validated rows", "data": "sdss_fits rows + FITS checks (decode, NaN, WCS)",
                 "n": v.rows, "seconds": dt, "per_s": v.rows / dt})
    return {
        "benchmark": "data",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "loadavg_1_5_15": list(os.getloadavg())},
        "results": rows,
    }


def to_markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# Data foundation benchmark",
        "",
        f"{doc['date']} on {m['platform']}, {m['cpus']} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_1_5_15'])} (shared machine: numbers scale with free CPU).",
        "",
        "| measure | data | n | seconds | per second |",
        "|---|---|---:|---:|---:|",
    ]
    for r in doc["results"]:
        lines.append(f"| {r['what']} | {r['data']} | {r['n']} | {r['seconds']:.1f} | {r['per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-jpeg", type=int, default=500)
    ap.add_argument("--n-validate", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    doc = run(args.n_jpeg, args.n_validate, get_settings().require_data_root())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data.json").write_text(json.dumps(doc, indent=2))
    (args.out / "data.md").write_text(to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
