"""The metric functions against scikit-learn on fixed predictions (an independent implementation)."""

import numpy as np
import pytest
from sklearn import metrics as skm

from galmorph.evaluation.metrics import (aggregate_trials, classification_metrics, flatten_metrics, metric_key,
                                         redshift_bin_metrics, roc_curve_binary, threshold_metrics)


def _fixed(n=300, k=3, seed=1, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:
        p = np.round(p, 1)
        p = p / p.sum(axis=1, keepdims=True)
    return y, p


@pytest.mark.parametrize("k,ties", [(3, False), (3, True), (2, False), (6, True)])
def test_classification_metrics_equal_sklearn(k, ties):
    y, p = _fixed(k=k, ties=ties, seed=k)
    classes = [f"c{i}" for i in range(k)]
    labels = [classes[i] for i in y]
    m = classification_metrics(labels, p, classes)
    pred = p.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    for j, c in enumerate(classes):
        assert m["per_class"][c]["precision"] == pytest.approx(pr[j], abs=1e-12)
        assert m["per_class"][c]["recall"] == pytest.approx(rc[j], abs=1e-12)
        assert m["per_class"][c]["f1"] == pytest.approx(f1[j], abs=1e-12)
        assert m["per_class"][c]["support"] == sup[j]
        assert m["per_class"][c]["auc"] == pytest.approx(skm.roc_auc_score(y == j, p[:, j]), abs=1e-12)
        fpr, tpr, _ = skm.roc_curve(y == j, p[:, j], drop_intermediate=False)
        np.testing.assert_allclose(m["roc"][c]["fpr"], fpr, atol=1e-12)
        np.testing.assert_allclose(m["roc"][c]["tpr"], tpr, atol=1e-12)
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["macro"]["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert m["macro"]["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"), abs=1e-12)
    sk_auc = skm.roc_auc_score(y, p[:, 1]) if k == 2 else skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert m["macro"]["auc"] == pytest.approx(sk_auc, abs=1e-12)
    np.testing.assert_array_equal(m["confusion"], skm.confusion_matrix(y, pred, labels=list(range(k))))
    np.testing.assert_allclose(m["confusion_normalised"],
                               skm.confusion_matrix(y, pred, labels=list(range(k)), normalize="true"), atol=1e-12)


def test_missing_class_and_bad_inputs():
    classes = ["a", "b", "c"]
    y = ["a", "b", "a", "b"]
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    m = classification_metrics(y, p, classes)
    assert np.isnan(m["per_class"]["c"]["auc"]) and m["per_class"]["c"]["support"] == 0
    assert m["per_class"]["c"]["precision"] == 0.0  # predicted once, never right
    assert m["macro"]["auc"] == pytest.approx(np.mean([m["per_class"]["a"]["auc"], m["per_class"]["b"]["auc"]]))
    with pytest.raises(ValueError, match="'zz'.*not one of the classes"):
        classification_metrics(["a", "zz"], p[:2], classes)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(y, p[:, :2], classes)
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(y, np.where(p > 0.7, np.nan, p), classes)


def test_roc_curve_with_ties_matches_sklearn():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    s = np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.1, 0.1, 0.0])
    fpr, tpr, thr = roc_curve_binary(y == 1, s)
    f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])


def test_thresholds_coverage_and_accuracy():
    y, p = _fixed(n=200, k=3, seed=5)
    classes = ["x", "y", "z"]
    t = threshold_metrics([classes[i] for i in y], p, classes, (0.5, 0.85))
    for thr in (0.5, 0.85):
        sel = p.max(axis=1) >= thr
        e = t[f"{thr:g}"]
        assert e["n"] == sel.sum() and e["coverage"] == pytest.approx(sel.mean())
        assert e["accuracy"] == pytest.approx((p[sel].argmax(axis=1) == y[sel]).mean())
        assert sum(e["n_pred"].values()) == sel.sum()
    assert t["0.85"]["coverage"] <= t["0.5"]["coverage"]
    empty = threshold_metrics(["x"], np.array([[0.4, 0.3, 0.3]]), classes, (0.99,))
    assert empty["0.99"]["n"] == 0 and np.isnan(empty["0.99"]["accuracy"])


def test_redshift_bins_equal_subset_metrics():
    y, p = _fixed(n=240, k=2, seed=7)
    classes = ["symmetric", "lopsided"]
    labels = [classes[i] for i in y]
    z = np.random.default_rng(0).uniform(0.01, 0.12, len(y))
    z[:3] = np.nan
    edges = (0.01, 0.03, 0.05, 0.07, 0.10, 0.12, 0.14, 0.16, 0.20)
    zb = redshift_bin_metrics(labels, p, classes, z, edges)
    assert list(zb)[:8] == ["0.01-0.03", "0.03-0.05", "0.05-0.07", "0.07-0.10", "0.10-0.12", "0.12-0.14",
                            "0.14-0.16", "0.16-0.20"]
    assert zb["0.14-0.16"]["n"] == 0 and np.isnan(zb["0.14-0.16"]["auc_macro"])
    assert zb["unknown"]["n"] == 3
    assert sum(d["n"] for d in zb.values()) == len(y)
    sel = (z >= 0.03) & (z < 0.05)
    assert zb["0.03-0.05"]["auc_macro"] == pytest.approx(skm.roc_auc_score(y[sel], p[sel, 1]))
    assert zb["0.03-0.05"]["f1_macro"] == pytest.approx(skm.f1_score(y[sel], p[sel].argmax(1), average="macro"))


def test_aggregate_trials_and_flatten():
    trials = [{"accuracy": 0.8, "f1_macro": 0.7}, {"accuracy": 0.9, "f1_macro": float("nan")},
              {"accuracy": 0.85, "f1_macro": 0.75}]
    agg = aggregate_trials(trials)
    assert agg["accuracy"]["mean"] == pytest.approx(0.85)
    assert agg["accuracy"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.85], ddof=1))
    assert agg["f1_macro"]["n"] == 2 and agg["f1_macro"]["mean"] == pytest.approx(0.725)
    with pytest.raises(ValueError):
        aggregate_trials([])
    y, p = _fixed(n=60, k=6, seed=2)
    classes = ["1", "2", "3", "4", "5+", "cant_tell"]
    rep = {"classification": classification_metrics([classes[i] for i in y], p, classes)}
    flat = flatten_metrics(rep)
    assert "f1_5plus" in flat and "auc_macro" in flat and "confusion_norm_5plus_cant_tell" in flat
    assert metric_key("zbin", "0.01-0.03", "auc_macro") == "zbin_0.01-0.03_auc_macro"
    assert all(isinstance(v, float) for v in flat.values())


def test_macro_f1_over_present_classes_and_majority_baseline():
    """Macro-F1 is the mean over classes with support (sklearn with labels=present); the absent ones are
    listed; the majority-class predictor's macro-F1 follows the same definition."""
    from galmorph.evaluation.metrics import macro_f1, majority_class_baseline

    classes = ["a", "b", "c", "d"]
    y = ["a", "a", "a", "b", "b", "a", "b", "a"]
    p = np.eye(4)[[0, 0, 1, 1, 2, 0, 1, 0]] * 0.7 + 0.075
    m = classification_metrics(y, p, classes)
    pred = p.argmax(1)
    yi = np.array([classes.index(c) for c in y])
    assert m["absent_classes"] == ["c", "d"] and m["classes_present"] == ["a", "b"]
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(yi, pred, labels=[0, 1], average="macro"))
    # the old "every class of the task" definition would divide by 4 (and sklearn's default by 3)
    assert m["macro"]["f1"] != pytest.approx(skm.f1_score(yi, pred, labels=[0, 1, 2, 3], average="macro"))
    assert macro_f1(y, [classes[i] for i in pred], classes) == (pytest.approx(m["macro"]["f1"]), ["c", "d"])
    base = majority_class_baseline(y, classes)
    assert base["class"] == "a" and base["accuracy"] == pytest.approx(5 / 8)
    assert base["f1_macro"] == pytest.approx(skm.f1_score(yi, np.zeros(8, int), labels=[0, 1], average="macro"))
    assert m["majority_baseline"] == base
    flat = flatten_metrics({"classification": m})
    assert flat["baseline_f1_macro"] == pytest.approx(base["f1_macro"]) and flat["n_absent_classes"] == 2


def test_benchmark_macro_f1_is_the_one_definition():
    """The reference benchmark (arms and chirality) reports the evaluate/promote macro-F1: the mean over the
    classes with support, the others listed as absent_classes -- not the mean over every class. (Its
    functions run as the benchmark runs them: a script in benchmarks/, here through ``python -c``.)"""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from galmorph.evaluation.metrics import macro_f1

    classes = ["1", "2", "3", "4", "5+"]
    y = ["1", "2", "2", "3", "1", "3"]
    p = ["1", "2", "3", "3", "4", "3"]
    code = ("import json, sys, reference as r; a = json.loads(sys.argv[1]); "
            "print(json.dumps([r.macro_f1(*a), r.accuracy(a[0], a[1])]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([y, p, classes])], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1] / "benchmarks", timeout=300)
    assert proc.returncode == 0, proc.stderr
    (mf1, per, absent), acc = json.loads(proc.stdout.strip().splitlines()[-1])
    lib_f1, lib_absent = macro_f1(y, p, classes)
    assert mf1 == pytest.approx(lib_f1, abs=1e-12) and absent == lib_absent == ["4", "5+"]
    assert mf1 == pytest.approx(skm.f1_score(y, p, labels=["1", "2", "3"], average="macro"))
    assert set(per) == {"1", "2", "3"} and per["3"] == pytest.approx(skm.f1_score(y, p, labels=["3"], average=None)[0])
    # the old all-class mean is a different (lower) number
    assert mf1 > np.mean(skm.f1_score(y, p, labels=classes, average=None, zero_division=0)) + 0.1
    assert acc == pytest.approx(skm.accuracy_score(y, p))
