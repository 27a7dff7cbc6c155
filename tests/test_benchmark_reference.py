"""``benchmarks/reference.py`` runs the product (#26.4): its figures come from the catalogues ``galmorph
score`` writes (defaults and ``--class-prior none --no-winding-ensemble``), computed here against hand
counts; ``--from-predictions`` recomputes the committed chirality figures from the saved per-galaxy outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCH / "results"


def _product_case() -> dict | None:
    """A committed pretrained chirality case measured through `galmorph score` (it records what was applied)."""
    res = json.loads((RESULTS / "reference.json").read_text())
    return next((c for c in res["cases"] if c["task"] == "chirality" and c["weights"] == "pretrained"
                 and c.get("applied")), None)


def _one_case(tmp_path: Path) -> tuple[Path, dict]:
    case = _product_case()
    assert case is not None, "results/reference.json holds no case measured through galmorph score"
    res = json.loads((RESULTS / "reference.json").read_text())
    out = tmp_path / "out"
    (out / "reference_predictions").mkdir(parents=True)
    res["cases"] = [json.loads(json.dumps(case))]
    # what the recomputation must produce again: drop it from the input so a no-op cannot pass
    res["cases"][0]["chirality"] = {}
    res["cases"][0]["accuracy"] = None
    (out / "reference.json").write_text(json.dumps(res))
    shutil.copy(RESULTS / "reference_predictions" / f"chirality_pretrained_{int(case['split'])}.parquet",
                out / "reference_predictions")
    return out, case


def _run(out: Path, data_root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "reference.py", "--resume", "--from-predictions", "--tasks", "chirality",
                           "--out", str(out), "--data-root", str(data_root)],
                          cwd=BENCH, capture_output=True, text=True, timeout=600)


def test_from_predictions_reproduces_the_committed_chirality_figures(tmp_path, data_root):
    out, case = _one_case(tmp_path)
    proc = _run(out, data_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads((out / "reference.json").read_text())["cases"][0]
    assert new["accuracy"] == pytest.approx(case["accuracy"], abs=1e-12)
    block, old = new["chirality"], case["chirality"]
    for k in ("three_class_accuracy", "majority_accuracy", "cw_acw_accuracy", "cw_acw_accuracy_top80", "n_spirals"):
        assert block[k] == pytest.approx(old[k], abs=1e-12), k
    assert block["as_trained"]["three_class_accuracy"] == pytest.approx(old["as_trained"]["three_class_accuracy"])
    for meth in ("network", "winding", "combined"):
        assert block["winding_held_out"][meth] == pytest.approx(old["winding_held_out"][meth], abs=1e-12), meth
    assert new["train_minutes"] == case["train_minutes"]  # the training figures are kept
    assert "recomputed from the saved predictions" in (out / "reference.md").read_text()


def test_from_predictions_refuses_outputs_that_do_not_match_the_split(tmp_path, data_root):
    out, case = _one_case(tmp_path)
    f = out / "reference_predictions" / f"chirality_pretrained_{int(case['split'])}.parquet"
    pd.read_parquet(f).iloc[:-3].to_parquet(f)
    proc = _run(out, data_root)
    assert proc.returncode != 0
    assert f.name in proc.stderr and "do not match the rebuilt split" in proc.stderr


def test_chirality_figures_are_counted_from_the_scored_catalogues():
    """Six galaxies with hand-known outcomes: the default output gets 5 of 6, as trained 2 of 6; the
    majority class ("other", 3 of 6) gets 3; CW-vs-ACW on the 3 spirals: default 3/3, as trained 1/3."""
    code = """
import json, numpy as np, pandas as pd, reference as r
f = pd.DataFrame({
    "object_id": list("abcdef"), "label": ["CW", "ACW", "CW", "other", "other", "other"],
    "pred":            ["CW", "ACW", "CW", "other", "other", "CW"],
    "p_CW":  [.8, .1, .6, .1, .2, .5], "p_ACW": [.1, .7, .3, .1, .1, .2], "p_other": [.1, .2, .1, .8, .7, .3],
    "pred_as_trained": ["ACW", "ACW", "other", "other", "CW", "CW"],
    "p_CW_as_trained": [.3, .1, .2, .2, .5, .6], "p_ACW_as_trained": [.5, .6, .3, .2, .2, .2],
    "p_other_as_trained": [.2, .3, .5, .6, .3, .2],
    "winding_z": [2.0, -1.0, -0.5, np.nan, np.nan, np.nan]})
m = r.case_metrics("chirality", f, ["CW", "ACW", "other"], tuning_ids={"c"})
print(json.dumps(m, default=str))
"""
    proc = _bench(code)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    c = m["chirality"]
    assert m["accuracy"] == pytest.approx(5 / 6) and m["as_trained"]["accuracy"] == pytest.approx(2 / 6)
    assert c["three_class_accuracy"] == pytest.approx(5 / 6) and c["majority_class"] == "other"
    assert c["majority_accuracy"] == pytest.approx(0.5)
    assert c["error_reduction_vs_majority"] == pytest.approx(1 - (1 / 6) / 0.5)
    assert c["as_trained"]["error_reduction_vs_majority"] == pytest.approx(1 - (4 / 6) / 0.5)
    assert c["n_spirals"] == 3 and c["cw_acw_accuracy"] == pytest.approx(1.0)
    assert c["as_trained"]["cw_acw_accuracy"] == pytest.approx(1 / 3)  # c: CW 0.2 < ACW 0.3 -> wrong too
    held = c["winding_held_out"]  # "c" is in the winding tuning half: a and b only
    assert held["n"] == 2 and held["winding"]["100"] == pytest.approx(1.0)
    assert held["network"]["100"] == pytest.approx(0.5) and held["combined"]["100"] == pytest.approx(1.0)
    # per-class F1 of the default output: CW 2 right + 1 false positive -> P 2/3, R 1 -> F1 0.8
    assert m["f1"]["CW"] == pytest.approx(0.8) and m["f1"]["ACW"] == pytest.approx(1.0)


def _bench(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in the benchmarks folder (its scripts import each other from there; the project does
    not edit sys.path)."""
    return subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=300)


def test_set_overrides_are_typed_like_the_training_config_and_unknown_keys_refused():
    proc = _bench("import json, reference as r; from galmorph.training import resolve_config; "
                  "o = r.preset_overrides(['crop_fraction=0.30', 'image_size=160', 'mirror_swap=false', "
                  "'monitor=val_loss']); c = resolve_config('chirality', 'reference', o); "
                  "print(json.dumps([o, {k: type(v).__name__ for k, v in o.items()}, "
                  "[c.crop_fraction, c.image_size, c.mirror_swap]]))")
    assert proc.returncode == 0, proc.stderr
    got, types, cfg = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"crop_fraction": 0.30, "image_size": 160, "mirror_swap": False, "monitor": "val_loss"}
    assert types == {"crop_fraction": "float", "image_size": "int", "mirror_swap": "bool", "monitor": "str"}
    assert cfg == [0.30, 160, False]  # the training layer takes them as they are
    for bad, why in (("crop_fractoin=0.3", "unknown training config key 'crop_fractoin'"),
                     ("crop_fraction", "expected key=value")):
        proc = _bench(f"import reference as r; r.preset_overrides([{bad!r}])")
        assert proc.returncode != 0 and "--set" in proc.stderr and why in proc.stderr, proc.stderr


def test_arms_ceiling_counts_classes_without_training_examples_as_zero():
    # 'x' has one galaxy: split_frame always puts it in the test quarter, so no classifier can learn it
    proc = _bench("import json, pandas as pd, arms_probe as a; "
                  "one = pd.DataFrame({'label': ['a'] * 40 + ['b'] * 40 + ['x']}); "
                  "eight = pd.DataFrame({'label': ['a'] * 40 + ['b'] * 40 + ['x'] * 8}); "
                  "print(json.dumps([a.ceiling(one, range(3), ['a', 'b', 'x']), "
                  "a.ceiling(eight, range(3), ['a', 'b', 'x'])]))")
    assert proc.returncode == 0, proc.stderr
    one, eight = json.loads(proc.stdout.strip().splitlines()[-1])
    assert one == [pytest.approx(2 / 3)] * 3
    assert eight == [1.0] * 3


def test_train_fraction_keeps_each_class_in_proportion_and_refuses_out_of_range():
    proc = _bench("import json, pandas as pd, reference as r; "
                  "df = pd.DataFrame({'label': ['CW'] * 40 + ['ACW'] * 20 + ['other'] * 3, 'i': range(63)}); "
                  "a = r.train_subsample(df, 0.25, seed=1); b = r.train_subsample(df, 0.25, seed=1); "
                  "c = r.train_subsample(df, 0.25, seed=2); "
                  "print(json.dumps([a['label'].value_counts().to_dict(), a['i'].tolist() == b['i'].tolist(), "
                  "a['i'].tolist() == c['i'].tolist(), a['i'].is_monotonic_increasing, "
                  "len(r.train_subsample(df, 1.0, seed=1))]))")
    assert proc.returncode == 0, proc.stderr
    counts, same_seed, other_seed, ordered, full = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts == {"CW": 10, "ACW": 5, "other": 1}  # 0.25 of each class, at least one row of a class
    assert same_seed and not other_seed and ordered and full == 63
    proc = subprocess.run([sys.executable, "reference.py", "--train-fraction", "0"], cwd=BENCH, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "--train-fraction must be in (0, 1]" in proc.stderr


def test_learning_curve_recovers_a_known_power_law_and_checks_its_inputs(tmp_path):
    # error rates drawn exactly from e = 2 n^-0.5: the fit must give a = 2, b = 0.5 and reach 0.05 at n = 1600
    def case(split: int, n: int) -> dict:
        acc = 1 - 2 * n ** -0.5
        return {"task": "chirality", "weights": "pretrained", "split": 1000 + split, "n_train": n, "train_minutes": n / 100,
                "chirality": {"cw_acw_accuracy": 0.9, "prior_adjusted": {
                    "three_class_accuracy": acc, "error_reduction_vs_majority": 0.5, "macro_f1": 0.7}}}

    res = tmp_path / "results"
    (res / "learning_curve" / "f0.25").mkdir(parents=True)
    (res / "reference.json").write_text(json.dumps({"quiet": True, "cases": [case(s, 1000) for s in range(3)]}))
    (res / "learning_curve" / "f0.25" / "reference.json").write_text(json.dumps(
        {"quiet": False, "train_fraction": 0.25, "cases": [case(s, 250) for s in range(3)]}))
    code = (f"import json, learning_curve as lc; from pathlib import Path; "
            f"s = lc.summarise([0.25], {{0, 1, 2}}, Path({str(res)!r})); lc.write_md(s, Path({str(tmp_path / 'lc.md')!r})); "
            f"print(json.dumps(s['power_law']))")
    proc = _bench(code)
    assert proc.returncode == 0, proc.stderr
    pl = json.loads(proc.stdout.strip().splitlines()[-1])
    assert pl["a"] == pytest.approx(2.0) and pl["b"] == pytest.approx(0.5)
    assert pl["n_train_for_goal"] == pytest.approx(1600.0)
    md = (tmp_path / "lc.md").read_text()
    assert "| 0.25 | 250 |" in md and "under load" in md and "1.6× the 1000" in md
    # a results file trained with another fraction, or missing a split, is refused by name
    f = res / "learning_curve" / "f0.25" / "reference.json"
    f.write_text(json.dumps({"quiet": True, "train_fraction": 0.5, "cases": [case(s, 250) for s in range(3)]}))
    proc = _bench(code)
    assert proc.returncode != 0 and "train_fraction 0.5, not 0.25" in proc.stderr
    f.write_text(json.dumps({"quiet": True, "train_fraction": 0.25, "cases": [case(s, 250) for s in range(2)]}))
    proc = _bench(code)
    assert proc.returncode != 0 and "fraction 0.25: splits [0, 1]" in proc.stderr
