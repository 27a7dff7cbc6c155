"""Data module: stratified seeded splits and trials, down-sampling, arm merges, per-task augmentation
(chirality never mirrors), mirrored copies with swapped labels, config overrides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from galmorph.datasets.augment import AugmentSpec, RandomGalaxyAugment, apply_matrix, augment_spec_for, sample_matrix
from galmorph.datasets.datamodule import (
    GalaxyDataModule,
    downsample_per_class,
    prepare_labels,
    repeated_splits,
    stratified_split,
)
from galmorph.catalogue.manifest import read_manifest
from galmorph.tasks import arm_classes
from galmorph.training.config import ConfigError, parse_set_items, resolve_config


def _frame(labels, task="arms"):
    n = len(labels)
    return pd.DataFrame({"object_id": [f"o{i}" for i in range(n)], "image_uri": [f"x{i}.png" for i in range(n)],
                         "label": labels, "task": [task] * n})


def test_stratified_split_is_disjoint_complete_stratified_and_seeded():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    s = stratified_split(labels, 0.1, 0.2, seed=3)
    allidx = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(allidx.tolist()) == list(range(100))
    lab = np.array(labels)
    assert (lab[s["test"]] == "a").sum() == 10 and (lab[s["test"]] == "b").sum() == 6
    assert (lab[s["val"]] == "c").sum() == 2
    s2 = stratified_split(labels, 0.1, 0.2, seed=3)
    assert all(np.array_equal(s[k], s2[k]) for k in s)
    trials = repeated_splits(labels, 10, 0.0, 0.2, seed=0)  # ten 80/20 splits as in the lopsided study
    assert len(trials) == 10 and len({tuple(t["test"]) for t in trials}) == 10
    assert all(len(t["test"]) == 20 and len(t["train"]) == 80 for t in trials)


def test_downsampling_keeps_at_most_n_per_class_and_accounts_for_every_row():
    df = _frame(["1"] * 12 + ["2"] * 5 + ["3"] * 9)
    kept, dropped = downsample_per_class(df, 6, seed=0)
    assert kept["label"].value_counts().to_dict() == {"1": 6, "2": 5, "3": 6}
    assert len(kept) + len(dropped) == len(df)
    assert all("down-sampled to 6" in r["reason"] for r in dropped)
    assert set(kept["object_id"]).isdisjoint({r["object_id"] for r in dropped})


@pytest.mark.parametrize("merge,expected", [
    ("3+4", {"1": 2, "2": 2, "3+4": 4, "5+": 2}),
    ("4+5+", {"1": 2, "2": 2, "3": 2, "4+": 4}),
])
def test_arm_merges_map_labels_and_exclusions_have_reasons(merge, expected):
    df = _frame(["1", "1", "2", "2", "3", "3", "4", "4", "5+", "5+", "cant_tell", None])
    classes = arm_classes(merge, include_cant_tell=False)
    usable, excluded = prepare_labels(df, "arms", classes, merge)
    assert usable["label"].value_counts().to_dict() == expected
    assert len(usable) + len(excluded) == len(df)
    reasons = sorted(r["reason"] for r in excluded)
    assert reasons[0] == "label 'cant_tell' is not a class of arms " + str(list(classes)) and reasons[1] == "no label"


def test_rows_for_another_task_are_excluded_with_reason():
    df = pd.concat([_frame(["CW", "ACW"], "chirality"), _frame(["1"], "arms")], ignore_index=True)
    usable, excluded = prepare_labels(df, "chirality", ["CW", "ACW", "other"])
    assert len(usable) == 2 and "task 'arms'" in excluded[0]["reason"]


def test_chirality_augmentation_never_mirrors():
    with pytest.raises(ValueError, match="must not flip"):
        augment_spec_for("chirality", 180, 0.1, True)
    spec = augment_spec_for("chirality", 180, 0.1, False)
    rng = np.random.default_rng(0)
    dets = [np.linalg.det(sample_matrix(spec, rng)) for _ in range(2000)]
    assert min(dets) > 0  # rotation + zoom only: orientation preserved
    lop = augment_spec_for("lopsided", 180, 0.1, True)
    dets_l = [np.linalg.det(sample_matrix(lop, rng)) for _ in range(200)]
    assert min(dets_l) < 0 < max(dets_l)  # flips do happen for the other tasks
    with pytest.raises(ConfigError, match="rotation and zoom only"):
        resolve_config("chirality", "tiny", {"flips": True})


def test_affine_rotation_by_90_degrees_matches_rot90():
    x = torch.rand(1, 33, 33)
    m = sample_matrix(AugmentSpec(0, 0, False), np.random.default_rng(0))
    assert np.allclose(m, np.eye(2))
    assert torch.allclose(apply_matrix(x, np.eye(2)), x, atol=1e-5)
    r = apply_matrix(x, np.array([[0.0, -1.0], [1.0, 0.0]]))
    assert torch.allclose(r, torch.rot90(x, 1, dims=[1, 2]), atol=1e-4) or \
        torch.allclose(r, torch.rot90(x, -1, dims=[1, 2]), atol=1e-4)
    aug = RandomGalaxyAugment(AugmentSpec(180, 0.2, True), seed=1)
    y = aug(torch.rand(3, 32, 32))
    assert y.shape == (3, 32, 32) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_mirror_copies_swap_labels_and_mirror_pixels(sim_chirality):
    man = read_manifest(sim_chirality["manifest"])
    dm = GalaxyDataModule(man, "chirality", ["CW", "ACW", "other"], image_size=32, augment=None,
                          mirror_copies=True, val_fraction=0.2, test_fraction=0.2, seed=0)
    train = dm.split_frame("train")
    n = len(train) // 2
    assert len(train) == 2 * len(dm.frame.iloc[dm.split["train"]])
    swap = {"CW": "ACW", "ACW": "CW", "other": "other"}
    assert [swap[v] for v in train["label"][:n]] == list(train["label"][n:])
    ds = dm.dataset("train")
    x0, y0 = ds[0]
    xm, ym = ds[n]
    assert torch.equal(xm, torch.flip(x0, dims=[-1]))
    assert dm.classes[ym] == swap[dm.classes[y0]]
    # only the training split is mirrored
    assert len(dm.split_frame("test")) == len(dm.split["test"])


def test_datamodule_on_simulated_arms_accounts_for_rows_and_batches(sim_arms):
    man = read_manifest(sim_arms["manifest"])
    cfg = resolve_config("arms", "tiny", {"arm_merge": "4+5+", "max_per_class": 6, "image_size": 32,
                                          "greyscale": True, "batch_size": 4})
    dm = GalaxyDataModule.from_config(man, cfg)
    assert len(dm.frame) + len(dm.excluded) == len(man)
    assert dm.frame["label"].value_counts().max() <= 6
    assert set(dm.frame["label"]) <= set(cfg.classes()) and "4+" in set(dm.frame["label"])
    a = dm.assignments()
    assert len(a) == len(dm.frame) and a["object_id"].is_unique
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_set_overrides_are_type_checked():
    assert parse_set_items(["lr=1e-4", "trials=3", "greyscale=yes", "arm_merge=3+4"]) == {
        "lr": 1e-4, "trials": 3, "greyscale": True, "arm_merge": "3+4"}
    with pytest.raises(ConfigError, match="expects an integer"):
        parse_set_items(["trials=2.5"])
    with pytest.raises(ConfigError, match="expects a boolean"):
        parse_set_items(["greyscale=maybe"])
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        parse_set_items(["batchsize=3"])
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("arms", "nope")
    with pytest.raises(ConfigError, match="arm_merge only applies"):
        resolve_config("chirality", "tiny", {"arm_merge": "3+4"})
    paper = resolve_config("lopsided", "paper")
    assert (paper.arch, paper.batch_size, paper.trials, paper.lr, paper.test_fraction) == (
        "zoobot_convnext_nano", 64, 10, 1e-5, 0.2)
    arms = resolve_config("arms", "b0_frozen")
    assert arms.crop_fraction == pytest.approx(224 / 424) and arms.max_per_class == 300 and arms.patience == 30


def test_mirror_swap_mirrors_only_with_cw_acw_swapped_and_class_weights_balance():
    from galmorph.datasets.augment import RandomMirrorSwap, mirror

    labels = ["CW"] * 40 + ["ACW"] * 20 + ["other"] * 60
    dm = GalaxyDataModule(_frame(labels, "chirality"), "chirality", ["CW", "ACW", "other"], image_size=16,
                          val_fraction=0.1, test_fraction=0.2, seed=0, mirror_swap=True)
    assert dm.mirror_label_map() == [1, 0, 2]
    w = np.array(dm.class_weights())
    n = np.array([28, 14, 42], dtype=float)  # training counts (70 %)
    n_sym = np.array([21, 21, 42], dtype=float)  # CW/ACW share their counts under mirror_swap
    assert np.allclose(w, n.sum() / (3 * n_sym)) and np.isclose((w * n_sym).sum(), n.sum())
    swap = RandomMirrorSwap(dm.mirror_label_map(), seed=1)
    x = torch.rand(1, 8, 8)
    seen = set()
    for _ in range(40):
        for y in (0, 1, 2):
            out, y2 = swap(x, y)
            mirrored = torch.equal(out, mirror(x))
            assert mirrored or torch.equal(out, x)
            assert y2 == ([1, 0, 2][y] if mirrored else y)
            seen.add(mirrored)
    assert seen == {True, False}
    with pytest.raises(ValueError, match="only applies to the chirality"):
        GalaxyDataModule(_frame(["1", "2"] * 5), "arms", ["1", "2"], image_size=16, mirror_swap=True)
