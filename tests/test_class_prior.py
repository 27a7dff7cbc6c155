"""Class priors: a model trained under one class prior (balanced class weights: uniform) is moved to the
prior of the population it scores (Saerens, Latinne & Decaestecker 2002: p'(c|x) ∝ p(c|x) π'(c)/π(c)).

Checked against that formula computed independently in numpy (a wrong sign or a missing normalisation
differs), through both prediction paths (LoadedModel.predict_proba and score_manifest), and on what
training records (the trained prior is uniform under balanced weights; the catalogue prior is the
manifest's before down-sampling)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from galmorph.models.io import LoadedModel, ModelSpec, parse_class_prior


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("z", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.z[: x.shape[0]]


def _spec(**kw) -> ModelSpec:
    base = dict(task="chirality", classes=["CW", "ACW", "other"], arch="tiny", image_size=32,
                trained_prior={"CW": 1 / 3, "ACW": 1 / 3, "other": 1 / 3},
                catalogue_prior={"CW": 0.06, "ACW": 0.07, "other": 0.87})
    return ModelSpec(**{**base, **kw})


def test_parse_class_prior():
    spec = _spec()
    assert parse_class_prior(None, spec) == {} and parse_class_prior("trained", spec) == {}
    assert parse_class_prior("catalogue", spec) == pytest.approx(spec.catalogue_prior)
    got = parse_class_prior("CW=1,ACW=1,other=8", spec)
    assert got == pytest.approx({"CW": 0.1, "ACW": 0.1, "other": 0.8})
    assert parse_class_prior({"other": 2.0}, spec) == {"CW": 0.0, "ACW": 0.0, "other": 1.0}
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['spiral'\]; the model's classes are"):
        parse_class_prior("spiral=0.5,other=0.5", spec)
    with pytest.raises(ValueError, match="is not CLASS=FRACTION"):
        parse_class_prior("CW:0.5", spec)
    with pytest.raises(ValueError, match="not all 0"):
        parse_class_prior("CW=0,ACW=0", spec)
    with pytest.raises(ValueError, match="recorded no catalogue prior"):
        parse_class_prior("catalogue", _spec(catalogue_prior={}))
    with pytest.raises(ValueError, match="recorded no training prior"):
        parse_class_prior("CW=0.5,ACW=0.5", _spec(trained_prior={}))
    # the spec round-trips through its dict (what MLflow stores)
    again = ModelSpec.from_dict(_spec(class_prior={"CW": 0.2, "ACW": 0.2, "other": 0.6}).to_dict())
    assert again.trained_prior == _spec().trained_prior and again.class_prior["other"] == 0.6


@pytest.mark.parametrize("trained", [{"CW": 1 / 3, "ACW": 1 / 3, "other": 1 / 3},
                                     {"CW": 0.2, "ACW": 0.3, "other": 0.5}])
def test_predict_proba_follows_the_saerens_formula(trained):
    logits = [[2.0, 0.5, 1.0], [-1.0, 0.0, 3.0], [0.3, 0.2, 0.1]]
    target = {"CW": 0.06, "ACW": 0.07, "other": 0.87}
    spec = _spec(trained_prior=trained, temperature=1.7)
    plain = LoadedModel(FixedLogits(logits), spec, uri="mem")
    moved = LoadedModel(FixedLogits(logits), dataclasses.replace(spec, class_prior=target), uri="mem")
    x = torch.zeros(3, 3, 32, 32)
    p = plain.predict_proba(x)
    ref = p * np.array([target[c] / trained[c] for c in spec.classes])
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(moved.predict_proba(x), ref, rtol=1e-5)
    assert (moved.predict_proba(x)[:, 2] > p[:, 2]).all()  # "other" gains under its larger prior
    # a class with target prior 0 is never predicted
    zero = LoadedModel(FixedLogits(logits), dataclasses.replace(spec, class_prior={"CW": 0, "ACW": 0.5,
                                                                                   "other": 0.5}), uri="mem")
    assert (zero.predict_proba(x)[:, 0] == 0).all()


def test_scoring_applies_the_class_prior_like_predict_proba(sim_chirality, tmp_path):
    import json

    from test_scoring_helpers import TinyNet

    from galmorph.scoring.inference import predict_manifest
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.scoring.batch import merge_scores, score_manifest

    spec = _spec(class_prior={"CW": 0.1, "ACW": 0.1, "other": 0.8})
    lm = LoadedModel(TinyNet(3, seed=6).eval(), spec, uri="mem")
    score_manifest(lm, sim_chirality["manifest"], tmp_path / "s", batch_size=8, progress=False)
    cat = pd.read_parquet(merge_scores([tmp_path / "s"], tmp_path / "c").catalogue)
    ref = predict_manifest(lm, read_manifest(sim_chirality["manifest"]), batch_size=8)
    m = cat.merge(ref, on="object_id", suffixes=("", "_ref"))
    assert len(m) == len(ref) and np.abs(m["p_other"] - m["p_other_ref"]).max() < 1e-5
    assert json.loads((tmp_path / "s" / "scoring.json").read_text())["class_prior"] == spec.class_prior
    plain = predict_manifest(dataclasses.replace(lm, spec=dataclasses.replace(spec, class_prior={})),
                             read_manifest(sim_chirality["manifest"]), batch_size=8)
    assert (m["p_other"].to_numpy() > plain.set_index("object_id").loc[m["object_id"], "p_other"].to_numpy()).all()
    # resuming the folder with another prior would mix two catalogues: refused
    from galmorph.scoring.batch import ScoringError

    other = dataclasses.replace(lm, spec=dataclasses.replace(spec, class_prior={}))
    with pytest.raises(ScoringError, match="class_prior"):
        score_manifest(other, sim_chirality["manifest"], tmp_path / "s", batch_size=8, progress=False)


def test_training_records_trained_and_catalogue_priors(sim_chirality):
    from galmorph.datasets.datamodule import GalaxyDataModule
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_chirality["manifest"])
    counts = man["label"].value_counts()
    dm = GalaxyDataModule(man, "chirality", ["CW", "ACW", "other"], image_size=32, max_per_class=5, seed=0)
    trained, cat = dm.class_priors(balanced=True)
    assert trained == pytest.approx({"CW": 1 / 3, "ACW": 1 / 3, "other": 1 / 3})
    assert cat == pytest.approx({c: counts[c] / counts.sum() for c in ["CW", "ACW", "other"]})  # before the cap
    freq, _ = dm.class_priors(balanced=False)
    train = dm.split_frame("train")["label"].value_counts()
    assert freq == pytest.approx({c: train.get(c, 0) / train.sum() for c in ["CW", "ACW", "other"]})
