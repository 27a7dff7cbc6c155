"""Agreement between labellers: Cohen's kappa for every pair on the objects both labelled."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def cohen_kappa(a, b, categories=None) -> float:
    """Cohen's kappa of two equally long label sequences (``sklearn.metrics.cohen_kappa_score``).

    NaN when there are no items; 1.0 when both raters used a single identical category throughout
    (scikit-learn returns NaN there: p_e = 1).
    """
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if a.shape != b.shape:
        raise ValueError(f"label sequences differ in length ({a.size} vs {b.size})")
    if a.size == 0:
        return float("nan")
    a, b = a.astype(str), b.astype(str)
    cats = [str(c) for c in categories] if categories is not None else sorted(set(a) | set(b))
    unknown = (set(a) | set(b)) - set(cats)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not among the categories {cats}")
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(cohen_kappa_score(a, b, labels=cats))


def agreement_report(labels: pd.DataFrame, include_unsure: bool = False, task: str = "lopsided") -> dict:
    """Pairwise agreement from a labels frame (``object_id, labeller, label``) of ``task``.

    The categories are the task's classes; ``unsure`` labels are left out unless ``include_unsure``
    (then one more category); labels that are not the task's (an older database) are left out. Returns
    ``{"labellers": [...], "pairs": [{"a", "b", "n_common", "percent_agreement", "kappa",
    "confusion": {label_a: {label_b: n}}}], "mean_kappa"}``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix

    from galmorph.labelling.choices import UNSURE, labelling_for

    cats = list(labelling_for(task).classes) + ([UNSURE] if include_unsure else [])
    df = labels[labels.label.isin(cats)]
    wide = df.pivot_table(index="object_id", columns="labeller", values="label", aggfunc="last")
    pairs = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        k = cohen_kappa(both[a], both[b], cats)
        cm = confusion_matrix(both[a].astype(str), both[b].astype(str), labels=cats) if len(both) \
            else np.zeros((len(cats), len(cats)), int)
        conf = {x: {y: int(cm[i, j]) for j, y in enumerate(cats)} for i, x in enumerate(cats)}
        pairs.append({"a": a, "b": b, "n_common": int(len(both)),
                      "percent_agreement": float(accuracy_score(both[a].astype(str), both[b].astype(str)))
                      if len(both) else float("nan"),
                      "kappa": k, "confusion": conf})
    ks = [p["kappa"] for p in pairs if np.isfinite(p["kappa"])]
    return {"labellers": sorted(wide.columns.tolist()), "n_objects": int(len(wide)), "pairs": pairs,
            "mean_kappa": float(np.mean(ks)) if ks else float("nan")}
