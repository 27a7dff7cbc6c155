"""Streaming, resumable batch scoring of a survey release with a registered galmorph model.

Layout of a scoring output folder ``OUT``::

    OUT/scoring.json                 what is being scored (manifest + its sha256, rows, shard size, model,
                                     threshold) -- resume guard: another input is refused unless overwrite
    OUT/shards/part-00000.parquet    scores of rows [0, shard_size)            (written atomically)
    OUT/shards/quarantine-00000.parquet  rows of that shard whose image could not be read, with the reason
    ...

A shard is a fixed, deterministic row range of the manifest (``shard i`` = rows ``[i*S, (i+1)*S)``),
so a run killed at any moment (even ``kill -9``) is resumed by running the same command again: shards
whose Parquet file exists are skipped, a half-written shard only ever exists as a temporary file and is
redone. The quarantine file of a shard is written *before* its score file, so a completed shard always
has both. Rows in = rows scored + rows quarantined, per shard and overall.

:func:`merge_scores` concatenates the shards of one or several scoring folders (the rescoring pipeline
scores disjoint shard sets on several GPU nodes) into the release catalogue (one Parquet file) plus a
summary JSON (class counts, high-confidence counts, and for chirality the CVS with its uncertainty).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from galmorph.tasks import chirality_violation as cvs_null
from galmorph.jsonsafe import json_default
from galmorph.tracking import METRIC_NAME, NameRule, clean_name
from galmorph.catalogue.manifest import ManifestError, is_csv, quarantine_record, read_manifest, write_quarantine

log = logging.getLogger(__name__)

#: Manifest columns copied into the scored catalogue when present (drift monitoring groups by them).
PASSTHROUGH_COLUMNS: tuple[str, ...] = ("survey", "ra", "dec", "z", "z_bin", "label")
#: Scoring metric names keep ``+`` (``n_pred_5+``): MLflow accepts it, and dashboards read those names.
_KEEP_PLUS = NameRule(METRIC_NAME.bad, plus=None)
SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")
DEFAULT_THRESHOLD = 0.85


class ScoringError(RuntimeError):
    """Scoring cannot proceed (the message says which file or setting and why)."""


@dataclass
class ScoreResult:
    out_dir: str
    n_rows: int  # rows of the manifest
    n_shards: int  # shards of the manifest
    shards_done: list[int]  # shards processed (or found complete) by this call
    shards_skipped: list[int]  # shards that were already complete when this call started
    n_scored: int  # rows scored by this call
    n_quarantined: int  # rows quarantined by this call
    model_uri: str
    model_version: str | None
    seconds: float
    images_per_s: float
    precision: str = "fp32"  # inference path used (galmorph.scoring.accel)
    decode: str = "full"  # JPEG decode used (full or draft)
    path_seconds: float = 0.0  # of ``seconds``: choosing the path (agreement check, export)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MergeResult:
    catalogue: str
    summary: str
    quarantine: str
    n_rows: int
    n_scored: int
    n_quarantined: int
    summary_data: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# chirality violation
# --------------------------------------------------------------------------------------------
def chirality_violation(n_acw: int, n_cw: int) -> tuple[float, float]:
    """CVS = (n_ACW - n_CW) / sqrt(n_ACW + n_CW) (:func:`galmorph.evaluation.chirality.chirality_violation`)
    and its propagated 1-sigma uncertainty.

    The uncertainty propagates independent Poisson errors on both counts (sigma^2(n) = n); for
    n_ACW = n_CW it is exactly 1 (CVS is in units of the expected chance fluctuation under the null
    hypothesis, the convention of :mod:`galmorph.evaluation.chirality`, which reports sigma = 1).
    Returns ``(nan, nan)`` when there are no CW/ACW predictions.
    """
    cvs, _ = cvs_null(n_acw, n_cw)
    a, c = float(n_acw), float(n_cw)
    s = a + c
    if s <= 0:
        return float("nan"), float("nan")
    d = a - c
    da = 1 / math.sqrt(s) - d / (2 * s ** 1.5)
    dc = -1 / math.sqrt(s) - d / (2 * s ** 1.5)
    sigma = math.sqrt(a * da * da + c * dc * dc)
    return cvs, sigma


def cvs_block(n_acw: int, n_cw: int) -> dict[str, float]:
    """CVS with both uncertainties: ``sigma_null`` (= 1, the scatter of CVS when there is no
    preferred handedness: the evaluation module's convention) and ``sigma`` (Poisson-propagated)."""
    cvs, sigma = chirality_violation(n_acw, n_cw)
    sigma_null = cvs_null(n_acw, n_cw)[1]
    return {"cvs": cvs, "sigma": sigma, "sigma_null": sigma_null, "n_acw": int(n_acw), "n_cw": int(n_cw)}


# --------------------------------------------------------------------------------------------
# streaming the manifest
# --------------------------------------------------------------------------------------------
def manifest_rows(manifest_path: str | Path) -> int:
    """Number of rows of a Parquet manifest (from its footer, without reading the data)."""
    path = Path(manifest_path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001
        raise ManifestError(f"manifest {path} is not a readable Parquet file: {exc}") from exc


def manifest_digest(manifest_path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of the manifest file's bytes (what a resumed scoring run must be reading again)."""
    h = hashlib.sha256()
    try:
        with open(manifest_path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError as exc:
        raise ManifestError(f"manifest {manifest_path} is unreadable: {exc.strerror or exc}") from exc
    return h.hexdigest()


def parquet_manifest(manifest_path: str | Path, out_dir: str | Path) -> Path:
    """The Parquet file to stream: the manifest itself, or for a CSV/TSV manifest its conversion
    (:func:`galmorph.catalogue.manifest.read_manifest`) written to ``OUT/input-manifest.parquet``."""
    path = Path(manifest_path)
    if not is_csv(path):
        return path
    df = read_manifest(path)
    dest = Path(out_dir) / "input-manifest.parquet"
    _guard_write(dest, lambda tmp: df.to_parquet(tmp, index=False))
    return dest


def n_shards_for(n_rows: int, shard_size: int) -> int:
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    return max(0, math.ceil(n_rows / shard_size))


def cpu_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs this process's cgroup may use (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` / ``cfs_period_us`` of
    v1: a Kubernetes pod's CPU limit), or None where no quota is set."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if q <= 0 or p <= 0 else q / p
    except (OSError, ValueError):
        return None


def cpus_per_worker(concurrent: int = 1, quota: float | None = None, available: int | None = None) -> int:
    """CPUs one scoring worker computes with: its pod's CPU limit when it has one (``quota``, default
    :func:`cpu_quota`; 0: none), else the CPUs it may run on shared by the ``concurrent`` workers of its plan
    (kfp's local runner and pods without a limit run them side by side on one machine). At least 1."""
    if available is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota() if quota is None else quota
    if quota:
        return max(1, min(int(available), int(quota)))
    return max(1, int(available) // max(1, int(concurrent)))


def plan_workers(n_rows: int, shard_size: int, n_workers: int) -> list[list[int]]:
    """Split the shards into ``n_workers`` contiguous groups (fewer when there are fewer shards)."""
    n = n_shards_for(n_rows, shard_size)
    k = max(1, min(int(n_workers), n)) if n else 0
    groups = [list(g) for g in np.array_split(np.arange(n), k)] if k else []
    return [[int(i) for i in g] for g in groups]


def iter_shards(manifest_path: str | Path, shard_size: int, columns: Sequence[str],
                shards: Sequence[int] | None = None, read_batch: int = 8192) -> Iterator[tuple[int, int, pd.DataFrame]]:
    """Yield ``(shard_index, first_row, frame)`` for the wanted shards, streaming.

    Only the row groups that overlap a wanted shard are read, in record batches of ``read_batch``
    rows, so memory stays bounded by one shard whatever the manifest's size.
    """
    from galmorph.catalogue.manifest import stream_parquet

    pf = stream_parquet(manifest_path)
    meta = pf.metadata
    n_rows = meta.num_rows
    n_sh = n_shards_for(n_rows, shard_size)
    wanted = sorted(set(range(n_sh) if shards is None else (int(s) for s in shards)))
    bad = [s for s in wanted if not 0 <= s < n_sh]
    if bad:
        raise ScoringError(f"shard(s) {bad} outside 0..{n_sh - 1} of {manifest_path} ({n_rows} rows, "
                           f"shard size {shard_size})")
    if not wanted:
        return
    wanted_set = set(wanted)
    # row-group offsets
    rg_start, off = [], 0
    for i in range(meta.num_row_groups):
        rg_start.append(off)
        off += meta.row_group(i).num_rows

    def needed(rg: int) -> bool:
        lo, hi = rg_start[rg], rg_start[rg] + meta.row_group(rg).num_rows
        return any(lo < (s + 1) * shard_size and s * shard_size < hi for s in range(lo // shard_size,
                                                                                  (hi - 1) // shard_size + 1)
                   if s in wanted_set)

    groups = [g for g in range(meta.num_row_groups) if needed(g)]
    # contiguous runs of row groups so that the global row offset is known
    runs: list[list[int]] = []
    for g in groups:
        if runs and runs[-1][-1] == g - 1:
            runs[-1].append(g)
        else:
            runs.append([g])
    cols = [c for c in columns if c in pf.schema_arrow.names]
    for run in runs:
        row = rg_start[run[0]]
        buf: list[pa.RecordBatch] = []
        buf_shard: int | None = None
        for batch in pf.iter_batches(batch_size=read_batch, row_groups=run, columns=cols):
            pos = 0
            while pos < batch.num_rows:
                s = row // shard_size
                end_of_shard = min((s + 1) * shard_size, n_rows)
                take = min(batch.num_rows - pos, end_of_shard - row)
                if s in wanted_set:
                    if buf_shard != s:
                        buf, buf_shard = [], s
                    buf.append(batch.slice(pos, take))
                pos += take
                row += take
                if row == end_of_shard and s in wanted_set and buf_shard == s:
                    frame = pa.Table.from_batches(buf).to_pandas()
                    yield s, s * shard_size, frame
                    buf, buf_shard = [], None


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def shard_path(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / "shards" / f"part-{shard:05d}.parquet"


def quarantine_path(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / "shards" / f"quarantine-{shard:05d}.parquet"


def completed_shards(out_dir: str | Path) -> set[int]:
    d = Path(out_dir) / "shards"
    if not d.is_dir():
        return set()
    return {int(m.group(1)) for p in d.iterdir() if (m := SHARD_RE.match(p.name))}


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False)


def _guard_write(path: Path, write) -> None:
    """``write(tmp)`` then fsync and rename onto ``path``; a failure removes the temporary file and
    becomes a :class:`ScoringError` naming ``path`` (``disk full while writing <path>`` for ENOSPC)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as fh:  # make the content durable before the rename commits the file
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ScoringError(f"disk full while writing {path}; free space (or use another --out) and run "
                               "the same command again to resume") from exc
        raise ScoringError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    _guard_write(path, lambda tmp: _write_parquet(df, tmp))


def _load_model(model, device: str):
    from galmorph.models.io import LoadedModel, load_for_inference

    if isinstance(model, LoadedModel):
        return model
    return load_for_inference(str(model), device=device)


#: What binds a scoring folder to its inputs: a resume must agree on all of them.
RESUME_KEYS: tuple[str, ...] = ("manifest_sha256", "manifest_rows", "shard_size", "model_uri", "model_version",
                                "threshold", "classes", "winding_ensemble", "class_prior")
#: What a run applied beyond the network (#26): recorded in summary.json, the catalogue metadata and MLflow.
APPLIED_KEYS: tuple[str, ...] = ("applied_class_prior", "applied_ensemble", "applied_class_prior_label",
                                 "applied_ensemble_label")
_OUR_FILES = re.compile(r"^\.?(part|quarantine)-\d{5,}\.parquet(\.tmp-\d+)?$")


def _clear_outputs(out_dir: Path) -> None:
    """Remove what an earlier scoring run wrote in ``out_dir`` (its ``scoring.json`` first, so that a
    kill during the clean-up leaves a folder that is refused rather than resumed), and nothing else."""
    (out_dir / "scoring.json").unlink(missing_ok=True)
    sd = out_dir / "shards"
    if sd.is_dir():
        for f in sd.iterdir():
            if f.is_file() and _OUR_FILES.match(f.name):
                f.unlink()
    for name in ("catalogue.parquet", "summary.json", "quarantine.parquet"):
        (out_dir / name).unlink(missing_ok=True)


def _check_resume(out_dir: Path, spec: dict, overwrite: bool) -> None:
    """Refuse to add shards to a folder holding another scoring run (a different manifest content, model
    version, shard size or threshold: the catalogue would mix them) unless ``overwrite``, which clears
    the earlier run's outputs; then record ``spec`` in ``OUT/scoring.json``."""
    p = out_dir / "scoring.json"
    try:
        if overwrite:
            _clear_outputs(out_dir)
        elif p.exists():
            try:
                old = json.loads(p.read_text())
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ScoringError(f"{p} is unreadable ({exc}); use another output folder or --overwrite") from exc
            diffs = []
            for key in RESUME_KEYS:
                if key == "manifest_sha256" and key not in old:  # written before the digest was recorded
                    if old.get("manifest") != spec.get("manifest"):
                        diffs.append(f"manifest {old.get('manifest')} -> {spec.get('manifest')}")
                    continue
                if key == "class_prior" and key not in old:  # written before class priors: none applied
                    old[key] = {}
                if old.get(key) != spec.get(key):
                    what = "manifest content (sha256)" if key == "manifest_sha256" else key
                    o, n = old.get(key), spec.get(key)
                    if key == "manifest_sha256":
                        o, n = f"{str(o)[:12]} of {old.get('manifest')}", f"{str(n)[:12]} of {spec.get('manifest')}"
                    diffs.append(f"{what} {o!r} -> {n!r}" if key != "manifest_sha256" else f"{what} {o} -> {n}")
            if diffs:
                n_done = len(completed_shards(out_dir))
                raise ScoringError(
                    f"{out_dir} holds {n_done} shard(s) of a different scoring run; this call differs in: "
                    + "; ".join(diffs) + ". Resuming would mix the two in one catalogue: use another output "
                    "folder, or --overwrite (overwrite=True) to discard the earlier run's shards")
        elif completed_shards(out_dir):
            raise ScoringError(f"{out_dir}/shards holds shards but no scoring.json says what they score; "
                               "use another output folder or --overwrite")
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScoringError(f"cannot use output folder {out_dir}: {exc.strerror or exc}") from exc
    _guard_write(p, lambda tmp: tmp.write_text(json.dumps(spec, indent=2, default=json_default)))


def score_frame_probs(probs: np.ndarray, classes: Sequence[str], threshold: float) -> dict[str, Any]:
    """Columns derived from class probabilities: ``p_<class>``, ``pred``, ``p_pred``, ``high_confidence``."""
    cols: dict[str, Any] = {f"p_{c}": probs[:, j].astype(np.float32) for j, c in enumerate(classes)}
    arg = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    p_pred = probs[np.arange(len(probs)), arg] if len(probs) else np.zeros(0)
    cols["pred"] = np.asarray(classes, dtype=object)[arg] if len(probs) else np.zeros(0, dtype=object)
    cols["p_pred"] = p_pred.astype(np.float32)
    cols["high_confidence"] = p_pred >= threshold
    return cols


@dataclass
class _Release:
    """The manifest being scored: its file, content digest, the Parquet file streamed, rows, columns and the
    rows whose object id is unusable (null, empty, repeated)."""
    source: Path
    digest: str
    path: Path
    n_rows: int
    columns: list[str]
    id_problems: dict[int, str]


@dataclass
class _ShardScorer:
    """What scoring one shard needs (:func:`score_manifest` builds it once)."""
    lm: Any  # LoadedModel
    path: Any  # accel.InferencePath
    decode: str
    shift: Any  # prior logit shift of the spec
    batch_size: int
    num_workers: int
    device: str
    data_root: str | Path | None
    threshold: float
    pass_cols: list[str]
    id_problems: dict[int, str]
    image_check: Any
    winding_ensemble: Any
    bar: Any


def _check_score_args(threshold: float, batch_size: int) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")


def _open_release(manifest_path: str | Path, out: Path) -> _Release:
    """The release to score: checked to exist, have rows and the required columns (Parquet, or a CSV
    converted into ``out``)."""
    source = Path(manifest_path)
    if not source.exists():
        raise ManifestError(f"manifest {source} does not exist")
    digest = manifest_digest(source)
    path = parquet_manifest(source, out)
    n_rows = manifest_rows(path)
    if n_rows == 0:
        raise ScoringError(f"manifest {source} has no rows; nothing to score")
    columns = pq.ParquetFile(path).schema_arrow.names
    for c in ("object_id", "image_uri"):
        if c not in columns:
            raise ManifestError(f"manifest {path}: missing required column {c!r}")
    return _Release(source, digest, path, n_rows, columns, _id_problems(path))


def _wanted_shards(shards: Sequence[int] | None, rel: _Release, shard_size: int) -> tuple[int, list[int]]:
    """``(number of shards of the release, the shards asked for)``; an empty list or a shard outside the
    release is a :class:`ScoringError`."""
    n_sh = n_shards_for(rel.n_rows, shard_size)
    wanted = sorted(set(range(n_sh) if shards is None else (int(s) for s in shards)))
    if not wanted:
        raise ScoringError("no shards to score (an empty shard list); give shards such as 0-3,7 or none for all")
    outside = [s for s in wanted if not 0 <= s < n_sh]
    if outside:
        raise ScoringError(f"shard(s) {outside} outside 0..{n_sh - 1} of {rel.source} ({rel.n_rows} rows, "
                           f"shard size {shard_size})")
    return n_sh, wanted


def _run_spec(rel: _Release, lm, shard_size: int, threshold: float, choice, winding_ensemble) -> dict[str, Any]:
    """What this scoring run is (``OUT/scoring.json``; :data:`RESUME_KEYS` bind a resume to it)."""
    spec = lm.spec
    return {
        "manifest": str(rel.source.resolve()), "manifest_sha256": rel.digest, "manifest_rows": rel.n_rows,
        "shard_size": int(shard_size),
        "model_uri": lm.uri, "model_version": lm.version, "model_run_id": lm.run_id, "task": spec.task,
        "tta_views": int(getattr(spec, "tta_views", 1) or 1), "temperature": float(spec.temperature),
        "classes": list(spec.classes), "threshold": float(threshold), "inference": choice.to_dict(),
        "class_prior": dict(getattr(spec, "class_prior", {}) or {}),
        "winding_ensemble": winding_ensemble.to_dict() if winding_ensemble is not None else None,
        **applied_defaults(spec, winding_ensemble),
    }


def applied_defaults(spec, winding_ensemble) -> dict[str, Any]:
    """What a scoring run applied beyond the network (#26), for ``scoring.json``, ``summary.json``, the
    catalogue metadata and MLflow: ``applied_class_prior`` (:func:`galmorph.models.io.applied_class_prior`)
    and ``applied_ensemble`` (``{"winding_ensemble": bool, "source", "weight", "min_confidence"}``, or
    ``rule: "stack"`` with the model's ``stack`` for the stacked rule) and
    their one-line labels."""
    from galmorph.models.io import applied_class_prior, applied_class_prior_label
    from galmorph.scoring.ensemble import applied_ensemble_label

    ens = {"winding_ensemble": winding_ensemble is not None}
    if winding_ensemble is not None and winding_ensemble.stack is not None:
        ens.update(source=winding_ensemble.source, rule="stack", stack=dict(winding_ensemble.stack))
    elif winding_ensemble is not None:
        ens.update(source=winding_ensemble.source, weight=float(winding_ensemble.weight),
                   min_confidence=float(winding_ensemble.min_confidence))
    return {"applied_class_prior": applied_class_prior(spec), "applied_ensemble": ens,
            "applied_class_prior_label": applied_class_prior_label(spec),
            "applied_ensemble_label": applied_ensemble_label(winding_ensemble)}


def _predict_shard(sc: _ShardScorer, frame: pd.DataFrame) -> tuple[np.ndarray, dict[int, str]]:
    """Class probabilities of a shard's rows (NaN where the image failed) and the failures by row position."""
    import torch
    from torch.utils.data import DataLoader

    from galmorph.datasets.images import ManifestImageDataset, collate_skip
    from galmorph.imaging.io import MIN_IMAGE_SIDE
    from galmorph.models.io import adjust_logits

    spec = sc.lm.spec

    def check(i, img, _f=frame):
        if min(img.shape[:2]) < MIN_IMAGE_SIDE:  # a flat upsampled frame would get a meaningless score
            return (f"image is {img.shape[0]}x{img.shape[1]} px; too small to score "
                    f"(under {MIN_IMAGE_SIDE} px a side)")
        return None if sc.image_check is None else sc.image_check(_f.iloc[i], img)

    ds = ManifestImageDataset(frame, spec.image_size, spec.in_chans, spec.crop_fraction,
                              data_root=sc.data_root, on_error="skip", decode=sc.decode, check=check)
    dl = DataLoader(ds, batch_size=sc.batch_size, shuffle=False, num_workers=sc.num_workers,
                    collate_fn=collate_skip, pin_memory=sc.device.startswith("cuda"),
                    prefetch_factor=4 if sc.num_workers > 0 else None)
    probs = np.full((len(frame), len(spec.classes)), np.nan, dtype=np.float32)
    failed: dict[int, str] = {}
    with torch.inference_mode():
        for x, _, pos, failures in dl:
            for p, reason in failures:
                failed[int(p)] = reason
            if len(pos):
                logits = adjust_logits(sc.path.run(x), spec, sc.shift)
                probs[pos.numpy()] = torch.softmax(logits.float(), dim=1).cpu().numpy()
            sc.bar.update(len(pos) + len(failures))
    return probs, failed


def _shard_frames(sc: _ShardScorer, s: int, first: int, frame: pd.DataFrame, probs: np.ndarray,
                  failed: dict[int, str]) -> tuple[pd.DataFrame, list[dict]]:
    """The scores of a shard's good rows and the quarantine records of the others."""
    spec, n = sc.lm.spec, len(frame)
    classes = list(spec.classes)
    for i in range(n):  # a null or repeated object id would make the catalogue ambiguous
        if first + i in sc.id_problems:
            failed[i] = sc.id_problems[first + i]
    ok = np.array([i not in failed for i in range(n)], dtype=bool)
    q = [quarantine_record(frame.at[i, "object_id"], "score", failed[i],
                           {**frame.iloc[i].to_dict(), "row": first + i}) for i in sorted(failed)]
    good = frame.loc[ok].reset_index(drop=True)
    res = pd.DataFrame({"object_id": good["object_id"].astype(str).to_numpy()})
    for k, v in score_frame_probs(probs[ok].astype(np.float64), classes, sc.threshold).items():
        res[k] = v
    res["model_uri"] = sc.lm.uri
    res["model_version"] = sc.lm.version if sc.lm.version is not None else ""
    res["task"] = spec.task
    res["shard"] = np.int32(s)
    res["row"] = (first + np.flatnonzero(ok)).astype(np.int64)
    for c in sc.pass_cols:
        res[c] = good[c].to_numpy()
    if sc.winding_ensemble is not None:  # network + winding measurement (galmorph.scoring.ensemble)
        from galmorph.scoring.ensemble import apply_winding_ensemble

        res = apply_winding_ensemble(res, good, classes, sc.winding_ensemble, sc.threshold, data_root=sc.data_root,
                                     shift=sc.shift)
    return res, q


def _write_shard(out: Path, s: int, res: pd.DataFrame, q: list[dict]) -> None:
    """The quarantine file first, then the scores (whose existence marks the shard complete)."""
    _guard_write(quarantine_path(out, s), lambda tmp: write_quarantine(q, tmp))
    _atomic_parquet(res, shard_path(out, s))
    if q:
        log.warning("shard %d: %d image(s) quarantined (first: %s)", s, len(q), q[0]["reason"])


def _score_shards(sc: _ShardScorer, rel: _Release, out: Path, shard_size: int, todo: list[int]) -> tuple[int, int]:
    """Score and write the shards ``todo``; ``(rows scored, rows quarantined)``."""
    n_scored = n_quar = 0
    read_cols = ["object_id", "image_uri", *sc.pass_cols]
    for s, first, frame in iter_shards(rel.path, shard_size, read_cols, shards=todo):
        probs, failed = _predict_shard(sc, frame)
        res, q = _shard_frames(sc, s, first, frame, probs, failed)
        _write_shard(out, s, res, q)
        n_scored += len(res)
        n_quar += len(q)
    return n_scored, n_quar


def score_manifest(model, manifest_path: str | Path, out_dir: str | Path, batch_size: int = 64,
                   num_workers: int = 0, shard_size: int = 10_000, threshold: float = DEFAULT_THRESHOLD,
                   shards: Sequence[int] | None = None, data_root: str | Path | None = None,
                   device: str = "cpu", passthrough: Sequence[str] = PASSTHROUGH_COLUMNS,
                   overwrite: bool = False, progress: bool = True, precision: str = "fp32",
                   decode: str = "full", agreement: pd.DataFrame | None = None,
                   image_check=None, winding_ensemble=None) -> ScoreResult:
    """Score every row of ``manifest_path`` (or only ``shards``) into Parquet shards under ``out_dir``.

    ``model`` is a model URI (``models:/galmorph-chirality@champion``, ``runs:/...``, a local path) or a
    :class:`~galmorph.models.io.LoadedModel`. Images are decoded and prepared in ``num_workers``
    DataLoader processes while the main process runs batched inference under ``torch.inference_mode``.
    Completed shards are skipped (resume); see the module docstring for the output layout.

    ``precision`` (``fp32``, ``auto``, ``channels_last``, ``bf16``, ``onnx``, ``int8``) and ``decode``
    (``full``, ``draft``, ``auto``) choose the inference path through :func:`galmorph.scoring.accel.prepare_for_scoring`
    (a path is used only when it agrees with fp32 on ``agreement`` images); the choice and the agreement
    results are recorded under ``inference`` in ``scoring.json``, hence in the merged summary and MLflow.
    ``image_check(row, image) -> reason | None`` runs on every decoded image (the release path's
    validation checks); a reason quarantines the row like an unreadable image.
    ``winding_ensemble`` (a :class:`galmorph.scoring.ensemble.WindingEnsemble`, chirality models) combines each
    shard's probabilities with the winding measurement (:func:`galmorph.scoring.ensemble.apply_winding_ensemble`).
    """
    from tqdm import tqdm

    from galmorph.models.io import prior_logit_shift

    _check_score_args(threshold, batch_size)
    t0 = time.perf_counter()
    out = Path(out_dir)
    rel = _open_release(manifest_path, out)
    lm = _load_model(model, device)
    n_sh, wanted = _wanted_shards(shards, rel, shard_size)
    t_path = time.perf_counter()
    path, choice = _inference_path(lm, precision, decode, device, data_root, rel.path, out, overwrite, agreement)
    t_path = time.perf_counter() - t_path
    _check_resume(out, _run_spec(rel, lm, shard_size, threshold, choice, winding_ensemble), overwrite)
    done_before = completed_shards(out)
    todo = [s for s in wanted if s not in done_before]
    skipped = [s for s in wanted if s in done_before]
    if skipped:
        log.info("resuming: %d of %d shard(s) already complete in %s", len(skipped), len(wanted), out)
    rows_todo = sum(min((s + 1) * shard_size, rel.n_rows) - s * shard_size for s in todo)
    bar = tqdm(total=rows_todo, desc=f"score {lm.spec.task}", unit="img", disable=not progress, smoothing=0.1)
    sc = _ShardScorer(lm=lm, path=path, decode=choice.decode, shift=prior_logit_shift(lm.spec),
                      batch_size=batch_size, num_workers=num_workers, device=device, data_root=data_root,
                      threshold=threshold, id_problems=rel.id_problems, image_check=image_check,
                      winding_ensemble=winding_ensemble, bar=bar,
                      pass_cols=[c for c in passthrough if c in rel.columns and c not in ("object_id", "image_uri")])
    n_scored, n_quar = _score_shards(sc, rel, out, shard_size, todo)
    bar.close()
    dt = time.perf_counter() - t0
    return ScoreResult(out_dir=str(out), n_rows=rel.n_rows, n_shards=n_sh, shards_done=wanted, shards_skipped=skipped,
                       n_scored=n_scored, n_quarantined=n_quar, model_uri=lm.uri, model_version=lm.version,
                       seconds=dt, images_per_s=(n_scored + n_quar) / dt if dt > 0 else float("nan"),
                       precision=choice.chosen, decode=choice.decode, path_seconds=t_path)


def _id_problems(manifest_path: str | Path) -> dict[int, str]:
    """Rows (global index) whose ``object_id`` is null/empty or repeats an earlier row's, with the reason:
    they are quarantined, so that the catalogue holds one row per object (the first). The id column is read
    chunk by chunk and the repeats found in bounded memory (:func:`~galmorph.catalogue.manifest.repeated_ids`);
    only the problem rows are held."""
    from galmorph.catalogue import manifest as manifest_module
    from galmorph.catalogue.manifest import repeated_ids, stream_parquet

    bad: dict[int, str] = {}
    repeats = repeated_ids(manifest_path)
    start = 0
    for batch in stream_parquet(manifest_path).iter_batches(batch_size=manifest_module.CHUNK_ROWS,
                                                            columns=["object_id"]):
        text = batch.column(0).to_pandas().astype("string")
        empty = (text.isna() | text.str.strip().eq("").fillna(False)).to_numpy(dtype=bool)
        for i in np.flatnonzero(empty):
            bad[start + int(i)] = f"row {start + int(i)}: object_id is null or empty"
        first = repeats.first_of(np.arange(start, start + len(text)))
        for i in np.flatnonzero(first >= 0):
            bad[start + int(i)] = f"object {text.iat[int(i)]}: duplicate object_id (first at row {int(first[i])})"
        start += len(text)
    return bad


def _release_sample(manifest_path) -> pd.DataFrame | None:
    """The release's first 512 rows (agreement images when the data root has none)."""
    cols = [c for c in ("object_id", "image_uri", "label") if c in pq.ParquetFile(manifest_path).schema_arrow.names]
    sample = next(pq.ParquetFile(manifest_path, pre_buffer=False).iter_batches(batch_size=512, columns=cols), None)
    return sample.to_pandas() if sample is not None else None


def _inference_path(lm, precision: str, decode: str, device: str, data_root, manifest_path, out: Path,
                    overwrite: bool, agreement: pd.DataFrame | None):
    """:func:`galmorph.scoring.accel.prepare_for_scoring`, reusing the choice recorded by an interrupted run of the
    same model in ``out`` and sampling the release for agreement images when the data root has none."""
    from galmorph.scoring.accel import prepare_for_scoring

    if precision == "verified":
        decode = "auto"  # the verified path covers the draft JPEG decode too
    previous = None
    p = out / "scoring.json"
    if p.exists() and not overwrite:
        try:
            old = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("model_uri") == lm.uri and old.get("model_version") == lm.version:
            previous = old.get("inference")
    sample = None
    if precision == "verified" and previous is None:  # the version's own record, else checked now and recorded
        from galmorph.scoring.accel import verified_path

        sample = _release_sample(manifest_path)
        path, choice, _ = verified_path(lm, device, data_root=data_root, release_sample=sample,
                                        workdir=out / ".accel", agreement=agreement)
        return path, choice
    if precision != "fp32" or decode != "full":
        sample = _release_sample(manifest_path)
    return prepare_for_scoring(lm, precision, decode, device, data_root=data_root, release_sample=sample,
                               previous=previous, agreement=agreement, workdir=out / ".accel")


# --------------------------------------------------------------------------------------------
# merging
# --------------------------------------------------------------------------------------------
def _shard_files(score_dirs: Sequence[str | Path]) -> tuple[dict[int, Path], dict[int, Path]]:
    parts: dict[int, Path] = {}
    quars: dict[int, Path] = {}
    for d in score_dirs:
        sd = Path(d) / "shards"
        if not sd.is_dir():
            raise ScoringError(f"{d} is not a scoring output folder (no shards/ inside)")
        for p in sorted(sd.iterdir()):
            m = SHARD_RE.match(p.name)
            if not m:
                continue
            s = int(m.group(1))
            if s in parts:
                raise ScoringError(f"shard {s} appears twice ({parts[s]} and {p}); scoring folders overlap")
            parts[s] = p
            qp = sd / f"quarantine-{m.group(1)}.parquet"
            if qp.exists():
                quars[s] = qp
    return parts, quars


def _merged_spec(score_dirs: Sequence[Path]) -> dict:
    """The scoring run the folders hold (their ``scoring.json``, which must agree on what was scored)."""
    specs = [json.loads((d / "scoring.json").read_text()) for d in score_dirs if (d / "scoring.json").exists()]
    if not specs:
        raise ScoringError(f"no scoring.json in {', '.join(map(str, score_dirs))}")
    for key in ("manifest_sha256", "manifest_rows", "shard_size", "model_uri", "model_version", "classes",
                "class_prior", "winding_ensemble"):
        vals = {json.dumps(sp.get(key), sort_keys=True) for sp in specs}
        if len(vals) > 1:
            raise ScoringError(f"scoring folders disagree on {key}: {sorted(vals)}")
    return specs[0]


def _empty_catalogue(classes: Sequence[str]) -> pd.DataFrame:
    """A catalogue with the score columns and no rows (nothing scored)."""
    return pd.DataFrame({"object_id": pd.Series([], dtype="string"),
                         **{f"p_{c}": pd.Series([], dtype="float32") for c in classes},
                         "pred": pd.Series([], dtype="string"), "p_pred": pd.Series([], dtype="float32"),
                         "high_confidence": pd.Series([], dtype="bool")})


def _concat_shards(parts: dict[int, Path], tmp: Path, spec: dict, classes: Sequence[str]
                   ) -> tuple[dict[str, int], dict[str, int], int]:
    """Stream the score shards into the catalogue file ``tmp`` (shard by shard); returns the class counts,
    the high-confidence class counts and the rows written."""
    writer = None
    counts: dict[str, int] = {c: 0 for c in classes}
    hc_counts: dict[str, int] = {c: 0 for c in classes}
    n_scored = 0
    try:
        for s in sorted(parts):
            t = pq.read_table(parts[s])
            if writer is None:
                meta = {**(t.schema.metadata or {}), b"galmorph.inference": json.dumps(spec.get("inference")),
                        **{f"galmorph.{k}".encode(): json.dumps(spec.get(k), default=json_default).encode()
                           for k in APPLIED_KEYS if k in spec}}
                writer = pq.ParquetWriter(tmp, t.schema.with_metadata(meta))
            elif t.schema != writer.schema:
                t = t.cast(writer.schema)
            writer.write_table(t)
            df = t.select(["pred", "high_confidence"]).to_pandas()
            for c, k in df["pred"].value_counts().items():
                counts[str(c)] = counts.get(str(c), 0) + int(k)
            for c, k in df.loc[df["high_confidence"], "pred"].value_counts().items():
                hc_counts[str(c)] = hc_counts.get(str(c), 0) + int(k)
            n_scored += t.num_rows
        if writer is None:  # nothing scored: an empty catalogue with the score columns
            _empty_catalogue(classes).to_parquet(tmp, index=False)
    finally:
        if writer is not None:
            writer.close()
    return counts, hc_counts, n_scored


def _merge_quarantine(quars: dict[int, Path], q_path: Path) -> int:
    """The shards' quarantine files as one (``q_path``), shard by shard; returns its rows."""
    from galmorph.catalogue.manifest import QuarantineWriter

    with QuarantineWriter(q_path) as qw:
        for s in sorted(quars):
            qw.write(pd.read_parquet(quars[s]))
        qw.close()
    return qw.rows


def _duplicate_ids(cat_path: Path) -> int:
    """Rows of the catalogue repeating an earlier row's object id (found in bounded memory,
    :func:`~galmorph.catalogue.manifest.repeated_ids`)."""
    from galmorph.catalogue.manifest import repeated_ids

    return len(repeated_ids(cat_path))


def _summary(spec: dict, release: str | None, n_sh: int, missing: list[int], counts: dict[str, int],
             hc_counts: dict[str, int], n_scored: int, n_quar: int, duplicates: int, cat_path: Path,
             q_path: Path) -> dict[str, Any]:
    """The release summary (``summary.json``); chirality adds the CVS with its uncertainties."""
    summary: dict[str, Any] = {
        "release": release, "task": spec.get("task"), "model_uri": spec.get("model_uri"),
        "model_version": spec.get("model_version"), "manifest": spec.get("manifest"),
        "threshold": spec.get("threshold"), "n_rows": int(spec["manifest_rows"]), "n_scored": n_scored,
        "n_quarantined": n_quar, "n_shards": n_sh, "shards_missing": missing, "duplicate_object_ids": duplicates,
        "class_counts": counts, "high_confidence_counts": hc_counts,
        "high_confidence_fraction": (sum(hc_counts.values()) / n_scored) if n_scored else float("nan"),
        "catalogue": str(cat_path), "quarantine": str(q_path),
        "inference": spec.get("inference"),
        **{k: spec.get(k) for k in APPLIED_KEYS if k in spec},
    }
    if spec.get("task") == "chirality":
        cv = cvs_block(counts.get("ACW", 0), counts.get("CW", 0))
        hc = cvs_block(hc_counts.get("ACW", 0), hc_counts.get("CW", 0))
        cv.update({f"{k}_high_confidence": v for k, v in hc.items()})
        summary["cvs"] = cv
    return summary


def merge_scores(score_dirs: str | Path | Sequence[str | Path], out_dir: str | Path, release: str | None = None,
                 require_complete: bool = True) -> MergeResult:
    """Concatenate scoring shards into ``out_dir/catalogue.parquet`` (+ ``quarantine.parquet`` and
    ``summary.json``), streaming shard by shard.

    With ``require_complete`` every shard of the manifest must be present (rows in = rows scored +
    rows quarantined is checked against the manifest's row count recorded in ``scoring.json``).
    """
    if isinstance(score_dirs, (str, Path)):
        score_dirs = [score_dirs]
    score_dirs = [Path(d) for d in score_dirs]
    spec = _merged_spec(score_dirs)
    n_rows, shard_size, classes = int(spec["manifest_rows"]), int(spec["shard_size"]), list(spec["classes"])
    parts, quars = _shard_files(score_dirs)
    n_sh = n_shards_for(n_rows, shard_size)
    missing = sorted(set(range(n_sh)) - set(parts))
    if missing and require_complete:
        raise ScoringError(f"{len(missing)} of {n_sh} shard(s) missing (first {missing[:10]}); "
                           "run the scoring again to finish them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cat_path, q_path, sum_path = out / "catalogue.parquet", out / "quarantine.parquet", out / "summary.json"
    tmp = cat_path.with_name(f".{cat_path.name}.tmp-{os.getpid()}")
    counts, hc_counts, n_scored = _concat_shards(parts, tmp, spec, classes)
    os.replace(tmp, cat_path)
    n_quar = _merge_quarantine(quars, q_path)
    if require_complete and n_scored + n_quar != n_rows:
        raise ScoringError(f"rows in ({n_rows}) != rows scored ({n_scored}) + quarantined ({n_quar})")
    summary = _summary(spec, release, n_sh, missing, counts, hc_counts, n_scored, n_quar, _duplicate_ids(cat_path),
                       cat_path, q_path)
    stmp = sum_path.with_name(f".{sum_path.name}.tmp-{os.getpid()}")
    stmp.write_text(json.dumps(summary, indent=2, default=json_default))
    os.replace(stmp, sum_path)
    log.info("release catalogue %s: %d scored, %d quarantined", cat_path, n_scored, n_quar)
    return MergeResult(catalogue=str(cat_path), summary=str(sum_path), quarantine=str(q_path), n_rows=n_rows,
                       n_scored=n_scored, n_quarantined=n_quar, summary_data=summary)


def log_scoring_to_mlflow(summary: dict, catalogue_path: str | Path | None = None, run_name: str | None = None,
                          experiment: str = "galmorph-scoring", tracking_uri: str | None = None,
                          log_catalogue: bool = True) -> str:
    """Record a scored release in MLflow (params, metrics, the summary and the catalogue as artifacts).

    Returns the run id. The run is tagged with the release and the model version so that the scored
    catalogue of a release can be found with ``MlflowClient.search_runs``.
    """
    from galmorph.tracking import using_tracking_uri

    with using_tracking_uri(tracking_uri):
        return _log_scoring_run(summary, catalogue_path, run_name, experiment, log_catalogue)


def _log_scoring_run(summary: dict, catalogue_path, run_name, experiment: str, log_catalogue: bool) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name or f"score-{summary.get('release') or 'release'}") as run:
        mlflow.set_tags({"galmorph.kind": "scoring", "galmorph.release": str(summary.get("release")),
                         "galmorph.task": str(summary.get("task")),
                         "galmorph.model_version": str(summary.get("model_version")),
                         "galmorph.model_uri": str(summary.get("model_uri"))})
        mlflow.log_params({"threshold": summary.get("threshold"), "model_uri": summary.get("model_uri"),
                           "n_shards": summary.get("n_shards")})
        applied = {k: str(summary[f"{k}_label"])[:5000] for k in ("applied_class_prior", "applied_ensemble")
                   if f"{k}_label" in summary}
        if applied:  # what the scores are besides the network (#26)
            mlflow.set_tags(applied)
            mlflow.log_params(applied)
        if summary.get("inference"):  # the inference path and its agreement with fp32 (galmorph.scoring.accel)
            from galmorph.scoring.accel import PathChoice

            pc = PathChoice.from_dict(summary["inference"])
            mlflow.log_params(pc.mlflow_params())
            mlflow.log_metrics(pc.mlflow_metrics())
        metrics = {"n_rows": summary["n_rows"], "n_scored": summary["n_scored"],
                   "n_quarantined": summary["n_quarantined"]}
        hcf = summary.get("high_confidence_fraction")
        if hcf is not None and not (isinstance(hcf, float) and math.isnan(hcf)):
            metrics["high_confidence_fraction"] = hcf
        for c, k in summary.get("class_counts", {}).items():
            metrics[f"n_pred_{c}"] = k
        cv = summary.get("cvs")
        if cv:
            for k in ("cvs", "sigma", "cvs_high_confidence", "sigma_high_confidence"):
                if cv.get(k) is not None and not math.isnan(cv[k]):
                    metrics[k] = cv[k]
        mlflow.log_metrics({clean_name(k, _KEEP_PLUS): float(v) for k, v in metrics.items()})
        mlflow.log_dict(summary, "summary.json")
        if log_catalogue and catalogue_path is not None:
            mlflow.log_artifact(str(catalogue_path), artifact_path="catalogue")
        return run.info.run_id


# --------------------------------------------------------------------------------------------
# helpers for pipeline workers
# --------------------------------------------------------------------------------------------
def parse_shard_range(text: str) -> list[int]:
    """``"3-7"`` -> [3, 4, 5, 6, 7]; ``"2"`` -> [2]; ``"0-1,5"`` -> [0, 1, 5] (each shard once, in order).

    Raises ``ValueError`` naming the text for an empty list, an empty or reversed range (``5-2``),
    a negative shard or anything that is not a non-negative integer."""
    out: dict[int, None] = {}

    def shard(s: str, part: str) -> int:
        s = s.strip()
        if not s.isdigit():
            raise ValueError(f"shard range {part!r} in {text!r}: {s!r} is not a non-negative integer")
        return int(s)

    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = (shard(x, part) for x in part.split("-", 1))
            if b < a:
                raise ValueError(f"shard range {part!r} in {text!r} is reversed ({a} > {b}); write {b}-{a}")
            out.update(dict.fromkeys(range(a, b + 1)))
        else:
            out[shard(part, part)] = None
    if not out:
        raise ValueError(f"shard list {text!r} is empty; give shards such as 0-3,7")
    return list(out)


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan_work(n_rows: int, shard_size: int, n_workers: int, model_uri: str) -> list[str]:
    """Work items of a distributed scoring run (JSON strings): shard range, pinned model, shard size and how many
    items the plan has (the workers that may run at once)."""
    groups = plan_workers(n_rows, shard_size, n_workers)
    return [json.dumps({"shards": f"{g[0]}-{g[-1]}", "model_uri": model_uri, "shard_size": int(shard_size),
                        "n_items": len(groups)}) for g in groups]


def parse_work_item(item: str) -> dict[str, Any]:
    """Inverse of :func:`plan_work`: ``{"shards": [..], "shard_range": "a-b", "model_uri", "shard_size",
    "n_items"}`` (``n_items`` 1 for an item planned before it was recorded)."""
    try:
        d = json.loads(item)
        return {"shards": parse_shard_range(d["shards"]), "shard_range": d["shards"], "model_uri": d["model_uri"],
                "shard_size": int(d["shard_size"]), "n_items": max(1, int(d.get("n_items", 1)))}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ScoringError(f"malformed scoring work item {item!r}: {exc}") from exc
