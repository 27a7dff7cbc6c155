"""Chirality diagnostics: CVS, the sweep test, the mirror test (exact for a CE model through the real
MLflow round trip), the overlap index and MC dropout on exported graphs."""

import math

import numpy as np
import pytest
import torch

from galmorph.evaluation.chirality import (chirality_violation, cvs_summary, cvs_sweep, has_dropout, mc_dropout,
                                           mirror_test, overlap_index, rotation_stability, sweep_counts)
from test_eval_support import ChiralityCE, TinyCNN, log_test_model


def test_chirality_violation_values():
    assert chirality_violation(60, 40) == (pytest.approx(20 / 10), 1.0)
    assert chirality_violation(40, 60)[0] == pytest.approx(-2.0)
    assert math.isnan(chirality_violation(0, 0)[0])
    with pytest.raises(ValueError):
        chirality_violation(-1, 3)
    s = cvs_summary(["CW", "ACW", "ACW", "other"], ["ACW", "ACW", "ACW", "CW"])
    assert s["cvs_labels"] == pytest.approx(1 / math.sqrt(3)) and s["cvs_pred"] == pytest.approx(2 / math.sqrt(4))


def _spiral_labels(n_cw=70, n_acw=80, n_other=30):
    return np.array(["CW"] * n_cw + ["ACW"] * n_acw + ["other"] * n_other, dtype=object)


def test_sweep_of_perfect_classifier_has_slope_one_intercept_zero():
    y = _spiral_labels()
    res = cvs_sweep(y, y, n=200, realisations=5, seed=3)
    assert res["slope"] == pytest.approx(1.0, abs=1e-12)
    assert res["intercept"] == pytest.approx(0.0, abs=1e-12)
    pts = res["points"]
    assert len(pts["set_cvs"]) == 9 * 5
    # the realised set CVS values are the targets -12..12 up to rounding of the counts
    targets = np.array(pts["target"])
    assert np.abs(np.array(pts["set_cvs"]) - targets).max() < 2 / math.sqrt(200)
    assert sorted(set(targets)) == list(range(-12, 13, 3))


def test_sweep_of_biased_classifiers():
    y = _spiral_labels()
    always_cw = np.where(np.isin(y, ["CW", "ACW"]), "CW", "other")
    res = cvs_sweep(y, always_cw, n=150, realisations=3)
    assert res["slope"] == pytest.approx(0.0, abs=1e-12)
    assert res["intercept"] == pytest.approx(-math.sqrt(150))
    # a classifier that misses half the ACW spirals (calls them other): slope < 1, negative intercept
    rng = np.random.default_rng(0)
    lossy = y.copy()
    lossy[(y == "ACW") & (rng.uniform(size=len(y)) < 0.5)] = "other"
    r2 = cvs_sweep(y, lossy, n=200, realisations=10)
    assert 0.3 < r2["slope"] < 1.0 and r2["intercept"] < -1
    with pytest.raises(ValueError, match="N >= 144"):
        sweep_counts(12, 100)
    with pytest.raises(ValueError, match="without replacement"):
        cvs_sweep(y, y, n=200, replace=False)
    with pytest.raises(ValueError, match="CW- and ACW-labelled"):
        cvs_sweep(["CW", "other"], ["CW", "other"])


def test_overlap_index_limits():
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.05, 400).clip(0, 1)
    assert overlap_index(a, a) == pytest.approx(1.0, abs=1e-6)
    assert overlap_index(a, rng.normal(0.5, 0.05, 400).clip(0, 1)) > 0.85
    assert overlap_index(np.full(20, 0.05), np.full(20, 0.95)) < 1e-6
    mid = overlap_index(rng.normal(0.4, 0.1, 500), rng.normal(0.6, 0.1, 500))
    # two unit-variance normals 2 sigma apart share 2 * Phi(-1) = 0.317 of their area
    assert mid == pytest.approx(0.317, abs=0.06)


def test_mirror_test_of_ce_model_holds_exactly(mlflow_server, sim_chirality):
    from galmorph.scoring.inference import predict_manifest
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.models.io import load_for_inference

    man = read_manifest(sim_chirality["manifest"])
    info = log_test_model(ChiralityCE(seed=1), "chirality", ["CW", "ACW", "other"], 32,
                          registered_name="galmorph-test-chirality-ce", chirality_equivariant=True, arch="ce")
    lm = load_for_inference(f"models:/galmorph-test-chirality-ce/{info.registered_model_version}")
    p = predict_manifest(lm, man)
    pm = predict_manifest(lm, man, mirror=True)
    res = mirror_test(p, pm, atol=0.0)
    assert res["passed"], res
    assert res["cvs_pred_mirror"] == -res["cvs_pred"] or (math.isnan(res["cvs_pred"]))
    assert res["label_swap_fraction"] == 1.0 and res["max_prob_diff"] == 0.0
    np.testing.assert_array_equal(p["p_CW"].to_numpy(), pm["p_ACW"].to_numpy())
    # a plain CNN is not mirror-equivariant: the same test fails
    info2 = log_test_model(TinyCNN(3, seed=2), "chirality", ["CW", "ACW", "other"], 32,
                           registered_name="galmorph-test-chirality-plain", arch="plain")
    lm2 = load_for_inference(f"models:/galmorph-test-chirality-plain/{info2.registered_model_version}")
    res2 = mirror_test(predict_manifest(lm2, man), predict_manifest(lm2, man, mirror=True))
    assert not res2["passed"] and res2["max_prob_diff"] > 1e-5


def test_mc_dropout_on_exported_graph_and_rotation_stability():
    net = ChiralityCE(seed=0, dropout=0.5).eval()
    x = torch.rand(4, 3, 24, 24)
    ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    gm = ep.module()
    assert has_dropout(gm)
    with torch.no_grad():
        ref = gm(x)
        with mc_dropout(gm) as active:
            assert active
            a, b = gm(x), gm(x)
        after = gm(x)
    assert not torch.equal(a, b)  # stochastic passes
    assert torch.equal(ref, after)  # restored to deterministic inference
    rs = rotation_stability(gm, x, ["CW", "ACW", "other"], n_passes=4, n_rotations=3, seed=0)
    assert rs["mc_dropout"] and rs["angles"] == [0.0, 90.0, 180.0]
    assert set(rs["eta"]) == {"CW-ACW", "CW-other", "ACW-other"}
    assert all(0.0 <= v["mean"] <= 1.0 for v in rs["eta"].values())
    assert rs["eta_mean"] == pytest.approx(np.mean([v["mean"] for v in rs["eta"].values()]))
    # without dropout the passes are identical and it says so
    plain = torch.export.export(TinyCNN(3).eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    rs2 = rotation_stability(plain, x, ["CW", "ACW", "other"], n_passes=3, n_rotations=2)
    assert rs2["mc_dropout"] is False
    assert rs2["prob_std_mean"] > 0  # the rotations still move the probabilities
    rs3 = rotation_stability(plain, x, ["CW", "ACW", "other"], n_passes=3, n_rotations=1)
    assert rs3["prob_std_mean"] == 0.0  # one angle, no dropout: every sample identical


def test_mc_dropout_predictive_spread_and_refusal_without_dropout():
    """A model with head dropout has a positive MC spread (eager and exported); one without is refused."""
    import torch

    from galmorph.evaluation.chirality import NoDropoutError, has_dropout, mc_dropout_predictive
    from test_eval_support import ChiralityCE

    x = torch.rand((4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    drop = ChiralityCE(seed=2, dropout=0.5).eval()
    gm = torch.export.export(drop, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    for m in (drop, gm):
        assert has_dropout(m)
        r = mc_dropout_predictive(m, x, n_passes=12, seed=1)
        assert r["mean"].shape == (4, 3) and r["std"].shape == (4, 3)
        assert r["spread"] > 1e-5 and (r["mutual_information"] > 0).all()
        np.testing.assert_allclose(r["mean"].sum(1), 1.0, atol=1e-5)
        # dropout is off again afterwards: deterministic predictions
        with torch.no_grad():
            assert torch.equal(m(x), m(x))
    plain = ChiralityCE(seed=2, dropout=0.0).eval()
    assert not has_dropout(plain)
    with pytest.raises(NoDropoutError, match="no dropout layer"):
        mc_dropout_predictive(plain, x)


@pytest.mark.parametrize("kw", [dict(arch="resnet18", chirality_equivariant=True),
                                dict(arch="efficientnet_lite0", tta_views=2),
                                dict(arch="gresnet18", gresnet_width=0.125)])
def test_chirality_networks_head_dropout_is_configurable_and_gives_mc_spread(kw):
    """`classifier_dropout` (a --set key typed by the config's pydantic model) puts dropout in the chirality
    networks' heads: the exported pt2 graph keeps it, MC dropout gives a spread > 0 and eval stays
    deterministic; at the default 0 the network has no dropout and MC dropout is refused, naming the key."""
    import torch

    from galmorph.evaluation.chirality import NoDropoutError, has_dropout, mc_dropout_predictive
    from galmorph.models.networks import build_network, export_plain, with_views
    from galmorph.training.config import ConfigError, TrainConfig, coerce_values

    assert coerce_values({"classifier_dropout": "0.3"}) == {"classifier_dropout": 0.3}
    with pytest.raises(ConfigError, match="classifier_dropout"):
        TrainConfig(task="chirality", flips=False, classifier_dropout=1.0).validate()
    x = torch.rand((3, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    for p in (0.3, 0.0):
        cfg = TrainConfig(task="chirality", flips=False, image_size=32, classifier_dropout=p, **kw).validate()
        torch.manual_seed(0)
        net, _ = build_network(cfg)
        plain = with_views(export_plain(net.eval()), cfg.tta_views)
        gm = torch.export.export(plain, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
        if p == 0:
            assert not has_dropout(gm)
            with pytest.raises(NoDropoutError, match="classifier_dropout"):
                mc_dropout_predictive(gm, x)
            continue
        assert has_dropout(gm)
        r = mc_dropout_predictive(gm, x, n_passes=8, seed=0)
        assert r["spread"] > 1e-6 and r["mean"].shape == (3, 3)
        with torch.no_grad():
            assert torch.equal(gm(x), gm(x))
