"""Early stopping and the best checkpoint can follow the validation macro-F1 (``monitor: val_f1_macro``):
the value logged is the project's one macro-F1 over the whole validation set, and the chosen checkpoint
is the epoch where it peaked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from galmorph.training.config import MONITORS, resolve_config
from galmorph.training.runner import _val_f1_callback_cls, fit_trial


class _Module:
    """The two things the callback reads from a GalaxyClassifier, and what it logs."""

    classes = ["CW", "ACW", "other"]

    def __init__(self, pairs):
        self.val_labels = pairs
        self.logged: dict[str, float] = {}

    def log(self, name, value, **_):
        self.logged[name] = value


def test_val_macro_f1_is_the_one_definition_over_all_batches():
    # two batches; "ACW" has no support in the validation set: it is left out of the mean (sklearn with
    # labels = present classes), so a mean over all three classes or the accuracy would differ
    y = [torch.tensor([0, 0, 2, 2]), torch.tensor([2, 2, 2, 0])]
    p = [torch.tensor([0, 1, 2, 2]), torch.tensor([2, 0, 2, 0])]
    mod = _Module(list(zip(y, p)))
    _val_f1_callback_cls()().on_validation_epoch_end(None, mod)
    yt, yp = torch.cat(y).numpy(), torch.cat(p).numpy()
    expected = f1_score(yt, yp, labels=[0, 2], average="macro", zero_division=0)
    assert mod.logged["val_f1_macro"] == pytest.approx(expected)
    assert expected != pytest.approx(f1_score(yt, yp, labels=[0, 1, 2], average="macro", zero_division=0))
    assert expected != pytest.approx((yt == yp).mean())


def test_monitor_choices_include_macro_f1():
    assert MONITORS["val_f1_macro"] == "max"
    assert resolve_config("chirality", "reference").monitor == "val_f1_macro"


def test_training_follows_val_macro_f1(sim_chirality, tmp_path):
    cfg = resolve_config("chirality", "tiny", {"progress": False, "monitor": "val_f1_macro", "max_epochs": 3,
                                              "patience": 5})
    man = pd.read_parquet(sim_chirality["manifest"])
    res = fit_trial(cfg, man, 0, tmp_path, data_root=None)
    hist = res["history"]
    assert "val_f1_macro" in hist and len(hist) == 3
    assert np.all((hist["val_f1_macro"] >= 0) & (hist["val_f1_macro"] <= 1))
    assert res["best_score"] == pytest.approx(hist["val_f1_macro"].max(), abs=1e-6)
    # throughput per epoch (wall time of the training part) and from the second epoch on
    assert np.all(hist["train_images_per_s"] > 0)
    later = res["metrics"]["train_images_per_s_after_first_epoch"]
    assert min(hist["train_images_per_s"][1:]) <= later <= max(hist["train_images_per_s"][1:])
