"""Fault injection, inputs and outputs (#17, failure classes 3 and 7): scoring resume bound to its inputs,
disk full, empty manifests and shard lists, CSV manifests, coordinates/redshifts, pipeline parameters,
strict single-document --json, --no-mlflow with a registry URI, unusable state dirs."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.catalogue.manifest import read_manifest, write_manifest
from galmorph.models.io import LoadedModel, ModelSpec
from galmorph.scoring.batch import ScoringError, merge_scores, score_manifest
from test_scoring_helpers import TinyNet

CHIR = ["CW", "ACW", "other"]


def _strict(text: str):
    """``json.loads`` that refuses NaN/Infinity (strict JSON) and anything but one document."""
    def bad(tok):
        raise ValueError(f"non-standard JSON constant {tok}")
    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope="module")
def tiny_model():
    spec = ModelSpec(task="chirality", classes=CHIR, arch="TinyNet", image_size=32)
    return LoadedModel(module=TinyNet(3, seed=1).eval(), spec=spec, uri="test://tiny", version="1")


@pytest.fixture()
def two_releases(sim_chirality, tmp_path):
    """Two manifests of the same 48 rows count: the simulated release and a second one (other ids)."""
    a = read_manifest(sim_chirality["manifest"])
    b = a.copy()
    b["object_id"] = b["object_id"] + "-r2"
    pb = write_manifest(b, tmp_path / "release2.parquet", kind="test")
    return Path(sim_chirality["manifest"]), pb


# ------------------------------------------------------------------------------------ 3: scoring resume
def test_resume_with_another_manifest_of_the_same_size_is_refused(two_releases, tiny_model, tmp_path):
    """kill after 5 of 12 shards (= only shards 0-4 done), then resume with another release of the same row
    count into the same folder: refused naming the manifest content; --overwrite starts over cleanly."""
    r1, r2 = two_releases
    out = tmp_path / "out"
    score_manifest(tiny_model, r1, out, shard_size=4, shards=range(5), progress=False)
    with pytest.raises(ScoringError, match=r"manifest content \(sha256\).*release2.parquet.*--overwrite"):
        score_manifest(tiny_model, r2, out, shard_size=4, progress=False)
    assert len(list((out / "shards").glob("part-*.parquet"))) == 5  # nothing written by the refused call
    res = score_manifest(tiny_model, r2, out, shard_size=4, overwrite=True, progress=False)
    assert res.shards_skipped == [] and res.n_scored + res.n_quarantined == 48
    cat = pd.read_parquet(merge_scores(out, out).catalogue)
    assert len(cat) == 48 and cat["object_id"].str.endswith("-r2").all()
    # the same input resumes
    out2 = tmp_path / "out2"
    score_manifest(tiny_model, r1, out2, shard_size=4, shards=range(5), progress=False)
    res = score_manifest(tiny_model, r1, out2, shard_size=4, progress=False)
    assert res.shards_skipped == [0, 1, 2, 3, 4]
    assert set(pd.read_parquet(merge_scores(out2, out2).catalogue)["object_id"]) == set(read_manifest(r1)["object_id"])


def test_resume_refuses_other_model_version_and_threshold(two_releases, tiny_model, tmp_path):
    r1, _ = two_releases
    out = tmp_path / "out"
    score_manifest(tiny_model, r1, out, shard_size=16, shards=[0], progress=False)
    v2 = LoadedModel(tiny_model.module, tiny_model.spec, tiny_model.uri, version="2")
    with pytest.raises(ScoringError, match=r"model_version '1' -> '2'"):
        score_manifest(v2, r1, out, shard_size=16, progress=False)
    with pytest.raises(ScoringError, match=r"threshold 0.85 -> 0.5"):
        score_manifest(tiny_model, r1, out, shard_size=16, threshold=0.5, progress=False)


def test_disk_full_is_a_clear_error_and_leaves_no_partial_shard(two_releases, tiny_model, tmp_path, monkeypatch):
    import galmorph.scoring.batch as scoring

    def full(df, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(scoring, "_write_parquet", full)
    out = tmp_path / "out"
    with pytest.raises(ScoringError, match=r"disk full while writing .*part-00000.parquet"):
        score_manifest(tiny_model, two_releases[0], out, shard_size=16, progress=False)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["quarantine-00000.parquet"]
    monkeypatch.undo()
    res = score_manifest(tiny_model, two_releases[0], out, shard_size=16, progress=False)  # resumes after
    assert res.n_scored + res.n_quarantined == 48


def test_empty_manifest_empty_and_outside_shard_lists(sim_chirality, tiny_model, tmp_path):
    empty = write_manifest(read_manifest(sim_chirality["manifest"]).head(0), tmp_path / "empty.parquet", kind="t")
    with pytest.raises(ScoringError, match=r"empty.parquet has no rows; nothing to score"):
        score_manifest(tiny_model, empty, tmp_path / "o", progress=False)
    with pytest.raises(ScoringError, match="no shards to score"):
        score_manifest(tiny_model, sim_chirality["manifest"], tmp_path / "o", shards=[], progress=False)
    with pytest.raises(ScoringError, match=r"shard\(s\) \[7\] outside 0..4"):
        score_manifest(tiny_model, sim_chirality["manifest"], tmp_path / "o", shard_size=10, shards=[7],
                       progress=False)
    assert not (tmp_path / "o" / "scoring.json").exists()


def test_csv_manifest_scores_like_its_parquet(sim_chirality, tiny_model, tmp_path):
    man = read_manifest(sim_chirality["manifest"])
    csv = tmp_path / "release.csv"
    man[["object_id", "image_uri", "z"]].to_csv(csv, index=False)
    a = score_manifest(tiny_model, sim_chirality["manifest"], tmp_path / "p", shard_size=20, progress=False)
    b = score_manifest(tiny_model, csv, tmp_path / "c", shard_size=20, progress=False)
    assert a.n_scored == b.n_scored == 48
    ca = pd.read_parquet(merge_scores(tmp_path / "p", tmp_path / "p").catalogue).set_index("object_id")
    cb = pd.read_parquet(merge_scores(tmp_path / "c", tmp_path / "c").catalogue).set_index("object_id")
    np.testing.assert_allclose(cb.loc[ca.index, "p_CW"], ca["p_CW"], rtol=1e-6)
    assert list(cb["z_bin"].loc[ca.index]) == list(ca["z_bin"])


# ------------------------------------------------------------------------------------ 7: manifests
def test_validate_reads_csv_and_quarantines_bad_coordinates_and_ragged_lines(sim_chirality, tmp_path):
    """A CSV manifest: a non-numeric RA, a Dec of 95, z = -0.1 / 40 / 'abc', an infinite RA and a ragged
    line are quarantined with their reasons; a row missing RA/Dec in a catalogue whose other rows have
    them is quarantined too (#30), and stays (z_bin unknown) with --allow-missing-coords."""
    from galmorph.cli import main

    man = read_manifest(sim_chirality["manifest"]).head(10)[["object_id", "image_uri", "label", "task"]]
    man["ra"], man["dec"], man["z"] = "10.0", "5.0", "0.02"
    man.loc[1, "ra"] = "abc"
    man.loc[2, "dec"] = "95"
    man.loc[3, "z"] = "-0.1"
    man.loc[4, "z"] = "40"
    man.loc[5, "z"] = "abc"
    man.loc[6, "ra"] = "inf"
    man.loc[7, ["ra", "dec", "z"]] = ""
    p = tmp_path / "m.csv"
    man.to_csv(p, index=False)
    with open(p, "a") as fh:
        fh.write(f"ragged-1,{man.image_uri[0]},CW\n")
    out = tmp_path / "passed.parquet"
    r = CliRunner().invoke(main, ["validate", str(p), "--json", "--no-images", "--no-fail", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = _strict(r.stdout)
    q = {d["id"]: d["reason"] for d in doc["quarantined"]}
    ids = list(man.object_id)
    assert doc["rows"] == 11 and doc["passed"] == 3 and len(q) == 8
    assert "ra 'abc' is not a number" in q[ids[1]] and "dec 95.0 outside [-90, 90]" in q[ids[2]]
    assert "negative redshift" in q[ids[3]] and "above the physical limit" in q[ids[4]]
    assert "z 'abc' is not a number" in q[ids[5]] and "outside [0, 360)" in q[ids[6]]
    assert "ra missing" in q[ids[7]]
    assert "m.csv line 12: 3 field(s), the header has 7" in q["ragged-1"]
    r = CliRunner().invoke(main, ["validate", str(p), "--json", "--no-images", "--no-fail", "--allow-missing-coords",
                                  "--out", str(out)])
    assert r.exit_code == 0 and _strict(r.stdout)["passed"] == 4, r.output
    passed = read_manifest(out).set_index("object_id")
    assert ids[7] in passed.index and passed.loc[ids[7], "z_bin"] == "unknown" and np.isnan(passed.loc[ids[7], "ra"])
    req = CliRunner().invoke(main, ["validate", str(p), "--json", "--no-images", "--no-fail", "--require-coords",
                                    "--require-z"])
    q2 = {d["id"]: d["reason"] for d in _strict(req.stdout)["quarantined"]}
    assert "ra missing" in q2[ids[7]] and "redshift missing" in q2[ids[7]]


def test_manifest_without_object_id_is_a_clear_error(sim_chirality, tmp_path):
    from galmorph.cli import main

    man = read_manifest(sim_chirality["manifest"]).head(5).drop(columns=["object_id"])
    man.to_parquet(tmp_path / "noid.parquet")
    man.to_csv(tmp_path / "noid.csv", index=False)
    for f in ("noid.parquet", "noid.csv"):
        r = CliRunner().invoke(main, ["validate", str(tmp_path / f), "--json", "--no-images"])
        assert r.exit_code == 1 and "no 'object_id' column" in r.stderr and r.stdout == ""


# ------------------------------------------------------------------------------------ 7: pipeline parameters
@pytest.mark.parametrize("param, says", [
    ("task=galaxyzoo", "task='galaxyzoo': expected one of ['arms', 'chirality', 'lopsided']"),
    ("z_min=abc", "z_min='abc': expected a finite float"),
    ("z_min=0.3", "z_min=0.3 must be below z_max=0.1"),
    ("test_fraction=1", "test_fraction=1.0: expected a number in (0, 1)"),
    ("overrides_json={bad", "overrides_json='{bad': expected a JSON object"),
    ("nosuch=1", "'nosuch' is not a parameter of pipeline 'training'"),
])
def test_bad_pipeline_parameters_exit_2_before_anything_runs(param, says, tmp_path, monkeypatch):
    import galmorph.ops.run as run
    from galmorph.cli import main

    def must_not_run(*a, **k):
        raise AssertionError("the pipeline was started")

    monkeypatch.setattr("kfp.local.init", must_not_run)
    monkeypatch.setattr(run, "make_client", must_not_run)
    r = CliRunner().invoke(main, ["pipeline", "run", "training", "--local", "--param", param,
                                  "--pipeline-root", str(tmp_path / "kfp")])
    assert r.exit_code == 2, r.output
    assert says in r.stderr and "Traceback" not in r.output and not (tmp_path / "kfp").exists()
    r = CliRunner().invoke(main, ["pipeline", "run", "training", "--host", "http://kfp.invalid", "--param", param])
    assert r.exit_code == 2 and says in r.stderr


def test_rescoring_inference_path_parameters_are_checked():
    from galmorph.ops.run import PipelineParamError, coerce_params

    ok = coerce_params("rescoring", {"precision": "auto", "decode": "draft"})
    assert ok == {"precision": "auto", "decode": "draft"}
    with pytest.raises(PipelineParamError, match=r"precision='fp16': expected one of \['auto', 'bf16'.*"
                                                 r"decode='jpeg': expected one of \['auto', 'draft', 'full'\]"):
        coerce_params("rescoring", {"precision": "fp16", "decode": "jpeg"})


# ------------------------------------------------------------------------------------ 7: --json on stdout
def _json_commands():
    import click

    from galmorph.cli import main

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        elif any(p.name == "as_json" for p in cmd.params):
            yield " ".join(path), cmd

    return list(walk(main, []))


def test_every_json_command_keeps_stdout_for_one_document():
    """Every command with --json (except the documented JSON Lines ones) diverts other stdout writes."""
    cmds = dict(_json_commands())
    assert {"train", "evaluate", "promote", "score", "drift", "validate", "ingest"} <= set(cmds)
    for name, cmd in cmds.items():
        opt = next(p for p in cmd.params if p.name == "as_json")
        lines = "json lines" in (opt.help or "").lower()
        assert lines == (name in ("a1", "winding")), name
        assert opt.callback is not None, f"{name} --json does not divert stray stdout"


def test_json_document_is_strict_and_alone_on_stdout():
    import math
    import sys

    import click

    from galmorph.cli.base import echo_json
    from galmorph.cli.options import json_option

    @click.command()
    @json_option()
    def noisy(as_json):
        sys.stdout.write("🏃 View run silent-owl at: http://x/#/runs/1\n")  # what MLflow does
        click.echo("progress 50%")
        echo_json({"f1": math.nan, "auc": float("inf"), "n": np.int64(3), "path": Path("/a"), "x": pd.NA})

    r = CliRunner().invoke(noisy, ["--json"])
    assert r.exit_code == 0, r.output
    assert _strict(r.stdout) == {"f1": None, "auc": None, "n": 3, "path": "/a", "x": None}
    assert "View run" in r.stderr and "progress 50%" in r.stderr
    plain = CliRunner().invoke(noisy, [])
    assert "View run" in plain.stdout  # without --json nothing is diverted


def test_ingest_and_validate_json_are_single_strict_documents(sim_chirality, tmp_path):
    from galmorph.cli import main

    r = CliRunner().invoke(main, ["ingest", f"sim:{sim_chirality['dir']}", "--out", str(tmp_path / "m.parquet"),
                                  "--json"])
    assert r.exit_code == 0 and _strict(r.stdout)["rows_out"] == 48
    r = CliRunner().invoke(main, ["validate", str(tmp_path / "m.parquet"), "--json", "--no-images"])
    assert r.exit_code == 0 and _strict(r.stdout)["passed"] == 48


def test_evaluate_no_mlflow_refuses_a_registry_uri_and_writes_nothing(sim_chirality, tmp_path, monkeypatch):
    from galmorph.cli import main

    monkeypatch.chdir(tmp_path)
    for model in ("models:/galmorph-chirality/1", "chirality", "runs:/abc/model"):
        r = CliRunner().invoke(main, ["evaluate", "--model", model, "--manifest", str(sim_chirality["manifest"]),
                                      "--no-mlflow", "--out", str(tmp_path / "ev"), "--json"])
        assert r.exit_code == 2, r.output
        assert "--no-mlflow cannot load a registry URI" in r.stderr and r.stdout == ""
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ 6: unusable state dir
def test_drift_into_an_unusable_state_dir_is_a_clear_error(sim_chirality, tmp_path):
    """The state dir lies under a file (mkdir fails with ENOTDIR, as a read-only one fails with EROFS;
    tests run as root, where chmod does not stop writes)."""
    from galmorph.cli import main

    (tmp_path / "file.txt").write_text("x")
    env = {"GALMORPH_STATE_DIR": str(tmp_path / "file.txt" / "state")}
    r = CliRunner(env=env).invoke(main, ["drift", "--reference", str(sim_chirality["manifest"]),
                                         "--current", str(sim_chirality["manifest"]), "--no-workspace", "--json"])
    assert r.exit_code == 1, r.output
    assert "error: cannot write the drift outputs under" in r.stderr and "Not a directory" in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)


# ------------------------------------------------------------------------------------ odd rows, every stage
def test_score_and_cutout_quarantine_repeated_empty_ids_and_tiny_images(sim_chirality, tiny_model, tmp_path):
    """A repeated object_id gave two catalogue rows for one object (two different images) and one cutout
    file overwritten by the other row's image; an empty id was scored as '<NA>'; a 1-pixel image was
    upsampled and scored as a flat frame, and cut into a 1-pixel PNG."""
    from PIL import Image

    from galmorph.catalogue.cutout import make_cutouts
    from galmorph.catalogue.manifest import read_quarantine

    man = read_manifest(sim_chirality["manifest"]).head(8).reset_index(drop=True)[["object_id", "image_uri", "z"]]
    man = man.astype({"object_id": object})
    man.loc[3, "object_id"] = man.loc[2, "object_id"]  # same id, another image
    man.loc[4, "object_id"] = ""
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "one.png")
    man.loc[5, "image_uri"] = str(tmp_path / "one.png")
    csv = tmp_path / "odd.csv"
    man.to_csv(csv, index=False)
    res = score_manifest(tiny_model, csv, tmp_path / "s", shard_size=4, progress=False)
    assert res.n_scored == 5 and res.n_quarantined == 3
    cat = pd.read_parquet(merge_scores(tmp_path / "s", tmp_path / "s").catalogue)
    assert cat["object_id"].is_unique and set(cat["row"]) == {0, 1, 2, 6, 7}
    q = pd.concat([read_quarantine(p) for p in sorted((tmp_path / "s" / "shards").glob("quarantine-*.parquet"))])
    reasons = " | ".join(q["reason"])
    assert "duplicate object_id (first at row 2)" in reasons and "object_id is null or empty" in reasons
    assert "image is 1x1 px; too small to score" in reasons
    cut = make_cutouts(csv, tmp_path / "c", progress=False)
    assert cut.n_out == 5 and cut.manifest["object_id"].is_unique
    assert cut.manifest["image_uri"].is_unique and sorted(cut.manifest.index) == list(range(5))
    cq = " | ".join(cut.quarantine["reason"])
    assert "duplicate object_id" in cq and "object_id is null or empty" in cq and "cutout of 1x1 px is too small" in cq
    # the first row keeps its own image
    first = cut.manifest.set_index("object_id").loc[man.object_id[2], "source_image_uri"]
    assert first == man.image_uri[2]


def test_csv_manifest_is_read_by_cutout_a1_and_winding(sim_chirality, tmp_path):
    """cutout, a1 --manifest and winding --manifest read a CSV manifest, then asked Parquet for its
    metadata ('Parquet magic bytes not found in footer')."""
    from galmorph.cli import main

    man = read_manifest(sim_chirality["manifest"]).head(4)
    csv = tmp_path / "m.csv"
    man[["object_id", "image_uri", "z", "ra", "dec"]].to_csv(csv, index=False)
    for args in (["cutout", str(csv), "--out", str(tmp_path / "cut"), "--json"],
                 ["a1", "--manifest", str(csv), "--out", str(tmp_path / "a1.parquet"), "--workers", "1"],
                 ["winding", "--manifest", str(csv), "--out", str(tmp_path / "w.parquet")]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0 and "error:" not in r.stderr, (args, r.output[-2000:])
    assert len(read_manifest(tmp_path / "cut" / "manifest.parquet")) == 4
    assert len(read_manifest(tmp_path / "a1.parquet")) == 4 and len(read_manifest(tmp_path / "w.parquet")) == 4


# ------------------------------------------------------------------------------------ 6: state dir, label DB
def test_every_command_reports_an_unusable_state_dir_without_a_traceback(sim_chirality, tmp_path):
    """label agreement/export/token revoke, train, evaluate and monitor dashboard ended in OSError tracebacks
    from mkdir of the state dir (read-only: EROFS; under a file: ENOTDIR, what root sees here)."""
    from galmorph.cli import main

    (tmp_path / "file.txt").write_text("x")
    env = {"GALMORPH_STATE_DIR": str(tmp_path / "file.txt" / "state"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for args in (["label", "agreement"], ["label", "export", "--out", str(tmp_path / "l.parquet")],
                 ["label", "token", "revoke", "bob"],
                 ["train", "--task", "chirality", "--manifest", str(sim_chirality["manifest"])]):
        r = CliRunner(env=env).invoke(main, args)
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (args, r.output[-2000:])
        assert "Not a directory" in r.stderr and "file.txt" in r.stderr, (args, r.stderr[-2000:])


def test_an_unusable_label_database_is_one_clear_line(tmp_path):
    """A label database that cannot be opened or written: revoke/agreement/export traced back; token add
    printed SQLAlchemy's SQL with the new token's hash."""
    from galmorph.cli import main

    d = tmp_path / "a-folder.db"
    d.mkdir()  # sqlite cannot open a folder: 'unable to open database file'
    for args in (["label", "agreement"], ["label", "export", "--out", str(tmp_path / "l.parquet")],
                 ["label", "token", "revoke", "bob"], ["label", "token", "add", "bob"]):
        r = CliRunner().invoke(main, [*args, "--db", f"sqlite:///{d}"])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (args, r.output[-2000:])
        assert f"label database sqlite:///{d}: OperationalError: unable to open database file" in r.stderr
        assert "[SQL:" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_label_sample_does_not_create_a_missing_exclude_database(tmp_path):
    """--exclude-labelled naming a sqlite database that does not exist is a clear error; the database and
    its folder are not created as a side effect of reading."""
    import pandas as pd

    from galmorph.cli import main

    man = tmp_path / "m.csv"
    pd.DataFrame({"object_id": ["a", "b"], "image_uri": ["x.png", "y.png"], "z": [0.02, 0.05]}).to_csv(man, index=False)
    missing = tmp_path / "no" / "such" / "labels.db"
    r = CliRunner().invoke(main, ["label", "sample", "--manifest", str(man), "--out", str(tmp_path / "q.parquet"),
                                  "--exclude-labelled", f"sqlite:///{missing}", "--no-measure-a1"])
    assert r.exit_code == 1 and "no such label database" in r.stderr, r.output
    assert not (tmp_path / "no").exists() and not (tmp_path / "q.parquet").exists()
