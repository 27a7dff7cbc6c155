"""The ``reference`` presets on the public real data, through the product (#12.8, #26.4).

    uv run python benchmarks/reference.py [--splits 5] [--max-epochs N] [--tasks chirality,arms] [--quick]
                                          [--weights pretrained,random] [--train-fraction F] [--set KEY=VALUE ...]

For each of ``--splits`` seeded random splits, each task's labelled public set is split 75/25
(stratified). The test quarter keeps the catalogue's class proportions (GZ1: ~88 % "other"); the
training part is what the preset takes (chirality: all CW/ACW + <= 500 "other", the selection ``demo
--real`` makes; arms: the preset's <= 300 a class), written as a manifest that carries the training
part's catalogued label counts (``galmorph.catalogue_label_counts``), as the training pipeline's do.

Each case is what a user runs: ``galmorph train --preset reference --manifest TRAIN`` (the preset
trains on every row of the manifest: train + validation, no internal test split; registered in this run's
own tracking store), then ``galmorph score --model models:/NAME/VERSION --manifest TEST`` with its defaults (the verified inference path,
the class prior and the winding ensemble the model recorded), and once more with ``--class-prior none
--no-winding-ensemble`` for the as-trained row (chirality: and with ``--winding-weight 3``, the fixed winding
rule in place of the stacker the preset fits on its validation split, on the same network). Nothing here adjusts a probability: every figure comes from
the catalogues ``galmorph score`` writes. Reported as mean ± σ over splits: accuracy, macro-F1, per-class
F1, training minutes; for chirality also the error reduction against the majority-class predictor,
CW-vs-ACW accuracy on the catalogued spirals (all, 80 % most confident) and accuracy vs coverage of the
network as trained, the winding measurement and the default output on the test spirals outside the
winding benchmark's tuning half (benchmarks/results/winding.json). Both ``encoder_weights`` settings
(the preset's ``package:efficientnet-lite0`` and ``none``) unless ``--weights``. Results:
benchmarks/results/reference.{json,md} (``--quick``: benchmarks/results/quick/), with the load average and
``quiet``; the per-galaxy outputs of both scorings in results/reference_predictions/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
from _common import galmorph_exe, machine, quiet_line

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
WEIGHTS = {"pretrained": None, "random": "none"}  # None: the preset's own encoder_weights


def macro_f1(y, p, classes) -> tuple[float, dict[str, float], list[str]]:
    """``(macro-F1, per-class F1, absent_classes)``: the project's one macro-F1
    (:func:`galmorph.evaluation.metrics.macro_f1`: the mean over the classes with support in ``y``, the
    others listed as absent, as evaluate/promote compute it) and scikit-learn's F1 of each class with support."""
    from sklearn.metrics import f1_score

    from galmorph.evaluation.metrics import macro_f1 as one_macro_f1

    classes = [str(c) for c in classes]
    mf1, absent = one_macro_f1(list(y), list(p), classes)
    per = f1_score(y, p, labels=classes, average=None, zero_division=0)
    return mf1, {c: float(f) for c, f in zip(classes, per) if c not in absent}, absent


def accuracy(y, p) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y, p))


def accuracy_vs_coverage(correct: np.ndarray, confidence: np.ndarray) -> dict[str, float | None]:
    """Accuracy on the most confident fraction ``c`` of the rows, for every coverage in COVERAGES."""
    correct, confidence = np.asarray(correct, bool), np.asarray(confidence, float)
    order = np.argsort(-np.nan_to_num(confidence, nan=-np.inf), kind="stable")
    out = {}
    for c in COVERAGES:
        k = int(round(c * len(order)))
        out[f"{int(c * 100)}"] = float(correct[order[:k]].mean()) if k else None
    return out


def split_frame(df: pd.DataFrame, seed: int, test_fraction: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    test = np.zeros(len(df), bool)
    for _lab, idx in df.groupby("label").indices.items():
        idx = rng.permutation(idx)
        test[idx[:max(1, int(round(test_fraction * len(idx))))]] = True
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True)


def training_part(full: pd.DataFrame, task: str, split: int, n_other: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Split ``split``'s ``(training part, held-out quarter, catalogue counts)``: the counts are the training
    part's as catalogued (the population to score); for chirality the training part is then what the preset
    trains on, all CW/ACW + ``n_other`` "other"."""
    train_df, test_df = split_frame(full, seed=1000 + split)
    counts = {str(c): int(n) for c, n in train_df["label"].astype(str).value_counts().items()}
    if task == "chirality":
        from galmorph.ops.demo import select_real_training_set

        train_df = select_real_training_set(train_df, n_other=n_other, seed=split)
    return train_df, test_df, counts


def load_task(task: str, data_root: Path) -> pd.DataFrame:
    from galmorph.catalogue.ingest import load_source

    df, _q, _k = load_source({"chirality": "gz1_chirality", "arms": "gz2_arms"}[task], data_root, task=task)
    return df[df["label"].notna() & (df["label"].astype(str) != "")].reset_index(drop=True)


def _per_class_sample(df: pd.DataFrame, take, seed: int) -> pd.DataFrame:
    """``take(n)`` seeded random rows of each class of n rows; rows keep their order."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(idx)[:take(len(idx))] for idx in df.groupby("label").indices.values()])
    return df.iloc[np.sort(keep)].reset_index(drop=True)


def quick_subset(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return _per_class_sample(df, lambda _m: n, seed)


def train_subsample(df: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A stratified ``fraction`` (in (0, 1]) of the training part, at least one row a class: the learning
    curve's smaller training sets, on the same test quarter."""
    if fraction == 1:
        return df
    return _per_class_sample(df, lambda m: max(1, int(round(fraction * m))), seed)


def three_class(y: np.ndarray, yp: np.ndarray, classes: list[str]) -> dict:
    acc = accuracy(y, yp)
    major = pd.Series(y).value_counts().idxmax()
    acc_major = accuracy(y, np.full(len(y), major, dtype=object))
    mf1, per, absent = macro_f1(y, yp, classes)
    return {"three_class_accuracy": acc, "majority_class": major, "majority_accuracy": acc_major,
            "error_reduction_vs_majority": 1 - (1 - acc) / (1 - acc_major) if acc_major < 1 else None,
            "macro_f1": mf1, "f1": per, "absent_classes": absent}


class ProductError(RuntimeError):
    """A `galmorph` command of a case failed (its stderr tail is the message)."""


def galmorph(*args: str) -> dict:
    """Run the `galmorph` console script as a user does (``--json``) and return its JSON document."""
    cmd = [*galmorph_exe(), *map(str, args), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ProductError(f"{' '.join(cmd[:2])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def classes_of(summary: dict) -> list[str]:
    """The model's classes in its order, from ``galmorph score``'s summary (``class_counts``)."""
    return [str(c) for c in summary["class_counts"]]


def frame_classes(frame: pd.DataFrame) -> list[str]:
    """The classes of a case's per-galaxy outputs (:func:`score_twice`), in the model's order."""
    return [c[2:] for c in frame.columns if c.startswith("p_") and not c.endswith(("_as_trained", "_fixed_rule"))]


def score_twice(model: str, manifest: Path, work: Path, tracking_uri: str, data_root: Path,
                fixed_rule: bool = False) -> tuple[pd.DataFrame, dict]:
    """``galmorph score`` with its defaults, and as trained (``--class-prior none --no-winding-ensemble``):
    one frame per scored galaxy (``object_id``, ``label``, ``pred``, ``p_<class>``, ``winding_z`` when the
    ensemble measured it, and the same as ``pred_as_trained``/``p_<class>_as_trained``), and what the default
    scoring applied (inference path, class prior, ensemble). ``fixed_rule`` (chirality): a third scoring with
    ``--winding-weight 3`` (the fixed winding rule instead of a stacker the model recorded), as
    ``pred_fixed_rule``/``p_<class>_fixed_rule``."""
    common = ("--manifest", manifest, "--tracking-uri", tracking_uri, "--data-root", data_root, "--no-progress")
    dflt = galmorph("score", "--model", model, "--out", work / "score", *common)
    variants = {"as_trained": galmorph("score", "--model", model, "--out", work / "score-as-trained",
                                       "--class-prior", "none", "--no-winding-ensemble", *common)}
    if fixed_rule:
        variants["fixed_rule"] = galmorph("score", "--model", model, "--out", work / "score-fixed-rule",
                                          "--winding-weight", "3", *common)
    classes = classes_of(dflt["summary"])
    a = pd.read_parquet(dflt["catalogue"])
    a["object_id"] = a["object_id"].astype(str)
    keep = ["object_id", "label", "pred", *[f"p_{c}" for c in classes]] + (["winding_z"] if "winding_z" in a else [])
    out = a[keep]
    for suffix, res in variants.items():
        t = pd.read_parquet(res["catalogue"])
        t["object_id"] = t["object_id"].astype(str)
        out = out.merge(t[["object_id", "pred", *[f"p_{c}" for c in classes]]].rename(
            columns=lambda k, sfx=suffix: k if k == "object_id" else f"{k}_{sfx}"), on="object_id", how="inner",
            validate="1:1")
    sd = dflt["summary"]
    applied = {"inference_path": f"{dflt['scoring']['precision']}, {dflt['scoring']['decode']} decode",
               "class_prior": sd.get("applied_class_prior_label", "none"),
               "ensemble": sd.get("applied_ensemble_label", "off"),
               "quarantined": int(dflt["scoring"]["n_quarantined"])}
    if fixed_rule:
        applied["fixed_rule_ensemble"] = variants["fixed_rule"]["summary"].get("applied_ensemble_label", "off")
    return out, applied


def chirality_block(frame: pd.DataFrame, classes: list[str], tuning_ids: set[str]) -> dict:
    """From one case's per-galaxy outputs (:func:`score_twice`): three-class accuracy vs the majority class,
    with ``galmorph score``'s defaults and as trained; CW-vs-ACW on the catalogued spirals; coverage curves of
    the network as trained, the winding measurement and the default output on spirals outside the tuning half."""
    y = frame["label"].astype(str).to_numpy()
    tc = three_class(y, frame["pred"].astype(str).to_numpy(), classes)
    raw = three_class(y, frame["pred_as_trained"].astype(str).to_numpy(), classes)
    sp = np.isin(y, ["CW", "ACW"])
    ys = y[sp]

    def sense(suffix: str) -> tuple[np.ndarray, np.ndarray]:
        cw, acw = (frame[f"p_{c}{suffix}"].to_numpy(float)[sp] for c in ("CW", "ACW"))
        return np.where(cw >= acw, "CW", "ACW"), np.maximum(cw, acw) / np.maximum(cw + acw, 1e-12)

    d_sense, d_conf = sense("")
    n_sense, n_conf = sense("_as_trained")
    ok = d_sense == ys
    k80 = int(round(0.8 * len(ys)))
    order = np.argsort(-d_conf, kind="stable")
    block = {k: tc[k] for k in ("three_class_accuracy", "majority_class", "majority_accuracy",
                                "error_reduction_vs_majority", "macro_f1")}
    block.update(n_spirals=int(sp.sum()), cw_acw_accuracy=float(ok.mean()) if len(ys) else None,
                 cw_acw_accuracy_top80=float(ok[order[:k80]].mean()) if k80 else None,
                 as_trained={k: v for k, v in raw.items() if k != "majority_class"})
    block["as_trained"]["cw_acw_accuracy"] = float((n_sense == ys).mean()) if len(ys) else None
    if "pred_fixed_rule" in frame:  # the fixed winding rule on the same network (--winding-weight 3)
        fx = three_class(y, frame["pred_fixed_rule"].astype(str).to_numpy(), classes)
        block["fixed_rule"] = {k: v for k, v in fx.items() if k != "majority_class"}
        f_sense, _f_conf = sense("_fixed_rule")
        block["fixed_rule"]["cw_acw_accuracy"] = float((f_sense == ys).mean()) if len(ys) else None
    ids = frame["object_id"].astype(str).to_numpy()[sp]
    held = np.array([i not in tuning_ids for i in ids], dtype=bool)
    if held.any() and "winding_z" in frame:
        z = frame["winding_z"].to_numpy(float)[sp][held]
        w_sense = np.where(z > 0, "CW", np.where(z < 0, "ACW", None))
        block["winding_held_out"] = {
            "n": int(held.sum()),
            "network": accuracy_vs_coverage(n_sense[held] == ys[held], n_conf[held]),
            "winding": accuracy_vs_coverage(w_sense == ys[held], np.abs(z)),
            "combined": accuracy_vs_coverage(ok[held], d_conf[held]),
            "winding_unmeasured": int((~np.isfinite(z)).sum())}
    return block


def case_metrics(task: str, frame: pd.DataFrame, classes: list[str], tuning_ids: set[str]) -> dict:
    """Accuracy, macro-F1 and per-class F1 of the default output (as trained beside it); the chirality block."""
    y = frame["label"].astype(str).to_numpy()
    yp = frame["pred"].astype(str).to_numpy()
    mf1, per, absent = macro_f1(y, yp, classes)
    raw_mf1, _per, _abs = macro_f1(y, frame["pred_as_trained"].astype(str).to_numpy(), classes)
    out = {"n_test": len(frame), "accuracy": accuracy(y, yp), "macro_f1": mf1, "f1": per, "absent_classes": absent,
           "as_trained": {"accuracy": accuracy(y, frame["pred_as_trained"].astype(str).to_numpy()),
                          "macro_f1": raw_mf1}}
    if task == "chirality":
        out["chirality"] = chirality_block(frame, classes, tuning_ids)
    return out


def run_case(task: str, weights: str, train_df: pd.DataFrame, test_df: pd.DataFrame, seed: int, args,
             data_root: Path, tracking_uri: str, tuning_ids: set[str], catalogue_counts: dict[str, int],
             pred_dir: Path | None = None) -> dict:
    """One (task, encoder, split) case through `galmorph train` and `galmorph score` (module docstring)."""
    from galmorph.catalogue.manifest import write_manifest
    from galmorph.training.defaults import CATALOGUE_COUNTS_KEY

    work = Path(tempfile.mkdtemp(prefix=f"bench-reference-{task}-{weights}-{seed}-"))
    sets = [*args.overrides, f"seed={seed}", "trials=1"]
    if WEIGHTS[weights] is not None:
        sets.append(f"encoder_weights={WEIGHTS[weights]}")
    if args.max_epochs:
        sets.append(f"max_epochs={args.max_epochs}")
    if args.quick:
        sets.append(f"max_per_class={args.quick_n}")
    train_manifest = write_manifest(train_df, work / "train.parquet", kind="labelled",
                                    extra_meta={CATALOGUE_COUNTS_KEY: catalogue_counts})
    test_manifest = write_manifest(test_df, work / "test.parquet", kind="labelled")
    t0 = time.perf_counter()
    res = galmorph("train", "--task", task, "--preset", "reference", "--manifest", train_manifest,
                   *[x for kv in sets for x in ("--set", kv)], "--tracking-uri", tracking_uri,
                   "--data-root", data_root, "--out-dir", work / "train")
    minutes = (time.perf_counter() - t0) / 60
    # registered, as `galmorph train` does by default (in this run's own tracking store): the first scoring
    # verifies the inference path once and records it on the version, the second one uses the record
    model = f"models:/{res['registered_name']}/{res['registered_version']}"
    frame, applied = score_twice(model, test_manifest, work, tracking_uri, data_root, fixed_rule=task == "chirality")
    classes = frame_classes(frame)
    out = {"task": task, "weights": weights, "split": seed, "train_minutes": minutes, "n_train": len(train_df),
           "model_uri": model, "run_id": res["run_id"], "applied": applied,
           **case_metrics(task, frame, classes, tuning_ids)}
    if task == "chirality":
        out["n_other"] = int(args.n_other)
    if args.train_fraction != 1:
        out["train_fraction"] = float(args.train_fraction)
    if pred_dir is not None:  # per-galaxy outputs of both scorings, for analyses after the run
        pred_dir.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(pred_dir / f"{task}_{weights}_{seed}.parquet", index=False)
    return out


def preset_overrides(pairs: list[str]) -> dict:
    """``--set`` items -> typed overrides, by the training CLI's parser; the keys are checked against the
    reference preset of every task now, so a typo fails before any training."""
    from galmorph.training import ConfigError, parse_set_items, resolve_config

    try:
        out = parse_set_items(pairs)
        for task in ("chirality", "arms"):
            resolve_config(task, "reference", out)
    except (ConfigError, TypeError) as exc:
        raise SystemExit(f"--set: {exc}") from None
    return out


def recompute_chirality(cases: list[dict], data_root: Path, pred_dir: Path, tuning_ids: set[str]) -> None:
    """Replace each chirality case's figures with ones computed from its saved per-galaxy outputs (the same
    seeded split rebuilt; rows matched by object_id). No training, no scoring."""
    full = load_task("chirality", data_root)
    for c in cases:
        if c["task"] != "chirality":
            continue
        f = pred_dir / f"chirality_{c['weights']}_{int(c['split'])}.parquet"
        if not f.exists():
            print(f"[chirality split {int(c['split']) - 1000} {c['weights']}] no saved outputs ({f}): kept",
                  flush=True)
            continue
        _train, test_df = split_frame(full, seed=int(c["split"]))
        frame = pd.read_parquet(f)
        frame["object_id"] = frame["object_id"].astype(str)
        if len(frame) != c["n_test"] or not set(frame["object_id"]) <= set(test_df["object_id"].astype(str)):
            raise SystemExit(f"{f}: {len(frame)} scored rows do not match the rebuilt split "
                             f"(the case recorded {c['n_test']})")
        classes = frame_classes(frame)
        c.update(case_metrics("chirality", frame, classes, tuning_ids))
        print(f"[chirality split {int(c['split']) - 1000} {c['weights']}] recomputed from {f.name}", flush=True)


def _case_key(c: dict) -> list:
    return [c["task"], c["weights"], int(c["split"])]


def _flat(r: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in r.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[f"{prefix}{k}"] = float(v)
    return out


def summarise(cases: list[dict]) -> dict:
    """mean ± σ over splits of every numeric field, per (task, weights)."""
    out: dict = {}
    for task in sorted({c["task"] for c in cases}):
        for w in WEIGHTS:
            rows = [_flat(c) for c in cases if c["task"] == task and c["weights"] == w]
            if not rows:
                continue
            keys = sorted(set().union(*rows) - {"split"})
            out.setdefault(task, {})[w] = {
                k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
                for k in keys if (v := [r[k] for r in rows if k in r and np.isfinite(r[k])])}
    return out


def fmt(s: dict, key: str, digits: int = 3) -> str:
    v = s.get(key)
    return "–" if v is None else f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"


def write_md(result: dict, path: Path) -> None:
    m, summ = result["machine"], result["summary"]
    lines = ["# `reference` presets through `galmorph train` and `galmorph score` on held-out public real data", "",
             f"{quiet_line(m)}; {m['cpus']} CPUs, {m['date']}. Splits: {result['splits']} "
             f"(mean ± σ), max_epochs override: {result['max_epochs']}{' — QUICK smoke run, not a result' if result['quick'] else ''}"
             f"{'' if result.get('complete', True) else ' — INCOMPLETE: cut short after '+str(len(result['cases']))+' cases'}.",
             ""]
    if result.get("preset_overrides"):
        lines += ["Variant: the reference preset with " + ", ".join(
            f"`{k}={v}`" for k, v in result["preset_overrides"].items()) + " (`--set`).", ""]
    if result.get("train_fraction", 1) != 1:
        lines += [f"Learning-curve point: trained on a stratified {result['train_fraction']:g} of each split's "
                  "training part (`--train-fraction`); the test quarters are the full ones.", ""]
    if result.get("note"):
        lines += [f"Note: {result['note']}", ""]
    if not m["quiet"]:  # the accuracies come from seeded splits and do not depend on the machine's load
        lines += ["The load slows the training minutes; the accuracies and F1 below come from seeded splits and "
                  "seeded training, which the load does not change.", ""]
    if len(result.get("runs") or []) > 1:  # resumed: each run's start, and which cases it trained
        lines += ["Runs (resumed with --resume): " + "; ".join(
            f"{r['date']}: chirality blocks recomputed from the saved predictions (--from-predictions, no training)"
            if r.get("recomputed_chirality_blocks_from_predictions") else
            f"{r['date']}: load {r['load_avg_at_start'][0]:.2f} at the start ({'quiet' if r['quiet'] else 'not quiet'}), "
            f"splits {', '.join(str(k[2] - 1000) for k in r['cases']) or 'none'}" for r in result["runs"]) + ".", ""]
    applied = next((c.get("applied") for c in result["cases"] if c.get("applied")), None)
    if applied:
        lines += ["Every figure is `galmorph score`'s output on the test quarter (nothing adjusted here). With its "
                  f"defaults it applied: inference path {applied['inference_path']}; class prior "
                  f"{applied['class_prior']}; ensemble {applied['ensemble']} (first case; each case's own record is "
                  "in the JSON). \"as trained\": `--class-prior none --no-winding-ensemble`; "
                  "`--winding-weight 3`: the fixed winding rule in place of a stacker the model recorded.", ""]
    lines += ["| task | encoder | accuracy | macro-F1 | per-class F1 | as trained: accuracy | as trained: macro-F1 "
              "| training min |", "|---|---|---|---|---|---|---|---|"]
    for task, by_w in summ.items():
        for w, s in by_w.items():
            per = ", ".join(f"{k[3:]} {fmt(s, k, 2)}" for k in s if k.startswith("f1."))
            lines.append(f"| {task} | {w} | {fmt(s, 'accuracy')} | {fmt(s, 'macro_f1')} | {per} | "
                         f"{fmt(s, 'as_trained.accuracy')} | {fmt(s, 'as_trained.macro_f1')} | "
                         f"{fmt(s, 'train_minutes', 1)} |")
    absent = sorted({f"{c['task']}: {a}" for c in result["cases"] for a in c.get("absent_classes", [])})
    lines += ["", "macro-F1: the mean F1 over the classes with support in the test split (the evaluate/promote "
              "definition, galmorph.evaluation.metrics.macro_f1); classes without support in some split: "
              + (", ".join(absent) if absent else "none") + "."]
    if "chirality" in summ:
        lines += ["", "## Chirality (test quarter as catalogued)", "",
                  "| encoder | `galmorph score` | 3-class acc | majority acc | error reduction | 3-class macro-F1 | "
                  "CW/ACW acc (spirals) | top 80 % |",
                  "|---|---|---|---|---|---|---|---|"]
        for w, s in summ["chirality"].items():
            c, a = "chirality.", "chirality.as_trained."
            lines.append(f"| {w} | defaults | {fmt(s, c + 'three_class_accuracy')} | "
                         f"{fmt(s, c + 'majority_accuracy')} | {fmt(s, c + 'error_reduction_vs_majority')} | "
                         f"{fmt(s, c + 'macro_f1')} | {fmt(s, c + 'cw_acw_accuracy')} | "
                         f"{fmt(s, c + 'cw_acw_accuracy_top80')} |")
            if any(k.startswith(c + "fixed_rule.") for k in s):
                fr = c + "fixed_rule."
                lines.append(f"| {w} | `--winding-weight 3` | {fmt(s, fr + 'three_class_accuracy')} | "
                             f"{fmt(s, fr + 'majority_accuracy')} | {fmt(s, fr + 'error_reduction_vs_majority')} | "
                             f"{fmt(s, fr + 'macro_f1')} | {fmt(s, fr + 'cw_acw_accuracy')} | – |")
            lines.append(f"| {w} | as trained | {fmt(s, a + 'three_class_accuracy')} | "
                         f"{fmt(s, a + 'majority_accuracy')} | {fmt(s, a + 'error_reduction_vs_majority')} | "
                         f"{fmt(s, a + 'macro_f1')} | {fmt(s, a + 'cw_acw_accuracy')} | – |")
        lines += ["", "Accuracy vs coverage on test spirals outside the winding measurement's tuning half (CW vs "
                  "ACW; network = as trained, winding = the measurement alone (|z| as confidence), combined = "
                  "`galmorph score`'s default output):", "",
                  "| encoder | method | " + " | ".join(f"{int(c * 100)} %" for c in COVERAGES) + " |",
                  "|---|---|" + "---|" * len(COVERAGES)]
        for w, s in summ["chirality"].items():
            for meth in ("network", "winding", "combined"):
                cells = [fmt(s, f"chirality.winding_held_out.{meth}.{int(c * 100)}") for c in COVERAGES]
                lines.append(f"| {w} | {meth} | " + " | ".join(cells) + " |")
    lines += ["", f"Load average at the end: {result['load_avg_at_end']}. Total {result['total_minutes']:.1f} min.", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--max-epochs", type=int, default=None, help="override the presets' max_epochs")
    ap.add_argument("--tasks", default="chirality,arms")
    ap.add_argument("--weights", default="pretrained,random")
    ap.add_argument("--random-splits", default="",
                    help="TASK=N,...: splits of a task's random-weights baseline [--splits] (fewer when time is short)")
    ap.add_argument("--split-order", default="",
                    help="split indices to run, in this order (e.g. 4,0,1,2,3) [0..splits-1]")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 split, 1 epoch, a few images a class")
    ap.add_argument("--quick-n", type=int, default=12, help="--quick: images a class (train and test)")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--tracking-uri", default=None, help="[a local file store under a temporary folder]")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--resume", action="store_true",
                    help="keep the cases of the existing results file and run only the missing (task, encoder, "
                         "split) cases; each run's machine record (load average, quiet) is kept in 'runs'")
    ap.add_argument("--n-other", type=int, default=500,
                    help="chirality: the \"other\" galaxies drawn into the training part (all CW/ACW are kept)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="train on this stratified fraction of the training part (a learning-curve point; the "
                         "test quarter is unchanged); write it to its own --out")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a reference preset setting for a variant (e.g. crop_fraction=0.30); repeatable; "
                         "recorded in the result; write variants to their own --out")
    ap.add_argument("--from-predictions", action="store_true",
                    help="no training or scoring: recompute the chirality figures of the existing results file's cases "
                         "from the per-galaxy outputs they saved (results/reference_predictions/)")
    ap.add_argument("--note", default=None,
                    help="a line recorded in the results, e.g. what else ran on the machine during the run "
                         "(kept by --resume unless replaced)")
    args = ap.parse_args(argv)
    args.preset_overrides = preset_overrides(args.overrides)  # once, before anything is trained
    if not 0 < args.train_fraction <= 1:
        ap.error(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    if args.quick:
        args.splits, args.max_epochs = 1, 1
    from galmorph.settings import resolve_settings

    data_root = args.data_root or resolve_settings().data_root
    if data_root is None or not Path(data_root).is_dir():
        print(f"reference benchmark: the shared data is missing ({data_root}); set GALMORPH_DATA_ROOT", file=sys.stderr)
        return 2
    data_root = Path(data_root)
    env_out = os.environ.get("GALMORPH_BENCH_OUT")
    out_dir = args.out or (Path(env_out) if env_out else HERE / "results" / ("quick" if args.quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    tracking = args.tracking_uri or f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-reference-')) / 'mlflow.db'}"
    wj = HERE / "results" / "winding.json"
    tuning_ids = set(json.loads(wj.read_text())["tuning_ids"]) if wj.exists() else set()
    m = machine()
    t_all = time.perf_counter()
    cases: list[dict] = []
    runs: list[dict] = []
    previous_minutes = 0.0
    previous_note = None
    if args.resume and (out_dir / "reference.json").exists():
        prev = json.loads((out_dir / "reference.json").read_text())
        cases = list(prev["cases"])
        runs = list(prev.get("runs") or [dict(prev["machine"], cases=[_case_key(c) for c in cases])])
        previous_minutes = float(prev.get("total_minutes", 0.0))
        previous_note = prev.get("note")
        print(f"resuming: {len(cases)} cases kept from {out_dir / 'reference.json'}", flush=True)
    this_run = dict(m, cases=[])
    runs.append(this_run)
    done = {tuple(_case_key(c)) for c in cases}
    tasks = [t for t in args.tasks.split(",") if t]
    random_splits = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.random_splits.split(",") if kv)}
    weights = [w for w in args.weights.split(",") if w]

    def write_result(cases: list[dict], complete: bool) -> None:
        # the result is quiet only when every run that contributed cases started quiet
        quiet = all(r["quiet"] for r in runs if r["cases"])
        first = next((r for r in runs if r["cases"]), m)
        result = {"machine": dict(first, quiet=quiet, load_avg_at_start=max(
                      (r["load_avg_at_start"] for r in runs if r["cases"]), default=m["load_avg_at_start"])),
                  "runs": runs, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "quiet": quiet,
                  "complete": complete, "splits": args.splits, "max_epochs": args.max_epochs,
                  "quick": args.quick, "tasks": tasks, "preset_overrides": args.preset_overrides,
                  "train_fraction": args.train_fraction, "note": args.note or previous_note,
                  "tracking_uri": tracking,
                  "n_winding_tuning_ids": len(tuning_ids), "total_minutes": previous_minutes + (time.perf_counter() - t_all) / 60,
                  "summary": summarise(cases), "cases": cases}
        (out_dir / "reference.json").write_text(json.dumps(result, indent=2, default=str))
        write_md(result, out_dir / "reference.md")

    if args.from_predictions:
        if not cases:
            print("--from-predictions needs --resume and an existing reference.json", file=sys.stderr)
            return 2
        this_run["recomputed_from_predictions"] = True
        recompute_chirality(cases, data_root, out_dir / "reference_predictions", tuning_ids)
        runs.remove(this_run)  # nothing was trained: the contributing runs' machine records stay as they were
        runs.append(dict(m, cases=[], recomputed_chirality_blocks_from_predictions=True))
        write_result(cases, complete=True)
        print((out_dir / "reference.md").read_text())
        return 0

    for task in tasks:
        full = load_task(task, data_root)
        order = [int(x) for x in args.split_order.split(",")] if args.split_order else list(range(args.splits))
        for s in order:
            train_df, test_df, catalogue_counts = training_part(full, task, s, args.n_other)
            train_df = train_subsample(train_df, args.train_fraction, seed=s)
            if args.quick:
                train_df, test_df = quick_subset(train_df, args.quick_n, s), quick_subset(test_df, args.quick_n, s)
            for w in weights:
                if w == "random" and s >= random_splits.get(task, args.splits):
                    continue
                if (task, w, 1000 + s) in done:
                    print(f"[{task} split {s} {w}] kept from the previous run", flush=True)
                    continue
                print(f"[{task} split {s} {w}] train {len(train_df)} test {len(test_df)}", flush=True)
                r = run_case(task, w, train_df, test_df, 1000 + s, args, data_root, tracking, tuning_ids,
                             catalogue_counts=catalogue_counts, pred_dir=out_dir / "reference_predictions")
                print(f"    acc {r['accuracy']:.3f} macro-F1 {r['macro_f1']:.3f} {r['train_minutes']:.1f} min",
                      flush=True)
                cases.append(r)
                this_run["cases"].append(_case_key(r))
                # written after every case: a run cut short keeps what it measured ("complete": false)
                write_result(cases, complete=False)
    write_result(cases, complete=True)
    print((out_dir / "reference.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
