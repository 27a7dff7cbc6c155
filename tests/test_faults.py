"""Fault injection (issue #17): decompression bombs and odd bit depths in every image-reading stage,
bad release folders and a corrupt watcher state, MLflow unreachable, the stack's state folder and
ownership of the servers it finds. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.imaging.io import ImageError, load_image

CLI = [sys.executable, "-c", "from galmorph.cli import main; main()"]


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A ~70-byte PNG whose header declares ``width`` x ``height`` grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------ images
def test_bomb_and_oversize_images_are_image_errors_without_decoding(tmp_path):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageError, match=r"bomb\.png.*(bomb|over the limit)"):
        load_image(bomb)
    # under Pillow's own bomb limit but over ours: refused from the header
    big = bomb_png(tmp_path / "big.png", 8000, 8000)
    with pytest.raises(ImageError, match=r"big\.png: image of 8000x8000 .* over the limit of 50000000"):
        load_image(big)
    # the limit is a parameter
    small = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 50), np.uint8)).save(small)
    assert load_image(small).shape == (40, 50)
    with pytest.raises(ImageError, match="over the limit of 1000 pixels"):
        load_image(small, max_pixels=1000)
    from astropy.io import fits

    fits.writeto(tmp_path / "big.fits", np.zeros((40, 50)))
    with pytest.raises(ImageError, match="over the limit of 1000 pixels"):
        load_image(tmp_path / "big.fits", max_pixels=1000)
    # nothing was decoded: memory stays bounded (a decode of 8000^2 floats would take 256 MB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_16bit_and_float_rasters_scaled_by_depth_and_range(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    img = load_image(tmp_path / "ramp16.png")
    np.testing.assert_allclose(img, ramp / 65535.0, atol=1e-6)
    assert (img >= 1.0).mean() < 0.01  # was 99.5 % clipped to 1.0
    f = np.random.default_rng(0).normal(50, 20, (32, 32)).astype(np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "float.tif")
    g = load_image(tmp_path / "float.tif")
    np.testing.assert_allclose(g, (f - f.min()) / (f.max() - f.min()), atol=1e-5)
    from astropy.io import fits

    fits.writeto(tmp_path / "nan.fits", np.full((16, 16), np.nan))
    with pytest.raises(ImageError, match="no finite pixels"):
        load_image(tmp_path / "nan.fits", allow_nan=True)


@pytest.fixture()
def bomb_manifest(tmp_path, sim_lopsided):
    """A small simulated manifest whose second row points at a decompression bomb."""
    from galmorph.catalogue.manifest import read_manifest

    m = read_manifest(sim_lopsided["manifest"]).head(5).reset_index(drop=True)
    bomb = bomb_png(tmp_path / "bomb.png")
    bad = m.loc[1, "object_id"]
    m.loc[1, "image_uri"] = str(bomb)
    if "fits_path" in m.columns:
        m.loc[1, "fits_path"] = str(bomb)
    return m, str(bad)


def _reasons(records) -> dict[str, str]:
    df = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    return dict(zip(df["object_id"].astype(str), df["reason"].astype(str)))


def test_every_stage_quarantines_the_bomb_row_and_processes_the_others(tmp_path, bomb_manifest):
    m, bad = bomb_manifest
    good = set(m.object_id.astype(str)) - {bad}

    from galmorph.catalogue.validation import validate_manifest

    v = validate_manifest(m, out_manifest=tmp_path / "v.parquet", quarantine_path=tmp_path / "vq.parquet",
                          report_path=tmp_path / "v.json", log_to_mlflow=False, progress=False)
    from galmorph.catalogue.manifest import read_manifest, read_quarantine

    vq = _reasons(read_quarantine(tmp_path / "vq.parquet"))
    assert bad in vq and ("bomb" in vq[bad] or "over the limit" in vq[bad])
    assert set(read_manifest(tmp_path / "v.parquet").object_id.astype(str)) == good, v

    from galmorph.catalogue.cutout import CutoutConfig, make_cutouts

    cut = m.copy()
    cut["image_uri"] = cut["image_uri"].astype(str)
    make_cutouts(cut, tmp_path / "cut", CutoutConfig(), progress=False)
    cq = _reasons(read_quarantine(tmp_path / "cut" / "quarantine.parquet"))
    assert bad in cq and "bomb.png" in cq[bad]
    assert set(read_manifest(tmp_path / "cut" / "manifest.parquet").object_id.astype(str)) == good

    from galmorph.catalogue.a1 import measure_a1_frame

    measured, quarantine = measure_a1_frame(m, progress=False)
    assert set(_reasons(quarantine)) == {bad} and set(measured.object_id.astype(str)) == good

    from galmorph.drift.features import compute_drift_features

    feats = compute_drift_features(m, progress=False)
    assert set(feats.features.object_id.astype(str)) == good
    dq = _reasons(feats.quarantine)
    assert set(dq) == {bad} and "bomb.png" in dq[bad]

    from galmorph.labelling.queue import add_a1

    with_a1 = add_a1(m.assign(queue_position=range(len(m)), queue_bin="b"), progress=False)
    err = dict(zip(with_a1.object_id.astype(str), with_a1.a1_error))
    assert "bomb.png" in str(err[bad]) and all(pd.isna(err[o]) for o in good)

    from galmorph.datasets.images import ManifestImageDataset

    ds = ManifestImageDataset(m, image_size=32, in_chans=1, on_error="skip")
    items = [ds[i] for i in range(len(m))]
    assert items[1][0] is None and all(it[0] is not None for i, it in enumerate(items) if i != 1)


# ------------------------------------------------------------------------------------------ releases
def _release(root: Path, folder: str, info) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    pd.DataFrame({"object_id": ["a"]}).to_parquet(d / "manifest.parquet")
    if info is not None:
        (d / "release.json").write_text(info if isinstance(info, str) else json.dumps(info))
    return d


def test_bad_releases_skipped_with_reason_others_submitted(tmp_path):
    from galmorph.ops.release import process_releases

    root = tmp_path / "releases"
    _release(root, "a-good", {"release": "r1"})
    _release(root, "b-int", {"manifest": 123})
    _release(root, "c-list", [1, 2, 3])
    _release(root, "d-null", {"manifest": None})
    _release(root, "e-broken", "{not json")
    _release(root, "f-dup", {"release": "r1"})
    _release(root, "g-plain", None)
    started = []
    done = process_releases(root, tmp_path / "state.json", lambda rel: started.append(rel.name) or {"run_id": rel.name})
    assert started == ["r1", "g-plain"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state["releases"]) == {"r1", "g-plain"}
    sk = state["skipped"]
    assert {k: v["status"] for k, v in sk.items()} == {"b-int": "invalid", "c-list": "invalid", "d-null": "invalid",
                                                       "e-broken": "invalid", "f-dup": "duplicate"}
    assert "123" in sk["b-int"]["reason"] and "list" in sk["c-list"]["reason"] and "None" in sk["d-null"]["reason"]
    assert "not valid JSON" in sk["e-broken"]["reason"] and "a-good" in sk["f-dup"]["reason"]
    assert {d["action"] for d in done} == {"started", "invalid", "duplicate"}
    # second pass: nothing resubmitted
    assert process_releases(root, tmp_path / "state.json", lambda rel: pytest.fail("resubmitted")) and True


def test_corrupt_state_recovered_from_backup(tmp_path, caplog):
    from galmorph.ops.release import StateError, process_releases

    root = tmp_path / "releases"
    _release(root, "r1", None)
    state = tmp_path / "state.json"
    process_releases(root, state, lambda rel: {"run_id": "run-1"})
    _release(root, "r2", None)
    process_releases(root, state, lambda rel: {"run_id": "run-2"})  # writes state.json.bak (r1 only)
    state.write_text('{"releases": {"r1": ')  # torn write
    started = []
    with caplog.at_level("WARNING"):
        process_releases(root, state, lambda rel: started.append(rel.name) or {"run_id": "again"})
    assert "recovered from its backup" in caplog.text
    assert started == ["r2"]  # r1 (in the backup) is not submitted twice
    # both unusable: a clear error, nothing submitted
    state.write_text("garbage")
    (tmp_path / "state.json.bak").write_text("[1]")
    with pytest.raises(StateError, match="corrupt"):
        process_releases(root, state, lambda rel: pytest.fail("submitted without state"))


# ------------------------------------------------------------------------------------------ MLflow
def test_mlflow_unreachable_fails_fast_with_the_uri(tmp_path):
    from galmorph.tracking import TrackingUnreachable, ensure_reachable

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingUnreachable, match=f"127.0.0.1:{port}"):
        ensure_reachable(uri, timeout=2)
    # MLflow's own client is bounded too (it retried 7 times with backoff: ~250 s)
    assert int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 2
    ensure_reachable(f"sqlite:///{tmp_path}/x.db")  # no server needed
    # the commands: promote, score, train, evaluate end with the clear message, not a traceback
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GALMORPH_MLFLOW_CONNECT_TIMEOUT": "2",
           "GALMORPH_STATE_DIR": str(tmp_path / "state")}
    man = tmp_path / "m.parquet"
    pd.DataFrame({"object_id": ["a"]}).to_parquet(man)
    model = "models:/galmorph-lopsided@champion"
    for args in (["promote", "--task", "lopsided"], ["evaluate", "--model", model, "--manifest", str(man)],
                 ["score", "--model", model, "--manifest", str(man), "--out", str(tmp_path / "out")],
                 ["train", "--task", "lopsided", "--manifest", str(man)]):
        p = subprocess.run([*CLI, *args, "--tracking-uri", uri], capture_output=True, text=True, timeout=240, env=env)
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr, (args, p.stderr[-2000:])
        assert f"127.0.0.1:{port} is not reachable" in p.stderr, (args, p.stderr[-2000:])


# ------------------------------------------------------------------------------------------ stack
@pytest.fixture()
def fake_stack(tmp_path, monkeypatch):
    """Settings on free ports whose 'mlflow' service is a tiny python HTTP server (fast to start)."""
    import socket

    from galmorph.ops import stack
    from galmorph.settings import Settings

    def free():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    s = Settings(state_dir=tmp_path / "state", mlflow_port=free(), evidently_port=free(), label_port=free())

    def services(settings):
        return {"mlflow": stack.Service("mlflow", settings.mlflow_port, "/",
                                        [sys.executable, "-m", "http.server", str(settings.mlflow_port), "--bind",
                                         "127.0.0.1", "--directory", str(tmp_path)], {})}

    monkeypatch.setattr(stack, "services", services)
    return s


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *a):
        pass


def test_stack_up_refuses_a_foreign_server_answering_health(fake_stack):
    from galmorph.ops.stack import StackError, stack_status, stack_up

    srv = HTTPServer(("127.0.0.1", fake_stack.mlflow_port), _Health)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        with pytest.raises(StackError, match="not started by this state folder"):
            stack_up(fake_stack, ("mlflow",))
        st = stack_status(fake_stack, ("mlflow",))[0]
        assert st["healthy"] and st["ours"] is False and st["pid"] is None
    finally:
        srv.shutdown()
        srv.server_close()


def test_stack_down_never_signals_a_process_it_did_not_start(fake_stack):
    from galmorph.ops.stack import stack_down, stack_up

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        run = fake_stack.state_dir / "run"
        run.mkdir(parents=True)
        (run / "mlflow.pid").write_text(str(victim.pid))  # a stale pid file naming an unrelated process
        assert stack_down(fake_stack, ("mlflow",)) == [{"service": "mlflow", "stopped": False}]
        assert victim.poll() is None
        # a record with the right pid but another start time (pid reuse) is not proof either
        (run / "mlflow.json").write_text(json.dumps({"pid": victim.pid, "start_time": "1", "argv": [sys.executable]}))
        assert stack_down(fake_stack, ("mlflow",))[0]["stopped"] is False and victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    # what it did start, it stops (and recognises as its own)
    try:
        up = stack_up(fake_stack, ("mlflow",))[0]
        assert up["started"] and up["ours"]
        again = stack_up(fake_stack, ("mlflow",))[0]
        assert again["started"] is False and again["pid"] == up["pid"]
    finally:
        assert stack_down(fake_stack, ("mlflow",)) == [{"service": "mlflow", "stopped": True}]


def test_unusable_state_dir_is_a_clear_error(tmp_path, fake_stack, monkeypatch):
    from galmorph.settings import Settings
    from galmorph.ops.stack import StackError, stack_status, stack_up

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bad = Settings(state_dir=blocker / "state", mlflow_port=fake_stack.mlflow_port,
                   evidently_port=fake_stack.evidently_port)
    with pytest.raises(StackError, match="not-a-dir/state"):
        stack_up(bad, ("mlflow",))
    assert stack_status(bad, ("mlflow",))[0]["healthy"] is False  # reading needs no write
    import os

    env = {**os.environ, "GALMORPH_STATE_DIR": str(blocker / "state")}
    for args in (["stack", "status"], ["stack", "down"]):
        p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=240, env=env)
        assert "Traceback" not in p.stderr, (args, p.stderr[-2000:])
    p = subprocess.run([*CLI, "label", "token", "add", "x"], capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "label database" in p.stderr


def test_using_tracking_uri_is_scoped(tmp_path, monkeypatch):
    """A library call with an explicit tracking URI does not leave the process (or the subprocesses it
    starts, through MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI) pointed at it: a registry call after it once
    went to another server's registry with this store's run (HTTP 500)."""
    import os

    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from galmorph.tracking import using_tracking_uri

    # this test changes the process's MLflow settings: monkeypatch puts the session's back afterwards
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    caller_db = f"sqlite:///{tmp_path / 'caller.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", caller_db)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", caller_db)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)  # the registry follows the tracking URI
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(RuntimeError), using_tracking_uri(other):
        assert mlflow.get_tracking_uri() == other and mlflow.get_registry_uri() == other
        assert os.environ["MLFLOW_TRACKING_URI"] == other  # what a subprocess started here would use
        raise RuntimeError("restored even when the block fails")
    assert mlflow.get_tracking_uri() == caller_db and registry_utils._registry_uri is None
    assert os.environ["MLFLOW_TRACKING_URI"] == caller_db and "MLFLOW_REGISTRY_URI" not in os.environ
    with using_tracking_uri(None):
        assert mlflow.get_tracking_uri() == caller_db


# ------------------------------------------------------------------------------------------ odd image files
def _table_fits(path: Path) -> Path:
    """A FITS file whose only 2-axis HDU is a binary table (NAXIS = 2 like an image)."""
    from astropy.io import fits

    cols = [fits.Column(name="a", format="E", array=np.arange(3.0))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    return path


def test_table_hdu_and_symlink_loops_are_quarantined_in_every_stage(tmp_path, sim_lopsided):
    """A FITS table was read as a 1-D 'image' (scoring died with a torch RuntimeError); a data:// URI
    naming a symlink loop raised RuntimeError('Symlink loop') out of validate, a1, drift and label sample."""
    from galmorph.catalogue.manifest import ManifestError, read_manifest, read_quarantine, resolve_image_uri

    table = _table_fits(tmp_path / "table.fits")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    with pytest.raises(ImageError, match="no 2-D image HDU"):
        load_image(table)
    with pytest.raises(ImageError, match="symlink loop"):
        load_image(tmp_path / "loop.png")
    with pytest.raises(ManifestError, match="cannot be resolved under the data root.*Symlink loop"):
        resolve_image_uri("data://loop.png", tmp_path)

    m = read_manifest(sim_lopsided["manifest"]).head(5).reset_index(drop=True)
    m.loc[1, "image_uri"], m.loc[2, "image_uri"] = str(table), "data://loop.png"
    if "fits_path" in m.columns:  # what the A1 stage reads first
        m.loc[1, "fits_path"], m.loc[2, "fits_path"] = str(table), "data://loop.png"
    bad = {str(m.object_id[1]), str(m.object_id[2])}
    good = set(m.object_id.astype(str)) - bad

    from galmorph.catalogue.validation import validate_manifest

    validate_manifest(m, data_root=tmp_path, out_manifest=tmp_path / "v.parquet", quarantine_path=tmp_path / "q.parquet",
                      report_path=tmp_path / "v.json", log_to_mlflow=False, progress=False)
    assert set(_reasons(read_quarantine(tmp_path / "q.parquet"))) == bad

    from galmorph.catalogue.a1 import measure_a1_frame

    measured, quarantine = measure_a1_frame(m, data_root=tmp_path, progress=False)
    assert set(_reasons(quarantine)) == bad and set(measured.object_id.astype(str)) == good

    from galmorph.drift.features import compute_drift_features

    feats = compute_drift_features(m, data_root=tmp_path, progress=False)
    assert set(_reasons(feats.quarantine)) == bad

    from galmorph.datasets.images import ManifestImageDataset

    ds = ManifestImageDataset(m, image_size=32, in_chans=1, data_root=tmp_path, on_error="skip")
    items = [ds[i] for i in range(len(m))]
    assert items[1][0] is None and "no 2-D image HDU" in items[1][3]
    assert items[2][0] is None and "Symlink loop" in items[2][3]
    assert all(items[i][0] is not None for i in (0, 3, 4))


# ------------------------------------------------------------------------------------------ release names
def test_release_name_that_is_not_one_path_component_is_refused(tmp_path):
    """release.json {"release": "../../x"} was submitted, and its catalogue published to publish_dir/../../x."""
    from galmorph.steps.artifacts import publish_release
    from galmorph.ops.release import process_releases

    root = tmp_path / "releases"
    _release(root, "a-ok", {"release": "dr1"})
    _release(root, "b-up", {"release": "../../escape"})
    _release(root, "c-dot", {"release": ".."})
    _release(root, "d-ctl", {"release": "dr\n2"})
    started = []
    process_releases(root, tmp_path / "state.json", lambda rel: started.append(rel.name) or {"run_id": rel.name})
    assert started == ["dr1"]
    sk = json.loads((tmp_path / "state.json").read_text())["skipped"]
    assert {k: v["status"] for k, v in sk.items()} == {"b-up": "invalid", "c-dot": "invalid", "d-ctl": "invalid"}
    assert "not a usable release name" in sk["b-up"]["reason"]
    cat, summ = tmp_path / "c.parquet", tmp_path / "s.json"
    cat.write_bytes(b"x")
    summ.write_text("{}")
    with pytest.raises(ValueError, match="not one path component"):
        publish_release(cat, summ, tmp_path / "pub", "../../escape", "no_drift")
    assert not (tmp_path / "escape").exists()


# ------------------------------------------------------------------------------------------ Kubeflow, MLflow
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kubeflow_unreachable_is_a_clear_error(tmp_path):
    """`release watch --host` and `pipeline run --host` at a dead endpoint ended in a urllib3 traceback."""
    from galmorph.ops.run import PipelineRunError, make_client

    host = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(PipelineRunError, match=f"Kubeflow Pipelines endpoint {host} is not reachable"):
        make_client(host)
    root = tmp_path / "releases"
    _release(root, "r1", None)
    env = {**os.environ, "GALMORPH_STATE_DIR": str(tmp_path / "state")}
    for args in (["release", "watch", str(root), "--once", "--host", host],
                 ["pipeline", "run", "training", "--host", host, "--param", "task=chirality"]):
        p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=240, env=env)
        assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr[-2000:])
        assert f"{host} is not reachable" in p.stderr, p.stderr[-2000:]


def test_local_pipeline_run_fails_fast_when_mlflow_is_down(tmp_path, monkeypatch):
    """`pipeline run --local` with MLflow down ran its components, each waiting on the server (280 s),
    and ended in the components' tracebacks."""
    import galmorph.ops.run as run

    def must_not_run(*a, **k):
        raise AssertionError("the pipeline was started")

    monkeypatch.setattr("kfp.local.init", must_not_run)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(run.PipelineRunError, match=f"pipeline training not started: MLflow tracking server {uri} "
                                                     "is not reachable"):
        run.run_local("training", {"task": "chirality"}, tmp_path / "kfp", tracking_uri=uri, connect_timeout=2)
    assert not (tmp_path / "kfp").exists()


def test_a_foreign_server_answering_health_is_not_taken_for_mlflow(tmp_path):
    """A port held by another service answering GET /health with 200: promote said 'registered model not
    found', score/evaluate/train ended in MlflowException tracebacks (its 'OK' is not JSON)."""
    from galmorph.tracking import TrackingUnreachable, ensure_reachable

    port = _free_port()
    srv = HTTPServer(("127.0.0.1", port), _Health)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    uri = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(TrackingUnreachable, match=r"/version answered 'OK', not an MLflow version"):
            ensure_reachable(uri, timeout=2)
        man = tmp_path / "m.parquet"
        pd.DataFrame({"object_id": ["a"], "image_uri": ["x.png"]}).to_parquet(man)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GALMORPH_STATE_DIR": str(tmp_path / "state")}
        for args in (["promote", "--task", "lopsided"],
                     ["score", "--model", "lopsided", "--manifest", str(man), "--out", str(tmp_path / "o")]):
            p = subprocess.run([*CLI, *args, "--tracking-uri", uri], capture_output=True, text=True, timeout=240,
                               env=env)
            assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr[-2000:])
            assert "is this an MLflow tracking server?" in p.stderr and "not found" not in p.stderr
    finally:
        srv.shutdown()
        srv.server_close()
