"""The ``verified`` inference path (#31): checked against fp32 once per model version, recorded on the version,
then reused (not checked again) by every later scoring worker and run; what was used is recorded with the
scores."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from test_scoring_helpers import TinyNet, register_model


@pytest.fixture(scope="module")
def version(mlflow_server):
    return register_model(TinyNet(3, seed=9), "chirality", ["CW", "ACW", "other"], "galmorph-test-verified")


def test_verified_path_is_recorded_on_the_version_and_reused(version, sim_chirality, monkeypatch, tmp_path):
    import mlflow

    import galmorph.scoring.accel as accel
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.models.io import load_for_inference
    from galmorph.scoring.batch import score_manifest

    lm = load_for_inference(version)
    agreement = read_manifest(sim_chirality["manifest"])[["object_id", "image_uri"]]
    assert accel.recorded_choice(lm) is None
    path, choice, checked = accel.verified_path(lm, agreement=agreement, workdir=tmp_path / "w")
    assert checked and choice.requested == "verified"
    assert choice.chosen in ("fp32", *accel.VERIFIED_CANDIDATES) and "int8" not in {a.path for a in choice.candidates}
    assert any(a.path == "fp32" and a.decode == "full" for a in choice.candidates)
    name, v = version[len("models:/"):].split("/")
    tag = mlflow.MlflowClient().get_model_version(name, v).tags[f"{accel.VERIFIED_TAG}.cpu"]
    assert json.loads(tag)["chosen"] == choice.chosen
    # a later worker: the recorded choice is rebuilt, nothing is checked again
    monkeypatch.setattr(accel, "choose_path", lambda *a, **k: pytest.fail("checked again"))
    _, again, checked_again = accel.verified_path(load_for_inference(version), workdir=tmp_path / "w2")
    assert not checked_again and again.chosen == choice.chosen and again.decode == choice.decode
    # scoring with the default of the pipeline: the version's path, recorded with the scores
    res = score_manifest(version, sim_chirality["manifest"], tmp_path / "out", batch_size=8, progress=False,
                         precision="verified")
    assert res.precision == choice.chosen and res.n_scored == 48
    inference = json.loads((tmp_path / "out" / "scoring.json").read_text())["inference"]
    assert inference["requested"] == "verified" and inference["chosen"] == choice.chosen


def test_fp32_is_a_flag_away(version, sim_chirality, monkeypatch, tmp_path):
    import galmorph.scoring.accel as accel
    from galmorph.scoring.batch import score_manifest

    monkeypatch.setattr(accel, "recorded_choice", lambda *a, **k: pytest.fail("fp32 looks nothing up"))
    res = score_manifest(version, sim_chirality["manifest"], tmp_path / "out", batch_size=8, progress=False,
                         precision="fp32")
    assert res.precision == "fp32" and res.decode == "full"
    assert isinstance(pd.read_parquet(next((tmp_path / "out" / "shards").glob("part-*.parquet"))), pd.DataFrame)


def test_galmorph_score_defaults_to_the_verified_path_and_fp32_is_a_flag_away(version, sim_chirality, tmp_path):
    """The user's command: `galmorph score` with no path flags takes the verified path (and says which it used);
    ``--precision fp32`` is the plain eager path with the full decode, nothing checked."""
    from click.testing import CliRunner

    from galmorph.cli import main

    used = {}
    for key, flags in (("default", []), ("fp32", ["--precision", "fp32"])):
        res = CliRunner().invoke(main, ["score", "--model", version, "--manifest", str(sim_chirality["manifest"]),
                                        "--out", str(tmp_path / key),
                                        "--no-log-mlflow", "--no-progress", "--batch-size", "8", *flags])
        assert res.exit_code == 0, res.output
        used[key] = json.loads((tmp_path / key / "scoring.json").read_text())["inference"]
        assert f"inference path: {used[key]['chosen']}, {used[key]['decode']} decode" in res.output
    assert used["default"]["requested"] == "verified" and used["default"]["decode_requested"] == "auto"
    assert used["fp32"]["requested"] == "fp32" and used["fp32"]["chosen"] == "fp32" and used["fp32"]["decode"] == "full"
    assert used["fp32"]["candidates"] == []


def test_the_version_of_an_alias_uri_is_the_version_it_was_loaded_at():
    """The path recorded on a version is found whether the model was loaded by version or by alias (the README's
    ``models:/galmorph-chirality@champion``)."""
    from types import SimpleNamespace

    from galmorph.scoring.accel import _version_of

    def loaded(uri, version=None):
        return SimpleNamespace(uri=uri, version=version)

    assert _version_of(loaded("models:/galmorph-chirality/3")) == ("galmorph-chirality", "3")
    assert _version_of(loaded("models:/galmorph-chirality@champion", "7")) == ("galmorph-chirality", "7")
    assert _version_of(loaded("models:/galmorph-chirality@champion")) is None  # not resolved: nothing to record on
    assert _version_of(loaded("runs:/abc/model", "1")) is None
    assert _version_of(loaded("models:/galmorph-chirality/latest")) is None


def test_a_verified_onnx_path_keeps_its_model_file_with_the_version(mlflow_server, sim_chirality, monkeypatch, tmp_path):
    """When the version's path is ONNX, the file checked is logged on the version's run and named in the record;
    a later worker downloads it instead of exporting the network again (the export was most of a worker's start
    for the reference model), and scores exactly as the checked file does."""
    import mlflow
    import numpy as np
    import torch

    import galmorph.scoring.accel as accel
    from galmorph.models.io import load_for_inference

    uri = register_model(TinyNet(3, seed=11), "chirality", ["CW", "ACW", "other"], "galmorph-test-onnx-file")
    lm = load_for_inference(uri)
    shape = (lm.spec.in_chans, lm.spec.image_size, lm.spec.image_size)
    checked = accel.build_path("onnx", lm.module, shape, workdir=tmp_path / "check")
    assert checked.model_file and (tmp_path / "check" / "model.onnx").exists()
    choice = accel.PathChoice("verified", "onnx", "draft", "given (48 images)", "auto")
    assert accel.record_choice(lm, choice, model_file=checked.model_file)
    rec = accel.recorded_choice(lm)
    run_id = mlflow.MlflowClient().get_model_version(*uri[len("models:/"):].split("/")).run_id
    assert rec["artifact"] == f"runs:/{run_id}/inference_path/cpu/model.onnx"
    # a later worker: nothing exported, nothing checked; the same logits as the checked file
    monkeypatch.setattr(accel, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    monkeypatch.setattr(accel, "choose_path", lambda *a, **k: pytest.fail("checked again"))
    path, again, was_checked = accel.verified_path(load_for_inference(uri), workdir=tmp_path / "worker")
    assert not was_checked and again.chosen == "onnx" and again.artifact == rec["artifact"]
    x = torch.rand(5, *shape)
    np.testing.assert_allclose(path.run(x).numpy(), checked.run(x).numpy(), atol=1e-6)
    # a record whose file is gone: checked again rather than failing the worker
    monkeypatch.undo()
    bad = dict(rec, artifact=f"runs:/{run_id}/inference_path/cpu/missing.onnx")
    p2, c2 = accel.prepare_for_scoring(load_for_inference(uri), "verified", "auto", previous=bad,
                                       agreement=sim_chirality_frame(sim_chirality), workdir=tmp_path / "w3")
    assert c2.chosen in ("fp32", *accel.VERIFIED_CANDIDATES) and c2.candidates  # a fresh check ran


def sim_chirality_frame(sim):
    from galmorph.catalogue.manifest import read_manifest

    return read_manifest(sim["manifest"])[["object_id", "image_uri"]]
