"""The winding measurement in the platform: the ensemble rule (mirror invariance, where it applies), the
agreement statistic of the promotion check, the ensemble applied to a scored table of simulated spirals,
``galmorph score --winding-ensemble`` (recorded in the catalogue), the labelling overlay, and framing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.scoring.ensemble import (
    EnsembleError,
    WindingEnsemble,
    apply_winding_ensemble,
    combine_winding,
    ensemble_settings,
    fit_winding_weight,
    winding_agreement,
)

CLASSES = ["CW", "ACW", "other"]
SWAP = [1, 0, 2]  # CW <-> ACW


def _random_probs(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    return p


def test_combination_is_mirror_invariant_and_only_where_it_applies():
    p = _random_probs(400, seed=1)
    z = np.random.default_rng(2).normal(0, 4, size=400)
    z[::17] = np.nan
    comb, applied = combine_winding(p, z, CLASSES, weight=0.7, min_confidence=2.0, max_p_other=0.5)
    # mirror: the network swaps p_CW/p_ACW, the measurement flips its sign -> the combined output swaps
    comb_m, applied_m = combine_winding(p[:, SWAP], -z, CLASSES, weight=0.7, min_confidence=2.0, max_p_other=0.5)
    np.testing.assert_allclose(comb_m, comb[:, SWAP], atol=1e-12)
    assert (applied == applied_m).all()
    # applied exactly where the network calls a spiral and the measurement is confident
    expect = np.isfinite(z) & (np.abs(np.nan_to_num(z)) >= 2.0) & (p[:, 2] < 0.5)
    assert (applied == expect).all() and 0 < applied.sum() < len(p)
    np.testing.assert_array_equal(comb[~applied], p[~applied])
    # p_other and the spiral mass are kept; the CW share moves the way z points
    np.testing.assert_allclose(comb[:, 2], p[:, 2])
    np.testing.assert_allclose(comb[:, 0] + comb[:, 1], p[:, 0] + p[:, 1])
    share, share0 = comb[applied, 0] / (comb[applied, 0] + comb[applied, 1]), p[applied, 0] / (p[applied, 0] + p[applied, 1])
    assert (np.sign(share - share0) == np.sign(z[applied])).all()
    # weight 0 is the network alone; a non-chirality model is refused
    np.testing.assert_allclose(combine_winding(p, z, CLASSES, weight=0.0)[0], p, atol=1e-12)
    with pytest.raises(EnsembleError, match="chirality model"):
        combine_winding(p[:, :2], z, ["symmetric", "lopsided"])
    with pytest.raises(EnsembleError, match="weight"):
        WindingEnsemble(weight=-1)


def test_agreement_counts_only_confident_spiral_predictions():
    pred = ["CW", "CW", "ACW", "ACW", "other", "CW", None]
    z = np.array([3.0, -5.0, -2.5, 1.0, 9.0, np.nan, 4.0])
    a = winding_agreement(pred, z, min_confidence=2.0)
    # compared: rows 0 (agree), 1 (disagree), 2 (agree); row 3 not confident, 4 'other', 5 unmeasured, 6 no pred
    assert a["n_compared"] == 3 and a["n_disagree"] == 1 and a["n_confident"] == 5
    assert a["disagreement"] == pytest.approx(1 / 3)
    mirrored = winding_agreement(["ACW" if p == "CW" else "CW" if p == "ACW" else p for p in pred], z)
    assert mirrored["disagreement"] == pytest.approx(2 / 3)
    assert np.isnan(winding_agreement(["other"] * 3, np.array([5.0, 5.0, 5.0]))["disagreement"])


def test_weight_fit_prefers_the_measurement_when_the_network_is_noisy():
    rng = np.random.default_rng(5)
    n = 300
    labels = np.where(rng.random(n) < 0.5, "CW", "ACW")
    sign = np.where(labels == "CW", 1.0, -1.0)
    z = sign * rng.uniform(2, 8, n) * np.where(rng.random(n) < 0.95, 1, -1)  # 95 % right
    net_right = rng.random(n) < 0.7
    pcw = np.where((labels == "CW") == net_right, 0.6, 0.3)
    p = np.stack([pcw, 0.9 - pcw, np.full(n, 0.1)], axis=1)
    w, table = fit_winding_weight(p, z, labels, CLASSES)
    assert w > 0
    acc = table.set_index("weight")["accuracy"]
    assert acc[w] > acc[0.0] + 0.1


def _mirrored_copy(man: pd.DataFrame, out_dir) -> pd.DataFrame:
    from galmorph.imaging.io import load_image, save_raster

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in man.itertuples():
        img = load_image(r.image_uri)
        p = out_dir / f"{r.object_id}.png"
        save_raster(np.ascontiguousarray(np.fliplr(img)), p)
        rows.append({"object_id": r.object_id, "image_uri": str(p)})
    return pd.DataFrame(rows)


def test_ensemble_on_simulated_spirals_follows_the_mirror(sim_chirality, tmp_path):
    """An undecided network (p = 0.35 / 0.35 / 0.30) takes the measured sense where it is confident; the
    mirrored images give the CW/ACW-swapped combined output."""
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_chirality["manifest"])
    man = man[man["label"].isin(["CW", "ACW"])].reset_index(drop=True)
    n = len(man)
    scores = pd.DataFrame({"object_id": man["object_id"].astype(str), "p_CW": np.full(n, 0.35, np.float32),
                           "p_ACW": np.full(n, 0.35, np.float32), "p_other": np.full(n, 0.30, np.float32)})
    scores["pred"], scores["p_pred"], scores["high_confidence"] = "CW", np.float32(0.35), False
    ens = WindingEnsemble(weight=1.0, min_confidence=2.0)
    out = apply_winding_ensemble(scores, man, CLASSES, ens, threshold=0.6)
    applied = out["winding_ensemble"].to_numpy()
    assert applied.sum() >= n // 2
    assert (out.loc[applied, "pred"] == man.loc[applied, "label"]).all()  # the measured sense is the truth here
    assert (out.loc[applied, "p_pred"] >= 0.6).all() and out.loc[applied, "high_confidence"].all()
    assert (out.loc[~applied, "p_CW"] == 0.35).all() and (out["p_CW_network"] == 0.35).all()
    assert out.attrs["galmorph.winding_ensemble"]["weight"] == 1.0
    mirrored = apply_winding_ensemble(scores, _mirrored_copy(man, tmp_path / "mirror"), CLASSES, ens, threshold=0.6)
    both = applied & mirrored["winding_ensemble"].to_numpy()
    assert both.sum() >= n // 2
    assert (np.sign(mirrored["winding_z"][both]) == -np.sign(out["winding_z"][both])).all()
    swapped = out.loc[both, "pred"].map({"CW": "ACW", "ACW": "CW"})
    assert (mirrored.loc[both, "pred"] == swapped).all()
    with pytest.raises(EnsembleError, match="scored rows"):
        apply_winding_ensemble(scores.iloc[:3], man, CLASSES, ens, threshold=0.6)


def test_score_with_winding_ensemble_records_it_in_the_catalogue(mlflow_server, sim_chirality, tmp_path):
    """``galmorph score --winding-ensemble`` combines and records the rule; a resume with other settings is
    refused."""
    from click.testing import CliRunner
    from test_eval_support import ChiralityCE, log_test_model

    from galmorph.cli.base import main

    info = log_test_model(ChiralityCE(seed=2), "chirality", CLASSES, 32, chirality_equivariant=True, arch="ce",
                          registered_name="galmorph-wtest-score")
    out = tmp_path / "scored"
    args = ["score", "--model", f"models:/galmorph-wtest-score/{info.registered_model_version}", "--manifest", str(sim_chirality["manifest"]), "--out", str(out),
            "--no-progress", "--no-log-mlflow", "--num-workers", "0", "--json"]
    r = CliRunner().invoke(main, args + ["--winding-ensemble", "--winding-weight", "0.8"])
    assert r.exit_code == 0, r.output
    cat = pd.read_parquet(out / "catalogue.parquet")
    rec = ensemble_settings(out / "catalogue.parquet")
    assert rec is not None and rec["weight"] == 0.8 and "product of experts" in rec["rule"]
    assert {"p_CW_network", "winding_z", "winding_ensemble"} <= set(cat.columns)
    assert len(cat) == 48 and cat["winding_ensemble"].any()
    np.testing.assert_allclose(cat[["p_CW", "p_ACW", "p_other"]].sum(axis=1), 1.0, atol=1e-5)
    assert json.loads((out / "scoring.json").read_text())["winding_ensemble"]["weight"] == 0.8
    r2 = CliRunner().invoke(main, args + ["--winding-ensemble", "--winding-weight", "0.3"])
    assert r2.exit_code != 0 and "winding_ensemble" in r2.output


def test_framing_full_frame_for_a_cropping_model_and_no_double_crop():
    from galmorph.catalogue.cutout import CutoutError, check_framing, model_framing

    assert model_framing(128, 0.40) == (320, 1.0)  # the model's crop of a 320 px frame holds 128 px
    assert model_framing(64, 1.0) == (64, 1.0)
    check_framing(1.0, 0.4)
    check_framing(0.4, 1.0)
    with pytest.raises(CutoutError, match="cropped twice"):
        check_framing(0.4, 0.4, "cutouts for model m")


def test_small_extent_is_measured_and_warned(tmp_path):
    """A compact and an extended simulated galaxy: 2 R90 follows the truth, and in a 32 px model input
    of the full frame the compact one falls under 40 px (counted, flagged, in the manifest metadata)."""
    from galmorph.catalogue.cutout import CutoutConfig, galaxy_extent_px, make_cutouts
    from galmorph.imaging.io import save_raster
    from galmorph.catalogue.manifest import manifest_metadata, read_manifest
    from galmorph.simulate import GalaxyParams, half_light_radii, render_galaxy

    rows, truth = [], []
    for i, disc in enumerate((4.0, 22.0)):
        p = GalaxyParams(size=160, n_arms=2, winding="Z", disc_scale=disc, flux=3e5, colour=False)
        img = render_galaxy(p, i)["r"]
        img = (img - img.min()) / (img.max() - img.min())
        path = tmp_path / f"g{i}.png"
        save_raster(img.astype(np.float32), path)
        truth.append(2 * half_light_radii(p)[1])
        rows.append({"object_id": f"g{i}", "image_uri": str(path), "survey": "sim", "ra": 1.0, "dec": 1.0,
                     "z": 0.05})
    ext = [galaxy_extent_px(render_galaxy(GalaxyParams(size=160, n_arms=2, winding="Z", disc_scale=d, flux=3e5,
                                                       colour=False), i)["r"]) for i, d in enumerate((4.0, 22.0))]
    assert ext[1] > 2.5 * ext[0]
    for e, t in zip(ext, truth):
        assert 0.6 * t < e < 1.6 * t, (ext, truth)
    res = make_cutouts(pd.DataFrame(rows), tmp_path / "cut",
                       CutoutConfig(size_px=160, model_image_size=64, model_crop_fraction=1.0), progress=False)
    man = read_manifest(res.manifest_path)
    assert res.n_small_extent == 1 and list(man["small_extent"]) == [True, False]
    assert manifest_metadata(res.manifest_path)["n_small_extent"] == 1
    # a tighter crop at the same input size resolves the compact one better (4x the pixels across)
    res2 = make_cutouts(pd.DataFrame(rows), tmp_path / "cut2",
                        CutoutConfig(size_px=160, model_image_size=64, model_crop_fraction=0.25), progress=False)
    m2 = read_manifest(res2.manifest_path)
    assert m2["extent_model_px"].iloc[0] == pytest.approx(4 * man["extent_model_px"].iloc[0], rel=1e-6)


def test_labelling_overlay_for_chirality_queues(tmp_path, sim_chirality):
    """A chirality queue's objects carry the measured winding (sense, confidence, centre, annulus, image
    size): measured on demand, or the queue's own columns when the labelling pipeline measured them."""
    from fastapi.testclient import TestClient

    from galmorph.catalogue.winding import measure_winding_manifest
    from galmorph.labelling.app import create_app
    from galmorph.labelling.queue import sample_queue
    from galmorph.labelling.store import LabelStore
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(sim_chirality["manifest"])
    truth = dict(zip(man["object_id"].astype(str), man["label"].astype(str)))
    man["label"] = None
    q, _ = sample_queue(man, per_bin=6, seed=0, task="chirality")
    q = q.reset_index(drop=True)

    def objects(queue, db):
        app = create_app(queue, LabelStore(f"sqlite:///{tmp_path / db}"), "alice", task="chirality",
                         image_roots=[sim_chirality["dir"]], measure_missing_a1=False)
        client = TestClient(app, base_url="http://127.0.0.1", headers={"X-Requested-With": "galmorph"})
        page = client.get("/")
        assert page.status_code == 200 and "w-arrow" in page.text and "winding-line" in page.text
        return {oid: client.get(f"/api/object/{oid}").json()["winding"] for oid in queue["object_id"].astype(str)}

    live = objects(q, "a.db")
    decided = {oid: w for oid, w in live.items() if w["winding"]}
    assert len(decided) >= 3 and all(w["winding"] == truth[oid] for oid, w in decided.items())
    for w in live.values():
        assert w["source"] == "measured" and w["width"] == 64 and 0 < w["r_inner"] < w["r_outer"]
    measured, _ = measure_winding_manifest(q)
    stored = objects(measured, "b.db")
    for oid, w in stored.items():
        assert w["source"] == "queue" and w["winding"] == live[oid]["winding"]
        assert w["winding_confidence"] == pytest.approx(live[oid]["winding_confidence"])


@pytest.mark.slow
def test_labelling_pipeline_measures_winding_for_chirality_queues(tmp_path, monkeypatch):
    """sample -> winding (not A1) -> queue: the chirality queue in the label database carries the winding
    columns (kfp's local runner, dsl.If/Else + dsl.OneOf)."""
    from galmorph.labelling.store import LabelStore
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.ops.run import run_local
    from galmorph.settings import get_settings
    from galmorph.simulate import simulate_dataset

    monkeypatch.setenv("GALMORPH_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    sim = simulate_dataset(tmp_path / "sim", 16, seed=3, size=64, progress=False)  # no task: unlabelled
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    res = run_local("labelling", {"source": f"sim:{sim['dir']}", "task": "chirality", "per_bin": "3",
                                  "label_db_url": db}, pipeline_root=tmp_path / "kfp")
    run = Path(res["run_dir"])
    assert not (run / "a1").exists()
    queue = read_manifest(run / "winding" / "measured")
    assert 0 < len(queue) <= 12 and queue["winding_score"].notna().all()
    assert set(LabelStore(db).objects()["object_id"].astype(str)) == set(queue["object_id"].astype(str))
    get_settings.cache_clear()
