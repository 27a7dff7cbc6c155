"""#26.3 on the real GZ1 galaxies: the promotion floor judges the predictions the model will be deployed with
(the catalogue prior and the winding ensemble it recorded) at the catalogue's class proportions on galaxies it
never saw. A chirality model from random weights is rejected by the floor even as the first champion; the same
preset from the packaged pretrained weights becomes champion.

The preset is the chirality ``reference`` preset made small enough for the suite (64 px, one test-time view, a
few epochs on 240 spirals + 240 "other"): the test is about the floor telling chance from skill on real data,
not about the preset's accuracy (benchmarks/results/reference.md)."""

from __future__ import annotations

import numpy as np

from galmorph.catalogue.manifest import write_manifest

SMALL = {"image_size": 64, "max_epochs": 4, "min_epochs": 0, "patience": 4, "tta_views": 1, "progress": False,
         "batch_size": 32, "max_per_class": 0}


def _parts(data_root, seed: int = 0):
    """A held-out set of 800 GZ1 galaxies at the catalogue's class proportions, and a training selection from
    the rest (120 CW + 120 ACW + 240 "other") that carries the rest's catalogue counts."""
    from galmorph.catalogue.ingest import load_source

    gz1, _q, _k = load_source("gz1_chirality", data_root)
    gz1 = gz1[gz1["label"].notna()].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    held = rng.choice(len(gz1), size=800, replace=False)
    is_held = np.zeros(len(gz1), bool)
    is_held[held] = True
    rest = gz1[~is_held].reset_index(drop=True)
    take = np.concatenate([rng.permutation(np.flatnonzero(rest["label"].astype(str) == c))[:n]
                           for c, n in (("CW", 120), ("ACW", 120), ("other", 240))])
    catalogue = {str(k): int(v) for k, v in rest["label"].astype(str).value_counts().items()}
    return rest.iloc[np.sort(take)].reset_index(drop=True), gz1[is_held].reset_index(drop=True), catalogue


def test_the_floor_rejects_random_weights_and_accepts_the_pretrained_preset_on_real_gz1(data_root, tmp_path):
    from galmorph.promotion.registry import promote
    from galmorph.tracking import using_tracking_uri
    from galmorph.training import train
    from galmorph.training.defaults import CATALOGUE_COUNTS_KEY

    train_df, held_df, catalogue = _parts(data_root)
    assert (held_df["label"] == "other").mean() > 0.8  # the catalogue's proportions, not a balanced set
    train_path = write_manifest(train_df, tmp_path / "train.parquet", kind="gz1_chirality",
                                extra_meta={CATALOGUE_COUNTS_KEY: catalogue})
    held_path = write_manifest(held_df, tmp_path / "held.parquet", kind="gz1_chirality")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    decisions = {}
    for name, weights in (("random", "none"), ("pretrained", "package:efficientnet-lite0")):
        res = train("chirality", "reference", {**SMALL, "encoder_weights": weights, "seed": 3},
                    manifest=train_path, tracking_uri=uri, data_root=data_root, out_dir=tmp_path / name)
        with using_tracking_uri(uri):
            decisions[name] = promote("chirality", res.registered_version, eval_manifest=held_path,
                                      audit_log=tmp_path / "audit.jsonl", data_root=data_root,
                                      log_evaluations=False, evaluate_kwargs={"html": False})
    rnd, pre = decisions["random"], decisions["pretrained"]
    assert rnd.decision == "rejected" and any("quality floor" in r for r in rnd.reasons), rnd.reasons
    # the preset's winding stacker gives even a random network's output the measurement's skill: the floor asks
    # the network for skill of its own as well
    assert rnd.checks["quality_floor"].get("network", {}).get("passed") is False or \
        not rnd.checks["quality_floor"]["ci_low"] > rnd.checks["quality_floor"]["required"], rnd.checks
    assert rnd.champion_after is None  # the first candidate: every check applied, none skipped
    assert pre.decision == "first-champion", pre.reasons
    floor = pre.checks["quality_floor"]
    assert floor["passed"] and floor["ci_low"] > floor["majority_value"]
    assert floor["network"]["passed"] and floor["network"]["ci_low"] > floor["network"]["chance_value"]
    assert floor["proportions_source"] and floor["proportions"]["other"] > 0.8
