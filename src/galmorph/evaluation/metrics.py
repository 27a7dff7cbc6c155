"""Classification metrics on plain arrays (no model, no I/O).

Everything here is implemented directly with numpy (confusion matrix, precision/recall/F1, ROC curve
with tied scores, trapezoidal AUC) so that the tests can compare it with scikit-learn as an
independent reference. Functions return nested dicts of plain Python numbers (JSON-able);
:func:`flatten_metrics` turns them into MLflow metric names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from galmorph.manifest import DEFAULT_Z_EDGES, assign_z_bin


# --------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------
def encode_labels(y_true: Sequence, classes: Sequence[str]) -> np.ndarray:
    """Class labels -> indices into ``classes``; an unknown label raises naming it."""
    index = {str(c): i for i, c in enumerate(classes)}
    out = np.empty(len(y_true), dtype=np.int64)
    for i, y in enumerate(y_true):
        if isinstance(y, (int, np.integer)) and not isinstance(y, bool) and str(y) not in index:
            if not 0 <= int(y) < len(classes):
                raise ValueError(f"label index {y} (row {i}) outside 0..{len(classes) - 1}")
            out[i] = int(y)
            continue
        key = str(y)
        if key not in index:
            raise ValueError(f"label {y!r} (row {i}) is not one of the classes {list(classes)}")
        out[i] = index[key]
    return out


def _check_proba(proba: np.ndarray, n: int, k: int) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (n, k):
        raise ValueError(f"probabilities must have shape ({n}, {k}), got {proba.shape}")
    if not np.isfinite(proba).all():
        raise ValueError("probabilities contain NaN or inf; drop failed rows before computing metrics")
    return proba


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``C[i, j]`` = number of objects of true class i predicted as j."""
    c = np.zeros((k, k), dtype=np.int64)
    np.add.at(c, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return c


def normalise_rows(c: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix (fraction of each true class); empty rows stay 0."""
    c = np.asarray(c, dtype=np.float64)
    s = c.sum(axis=1, keepdims=True)
    return np.divide(c, s, out=np.zeros_like(c), where=s > 0)


def roc_curve_binary(y_bin: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` for a binary target; tied scores form one step.

    Starts at (0, 0) with threshold +inf; one point per distinct score (descending).
    """
    y_bin = np.asarray(y_bin, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], y_bin[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    p, n = y.sum(), (~y).sum()
    tpr = np.r_[0.0, tps / p] if p else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / n] if n else np.full(len(fps) + 1, np.nan)
    thr = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thr


def auc_trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule (x increasing)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def binary_auc(y_bin: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    y_bin = np.asarray(y_bin, dtype=bool)
    if y_bin.all() or (~y_bin).all():
        return float("nan")
    fpr, tpr, _ = roc_curve_binary(y_bin, score)
    return auc_trapezoid(fpr, tpr)


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _nanmean(vals: Iterable[float]) -> float:
    v = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float("nan")


# --------------------------------------------------------------------------------------------
# the main entry point
# --------------------------------------------------------------------------------------------
def classification_metrics(y_true: Sequence, proba: np.ndarray, classes: Sequence[str],
                           with_curves: bool = True) -> dict:
    """All per-class and macro metrics of probabilistic predictions.

    ``y_true``: labels (class names or indices); ``proba``: ``(n, k)`` class probabilities in
    ``classes`` order; the predicted class is the arg-max. Returns a dict with ``n, accuracy``,
    ``per_class[c] = {precision, recall, f1, support, auc}`` (AUC one-vs-rest; NaN when the class is
    absent or is everything), ``macro = {precision, recall, f1, auc}`` (AUC: mean of the defined
    one-vs-rest AUCs; for two classes it equals the binary AUC), ``confusion`` (counts) and
    ``confusion_normalised`` (rows = true class), and with ``with_curves`` the ROC curves
    ``roc[c] = {fpr, tpr, thresholds}``. Precision of a never-predicted class is 0 (as
    scikit-learn's ``zero_division=0``).
    """
    classes = [str(c) for c in classes]
    k = len(classes)
    y = encode_labels(list(y_true), classes)
    proba = _check_proba(proba, len(y), k)
    n = len(y)
    if n == 0:
        raise ValueError("no labelled objects to compute metrics on")
    pred = proba.argmax(axis=1)
    cm = confusion_counts(y, pred, k)
    per_class: dict[str, dict] = {}
    roc: dict[str, dict] = {}
    for j, c in enumerate(classes):
        tp = cm[j, j]
        pp = cm[:, j].sum()
        sup = cm[j, :].sum()
        prec = float(tp / pp) if pp else 0.0
        rec = float(tp / sup) if sup else 0.0
        yb = y == j
        auc = binary_auc(yb, proba[:, j])
        per_class[c] = {"precision": prec, "recall": rec, "f1": _f1(prec, rec), "support": int(sup), "auc": auc}
        if with_curves and not math.isnan(auc):
            fpr, tpr, thr = roc_curve_binary(yb, proba[:, j])
            roc[c] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                      "thresholds": [None if not np.isfinite(t) else float(t) for t in thr]}
    present = [c for c in classes if per_class[c]["support"] > 0]
    macro = {m: float(np.mean([per_class[c][m] for c in classes])) for m in ("precision", "recall", "f1")}
    if k == 2:
        macro["auc"] = per_class[classes[1]]["auc"]
    else:
        macro["auc"] = _nanmean(per_class[c]["auc"] for c in classes)
    out = {
        "n": int(n),
        "accuracy": float(np.trace(cm) / n),
        "per_class": per_class,
        "macro": macro,
        "classes_present": present,
        "confusion": cm.tolist(),
        "confusion_normalised": normalise_rows(cm).tolist(),
    }
    if with_curves:
        out["roc"] = roc
    return out


def threshold_metrics(y_true: Sequence, proba: np.ndarray, classes: Sequence[str],
                      thresholds: Sequence[float] = (0.5, 0.85)) -> dict[str, dict]:
    """Results of the high-confidence subsets: for each threshold t, the objects whose highest class
    probability is >= t: ``n``, ``coverage`` (fraction of all objects), ``accuracy`` and macro F1 of
    the subset (NaN when empty), and per-class counts of the confident predictions."""
    classes = [str(c) for c in classes]
    y = encode_labels(list(y_true), classes)
    proba = _check_proba(proba, len(y), len(classes))
    pmax, pred = proba.max(axis=1), proba.argmax(axis=1)
    out: dict[str, dict] = {}
    for t in thresholds:
        sel = pmax >= t
        m = int(sel.sum())
        entry = {"threshold": float(t), "n": m, "coverage": float(m / len(y)) if len(y) else float("nan"),
                 "accuracy": float((pred[sel] == y[sel]).mean()) if m else float("nan"),
                 "f1_macro": float("nan"),
                 "n_pred": {c: int((pred[sel] == j).sum()) for j, c in enumerate(classes)}}
        if m:
            sub = classification_metrics(y[sel], proba[sel], classes, with_curves=False)
            entry["f1_macro"] = sub["macro"]["f1"]
        out[f"{t:g}"] = entry
    return out


def redshift_bin_metrics(y_true: Sequence, proba: np.ndarray, classes: Sequence[str], z: Sequence[float],
                         z_edges: Sequence[float] = DEFAULT_Z_EDGES, with_curves: bool = True) -> dict[str, dict]:
    """Metrics (accuracy, macro F1, macro AUC and ROC curves) in each redshift bin.

    Bins follow :func:`galmorph.manifest.assign_z_bin`; objects with unknown z or outside the edges
    are reported under ``unknown`` / ``out_of_range`` when present. Bins with no objects are listed
    with ``n = 0`` and NaN metrics so that every configured bin appears.
    """
    classes = [str(c) for c in classes]
    y = encode_labels(list(y_true), classes)
    proba = _check_proba(proba, len(y), len(classes))
    bins = assign_z_bin(pd.Series(np.asarray(z, dtype=float)), z_edges).to_numpy()
    labels = [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(z_edges, z_edges[1:])]
    extra = [b for b in ("unknown", "out_of_range") if (bins == b).any()]
    out: dict[str, dict] = {}
    for b in labels + extra:
        sel = bins == b
        m = int(sel.sum())
        if m == 0:
            out[b] = {"n": 0, "accuracy": float("nan"), "f1_macro": float("nan"), "auc_macro": float("nan")}
            continue
        cm = classification_metrics(y[sel], proba[sel], classes, with_curves=with_curves)
        entry = {"n": m, "accuracy": cm["accuracy"], "f1_macro": cm["macro"]["f1"], "auc_macro": cm["macro"]["auc"],
                 "auc": {c: cm["per_class"][c]["auc"] for c in classes}}
        if with_curves:
            entry["roc"] = cm["roc"]
        out[b] = entry
    return out


# --------------------------------------------------------------------------------------------
# flattening and trials
# --------------------------------------------------------------------------------------------
_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name from parts (``+`` -> ``plus``, other odd characters -> ``_``)."""
    s = "_".join(str(p) for p in parts if p != "")
    return _BAD.sub("_", s.replace("+", "plus"))


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def flatten_metrics(report: Mapping) -> dict[str, float]:
    """Every number of an evaluation report as ``{mlflow_metric_name: value}`` (NaN kept; the caller
    decides what to log). Curves are not flattened."""
    flat: dict[str, float] = {}
    cls = report.get("classification", {})
    if cls:
        flat["n"] = cls["n"]
        flat["accuracy"] = cls["accuracy"]
        for m, v in cls["macro"].items():
            flat[metric_key(m, "macro")] = v
        for c, d in cls["per_class"].items():
            for m in ("precision", "recall", "f1", "auc", "support"):
                flat[metric_key(m, c)] = d[m]
        classes = list(cls["per_class"])
        for i, ci in enumerate(classes):
            for j, cj in enumerate(classes):
                flat[metric_key("confusion", ci, cj)] = cls["confusion"][i][j]
                flat[metric_key("confusion_norm", ci, cj)] = cls["confusion_normalised"][i][j]
    for b, d in report.get("redshift_bins", {}).items():
        for m in ("n", "accuracy", "f1_macro", "auc_macro"):
            flat[metric_key("zbin", b, m)] = d[m]
    for t, d in report.get("thresholds", {}).items():
        for m in ("n", "coverage", "accuracy", "f1_macro"):
            flat[metric_key(f"thr{t}", m)] = d[m]
    for name, v in _walk(report.get("chirality", {}), "chirality"):
        flat[name] = v
    for k2, v in report.get("counts", {}).items():
        flat[metric_key("rows", k2)] = v
    return {k2: float(v) for k2, v in flat.items() if _num(v) is not None}


def _walk(d, prefix: str):
    """Numbers in a nested dict (lists skipped), named ``prefix_key_subkey``."""
    if isinstance(d, Mapping):
        for k2, v in d.items():
            yield from _walk(v, metric_key(prefix, k2))
    elif isinstance(d, (bool, np.bool_)):
        yield prefix, float(d)
    elif isinstance(d, (int, float, np.integer, np.floating)):
        yield prefix, float(d)


def aggregate_trials(trials: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof=1; 0 for one trial) of each metric over trials.

    ``trials``: flat metric dicts (e.g. ``EvaluationResult.metrics`` of models trained with different
    seeds). Metrics missing or NaN in some trials are averaged over the others (``n`` says how many).
    """
    if not trials:
        raise ValueError("aggregate_trials needs at least one trial")
    keys = sorted({k2 for t in trials for k2 in t})
    out: dict[str, dict[str, float]] = {}
    for k2 in keys:
        vals = np.array([float(t[k2]) for t in trials if k2 in t and t[k2] is not None], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(vals) == 0:
            out[k2] = {"mean": float("nan"), "std": float("nan"), "n": 0}
            continue
        out[k2] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                   "n": int(len(vals))}
    return out
