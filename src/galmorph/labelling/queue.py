"""Labelling queues: equal numbers of galaxies from equal-width redshift bins, reproducible by seed.

A queue is a manifest (kind ``label-queue``) holding the chosen rows plus ``queue_position``
(the order labellers see them), ``queue_bin`` (the bin label) and, when ranked by a model,
``entropy`` and the model's ``p_<class>`` columns. The bin edges, seed and counts are kept in the
file's metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def z_bin_edges(z_min: float = 0.01, z_max: float = 0.1, n_bins: int = 4) -> np.ndarray:
    """Equal-width redshift bin edges."""
    if not (z_max > z_min) or n_bins < 1:
        raise ValueError(f"need z_max > z_min and n_bins >= 1 (got {z_min}, {z_max}, {n_bins})")
    return np.linspace(z_min, z_max, n_bins + 1)


def bin_labels(edges: np.ndarray) -> list[str]:
    return [f"{lo:.4f}-{hi:.4f}" for lo, hi in zip(edges[:-1], edges[1:])]


def assign_queue_bins(z: pd.Series, edges: np.ndarray) -> pd.Series:
    """Bin label per redshift (left-closed, last bin closed); None outside the edges or NaN."""
    z = pd.to_numeric(z, errors="coerce").astype(float).to_numpy()
    idx = np.searchsorted(edges, z, side="right") - 1
    idx[(z == edges[-1])] = len(edges) - 2
    inside = np.isfinite(z) & (idx >= 0) & (idx < len(edges) - 1)
    labels = np.array(bin_labels(edges), dtype=object)
    out = np.full(len(z), None, dtype=object)
    out[inside] = labels[idx[inside]]
    return pd.Series(out, dtype="object")


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of class probabilities; NaN rows stay NaN."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    h[np.isnan(p).any(axis=1)] = np.nan
    return h


def sample_queue(
    manifest: pd.DataFrame,
    per_bin: int = 250,
    n_bins: int = 4,
    z_min: float = 0.01,
    z_max: float = 0.1,
    seed: int = 0,
    exclude_ids: Iterable[str] = (),
    task: str = "lopsided",
    scores: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Choose up to ``per_bin`` objects from each of ``n_bins`` equal-width z bins over
    [``z_min``, ``z_max``].

    Excluded: ids in ``exclude_ids`` and rows of the manifest already labelled for ``task``.
    Without ``scores`` the choice is uniformly random (seeded, independent of the manifest's row
    order) and the queue order is shuffled across bins. With ``scores`` (``object_id`` +
    ``entropy``, e.g. from :func:`score_entropy`) the most uncertain objects of each bin are chosen
    and the queue is ordered by decreasing entropy (active learning).

    Returns ``(queue_df, summary)``; ``summary`` has the edges, per-bin available/chosen counts and
    how many rows were excluded and why.
    """
    edges = z_bin_edges(z_min, z_max, n_bins)
    df = manifest.copy()
    df["object_id"] = df["object_id"].astype(str)
    if df["object_id"].duplicated().any():
        dups = df.loc[df["object_id"].duplicated(), "object_id"].head(5).tolist()
        raise ValueError(f"manifest has duplicate object_id values (e.g. {dups})")
    df = df.sort_values("object_id", kind="stable").reset_index(drop=True)
    df["queue_bin"] = assign_queue_bins(df["z"], edges)
    excl = set(map(str, exclude_ids))
    already = pd.Series(False, index=df.index)
    if "label" in df.columns and "task" in df.columns:
        already = df["label"].notna() & (df["task"].astype("string") == task).fillna(False)
    excluded_db = df["object_id"].isin(excl)
    eligible = df["queue_bin"].notna() & ~excluded_db & ~already.astype(bool)
    summary: dict = {
        "edges": [float(e) for e in edges], "bins": bin_labels(edges), "seed": seed, "per_bin": per_bin,
        "rows_in": len(df), "outside_z_range": int(df["queue_bin"].isna().sum()),
        "excluded_labelled_elsewhere": int((excluded_db & df["queue_bin"].notna()).sum()),
        "excluded_labelled_in_manifest": int((already.astype(bool) & df["queue_bin"].notna() & ~excluded_db).sum()),
        "available": {}, "chosen": {}, "ranked_by": "random",
    }
    rng = np.random.default_rng(seed)
    rank_col = "entropy"
    if scores is not None:
        # chirality models: the rotation-stability overlap index eta (score_uncertainty) when present
        rank_col = "uncertainty" if "uncertainty" in scores.columns else "entropy"
        summary["ranked_by"] = str(scores["uncertainty_measure"].iloc[0]) if (
            rank_col == "uncertainty" and "uncertainty_measure" in scores.columns and len(scores)) else rank_col
        keep = ["object_id", "entropy"] + (["uncertainty"] if rank_col == "uncertainty" else [])
        sc = scores[keep + [c for c in scores.columns if c.startswith("p_")]].copy()
        sc["object_id"] = sc["object_id"].astype(str)
        df = df.drop(columns=[c for c in sc.columns if c != "object_id" and c in df.columns]).merge(
            sc, on="object_id", how="left")
    chosen = []
    for b in summary["bins"]:
        cand = df[eligible & (df["queue_bin"] == b)]
        summary["available"][b] = len(cand)
        k = min(per_bin, len(cand))
        if scores is not None:
            # random tie-break key, then entropy (NaN = could not be scored: last)
            key = rng.random(len(cand))
            ent = cand[rank_col].fillna(-np.inf).to_numpy()
            pick = cand.iloc[np.lexsort((key, -ent))[:k]]
        else:
            pick = cand.iloc[np.sort(rng.choice(len(cand), size=k, replace=False))] if k else cand.iloc[:0]
        summary["chosen"][b] = len(pick)
        if len(pick) < per_bin:
            log.warning("z bin %s: only %d eligible objects for %d requested", b, len(pick), per_bin)
        chosen.append(pick)
    q = pd.concat(chosen, ignore_index=True) if chosen else df.iloc[:0]
    if scores is not None:
        order = np.lexsort((rng.random(len(q)), -q[rank_col].fillna(-np.inf).to_numpy()))
    else:
        order = rng.permutation(len(q))
    q = q.iloc[order].reset_index(drop=True)
    q["queue_position"] = np.arange(len(q), dtype=np.int64)
    q["task"] = task
    q["label"] = None
    summary["rows_out"] = len(q)
    return q, summary


#: rotation-stability eta is computed for at most this many candidates, the most uncertain by entropy
#: (eta costs ``n_rotations x n_passes`` forward passes an image; the rest rank after them)
ETA_MAX_OBJECTS = 1000


def score_entropy(manifest: pd.DataFrame, model_uri: str, data_root: Path | str | None = None,
                  batch_size: int = 32, eta_max_objects: int | None = ETA_MAX_OBJECTS) -> pd.DataFrame:
    """Predictive entropy of a registered model (e.g. ``models:/galmorph-lopsided@champion``) for
    every row: ``object_id, p_<class>..., entropy, error`` (unreadable images: NaN entropy). Chirality
    models add the rotation-stability eta (:func:`score_uncertainty`) of the ``eta_max_objects`` rows
    of highest entropy (``None``: all)."""
    from galmorph.scoring.inference import predict_manifest
    from galmorph.models.io import load_for_inference

    model = load_for_inference(model_uri)
    pred = predict_manifest(model, manifest.reset_index(drop=True), batch_size=batch_size, data_root=data_root)
    pcols = [f"p_{c}" for c in model.spec.classes]
    pred["entropy"] = predictive_entropy(pred[pcols].to_numpy())
    pred["model_uri"] = model_uri
    pred["model_version"] = model.version
    out = pred[["object_id", *pcols, "entropy", "error"]]
    if model.spec.task == "chirality":
        out = score_uncertainty(out, model.module, model.spec, manifest.reset_index(drop=True), data_root=data_root,
                                max_objects=eta_max_objects)
    return out


def score_uncertainty(scores: pd.DataFrame, module, spec, manifest: pd.DataFrame,
                      data_root: Path | str | None = None, n_rotations: int = 8, n_passes: int = 5,
                      max_objects: int | None = None, batch_size: int = 32, chunk_size: int = 256) -> pd.DataFrame:
    """Add ``uncertainty`` = the rotation-stability overlap index eta of each galaxy and
    ``uncertainty_measure = "rotation_eta"``: the overlap, over rotations (and MC-dropout passes when
    the model has dropout), of the probability distributions of the galaxy's two most probable classes
    (by their mean probability over the rotations; :func:`galmorph.evaluation.chirality.rotation_stability`'s
    per-galaxy value of that pair). 1 = the
    winner is not separated from the runner-up under rotation (unstable), 0 = always separated. With
    ``max_objects`` only that many rows are measured, in order of decreasing ``entropy`` when the scores
    have it; images are prepared and measured ``chunk_size`` at a time, so memory does not grow with the
    number of rows.
    Rows whose image could not be read (or beyond ``max_objects``) get NaN and rank last."""
    import torch

    from galmorph.evaluation.chirality import rotation_stability
    from galmorph.imaging.io import ImageError, load_image
    from galmorph.imaging.preprocess import prepare_image
    from galmorph.catalogue.manifest import resolve_image_uri

    out = scores.copy()
    out["uncertainty"] = np.nan
    out["uncertainty_measure"] = "rotation_eta"
    ids = scores["object_id"].astype(str).tolist()
    order = (np.argsort(-scores["entropy"].fillna(-np.inf).to_numpy(dtype=float), kind="stable")
             if "entropy" in scores.columns else np.arange(len(ids)))
    uris = dict(zip(manifest["object_id"].astype(str), manifest["image_uri"]))
    classes = [str(c) for c in spec.classes]
    chunk = max(1, int(chunk_size))
    n_done = 0

    def measure(rows: list[int], imgs: list[np.ndarray]) -> None:
        res = rotation_stability(module, torch.from_numpy(np.stack(imgs)), spec.classes, n_passes=n_passes,
                                 n_rotations=n_rotations, batch_size=batch_size)
        mean_probs = np.asarray(res["mean_probs"], dtype=float)
        eta = []
        for g in range(len(rows)):
            a, b = sorted(np.argsort(-mean_probs[g])[:2])
            eta.append(res["per_galaxy"][f"{classes[a]}-{classes[b]}"][g])
        out.loc[out.index[rows], "uncertainty"] = np.asarray(eta, dtype=float)

    rows, imgs = [], []
    for i in order:
        if max_objects is not None and n_done + len(rows) >= max_objects:
            break
        try:
            img = load_image(resolve_image_uri(uris[ids[i]], data_root), greyscale=spec.in_chans == 1)
        except (ImageError, KeyError, FileNotFoundError, OSError, ValueError):
            continue
        imgs.append(prepare_image(img, spec.image_size, spec.in_chans, spec.crop_fraction))
        rows.append(int(i))
        if len(rows) == chunk:
            measure(rows, imgs)
            n_done += len(rows)
            rows, imgs = [], []
    if rows:
        measure(rows, imgs)
    return out


def write_queue(queue: pd.DataFrame, path: str | Path, summary: dict) -> Path:
    from galmorph.catalogue.manifest import write_manifest

    return write_manifest(queue, path, kind="label-queue", extra_meta={"queue": summary})


def read_queue(path: str | Path) -> pd.DataFrame:
    """Read a queue manifest (sorted by ``queue_position``)."""
    from galmorph.catalogue.manifest import ManifestError, read_manifest

    q = read_manifest(path)
    for c in ("queue_position", "queue_bin"):
        if c not in q.columns:
            raise ManifestError(f"{path}: not a labelling queue (no '{c}' column); make one with `galmorph label sample`")
    return q.sort_values("queue_position", kind="stable").reset_index(drop=True)


def add_a1(queue: pd.DataFrame, data_root: Path | str | None = None, progress: bool = True, **kwargs) -> pd.DataFrame:
    """The queue with the A1 columns of :func:`galmorph.catalogue.a1.measure_a1_frame` (for the app's
    overlay). Rows whose image cannot be measured stay in the queue with the reason in ``a1_error``."""
    from galmorph.catalogue.a1 import measure_a1_frame

    measured, quarantine = measure_a1_frame(queue, data_root=data_root, progress=progress, **kwargs)
    reasons = {q["object_id"]: q["reason"] for q in quarantine}
    new_cols = [c for c in measured.columns if c not in queue.columns]
    out = queue.merge(measured[["object_id", *new_cols]], on="object_id", how="left")
    out["a1_error"] = out["object_id"].map(reasons)
    if reasons:
        log.warning("A1 not measured for %d queued objects (kept, see a1_error)", len(reasons))
    return out
