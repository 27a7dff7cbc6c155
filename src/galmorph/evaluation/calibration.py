"""Probability calibration: reliability diagram, expected calibration error (ECE) and temperature scaling.

* **Reliability diagram**: the objects are binned by their top-class probability (confidence) into
  ``n_bins`` equal-width bins on [0, 1]; per bin the mean confidence, the accuracy and the count.
* **ECE** (Guo et al. 2017): ``sum_b (n_b / n) |accuracy_b - confidence_b|`` over those bins.
* **Temperature scaling** (Guo et al. 2017): one scalar ``T > 0`` that divides the logits,
  ``p = softmax(z / T)``, fitted by minimising the negative log-likelihood on a validation split
  (:func:`fit_temperature`). It leaves the arg-max (and so accuracy and F1) unchanged; ``T > 1``
  softens an over-confident model. The training runner stores it in the ModelSpec
  (``temperature``) and :func:`galmorph.models.io.load_for_inference` applies it, so scored
  probabilities (``p_pred``, the high-confidence flag) are the calibrated ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from galmorph.catalogue.manifest import DEFAULT_Z_EDGES, assign_z_bin


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(proba, labels) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels)
    if proba.ndim != 2 or len(proba) != len(labels):
        raise ValueError(f"calibration needs probabilities (n, k) and n labels; got {proba.shape} and {labels.shape}")
    if not np.isfinite(proba).all():
        raise ValueError("calibration: probabilities contain NaN or inf")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= proba.shape[1]):
        raise ValueError(f"calibration: label indices must be in 0..{proba.shape[1] - 1}")
    return proba, labels


def reliability_diagram(proba, labels, n_bins: int = 10) -> dict:
    """Reliability table of top-class probabilities: ``edges`` and per bin ``confidence`` (mean top
    probability; NaN when empty), ``accuracy`` (NaN when empty) and ``count``; plus ``ece``, ``mce``
    (largest gap of a non-empty bin) and ``n``. ``labels``: class indices."""
    proba, labels = _check(proba, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = proba.max(axis=1) if len(proba) else np.zeros(0)
    correct = (proba.argmax(axis=1) == labels) if len(proba) else np.zeros(0, bool)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # (lo, hi]; 0 in the first bin
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct.astype(float), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mconf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
        macc = np.where(count > 0, sum_acc / np.maximum(count, 1), np.nan)
    gaps = np.abs(macc - mconf)
    n = int(len(proba))
    ece = float(np.nansum(count * gaps) / n) if n else float("nan")
    mce = float(np.nanmax(gaps)) if (count > 0).any() else float("nan")
    return {"edges": edges.tolist(), "confidence": mconf.tolist(), "accuracy": macc.tolist(),
            "count": count.astype(int).tolist(), "ece": ece, "mce": mce, "n": n}


def expected_calibration_error(proba, labels, n_bins: int = 10) -> float:
    """ECE of top-class probabilities in ``n_bins`` equal-width confidence bins (see module docstring)."""
    return reliability_diagram(proba, labels, n_bins)["ece"]


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(z)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(logits, labels, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on (``logits (n, k)``, class
    indices ``labels``), searched on log T within ``bounds`` (bounded Brent). Returns 1.0 when there
    are no rows or the logits are not finite."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"fit_temperature needs logits (n, k) and n labels; got {logits.shape} and {labels.shape}")
    if len(labels) == 0 or not np.isfinite(logits).all():
        return 1.0
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"fit_temperature: label indices must be in 0..{logits.shape[1] - 1}")
    res = minimize_scalar(lambda t: nll(logits, labels, math.exp(t)), bounds=tuple(math.log(b) for b in bounds),
                          method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x))


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` as float64 ``(n, k)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def logits_from_loader(net, loader) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (n, k), labels (n,))`` of ``net`` (images in, logits out) over a labelled ``(x, y)`` loader."""
    import torch

    net = net.eval()
    zs, ys = [], []
    with torch.inference_mode():
        for batch in loader:
            x, y = batch[0], batch[1]
            zs.append(net(x).float().cpu().numpy())
            ys.append(np.asarray(y))
    if not zs:
        return np.zeros((0, 0)), np.zeros(0, dtype=int)
    return np.concatenate(zs), np.concatenate(ys)


def temperature_from_loader(net, loader, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Fit the temperature of ``net`` (a model under the galmorph contract: images in, logits out) on a
    labelled ``(x, y)`` data loader, e.g. the training run's validation split."""
    z, y = logits_from_loader(net, loader)
    if not len(z):
        return 1.0
    return fit_temperature(z, y, bounds)


def calibration_report(y_true: Sequence, proba, classes: Sequence[str], z: Sequence[float] | None = None,
                       z_edges: Sequence[float] = DEFAULT_Z_EDGES, n_bins: int = 10, temperature: float = 1.0) -> dict:
    """Reliability diagram and ECE of a task's predictions overall and per redshift bin.

    ``y_true``: class names or indices; ``proba``: ``(n, k)`` in ``classes`` order (already calibrated
    with ``temperature``, which is only recorded). Returns ``{temperature, n_bins, overall:
    reliability, redshift_bins: {bin: reliability}}`` (the reliability diagram -- ``confidence``,
    ``accuracy``, ``count`` per confidence bin -- with ``n``, ``ece``, ``mce``; redshift bins with
    objects only)."""
    from galmorph.evaluation.metrics import encode_labels

    classes = [str(c) for c in classes]
    y = encode_labels(list(y_true), classes)
    proba, y = _check(proba, y)
    out = {"temperature": float(temperature), "n_bins": int(n_bins), "overall": reliability_diagram(proba, y, n_bins),
           "redshift_bins": {}}
    if z is not None:
        bins = assign_z_bin(pd.Series(np.asarray(z, dtype=float)), z_edges).to_numpy()
        for b in pd.unique(bins):
            sel = bins == b
            out["redshift_bins"][str(b)] = reliability_diagram(proba[sel], y[sel], n_bins)
    return out
