"""Accelerated inference paths (galmorph.scoring.accel): the agreement check, each path against fp32, the
choice recorded by scoring, JPEG draft decoding."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from galmorph.scoring.accel import (
    Agreement,
    InferencePath,
    PathChoice,
    build_path,
    choose_path,
    compare,
)
from test_scoring_helpers import TinyNet


def exported(module, size=32):
    """The module as MLflow's pt2 flavour loads it back (a torch.export GraphModule, dynamic batch)."""
    ep = torch.export.export(module.eval(), (torch.rand(2, 3, size, size),),
                             dynamic_shapes=({0: torch.export.Dim("b", min=1, max=4096)},))
    return ep.module()


# ------------------------------------------------------------------------------------------------
# the agreement rule
# ------------------------------------------------------------------------------------------------
def test_compare_applies_both_thresholds():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1000, 3))
    labels = ref.argmax(axis=1).copy()
    cand = ref.copy()
    # 4 of 1000 top classes changed: 99.6 % >= 99.5 % passes, accuracy change 0.4 pt passes
    flip = np.arange(4)
    cand[flip] = np.roll(ref[flip], 1, axis=1)
    r = compare(ref, cand, labels)
    assert r["top1_agreement"] == pytest.approx(0.996) and r["passed"], r
    assert r["accuracy_change"] == pytest.approx(-0.004)
    # 6 of 1000: 99.4 % fails on agreement (and accuracy: -0.6 pt)
    flip = np.arange(6)
    cand[flip] = np.roll(ref[flip], 1, axis=1)
    r = compare(ref, cand, labels)
    assert not r["passed"] and "99.40%" in r["reason"] and "accuracy" in r["reason"]
    # full agreement on the labelled rows but only the unlabelled rows may differ: accuracy unchanged
    lab = labels.copy()
    lab[:6] = -1
    r = compare(ref, cand, lab, min_agreement=0.99)
    assert r["passed"] and r["accuracy_change"] == 0 and r["n_labelled"] == 994


def _fake_build(bad: set[str], speed: dict[str, float]):
    """A build function whose paths in ``bad`` return a different top class; all others are exact."""

    def build(name, module, image_shape, device="cpu", calibration=None, workdir=None, threads=None):
        import time

        def run(x, _n=name):
            time.sleep(speed.get(_n, 0.0))
            z = module(x).float()
            return z.roll(1, dims=1) if _n in bad else z

        return InferencePath(name, run, device)

    return build


def _batches(n=64, size=16, labelled=True):
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(16, 3, size, size, generator=g) for _ in range(n // 16)]
    net = TinyNet(3, seed=3).eval()
    with torch.no_grad():
        ys = [net(x).argmax(1).numpy() if labelled else -np.ones(len(x), int) for x in xs]

    def batches(decode):
        return list(zip(xs, ys))

    return net, batches


def test_a_disagreeing_path_is_refused_and_fp32_used():
    net, batches = _batches()
    path, choice = choose_path(net, (3, 16, 16), batches, requested="onnx", build=_fake_build({"onnx"}, {}))
    assert choice.chosen == "fp32" and path.name == "fp32"
    assert choice.refused == ["onnx"]
    onnx = next(a for a in choice.candidates if a.path == "onnx")
    assert not onnx.passed and onnx.top1_agreement < 0.995 and "agrees with fp32" in onnx.reason
    # recorded for MLflow: requested vs used, and the failed agreement
    assert choice.mlflow_params()["precision"] == "fp32"
    assert choice.mlflow_params()["precision_requested"] == "onnx"
    assert choice.mlflow_metrics()["agreement_passed.onnx_full"] == 0.0
    # the record survives JSON (scoring.json) unchanged
    assert PathChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice


def test_auto_takes_the_fastest_agreeing_path():
    net, batches = _batches()
    # fp32 is slowed down, channels_last is exact and fast, bf16 is fast but wrong (sleeps far above the
    # scheduler's noise on a busy machine: 4 batches x 50 ms for onnx against ~1 ms for channels_last)
    build = _fake_build({"bf16"}, {"fp32": 0.1, "channels_last": 0.0, "bf16": 0.0, "onnx": 0.05, "int8": 0.05})
    path, choice = choose_path(net, (3, 16, 16), batches, requested="auto",
                               candidates=["channels_last", "bf16", "onnx"], build=build)
    assert choice.chosen == "channels_last" and path.name == "channels_last"
    assert "bf16" in choice.refused and "onnx" not in choice.refused
    assert {a.path for a in choice.candidates} == {"fp32", "channels_last", "bf16", "onnx"}


def test_fp32_needs_no_check():
    net, batches = _batches()
    calls = []
    path, choice = choose_path(net, (3, 16, 16), lambda d: calls.append(d) or batches(d), requested="fp32")
    assert choice.chosen == "fp32" and not choice.candidates and not calls


@pytest.mark.parametrize("name,atol", [("channels_last", 1e-4), ("bf16", 0.15), ("onnx", 1e-4), ("int8", 0.25)])
def test_each_path_predicts_like_fp32(name, atol):
    """Every real path on a small CNN, as loaded back from MLflow (GraphModule), vs eager fp32."""
    from galmorph.scoring.accel import PathUnavailable

    net = TinyNet(3, seed=2).eval()
    gm = exported(net)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(48, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = net(x)
    try:
        p = build_path(name, gm, (3, 32, 32), calibration=[x[:24].numpy()])
    except PathUnavailable as exc:
        if name == "bf16":
            pytest.skip(f"bf16 unavailable here: {exc}")
        raise
    with torch.inference_mode():
        z = p.run(x)
    assert z.dtype == torch.float32 and z.shape == ref.shape
    assert float((z - ref).abs().max()) <= atol
    pr, pz = torch.softmax(ref, 1), torch.softmax(z, 1)
    assert float((pr - pz).abs().max()) <= atol


# ------------------------------------------------------------------------------------------------
# scoring records the choice
# ------------------------------------------------------------------------------------------------
def _loaded(net, size=32):
    from galmorph.models.io import LoadedModel, ModelSpec

    spec = ModelSpec(task="chirality", classes=["CW", "ACW", "other"], arch="TinyNet", image_size=size)
    return LoadedModel(module=exported(net, size), spec=spec, uri="test:tiny", version="1")


def test_score_manifest_records_the_path_and_matches_fp32(sim_chirality, tmp_path):
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.scoring.batch import log_scoring_to_mlflow, merge_scores, score_manifest

    net = TinyNet(3, seed=4)
    lm = _loaded(net)
    man = sim_chirality["manifest"]
    agree = read_manifest(man)[["object_id", "image_uri", "label"]]
    ref = score_manifest(lm, man, tmp_path / "fp32", batch_size=8, shard_size=20, progress=False)
    assert ref.precision == "fp32"
    res = score_manifest(lm, man, tmp_path / "ch", batch_size=8, shard_size=20, progress=False,
                         precision="channels_last", agreement=agree)
    assert res.precision == "channels_last" and res.n_scored == ref.n_scored
    rec = json.loads((tmp_path / "ch" / "scoring.json").read_text())["inference"]
    assert rec["chosen"] == "channels_last" and rec["requested"] == "channels_last"
    ch = next(a for a in rec["candidates"] if a["path"] == "channels_last")
    assert ch["passed"] and ch["top1_agreement"] == 1.0 and ch["n_images"] == len(agree)
    a = merge_scores([tmp_path / "fp32"], tmp_path / "cat-fp32")
    b = merge_scores([tmp_path / "ch"], tmp_path / "cat-ch")
    ca, cb = pd.read_parquet(a.catalogue), pd.read_parquet(b.catalogue)
    assert (ca["pred"] == cb["pred"]).all()
    assert np.abs(ca["p_CW"].to_numpy() - cb["p_CW"].to_numpy()).max() < 1e-5
    # the catalogue carries the choice: summary and Parquet metadata
    assert b.summary_data["inference"]["chosen"] == "channels_last"
    meta = pq.read_schema(b.catalogue).metadata
    assert json.loads(meta[b"galmorph.inference"])["chosen"] == "channels_last"
    # and MLflow: params and agreement metrics of the scoring run
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    import os

    caller = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), os.environ.get("MLFLOW_TRACKING_URI"),
              os.environ.get("MLFLOW_REGISTRY_URI"))
    run_id = log_scoring_to_mlflow(b.summary_data, b.catalogue, tracking_uri=uri, log_catalogue=False)
    # an explicit tracking_uri is scoped to the call: later MLflow calls of the process are not redirected
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), os.environ.get("MLFLOW_TRACKING_URI"),
            os.environ.get("MLFLOW_REGISTRY_URI")) == caller
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.params["precision"] == "channels_last"
    assert run.data.params["precision_requested"] == "channels_last"
    assert run.data.metrics["agreement_top1.channels_last_full"] == 1.0
    # a resumed run reuses the recorded choice without checking again
    res2 = score_manifest(lm, man, tmp_path / "ch", batch_size=8, shard_size=20, progress=False,
                          precision="channels_last", agreement=agree.iloc[:0])
    assert res2.precision == "channels_last" and res2.n_scored == 0


def test_temperature_is_applied_in_scoring(sim_chirality, tmp_path):
    """Scoring gives the calibrated probabilities of LoadedModel.predict_proba (logits / temperature)."""
    import dataclasses

    from galmorph.scoring.inference import predict_manifest
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.scoring.batch import merge_scores, score_manifest

    lm = _loaded(TinyNet(3, seed=6))
    lm = dataclasses.replace(lm, spec=dataclasses.replace(lm.spec, temperature=2.5))
    score_manifest(lm, sim_chirality["manifest"], tmp_path / "s", batch_size=8, progress=False)
    cat = pd.read_parquet(merge_scores([tmp_path / "s"], tmp_path / "c").catalogue)
    ref = predict_manifest(lm, read_manifest(sim_chirality["manifest"]), batch_size=8)
    m = cat.merge(ref, on="object_id", suffixes=("", "_ref"))
    assert len(m) == len(ref)
    assert np.abs(m["p_CW"] - m["p_CW_ref"]).max() < 1e-5
    # p_pred and the high-confidence flag are those of the calibrated probabilities
    from galmorph.scoring.batch import DEFAULT_THRESHOLD

    cal = m[["p_CW_ref", "p_ACW_ref", "p_other_ref"]].to_numpy().max(axis=1)
    assert np.abs(m["p_pred"] - cal).max() < 1e-5
    assert (m["high_confidence"] == (m["p_pred"] >= DEFAULT_THRESHOLD)).all()
    raw = dataclasses.replace(lm, spec=dataclasses.replace(lm.spec, temperature=1.0))
    score_manifest(raw, sim_chirality["manifest"], tmp_path / "s1", batch_size=8, progress=False)
    cat1 = pd.read_parquet(merge_scores([tmp_path / "s1"], tmp_path / "c1").catalogue).set_index("object_id")
    assert (cat1.loc[m["object_id"], "p_pred"].to_numpy() > m["p_pred"].to_numpy() + 1e-4).all()  # T > 1 softens


# ------------------------------------------------------------------------------------------------
# JPEG draft decoding
# ------------------------------------------------------------------------------------------------
def test_draft_decode_is_reduced_scale_and_close(data_root):
    from galmorph.datasets.images import ManifestImageDataset, draft_side, load_image_draft
    from galmorph.imaging.io import load_image

    files = sorted((data_root / "gz1_chirality" / "images").iterdir())[:8]
    full = load_image(files[0])
    small = load_image_draft(files[0], draft_side(128))
    assert min(small.shape[:2]) >= 128 and small.shape[0] < full.shape[0]  # 423 -> 212
    # a target needing the full resolution is decoded in full
    assert load_image_draft(files[0], 300).shape == full.shape
    frame = pd.DataFrame({"object_id": [f.stem for f in files], "image_uri": [str(f) for f in files]})
    a = ManifestImageDataset(frame, 128, decode="full")
    b = ManifestImageDataset(frame, 128, decode="draft")
    for i in range(len(files)):
        xa, xb = a[i][0], b[i][0]
        assert xa.shape == xb.shape == (3, 128, 128)
        assert float((xa - xb).abs().mean()) < 0.01  # same picture, slightly different resampling


def test_choice_with_decode_auto_checks_the_draft(data_root, tmp_path):
    """decode=auto compares fp32 on the draft decode with fp32 on the full decode (real GZ1 JPEGs)."""
    from galmorph.scoring.accel import agreement_batches

    files = sorted((data_root / "gz1_chirality" / "images").iterdir())[:32]
    frame = pd.DataFrame({"object_id": [f.stem for f in files], "image_uri": [str(f) for f in files],
                          "label": None})
    net = TinyNet(3, seed=1).eval()
    batches = agreement_batches(frame, 64, 3, 1.0, ["CW", "ACW", "other"], batch_size=16)
    path, choice = choose_path(net, (3, 64, 64), batches, requested="fp32", decode="auto")
    draft = next(a for a in choice.candidates if a.decode == "draft")
    assert draft.n_images == 32
    assert choice.decode == ("draft" if draft.passed else "full")
    assert isinstance(draft, Agreement)


def test_device_jpeg_decode_matches_the_cpu_preparation(sim_chirality):
    """The GPU-node path (torchvision decode_jpeg + on-device preparation), run with device='cpu'."""
    from galmorph.datasets.images import prepare_jpeg_batch
    from galmorph.imaging.io import load_image
    from galmorph.imaging.preprocess import prepare_image
    from galmorph.catalogue.manifest import read_manifest

    uris = read_manifest(sim_chirality["manifest"])["image_uri"].astype(str).tolist()[:6]
    for chans, crop in ((3, 1.0), (1, 0.75)):
        x = prepare_jpeg_batch([open(u, "rb").read() for u in uris], 32, chans, crop, device="cpu")
        ref = torch.stack([torch.from_numpy(prepare_image(load_image(u), 32, chans, crop)) for u in uris])
        assert x.shape == ref.shape == (6, chans, 32, 32) and x.dtype == torch.float32
        assert float((x - ref).abs().max()) < 2 / 255  # same decoder family, same preparation
    assert prepare_jpeg_batch([], 32).shape == (0, 3, 32, 32)
