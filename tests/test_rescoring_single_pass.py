"""The rescoring pipeline's single pass (#31): validate runs its table checks only, the cutout step passes the
raster rows through undecoded (PNGs only when asked for), and the score step decodes every image once, runs the
validation's per-image checks on those pixels (quarantining failures with their reason) and frames it from the
model's ModelSpec. The steps are called as the pipeline calls them (component ``python_func``s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp.dsl import Artifact, Dataset, Metrics

from test_scoring_helpers import TinyNet, add_broken_images, count_decodes

CLASSES = ["CW", "ACW", "other"]


@pytest.fixture(scope="module")
def cropping_model(mlflow_server, sim_chirality):
    """A registered TinyNet whose ModelSpec crops half the frame and resizes to 24 px; its verified inference path
    checked and recorded on the version, as its promotion would (the pipeline's score step, precision ``verified``
    by default, then decodes nothing but the release)."""
    import mlflow

    from galmorph.catalogue.manifest import read_manifest
    from galmorph.models.io import ModelSpec, load_for_inference, log_model
    from galmorph.scoring.accel import verified_path

    spec = ModelSpec(task="chirality", classes=CLASSES, arch="TinyNet", image_size=24, crop_fraction=0.5)
    mlflow.set_experiment("test-single-pass-models")
    with mlflow.start_run():
        info = log_model(TinyNet(3, seed=5).eval(), spec, registered_model_name="galmorph-test-single-pass")
    uri = f"models:/galmorph-test-single-pass/{info.registered_model_version}"
    verified_path(load_for_inference(uri), agreement=read_manifest(sim_chirality["manifest"])[["object_id", "image_uri"]])
    return uri


@pytest.fixture(scope="module")
def release(sim_chirality, tmp_path_factory):
    """The simulated release + a zero-byte and a truncated JPEG, a blank image (decodes, fails the blank
    check), a tiny image, a repeated object id and a row outside the redshift selection (a table check)."""
    from galmorph.catalogue.manifest import read_manifest, write_manifest
    from galmorph.imaging.io import save_raster

    tmp_path = tmp_path_factory.mktemp("single-pass-release")
    man, _ = add_broken_images(sim_chirality["manifest"], tmp_path / "m1.parquet", tmp_path)
    df = read_manifest(man)
    save_raster(np.full((64, 64), 0.3), tmp_path / "blank.png")
    save_raster(np.random.default_rng(0).random((10, 10)), tmp_path / "tiny.png")
    extra = df.iloc[:4].copy()
    extra["object_id"] = ["blank-image", "tiny-image", "z-outside", str(df["object_id"].iloc[5])]
    extra["image_uri"] = [str(tmp_path / "blank.png"), str(tmp_path / "tiny.png"), df["image_uri"].iloc[3],
                          df["image_uri"].iloc[6]]
    extra["z"] = [0.05, 0.05, 0.9, 0.05]
    df = pd.concat([df, extra], ignore_index=True)
    keep = df["object_id"] != "z-outside"
    df.loc[keep, "z"] = df.loc[keep, "z"].fillna(0.05).clip(0.01, 0.2)
    return write_manifest(df, tmp_path / "release.parquet", kind="release")


def _ds(path, name="d") -> Dataset:
    return Dataset(name=name, uri=str(path), metadata={})


@pytest.fixture(scope="module")
def single_pass(release, cropping_model, mlflow_server, tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        return _single_pass(release, cropping_model, tmp_path_factory.mktemp("single-pass"), mp, mlflow_server)


def _single_pass(release, model_uri: str, tmp_path, monkeypatch, tracking_uri: str) -> dict:
    """validate (table checks) -> cutout (framing only) -> shard -> score x2 -> merge, as the pipeline runs
    them; counts the image decodes."""
    import galmorph.catalogue.validation as validation
    from galmorph_components.cutout.component import cutout
    from galmorph_components.merge.component import merge
    from galmorph_components.score.component import score
    from galmorph_components.shard.component import shard
    from galmorph_components.validate.component import validate

    calls = count_decodes(monkeypatch)
    monkeypatch.setattr(validation, "check_image", lambda *a, **k: pytest.fail("image decoded by validate"))
    passed, vq = _ds(tmp_path / "passed.parquet"), _ds(tmp_path / "vq.parquet")
    ok = validate.python_func(manifest=_ds(release), passed=passed, quarantine=vq,
                              report=Artifact(name="r", uri=str(tmp_path / "report.json"), metadata={}),
                              metrics=Metrics(name="m", uri=str(tmp_path / "m"), metadata={}), z_min=0.01, z_max=0.2,
                              max_failure_fraction=0.5, check_images=False)
    assert ok
    cut, cq = _ds(tmp_path / "cutouts"), _ds(tmp_path / "cq.parquet")
    c = cutout.python_func(manifest=passed, cutouts=cut, quarantine=cq, size_px=0, model_uri=model_uri,
                           tracking_uri=tracking_uri, write_images=False)
    work = shard.python_func(dataset=cut, model_uri=model_uri, shard_size=16, n_workers=2)
    outs, res = [], []
    for i, item in enumerate(work):
        out = _ds(tmp_path / f"scores{i}", f"s{i}")
        res.append(score.python_func(dataset=cut, work=item, scores=out, batch_size=8, num_workers=0, device="cpu",
                                     tracking_uri=tracking_uri, check_images=True))
        outs.append(out)
    cat = _ds(tmp_path / "catalogue")
    m = merge.python_func(scores=outs, catalogue=cat, metrics=Metrics(name="m2", uri=str(tmp_path / "m2"), metadata={}),
                          release="single-pass-test", tracking_uri=tracking_uri)
    return {"tmp": tmp_path, "cutout": c, "cutouts": tmp_path / "cutouts", "work": work, "scores": res, "outs": outs, "merge": m,
            "calls": calls, "validate_q": pd.read_parquet(tmp_path / "vq.parquet"),
            "catalogue": pd.read_parquet(tmp_path / "catalogue" / "catalogue.parquet"),
            "quarantine": pd.read_parquet(tmp_path / "catalogue" / "quarantine.parquet")}


def test_single_pass_conserves_rows_and_quarantines_with_reasons(release, single_pass):
    from galmorph.catalogue.validation import ValidationConfig, check_image

    r = single_pass
    n_in = len(pd.read_parquet(release))
    # no PNG written: the raster rows kept their own images
    assert not list((r["cutouts"] / "png").glob("*.png")) and r["cutout"].rows_quarantined == 0
    # every row that passed the table checks decoded exactly once: by scoring
    assert len(r["calls"]) == n_in - 2
    # rows conserved: catalogue + validate's quarantine + score's quarantine
    assert len(r["catalogue"]) + len(r["validate_q"]) + len(r["quarantine"]) == n_in
    assert r["merge"].n_scored == len(r["catalogue"]) and r["catalogue"]["object_id"].is_unique
    # each worker computed with its share of the machine (two work items side by side), and said so
    from galmorph.scoring.batch import cpus_per_worker

    assert len(r["work"]) == 2 and {o.metadata["cpus"] for o in r["outs"]} == {cpus_per_worker(2)}
    assert all(o.metadata["decoding_processes"] == 0 for o in r["outs"])  # num_workers=0 asked: none
    vq = dict(zip(r["validate_q"]["object_id"], r["validate_q"]["reason"]))  # the table checks
    assert set(vq) == {"z-outside", "sim-0-000005"} and "z=" in vq["z-outside"]
    reasons = dict(zip(r["quarantine"]["object_id"], r["quarantine"]["reason"]))
    assert set(reasons) == {"broken-zero", "broken-truncated", "blank-image", "tiny-image"}
    assert set(r["quarantine"]["stage"]) == {"score"}
    # the reasons are the validation's per-image checks' own
    df = pd.read_parquet(release).set_index("object_id", drop=False)
    cfg = ValidationConfig()
    for oid in ("blank-image", "tiny-image"):
        expected = check_image(Path(df.loc[oid, "image_uri"]), cfg)
        assert expected and expected in reasons[oid], (oid, expected, reasons[oid])
    assert all(reasons[o] for o in ("broken-zero", "broken-truncated"))


def test_single_pass_frames_from_the_model_spec(release, cropping_model, single_pass):
    """The probabilities are the model's on its own framing of the source image (crop 0.5, 24 px), run through
    the inference path recorded on the version (the one the score step used: fp32 or bf16, whichever the
    check found faster), and close to fp32 whichever it was."""
    import torch

    from galmorph.datasets.images import draft_side
    from galmorph.imaging.io import load_image
    from galmorph.imaging.preprocess import prepare_image
    from galmorph.models.io import load_for_inference
    from galmorph.scoring.accel import build_path, recorded_choice

    r = single_pass
    lm = load_for_inference(cropping_model)
    assert (lm.spec.image_size, lm.spec.crop_fraction) == (24, 0.5)
    recorded = recorded_choice(lm)
    assert recorded is not None
    uris = pd.read_parquet(release).drop_duplicates("object_id").set_index("object_id")["image_uri"]
    cat = r["catalogue"].head(12)
    side = draft_side(24, 0.5) if recorded["decode"] == "draft" else None  # the score step's decode
    x = torch.from_numpy(np.stack([prepare_image(load_image(uris[o], draft_min_side=side), 24, 3, 0.5)
                                   for o in cat["object_id"]]))
    with torch.inference_mode():
        used = torch.softmax(build_path(recorded["chosen"], lm.module, (3, 24, 24)).run(x), dim=1).numpy()
        fp32 = torch.softmax(lm.module(x).float(), dim=1).numpy()
    got = cat[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(got, used, atol=1e-5)
    np.testing.assert_allclose(got, fp32, atol=1e-2 if recorded["chosen"] != "fp32" else 1e-5)


def test_single_pass_resume_gives_identical_rows(single_pass, mlflow_server, tmp_path):
    import shutil

    from galmorph_components.merge.component import merge
    from galmorph_components.score.component import score

    r = single_pass
    shutil.copytree(r["tmp"] / "scores0", tmp_path / "scores0")
    shutil.copytree(r["tmp"] / "scores1", tmp_path / "scores1")
    first = sorted((tmp_path / "scores0" / "shards").glob("part-*.parquet"))
    assert first
    before = {p.name: pd.read_parquet(p) for p in first}
    first[-1].unlink()  # the pod died before its last shard was written
    again = score.python_func(dataset=_ds(r["cutouts"]), work=r["work"][0], scores=_ds(tmp_path / "scores0"),
                              batch_size=8, num_workers=0, device="cpu", tracking_uri=mlflow_server, check_images=True)
    assert again.n_scored + again.n_quarantined == 16  # the one missing shard, re-scored
    for name, df in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores0" / "shards" / name), df)
    merge.python_func(scores=[_ds(tmp_path / "scores0"), _ds(tmp_path / "scores1")], catalogue=_ds(tmp_path / "catalogue2"),
                      metrics=Metrics(name="m3", uri=str(tmp_path / "m3"), metadata={}), release="single-pass-resume",
                      tracking_uri=mlflow_server)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "catalogue2" / "catalogue.parquet"), r["catalogue"])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "catalogue2" / "quarantine.parquet"), r["quarantine"])


def test_write_cutouts_still_writes_pngs(release, cropping_model, mlflow_server, tmp_path):
    from galmorph_components.cutout.component import cutout

    out = _ds(tmp_path / "cut")
    res = cutout.python_func(manifest=_ds(release), cutouts=out, quarantine=_ds(tmp_path / "q.parquet"), size_px=0,
                             model_uri=cropping_model, tracking_uri=mlflow_server, write_images=True)
    assert len(list((tmp_path / "cut" / "png").glob("*.png"))) == res.rows_out
    assert out.metadata["images_written"] is True and out.metadata["size_px"] == 48  # ceil(24 / 0.5)


def test_drift_sample_is_deterministic_and_bounded():
    """Past ``min_rows`` drift is measured on a sample chosen by object id: the same rows whatever the order, the
    shard or the chunk, about ``min_rows`` of them whatever the release's size; every row of a small release."""
    from galmorph.drift.features import drift_sample

    ids = pd.Series([f"gal-{i}" for i in range(40_000)])
    m = drift_sample(ids, 1000)
    assert 0.8 * 1000 < m.sum() < 1.2 * 1000  # not 1/16 of 40 000: the sample does not grow with the release
    picked = set(ids[m])
    rev = ids[::-1].reset_index(drop=True)
    assert set(rev[drift_sample(rev, 1000)]) == picked
    chunks = [ids[i:i + 7000] for i in range(0, len(ids), 7000)]  # chunk by chunk, knowing the release's size
    assert set().union(*(set(c[drift_sample(c, 1000, n_rows=len(ids))]) for c in chunks)) == picked
    assert 0.8 * 1000 < drift_sample(ids[:8000], 1000).sum() < 1.2 * 1000
    assert 0.8 * 1000 < drift_sample(pd.Series([f"x{i}" for i in range(400_000)]), 1000).sum() < 1.2 * 1000
    assert drift_sample(ids[:1000], 1000).all() and drift_sample(ids, 0).all()
