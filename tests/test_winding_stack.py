"""#26.5: the winding stacker -- a small logistic model on the network's as-trained probabilities and the winding
measurement, fitted on a training run's validation split, recorded in the model and applied by scoring (and
evaluation) by default, before the class prior."""

import json

import numpy as np
import pandas as pd
import pytest

from galmorph.scoring.ensemble import (
    EnsembleError,
    WindingEnsemble,
    WindingStack,
    _unshift,
    apply_winding_stack,
    applied_ensemble_label,
    ensemble_for,
    fit_winding_stack,
)

CLASSES = ["CW", "ACW", "other"]
SWAP = [1, 0, 2]


def _validation_like(n: int, seed: int):
    """Probabilities as trained and winding z of a network that knows spirals from "other" only weakly and the
    sense fairly well, while |z| is large on spirals only and its sign is the sense: a stacker should learn to
    use |z| for spiral-vs-other and z for the sense."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(CLASSES, size=n, p=[0.25, 0.25, 0.5])
    spiral = labels != "other"
    sense = np.where(labels == "CW", 1.0, np.where(labels == "ACW", -1.0, 0.0))
    z = np.where(spiral, sense * rng.gamma(4.0, 1.0, n), rng.normal(0, 1.0, n))
    z[rng.random(n) < 0.1] = np.nan  # some not measured
    s = 0.6 * np.where(spiral, 1.0, -1.0) + rng.normal(0, 1.5, n)  # weak network spiral logit
    d = 1.5 * sense + rng.normal(0, 1.5, n)
    ps = 1 / (1 + np.exp(-s))
    fcw = 1 / (1 + np.exp(-d))
    p = np.column_stack([ps * fcw, ps * (1 - fcw), 1 - ps])
    return p, z, labels


def _nll(p, labels):
    idx = np.array([CLASSES.index(x) for x in labels])
    return float(-np.log(np.maximum(p[np.arange(len(p)), idx], 1e-12)).mean())


def test_stacker_fitted_on_validation_beats_the_network_on_new_galaxies():
    p, z, y = _validation_like(150, seed=1)
    stack = fit_winding_stack(p, z, y, CLASSES, trained_prior={"CW": 0.25, "ACW": 0.25, "other": 0.5})
    a0, a_s, a_absz, a_agree = stack.a
    b_d, b_z = stack.b
    assert a_absz > 0 and b_z > 0 and b_d > 0 and a_s > 0  # |z| says spiral, z says the sense
    assert stack.n_fit == {c: int((y == c).sum()) for c in CLASSES}
    pt, zt, yt = _validation_like(3000, seed=2)
    q, applied = apply_winding_stack(pt, zt, CLASSES, stack)
    assert applied.all()
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)
    acc = lambda probs: float((np.asarray(CLASSES)[probs.argmax(axis=1)] == yt).mean())  # noqa: E731
    assert _nll(q, yt) < _nll(pt, yt) - 0.1
    assert acc(q) > acc(pt) + 0.05


def test_stacked_output_swaps_cw_and_acw_under_a_mirror():
    p, z, y = _validation_like(200, seed=3)
    stack = fit_winding_stack(p, z, y, CLASSES)
    q, _ = apply_winding_stack(p, z, CLASSES, stack)
    qm, _ = apply_winding_stack(p[:, SWAP], -z, CLASSES, stack)
    np.testing.assert_allclose(qm, q[:, SWAP], atol=1e-12)
    # a prior with the same CW and ACW fractions keeps the symmetry
    shift = np.log(np.array([0.06, 0.06, 0.88]) / np.array([1 / 3, 1 / 3, 1 / 3]))
    ps = _unshift(p, shift)
    np.testing.assert_allclose(apply_winding_stack(ps[:, SWAP], -z, CLASSES, stack, shift)[0],
                               apply_winding_stack(ps, z, CLASSES, stack, shift)[0][:, SWAP], atol=1e-12)


def test_the_class_prior_is_applied_after_the_stacker():
    """Scores that already carry a class prior: the stacker takes it off, stacks, and puts it back -- the same as
    stacking the as-trained probabilities and then moving them to the prior."""
    p, z, y = _validation_like(120, seed=4)
    stack = fit_winding_stack(p, z, y, CLASSES)
    shift = np.log(np.array([0.05, 0.07, 0.88]) / np.array([1 / 3, 1 / 3, 1 / 3]))
    with_prior, _ = apply_winding_stack(_unshift(p, shift), z, CLASSES, stack, shift)
    stacked, _ = apply_winding_stack(p, z, CLASSES, stack)
    np.testing.assert_allclose(with_prior, _unshift(stacked, shift), atol=1e-9)
    assert not np.allclose(with_prior, stacked, atol=1e-3)  # the prior did move them


def test_stacker_weights_classes_to_the_trained_prior():
    """The same rows fitted at a prior with more "other" predict "other" more often: the stacked output is at the
    prior the network was trained at, so the class prior is applied to it as to the network."""
    p, z, y = _validation_like(300, seed=5)
    flat = apply_winding_stack(p, z, CLASSES, fit_winding_stack(p, z, y, CLASSES))[0]
    heavy = apply_winding_stack(p, z, CLASSES, fit_winding_stack(p, z, y, CLASSES, {"CW": 1, "ACW": 1, "other": 8}))[0]
    assert heavy[:, 2].mean() > flat[:, 2].mean() + 0.1


def test_too_few_validation_galaxies_is_a_clear_error():
    p, z, y = _validation_like(40, seed=6)
    y[:] = "other"
    y[:3] = "CW"
    y[3:30] = "ACW"
    with pytest.raises(EnsembleError, match="too few validation galaxies.*'CW': 3"):
        fit_winding_stack(p, z, y, CLASSES)
    with pytest.raises(EnsembleError, match="not a stacker record"):
        WindingEnsemble(stack={"a": [1, 2]})


class _Spec:
    classes = CLASSES

    def __init__(self, ensemble):
        self.extra = {"ensemble": ensemble}


def test_the_model_recorded_stack_is_the_default_and_a_weight_asks_for_the_fixed_rule():
    stack = WindingStack(a=(0.1, 1.0, 0.5, 0.1), b=(1.0, 0.8), n_fit={"CW": 20, "ACW": 22, "other": 60}).to_dict()
    spec = _Spec({"winding_ensemble": True, "weight": 3.0, "min_confidence": 0.0, "stack": stack,
                  "source": "validation"})
    ens = ensemble_for(spec)
    assert ens.stack == stack and ens.source == "model:validation"
    assert applied_ensemble_label(ens) == "winding-stack(fitted_on=validation,n=102,source=model:validation)"
    assert ens.to_dict()["rule"].startswith("stacked")
    fixed = ensemble_for(spec, None, weight=3.0)
    assert fixed.stack is None and applied_ensemble_label(fixed) == "winding(weight=3,min_confidence=0,source=flag)"
    assert ensemble_for(spec, False) is None
    assert ensemble_for(spec, True).stack == stack  # --winding-ensemble keeps the model's stacker
    # the fixed rule leaves p_other alone; the stacker moves it
    p = np.array([[0.3, 0.2, 0.5], [0.1, 0.1, 0.8]])
    z = np.array([4.0, 0.0])
    assert np.allclose(fixed.combine(p, z, CLASSES)[0][:, 2], p[:, 2])
    assert not np.allclose(ens.combine(p, z, CLASSES)[0][:, 2], p[:, 2])


def test_training_with_winding_stack_records_it_and_score_applies_it(mlflow_server, tmp_path):
    """A tiny chirality model trained with ``winding_stack`` on simulated galaxies (known sense) records a stacker
    fitted on its validation split; ``galmorph score`` applies it by default and says so, and ``--winding-weight``
    asks for the fixed rule instead."""
    from click.testing import CliRunner

    from galmorph.cli import main
    from galmorph.simulate import simulate_dataset
    from galmorph.training import train

    sim = simulate_dataset(tmp_path / "sim", 96, seed=11, task="chirality", size=64, progress=False)
    res = train("chirality", "tiny", {"progress": False, "max_epochs": 1, "trials": 1, "val_fraction": 0.5,
                                      "test_fraction": 0.0, "winding_stack": True, "class_weights": "balanced"},
                manifest=sim["manifest"], tracking_uri=mlflow_server, register=True, out_dir=tmp_path / "train")
    rec = res.spec.extra["ensemble"]
    assert rec["source"] == "validation" and rec["winding_ensemble"] is True, rec
    assert sum(rec["stack"]["n_fit"].values()) == 48
    assert rec["stack"]["b"][1] > 0  # the simulated arms wind the labelled way: z carries the sense
    model = f"models:/{res.registered_name}/{res.registered_version}"
    runner = CliRunner()
    outs = {}
    for name, flags in (("default", []), ("fixed", ["--winding-weight", "3"])):
        r = runner.invoke(main, ["score", "--model", model, "--manifest", str(sim["manifest"]), "--out",
                                 str(tmp_path / name), "--no-progress", "--json", *flags], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        outs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    d = outs["default"]
    assert d["applied_ensemble"]["rule"] == "stack" and d["applied_ensemble"]["stack"] == rec["stack"]
    assert d["applied_ensemble_label"].startswith("winding-stack(fitted_on=validation,n=48,")
    assert outs["fixed"]["applied_ensemble_label"].startswith("winding(weight=3,")
    cd = pd.read_parquet(tmp_path / "default" / "catalogue.parquet")
    cf = pd.read_parquet(tmp_path / "fixed" / "catalogue.parquet")
    assert not np.allclose(cd["p_other"], cf["p_other"])
