"""A release from manifest to catalogue decoding each image once: the validation's table checks (no
pixels), then scoring, which runs the validation's per-image checks
(:func:`galmorph.catalogue.validation.check_decoded`) on the very pixels it scores and quarantines the rows that
fail them, exactly as ``validate`` would have.

Same catalogue and same quarantined rows as validate-then-score (``tests/test_release_path.py``), one
JPEG/PNG decode per row instead of two. FITS rows still have their header's WCS checked by
:func:`galmorph.catalogue.validation.check_image` before scoring (that reads the file twice); rasters do not.
The failure gate (``max_failure_fraction``) is applied over both stages once scoring has finished,
so a failing release has shards but is reported ``success=False`` (the pipeline does not publish it).

Output folder: ``validated.parquet`` (rows passing the table checks), ``shards/`` + ``scoring.json``
(:mod:`galmorph.scoring`), ``catalogue.parquet``, ``quarantine.parquet`` (validate + score stages),
``summary.json`` (the merge summary) and ``release.json`` (counts, gate, timings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from galmorph.catalogue.manifest import ManifestError, quarantine_frame, read_manifest, resolve_image_uri, write_manifest


class ReleaseError(RuntimeError):
    """The release cannot be scored (schema errors); the message says why."""


@dataclass
class ReleaseResult:
    out_dir: str
    catalogue: str
    quarantine: str
    n_rows: int
    n_scored: int
    n_quarantined_validate: int
    n_quarantined_score: int
    failure_fraction: float
    max_failure_fraction: float
    success: bool
    seconds: dict[str, float]
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


def image_check_for(cfg, data_root: str | Path | None = None):
    """``(row, decoded image) -> reason | None``: the validation's per-image checks on scoring's pixels."""
    from galmorph.catalogue.validation import check_decoded

    def check(row: pd.Series, img) -> str | None:
        return check_decoded(img, cfg, Path(str(row["image_uri"])).name)

    return check


def _fits_rows(df: pd.DataFrame, cfg, data_root) -> dict[int, str]:
    """WCS/header checks of the FITS rows (the only image checks scoring's decode cannot do)."""
    from galmorph.imaging.io import is_fits
    from galmorph.catalogue.validation import check_image

    out: dict[int, str] = {}
    for i, uri in enumerate(df["image_uri"].tolist()):
        if uri is None or str(uri) == "" or not is_fits(str(uri)):
            continue
        try:
            reason = check_image(resolve_image_uri(str(uri), data_root), cfg)
        except ManifestError as exc:
            reason = str(exc)
        if reason:
            out[i] = reason
    return out


def score_release(manifest: str | Path, model, out_dir: str | Path, cfg=None, data_root: str | Path | None = None,
                  release: str | None = None, **score_kwargs: Any) -> ReleaseResult:
    """Validate and score ``manifest`` into ``out_dir`` decoding every raster image once.

    ``cfg``: :class:`galmorph.catalogue.validation.ValidationConfig` (its image checks run inside scoring);
    ``score_kwargs`` go to :func:`galmorph.scoring.batch.score_manifest` (batch size, workers, precision...).
    JPEG draft decoding is not used here when size checks apply (they need the full-size image).
    """
    from galmorph.catalogue.manifest import quarantine_record
    from galmorph.scoring.batch import merge_scores, score_manifest
    from galmorph.catalogue.validation import STAGE, ValidationConfig, validate_frame

    cfg = cfg or ValidationConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = read_manifest(manifest)
    n = len(df)
    v = validate_frame(df, dataclasses.replace(cfg, check_images=False), data_root, name=Path(str(manifest)).stem,
                       progress=False)
    if v.schema_errors:
        raise ReleaseError(f"release {manifest}: {'; '.join(v.schema_errors)}")
    passed = v.passed_manifest
    qv = [v.quarantine]
    if cfg.check_images:
        bad = _fits_rows(passed, cfg, data_root)
        if bad:
            qv.append(quarantine_frame([quarantine_record(passed.at[i, "object_id"], STAGE, r, passed.iloc[i].to_dict())
                                        for i, r in sorted(bad.items())]))
            passed = passed.drop(index=list(bad)).reset_index(drop=True)
    validated = write_manifest(passed, out / "validated.parquet", kind="validated")
    t1 = time.perf_counter()
    kw = dict(score_kwargs)
    if cfg.check_images:
        kw["image_check"] = image_check_for(cfg, data_root)
        if kw.get("decode", "full") != "full":
            kw["decode"] = "full"  # the size checks need the full-size decode
    res = score_manifest(model, validated, out, data_root=data_root, **kw)
    t2 = time.perf_counter()
    m = merge_scores([out], out, release=release)
    qs = pd.read_parquet(m.quarantine)
    q = pd.concat([*qv, qs], ignore_index=True) if len(qs) else pd.concat(qv, ignore_index=True)
    from galmorph.catalogue.manifest import write_quarantine

    write_quarantine(quarantine_frame(q.to_dict("records")), out / "quarantine.parquet")
    n_qv = sum(len(x) for x in qv)
    frac = (n_qv + m.n_quarantined) / n if n else 0.0
    assert m.n_scored + m.n_quarantined + n_qv == n, "rows in != rows scored + quarantined"
    t3 = time.perf_counter()
    result = ReleaseResult(out_dir=str(out), catalogue=m.catalogue, quarantine=str(out / "quarantine.parquet"),
                           n_rows=n, n_scored=m.n_scored, n_quarantined_validate=n_qv,
                           n_quarantined_score=m.n_quarantined, failure_fraction=frac,
                           max_failure_fraction=cfg.max_failure_fraction, success=frac <= cfg.max_failure_fraction,
                           seconds={"validate_table": round(t1 - t0, 3), "score": round(t2 - t1, 3),
                                    "choose_path": round(res.path_seconds, 3),
                                    "merge": round(t3 - t2, 3), "total": round(t3 - t0, 3)},
                           precision=res.precision)
    tmp = out / f".release.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(result.to_dict(), indent=2))
    os.replace(tmp, out / "release.json")
    return result
