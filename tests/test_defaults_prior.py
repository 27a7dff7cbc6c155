"""#26: a model records the class prior of the population it scores (its catalogue's, before down-sampling or
balancing) and its ensemble settings; scoring applies them by default and records what it applied; the
promotion floor judges the default predictions against the majority and the chance predictor."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from galmorph.catalogue.manifest import read_manifest, write_manifest
from galmorph.evaluation.core import skill_vs_majority
from galmorph.promotion.policy import PromotionPolicy, compare, quality_floor, winding_check


def test_training_records_the_catalogue_prior_not_the_balanced_selection(mlflow_server, sim_chirality, tmp_path):
    from galmorph.training import train

    df = read_manifest(sim_chirality["manifest"])
    # imbalanced like the catalogue: every "other", a few spirals
    keep = pd.concat([df[df["label"] == "other"], df[df["label"] == "CW"].head(5), df[df["label"] == "ACW"].head(4)])
    path = write_manifest(keep.reset_index(drop=True), tmp_path / "imbalanced.parquet", kind="simulated")
    freq = keep["label"].value_counts(normalize=True).to_dict()
    res = train("chirality", "tiny", {"progress": False, "max_epochs": 1, "trials": 1, "max_per_class": 5,
                                      "class_weights": "balanced", "val_fraction": 0.2, "test_fraction": 0.2},
                manifest=path, tracking_uri=mlflow_server, register=False, out_dir=tmp_path / "train")
    extra = res.spec.extra
    assert extra["class_prior_source"] == "catalogue"
    assert extra["class_prior"] == pytest.approx({c: freq[c] for c in ("CW", "ACW", "other")})
    assert extra["class_prior"] != pytest.approx(res.spec.trained_prior)  # not the balanced one
    assert extra["training_selection_prior"]["other"] < freq["other"]  # down-sampled
    assert extra["ensemble"] == {"winding_ensemble": True, "weight": 3.0, "min_confidence": 0.0, "source": "default"}


def _register_with_prior(name: str, extra: dict):
    import mlflow

    from galmorph.models.io import ModelSpec, log_model
    from test_scoring_helpers import TinyNet

    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="TinyNet", image_size=32,
                     trained_prior={"CW": 1 / 3, "ACW": 1 / 3, "other": 1 / 3}, extra=extra)
    mlflow.set_experiment("test-defaults")
    with mlflow.start_run():
        info = log_model(TinyNet(3, bias=[0.0, 0.0, 0.0]).eval(), spec, registered_model_name=name)
    return f"models:/{name}/{info.registered_model_version}"


def test_score_applies_the_model_prior_by_default_and_records_it(mlflow_server, sim_chirality, tmp_path):
    from galmorph.cli import main

    prior = {"CW": 0.05, "ACW": 0.05, "other": 0.9}
    uri = _register_with_prior("galmorph-test-defaults", {"class_prior": prior, "class_prior_source": "catalogue",
                                                          "ensemble": {"winding_ensemble": False, "source": "default"}})
    runner = CliRunner()
    outs = {}
    for name, flags in (("default", []), ("none", ["--class-prior", "none"])):
        r = runner.invoke(main, ["score", "--model", uri, "--manifest", str(sim_chirality["manifest"]), "--out",
                                 str(tmp_path / name), "--no-progress", "--json", *flags], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        outs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    d, n = outs["default"], outs["none"]
    assert d["applied_class_prior"]["source"] == "model:catalogue"
    assert d["applied_class_prior"]["prior"] == pytest.approx(prior)
    assert d["applied_class_prior_label"].startswith("model:catalogue:")
    assert n["applied_class_prior"]["prior"] == {} and n["applied_class_prior_label"] == "none"
    assert d["applied_ensemble"] == {"winding_ensemble": False}
    cd = pd.read_parquet(tmp_path / "default" / "catalogue.parquet")
    cn = pd.read_parquet(tmp_path / "none" / "catalogue.parquet")
    assert (cd["p_other"] > cn["p_other"]).all()  # moved to a prior with 90 % other
    import pyarrow.parquet as pq

    meta = pq.read_schema(tmp_path / "default" / "catalogue.parquet").metadata
    assert json.loads(meta[b"galmorph.applied_class_prior"])["source"] == "model:catalogue"
    import mlflow

    runs = mlflow.search_runs(experiment_names=["galmorph-scoring"], order_by=["start_time DESC"], max_results=2)
    assert set(runs["tags.applied_class_prior"]) == {d["applied_class_prior_label"], "none"}


def test_a_model_registered_before_26_scores_as_trained(sim_chirality):
    from galmorph.models.io import ModelSpec, with_class_prior

    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="old", image_size=32,
                     trained_prior={"CW": 1 / 3, "ACW": 1 / 3, "other": 1 / 3},
                     catalogue_prior={"CW": 0.24, "ACW": 0.27, "other": 0.49})
    got = with_class_prior(spec, "model")
    assert got.class_prior == {} and "no catalogue class prior" in got.extra["applied_class_prior"]["note"]


def _report(y, yp, classes, prior=None, winding=None, seed=0):
    sk = skill_vs_majority(y, yp, classes, prior, n_boot=500, seed=seed)
    return {"metrics": {"f1_macro": sk["f1_macro"]["value"], "accuracy": sk["accuracy"]["value"]}, "skill": sk,
            **({"winding": winding} if winding else {})}


def test_the_floor_rejects_chance_skill_and_accepts_skill():
    rng = np.random.default_rng(0)
    classes = ["symmetric", "lopsided"]
    y = np.array(classes * 100)
    coin = rng.choice(classes, size=len(y))  # no skill: today's floor passed it (0.5 >= 0.33 + 0.05)
    good = np.where(rng.random(len(y)) < 0.9, y, np.where(y == classes[0], classes[1], classes[0]))
    pol = PromotionPolicy()
    bad = quality_floor(_report(y, coin, classes), pol.min_margin_over_majority)
    assert not bad["passed"] and "quality floor" in bad["reason"] and "chance" in bad["reason"]
    assert bad["value"] > bad["majority_value"] + 0.05  # the old rule would have let it through
    ok = quality_floor(_report(y, good, classes), pol.min_margin_over_majority)
    assert ok["passed"] and ok["ci_low"] > ok["required"]


def test_the_floor_rejects_a_model_the_winding_measurement_carries():
    """The default output combines the network with the winding measurement, which needs no training: a network
    with no skill of its own (all "other" at the catalogue's proportions) is rejected however well the combined
    output does, with the reason naming the network; a network with weak but real skill is judged on the
    combined output."""
    rng = np.random.default_rng(1)
    classes = ["CW", "ACW", "other"]
    y = rng.choice(classes, size=600, p=[0.07, 0.07, 0.86])
    combined = np.where(rng.random(len(y)) < 0.9, y, "other")  # what the stacker makes of the measurement
    lazy = np.full(len(y), "other", dtype=object)  # the network alone: no skill
    weak = np.where((y != "other") & (rng.random(len(y)) < 0.3), y, "other")  # finds a third of the spirals
    pol = PromotionPolicy()
    rep = {**_report(y, combined, classes), "skill_network": skill_vs_majority(y, lazy, classes, n_boot=500)}
    got = quality_floor(rep, pol.min_margin_over_majority)
    assert not got["passed"] and got["ci_low"] > got["required"]  # the combined output alone would pass
    assert got["network"]["passed"] is False and "the network alone" in got["reason"]
    assert quality_floor(_report(y, combined, classes), pol.min_margin_over_majority)["passed"]  # fixed-rule era
    rep["skill_network"] = skill_vs_majority(y, weak, classes, n_boot=500)
    ok = quality_floor(rep, pol.min_margin_over_majority)
    assert ok["passed"] and ok["network"]["passed"] and ok["network"]["margin"] == 0.0
    rep["skill_network"] = skill_vs_majority(y, lazy, classes, n_boot=500)
    lenient = quality_floor(rep, -1.0)  # a policy that lets any model through (plumbing tests, a user's choice)
    assert lenient["passed"] and lenient["network"]["margin"] == -1.0


def test_the_floor_judges_at_the_catalogue_proportions():
    # the held-out set is balanced, the catalogue is 87 % other: an as-trained model that calls a third of the
    # "other" galaxies spirals beats the majority on the balanced set but not at the catalogue's proportions
    classes = ["CW", "ACW", "other"]
    y = np.array(["CW"] * 100 + ["ACW"] * 100 + ["other"] * 100)
    yp = y.copy()
    yp[200:240] = "CW"
    yp[240:280] = "ACW"
    yp[:30] = "other"
    yp[100:130] = "other"
    cat = {"CW": 0.062, "ACW": 0.068, "other": 0.87}
    bal = quality_floor(_report(y, yp, classes), 0.02, "accuracy")
    at_cat = quality_floor(_report(y, yp, classes, cat), 0.02, "accuracy")
    assert bal["passed"] and at_cat["proportions_source"] == "catalogue"
    assert not at_cat["passed"] and at_cat["majority_value"] == pytest.approx(0.87)
    assert "accuracy" in at_cat["reason"] and "0.87" in at_cat["reason"]


def test_the_first_champion_runs_every_check():
    classes = ["CW", "ACW", "other"]
    y = np.array(["CW"] * 60 + ["ACW"] * 60 + ["other"] * 60)
    rep = _report(y, y, classes, winding={"disagreement": 0.48, "n_compared": 90, "min_confidence": 2.0})
    passed, reasons, checks = compare(rep, None, PromotionPolicy())
    assert "quality_floor" in checks and checks["quality_floor"]["passed"]
    assert "winding" in checks and checks["winding"]["blocking"]  # today: "no champion to compare with"
    assert not passed and any("winding check" in r and "48.0%" in r for r in reasons)
    w = winding_check({"winding": {"disagreement": 0.05, "n_compared": 90}}, None, PromotionPolicy())
    assert w["absolute_checked"] and not w["flagged"]


def test_the_promotion_floor_rejects_a_random_model_and_accepts_an_oracle(mlflow_server, tmp_path):
    from galmorph.promotion.registry import promote
    from test_eval_support import OracleNet, log_test_model, write_coded_dataset
    from test_scoring_helpers import TinyNet

    classes = ["symmetric", "lopsided"]
    path, _ = write_coded_dataset(tmp_path / "coded", classes, n=80, seed=5)
    task = "dtest-floor"
    fast = {"log_evaluations": False, "evaluate_kwargs": {"html": False}}

    def reg(net):
        return str(log_test_model(net, task, classes, 16, registered_name=f"galmorph-{task}").registered_model_version)

    torch.manual_seed(0)
    d = promote(task, reg(TinyNet(2, seed=3)), eval_manifest=path, audit_log=tmp_path / "a.jsonl", **fast)
    assert d.decision == "rejected" and any("quality floor" in r for r in d.reasons), d.reasons
    d2 = promote(task, reg(OracleNet(2, error_rate=0.1)), eval_manifest=path, audit_log=tmp_path / "a.jsonl", **fast)
    assert d2.decision == "first-champion", d2.reasons


def test_the_catalogue_counts_of_a_selection_travel_through_the_pipeline_steps(sim_chirality, tmp_path):
    """A training selection (all spirals + a few "other", as demo --real makes) carries its catalogue's label
    counts; ingest, validate, cutout and the held-out split keep them, so the model trained on the split's
    train part records the catalogue's prior, not the selection's (#26.2)."""
    from galmorph import steps
    from galmorph.catalogue.manifest import manifest_metadata
    from galmorph.steps.artifacts import dataset_manifest_path, open_dataset
    from galmorph.training.defaults import CATALOGUE_COUNTS_KEY, catalogue_label_counts, manifest_meta_of

    df = read_manifest(sim_chirality["manifest"])
    catalogue = {"CW": 60, "ACW": 70, "other": 870}  # the population the selection was drawn from
    src = write_manifest(df, tmp_path / "selection.parquet", kind="gz1_chirality",
                         extra_meta={CATALOGUE_COUNTS_KEY: catalogue, "selection": "test"})
    steps.ingest(str(src), tmp_path / "ingested.parquet", tmp_path / "q0.parquet", task="chirality")
    assert steps.validate(tmp_path / "ingested.parquet", tmp_path / "valid.parquet", tmp_path / "q1.parquet",
                          tmp_path / "report.json", z_min=0.0, z_max=1.0)
    steps.cutout(tmp_path / "valid.parquet", tmp_path / "cut", tmp_path / "q2.parquet", size_px=32)
    steps.split(tmp_path / "cut", tmp_path / "train", tmp_path / "test", test_fraction=0.25, seed=0)
    for stage in (tmp_path / "ingested.parquet", tmp_path / "valid.parquet",
                  dataset_manifest_path(tmp_path / "cut"), dataset_manifest_path(tmp_path / "train")):
        assert manifest_metadata(stage).get(CATALOGUE_COUNTS_KEY) == catalogue, stage
    # what training reads from the train part it is handed
    opened = open_dataset(tmp_path / "train", work_dir=tmp_path / "open")
    counts, origin = catalogue_label_counts({"CW": 1, "ACW": 1, "other": 1}, manifest_meta_of(opened), "chirality")
    assert origin == "manifest metadata" and counts == pytest.approx({k: float(v) for k, v in catalogue.items()})
