"""Calibration: reliability/ECE against a direct count, temperature scaling on a deliberately over-confident
toy model (ECE drops, arg-max unchanged), and the temperature applied by LoadedModel."""

import numpy as np
import pytest
import torch

from galmorph.evaluation.calibration import (apply_temperature, calibration_report, expected_calibration_error,
                                             fit_temperature, nll, reliability_diagram, temperature_from_loader)


def _overconfident(n, k=3, seed=0, sharpen=4.0):
    """Labels drawn from softmax(z) (a perfectly calibrated source) and logits sharpened x ``sharpen``:
    an over-confident model whose right temperature is ``sharpen``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return sharpen * z, y


def test_reliability_diagram_counts_and_ece():
    proba = np.array([[0.95, 0.05], [0.9, 0.1], [0.3, 0.7], [0.45, 0.55], [0.5, 0.5]])
    y = np.array([0, 1, 1, 0, 0])
    r = reliability_diagram(proba, y, n_bins=5)  # bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    assert r["count"] == [0, 0, 2, 1, 2] and r["n"] == 5
    # bin (.4,.6]: confidences .55 and .5, correct: pred 1 vs y 0 (wrong), pred 0 vs y 0 (right)
    assert r["confidence"][2] == pytest.approx(0.525) and r["accuracy"][2] == pytest.approx(0.5)
    assert r["accuracy"][4] == pytest.approx(0.5) and r["confidence"][4] == pytest.approx(0.925)
    ece = (2 * abs(0.5 - 0.525) + 1 * abs(1.0 - 0.7) + 2 * abs(0.5 - 0.925)) / 5
    assert r["ece"] == pytest.approx(ece) and expected_calibration_error(proba, y, 5) == pytest.approx(ece)
    with pytest.raises(ValueError, match="label indices"):
        reliability_diagram(proba, np.array([0, 1, 2, 0, 0]))


def test_temperature_scaling_fixes_an_overconfident_model():
    zval, yval = _overconfident(3000, seed=1)
    ztest, ytest = _overconfident(3000, seed=2)
    t = fit_temperature(zval, yval)
    assert t == pytest.approx(4.0, rel=0.15)  # recovers the sharpening
    assert nll(zval, yval, t) < nll(zval, yval, 1.0)
    before = expected_calibration_error(apply_temperature(ztest, 1.0), ytest)
    after = expected_calibration_error(apply_temperature(ztest, t), ytest)
    assert before > 0.1 and after < 0.03 and after < before / 4
    np.testing.assert_array_equal(apply_temperature(ztest, t).argmax(1), ztest.argmax(1))
    # a calibrated model keeps T ~ 1
    assert fit_temperature(*_overconfident(3000, seed=3, sharpen=1.0)) == pytest.approx(1.0, rel=0.15)
    # per redshift bin
    z = np.where(np.arange(3000) % 2, 0.02, 0.06)
    rep = calibration_report(ytest, apply_temperature(ztest, t), ["a", "b", "c"], z, temperature=t)
    assert set(rep["redshift_bins"]) == {"0.01-0.03", "0.05-0.07"}
    assert all(v["ece"] < 0.05 and v["n"] == 1500 for v in rep["redshift_bins"].values())
    # each redshift bin has its own reliability diagram: that of its objects alone
    sel = z == 0.02
    own = reliability_diagram(apply_temperature(ztest, t)[sel], ytest[sel])
    assert rep["redshift_bins"]["0.01-0.03"]["count"] == own["count"]
    assert rep["redshift_bins"]["0.01-0.03"]["ece"] == pytest.approx(own["ece"])
    assert rep["temperature"] == t


def test_loaded_model_applies_the_spec_temperature():
    from galmorph.models.io import LoadedModel, ModelSpec

    zval, yval = _overconfident(600, seed=4)
    net = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3))
    loader = [(torch.tensor(zval[i:i + 100], dtype=torch.float32), torch.tensor(yval[i:i + 100]))
              for i in range(0, 600, 100)]
    t = temperature_from_loader(net, loader)
    assert t == pytest.approx(fit_temperature(zval, yval), rel=1e-3)
    spec = ModelSpec(task="t", classes=["a", "b", "c"], arch="lin", image_size=1, temperature=t)
    assert ModelSpec.from_dict(spec.to_dict()).temperature == t
    lm = LoadedModel(module=net, spec=spec, uri="mem")
    x = torch.tensor(zval[:50], dtype=torch.float32)
    np.testing.assert_allclose(lm.predict_proba(x), apply_temperature(zval[:50], t), atol=1e-5)
    plain = LoadedModel(module=net, spec=ModelSpec(task="t", classes=["a", "b", "c"], arch="lin", image_size=1),
                        uri="mem")
    assert plain.predict_proba(x).max(1).mean() > lm.predict_proba(x).max(1).mean()  # T > 1 softens
