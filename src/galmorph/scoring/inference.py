"""Predicting class probabilities for a manifest with a loaded galmorph model (in memory).

For streaming, resumable batch scoring of large releases see :mod:`galmorph.scoring`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from galmorph.datasets.images import ManifestImageDataset, collate_skip
from galmorph.models.io import LoadedModel


def predict_manifest(model: LoadedModel, manifest: pd.DataFrame, batch_size: int = 32, num_workers: int = 0,
                     data_root: Path | str | None = None, mirror: bool = False) -> pd.DataFrame:
    """Class probabilities for every row: ``object_id, p_<class>..., pred, p_pred, label`` plus a
    ``error`` column (non-null where the image could not be read; those rows have NaN probabilities).

    ``mirror=True`` scores the left-right mirrored images (for the chirality mirror test).
    """
    spec = model.spec
    ds = ManifestImageDataset(manifest, spec.image_size, spec.in_chans, spec.crop_fraction,
                              data_root=data_root, on_error="skip")
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip)
    n, k = len(ds), len(spec.classes)
    probs = np.full((n, k), np.nan, dtype=np.float64)
    errors: list[str | None] = [None] * n
    for x, _, pos, failures in dl:
        for p, reason in failures:
            errors[p] = reason
        if len(pos):
            if mirror:
                x = torch.flip(x, dims=[3])
            probs[pos.numpy()] = model.predict_proba(x)
    out = pd.DataFrame({"object_id": manifest["object_id"].astype(str).to_numpy()})
    for j, c in enumerate(spec.classes):
        out[f"p_{c}"] = probs[:, j]
    ok = ~np.isnan(probs).any(axis=1)
    pred = np.array([None] * n, dtype=object)
    pred[ok] = np.asarray(spec.classes, dtype=object)[probs[ok].argmax(axis=1)]
    out["pred"] = pred
    out["p_pred"] = np.where(ok, np.nanmax(np.where(ok[:, None], probs, 0), axis=1), np.nan)
    if "label" in manifest.columns:
        out["label"] = manifest["label"].to_numpy()
    out["error"] = errors
    return out
