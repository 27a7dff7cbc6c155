"""Classification metrics on plain arrays (no model, no I/O).

Every metric is scikit-learn's (confusion matrix, precision/recall/F1, ROC curve, AUC, accuracy). One
macro-F1 definition for the whole project (:func:`macro_f1`): the mean F1 over the task's classes
that have support in the evaluated set; the others are reported as ``absent_classes``. Functions
return nested dicts of plain Python numbers (JSON-able);
:func:`flatten_metrics` turns them into MLflow metric names.

This module holds the project's one implementation of each shared piece:
:func:`label_metrics` (metrics of hard predictions: the core of :func:`classification_metrics` here and
of :func:`galmorph.training.metrics.classification_metrics`), :func:`clean_name` / :func:`metric_key`
(safe metric names) and :func:`flatten_numbers` (nested dict -> flat ``{name: value}``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from galmorph.catalogue.manifest import DEFAULT_Z_EDGES, assign_z_bin
from galmorph.tracking import METRIC_NAME, SLUG, NameRule, clean_name  # noqa: F401 - re-exported


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
# building blocks (scikit-learn)
# --------------------------------------------------------------------------------------------
def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``C[i, j]`` = number of objects of true class i predicted as j (``sklearn.metrics.confusion_matrix``)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=list(range(k))).astype(np.int64)


def confusion_normalised(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Row-normalised confusion matrix (fraction of each true class; ``sklearn.metrics.confusion_matrix``
    with ``normalize="true"``); rows of absent classes are 0."""
    from sklearn.metrics import confusion_matrix

    with np.errstate(invalid="ignore", divide="ignore"):
        c = confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=list(range(k)), normalize="true")
    return np.nan_to_num(np.asarray(c, dtype=np.float64))


def roc_curve_binary(y_bin: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` of a binary target (``sklearn.metrics.roc_curve`` with every
    distinct score kept); starts at (0, 0) with threshold +inf."""
    from sklearn.metrics import roc_curve

    y_bin = np.asarray(y_bin, dtype=bool)
    fpr, tpr, thr = roc_curve(y_bin, np.asarray(score, dtype=np.float64), drop_intermediate=False)
    return fpr, tpr, thr


def binary_auc(y_bin: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (``sklearn.metrics.roc_auc_score``); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y_bin = np.asarray(y_bin, dtype=bool)
    if y_bin.all() or (~y_bin).all():
        return float("nan")
    return float(roc_auc_score(y_bin, np.asarray(score, dtype=np.float64)))


def macro_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC (``sklearn.metrics.roc_auc_score``, ``average="macro"``) over the classes
    whose AUC is defined (present and not everything); for two classes the binary AUC of class 1.
    NaN when none is defined."""
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import label_binarize

    k = proba.shape[1]
    if k == 2:
        return binary_auc(y == 1, proba[:, 1])
    onehot = label_binarize(y, classes=list(range(k)))
    cols = [j for j in range(k) if 0 < onehot[:, j].sum() < len(y)]
    if not cols:
        return float("nan")
    return float(roc_auc_score(onehot[:, cols], proba[:, cols], average="macro"))


def macro_f1(y_true: Sequence, y_pred: Sequence, classes: Sequence[str]) -> tuple[float, list[str]]:
    """The project's one macro-F1: the mean F1 over the classes of ``classes`` that have support in
    ``y_true`` (``sklearn.metrics.f1_score(labels=present, average="macro", zero_division=0)``).
    Returns ``(macro_f1, absent_classes)``; NaN when no class has support."""
    from sklearn.metrics import f1_score

    classes = [str(c) for c in classes]
    y = encode_labels(list(y_true), classes)
    p = encode_labels(list(y_pred), classes)
    present = sorted(set(y.tolist()))
    absent = [c for j, c in enumerate(classes) if j not in present]
    if not present:
        return float("nan"), absent
    return float(f1_score(y, p, labels=present, average="macro", zero_division=0)), absent


def majority_class_baseline(y_true: Sequence, classes: Sequence[str]) -> dict:
    """Metrics of the majority-class predictor (always the most frequent true class of ``y_true``) on the
    same objects: ``class``, ``accuracy``, ``f1_macro`` (the :func:`macro_f1` definition)."""
    classes = [str(c) for c in classes]
    y = encode_labels(list(y_true), classes)
    if len(y) == 0:
        raise ValueError("majority_class_baseline: no labelled objects")
    counts = np.bincount(y, minlength=len(classes))
    maj = int(counts.argmax())
    f1, _ = macro_f1(y, np.full(len(y), maj), classes)
    return {"class": classes[maj], "accuracy": float(counts[maj] / len(y)), "f1_macro": f1}


def label_metrics(y: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics of hard predictions (scikit-learn): ``y`` and ``pred`` are class indices into ``classes``.

    Returns ``n``, ``accuracy`` (NaN when ``n`` is 0), ``per_class[c] = {precision, recall, f1, support}``,
    ``macro = {precision, recall, f1}`` averaged over the classes **with support** in ``y`` (the
    :func:`macro_f1` definition; NaN when none has), ``classes_present``, ``absent_classes`` and
    ``confusion`` (counts, rows = true class). Precision of a never-predicted class is 0
    (``zero_division=0``). The one core of :func:`classification_metrics` and of the training run's
    held-out metrics (:func:`galmorph.training.metrics.classification_metrics`).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    classes = [str(c) for c in classes]
    k = len(classes)
    n = len(y)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    per_class = {c: {"precision": float(prec[j]), "recall": float(rec[j]), "f1": float(f1[j]), "support": int(sup[j])}
                 for j, c in enumerate(classes)}
    present = [c for c in classes if per_class[c]["support"] > 0]
    absent = [c for c in classes if per_class[c]["support"] == 0]
    macro = {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    if present:
        mp, mr, mf, _ = precision_recall_fscore_support(y, pred, labels=[classes.index(c) for c in present],
                                                        average="macro", zero_division=0)
        macro = {"precision": float(mp), "recall": float(mr), "f1": float(mf)}
    return {"n": int(n), "accuracy": float(accuracy_score(y, pred)) if n else float("nan"), "per_class": per_class,
            "macro": macro, "classes_present": present, "absent_classes": absent,
            "confusion": confusion_counts(y, pred, k).tolist()}


# --------------------------------------------------------------------------------------------
# the main entry point
# --------------------------------------------------------------------------------------------
def classification_metrics(y_true: Sequence, proba: np.ndarray, classes: Sequence[str],
                           with_curves: bool = True) -> dict:
    """All per-class and macro metrics of probabilistic predictions (scikit-learn).

    ``y_true``: labels (class names or indices); ``proba``: ``(n, k)`` class probabilities in
    ``classes`` order; the predicted class is the arg-max. Returns a dict with ``n, accuracy``,
    ``per_class[c] = {precision, recall, f1, support, auc}`` (AUC one-vs-rest; NaN when the class is
    absent or is everything), ``macro = {precision, recall, f1, auc}`` averaged over the classes
    **with support** in ``y_true`` (the others are listed in ``absent_classes``; AUC: mean of the
    defined one-vs-rest AUCs, for two classes the binary AUC), ``majority_baseline`` (see
    :func:`majority_class_baseline`), ``confusion`` (counts) and ``confusion_normalised`` (rows = true
    class), and with ``with_curves`` the ROC curves ``roc[c] = {fpr, tpr, thresholds}``. Precision of a
    never-predicted class is 0 (``zero_division=0``). The hard-prediction part is :func:`label_metrics`.
    """
    classes = [str(c) for c in classes]
    k = len(classes)
    y = encode_labels(list(y_true), classes)
    proba = _check_proba(proba, len(y), k)
    if len(y) == 0:
        raise ValueError("no labelled objects to compute metrics on")
    pred = proba.argmax(axis=1)
    hard = label_metrics(y, pred, classes)
    per_class = hard["per_class"]
    roc: dict[str, dict] = {}
    for j, c in enumerate(classes):
        yb = y == j
        auc = binary_auc(yb, proba[:, j])
        per_class[c]["auc"] = auc
        if with_curves and not math.isnan(auc):
            fpr, tpr, thr = roc_curve_binary(yb, proba[:, j])
            roc[c] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                      "thresholds": [None if not np.isfinite(t) else float(t) for t in thr]}
    out = {
        "n": hard["n"],
        "accuracy": hard["accuracy"],
        "per_class": per_class,
        "macro": {**hard["macro"], "auc": macro_auc(y, proba)},
        "classes_present": hard["classes_present"],
        "absent_classes": hard["absent_classes"],
        "majority_baseline": majority_class_baseline(y, classes),
        "confusion": hard["confusion"],
        "confusion_normalised": confusion_normalised(y, pred, k).tolist(),
    }
    if with_curves:
        out["roc"] = roc
    return out


def threshold_metrics(y_true: Sequence, proba: np.ndarray, classes: Sequence[str],
                      thresholds: Sequence[float] = (0.5, 0.85)) -> dict[str, dict]:
    """Results of the high-confidence subsets: for each threshold t, the objects whose highest class
    probability is >= t: ``n``, ``coverage`` (fraction of all objects), ``accuracy`` and macro F1 of
    the subset (NaN when empty), and per-class counts of the confident predictions."""
    from sklearn.metrics import accuracy_score

    classes = [str(c) for c in classes]
    y = encode_labels(list(y_true), classes)
    proba = _check_proba(proba, len(y), len(classes))
    pmax, pred = proba.max(axis=1), proba.argmax(axis=1)
    out: dict[str, dict] = {}
    for t in thresholds:
        sel = pmax >= t
        m = int(sel.sum())
        entry = {"threshold": float(t), "n": m, "coverage": float(m / len(y)) if len(y) else float("nan"),
                 "accuracy": float(accuracy_score(y[sel], pred[sel])) if m else float("nan"),
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

    Bins follow :func:`galmorph.catalogue.manifest.assign_z_bin`; objects with unknown z or outside the edges
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
# metric names, flattening and trials
# --------------------------------------------------------------------------------------------
def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name from parts joined by ``_`` (empty parts left out; ``+`` -> ``plus``,
    other odd characters -> ``_``: :data:`METRIC_NAME`)."""
    return clean_name("_".join(str(p) for p in parts if p != ""))


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
        flat["n_absent_classes"] = len(cls.get("absent_classes", []))
        base = cls.get("majority_baseline") or {}
        for m in ("accuracy", "f1_macro"):
            if m in base:
                flat[metric_key("baseline", m)] = base[m]
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
    cal = report.get("calibration") or {}
    if cal:
        flat["temperature"] = cal.get("temperature")
        flat["ece"] = (cal.get("overall") or {}).get("ece")
        flat["mce"] = (cal.get("overall") or {}).get("mce")
        for b, d in (cal.get("redshift_bins") or {}).items():
            flat[metric_key("zbin", b, "ece")] = d.get("ece")
    flat.update(flatten_numbers(report.get("chirality", {}), "chirality"))
    for k2, v in report.get("counts", {}).items():
        flat[metric_key("rows", k2)] = v
    return {k2: float(v) for k2, v in flat.items() if _num(v) is not None}


def flatten_numbers(d, prefix: str = "", *, sep: str = "_", clean: bool = True,
                    finite: bool = False) -> dict[str, float]:
    """Every number in nested mappings as ``{name: float}`` (the project's one nested-dict flattener).

    Names join ``prefix`` and the keys down to the number with ``sep`` (empty parts left out); with
    ``clean`` (``sep`` is then ``_``) each name is a :func:`metric_key`. Numbers: Python and NumPy
    ints, floats and bools (as 0/1); NaN and inf are kept unless ``finite``; strings, lists and
    ``None`` are skipped.
    """
    def join(p: str, k) -> str:
        if clean:
            return metric_key(p, k)
        return sep.join(str(x) for x in (p, k) if x != "")

    return {name: v for name, v in _number_leaves(d, prefix, join) if not finite or math.isfinite(v)}


def _number_leaves(d, prefix: str, join) -> Iterator[tuple[str, float]]:
    if isinstance(d, Mapping):
        for k2, v in d.items():
            yield from _number_leaves(v, join(prefix, k2), join)
    elif isinstance(d, (bool, np.bool_, int, float, np.integer, np.floating)):
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
