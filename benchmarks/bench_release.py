"""A release end to end: ingest -> validate -> score -> publish (merge), per image, against the eager fp32
forward ceiling of the same network measured in the same run. Writes results/release.{json,md}.

Two paths over the same GZ1 rows (ResNet-18 at 128 px as loaded from MLflow, one view):
* ``validate-then-score``: ``validate_manifest`` with its per-image checks (decodes every image), then
  ``score_manifest`` on the passed rows (decodes them again), then the merge;
* ``decode-once``: ``galmorph.scoring.release_path.score_release`` (table checks, then scoring runs the image
  checks on the pixels it scores), with fp32 and with ``precision=auto``.

Ingest is timed on the whole GZ1 table and charged per row. ``per_image_ms`` feeds the 8.7 M
extrapolation of bench_scoring.py.

    uv run python benchmarks/bench_release.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import forward_ceiling, machine, quiet_line
from bench_scoring import as_loaded, resnet18

OUT = Path(os.environ.get("GALMORPH_BENCH_OUT") or Path(__file__).resolve().parent / "results")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=1, help="decode workers while scoring")
    a = ap.parse_args()
    m = machine()
    from galmorph.catalogue.ingest import ingest
    from galmorph.catalogue.manifest import read_manifest, write_manifest
    from galmorph.scoring.release_path import score_release
    from galmorph.scoring.batch import merge_scores, score_manifest
    from galmorph.settings import get_settings
    from galmorph.catalogue.validation import ValidationConfig, validate_manifest

    root = Path(a.data_root or get_settings().require_data_root())
    tmp = Path(tempfile.mkdtemp(prefix="bench-release-"))
    n = 256 if a.quick else 1024
    t0 = time.perf_counter()
    ing = ingest("gz1_chirality", tmp / "gz1.parquet", data_root=root)
    t_ing = time.perf_counter() - t0
    full = read_manifest(tmp / "gz1.parquet")
    ingest_ms = 1000 * t_ing / max(1, len(full))
    man = write_manifest(full.sample(n=min(n, len(full)), random_state=0).reset_index(drop=True),
                         tmp / "release.parquet", kind="release")
    cfg = ValidationConfig(max_failure_fraction=0.5)
    eager = resnet18()
    lm = as_loaded(eager, 128)
    c0 = forward_ceiling(eager, 128, 64, 2.0 if a.quick else 5.0)
    rows = []
    # validate, then score (two decodes per image)
    t0 = time.perf_counter()
    validate_manifest(man, cfg, data_root=root, out_manifest=tmp / "passed.parquet", log_to_mlflow=False,
                      progress=False)
    t1 = time.perf_counter()
    score_manifest(lm, tmp / "passed.parquet", tmp / "vts", batch_size=64, num_workers=a.workers, progress=False,
                   data_root=root, overwrite=True)
    merge_scores([tmp / "vts"], tmp / "vts")
    t2 = time.perf_counter()
    rows.append({"path": "validate-then-score", "precision": "fp32", "validate_s": round(t1 - t0, 2), "check_s": 0.0,
                 "score_merge_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2)})
    for prec in ("fp32", "auto"):
        t0 = time.perf_counter()
        r = score_release(man, lm, tmp / f"once-{prec}", cfg, data_root=root, batch_size=64, num_workers=a.workers,
                          progress=False, overwrite=True, precision=prec)
        t1 = time.perf_counter()
        rows.append({"path": "decode-once", "precision": r.precision, "validate_s": r.seconds["validate_table"],
                     "check_s": r.seconds["choose_path"],
                     "score_merge_s": round(r.seconds["score"] - r.seconds["choose_path"] + r.seconds["merge"], 2),
                     "total_s": round(t1 - t0 - r.seconds["choose_path"], 2)})
    c1 = forward_ceiling(eager, 128, 64, 2.0 if a.quick else 5.0)
    ceiling = (c0 + c1) / 2
    per_image = {}
    for r in rows:
        ms = 1000 * r["total_s"] / n + ingest_ms
        r.update(ms_per_image=round(ms, 3), img_s=round(1000 / ms, 1), ratio=round(1000 / ms / ceiling, 3))
        per_image[f"{r['path']} {r['precision']}"] = r["ms_per_image"]
        print(r, flush=True)
    res = {"machine": m, "quick": a.quick, "rows": n, "ingest_rows": len(full), "ingest_ms_per_row": round(ingest_ms, 3),
           "ingest_quarantined": ing.n_quarantined,
           "ceiling_eager_fp32_img_s": round(ceiling, 1), "ceiling_before_after": [round(c0, 1), round(c1, 1)],
           "paths": rows, "per_image_ms": per_image}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "release.json").write_text(json.dumps(res, indent=2, default=str))
    md = ["# Release end to end (ingest -> validate -> score -> merge), ResNet-18 at 128 px, one view", "",
          quiet_line(m) + f"; {m['cpus']} CPUs. {n} GZ1 rows; ingest {ingest_ms:.2f} ms/row (whole GZ1 table); "
          f"ceiling (eager fp32 forward) {ceiling:.1f} img/s {res['ceiling_before_after']}.", "",
          "Totals exclude the one-off choice of the inference path (agreement check on the DECaLS + GZ1 images, "
          "ONNX export), shown apart: it does not grow with the release.", "",
          "| path | precision | validate s | score + merge s | total s | ms/img (ingest incl.) | img/s | ratio to ceiling "
          "| path check s (one-off) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['path']} | {r['precision']} | {r['validate_s']} | {r['score_merge_s']} | {r['total_s']} | "
                  f"{r['ms_per_image']} | {r['img_s']} | **{r['ratio']:.2f}** | {r['check_s']} |")
    (OUT / "release.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
