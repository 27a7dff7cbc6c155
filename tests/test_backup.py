"""#30: `galmorph stack backup DIR` / `stack restore DIR` of the local stack, against a real running MLflow
server in its own state folder: the backup is taken while the server runs and a background thread keeps
logging runs, metrics and artifacts to it; restored into a fresh state folder and served by `stack up` on
other ports, the lineage of the task (`galmorph lineage TASK --json`), the label history and the audit log
are identical to the source's at backup time. A damaged backup file is refused by name; a restore over a
running stack is refused."""

from __future__ import annotations

import json
import shutil
import socket
import threading

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.cli import main
from galmorph.ops.stack import stack_down, stack_up
from galmorph.settings import Settings
from test_promotion_lock_postgres import pg  # noqa: F401 - the real Postgres fixture
from test_scoring_helpers import TinyNet, register_model

TASK, NAME = "lopsided", "galmorph-lopsided"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(state) -> Settings:
    mp = _free_port()
    return Settings(state_dir=state, host="127.0.0.1", mlflow_port=mp, evidently_port=_free_port(),
                    label_port=_free_port(), mlflow_tracking_uri=f"http://127.0.0.1:{mp}")


def _env(s: Settings) -> dict[str, str]:
    """The settings as the variables a `galmorph stack ...` command resolves."""
    return {"GALMORPH_STATE_DIR": str(s.state_dir), "GALMORPH_MLFLOW_PORT": str(s.mlflow_port),
            "GALMORPH_EVIDENTLY_PORT": str(s.evidently_port), "GALMORPH_MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
            "GALMORPH_LABEL_DB_URL": s.label_db_url, "GALMORPH_AUDIT_LOG": str(s.audit_log),
            "MLFLOW_TRACKING_URI": s.mlflow_tracking_uri}


def _use(uri: str) -> None:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def _lineage(uri: str) -> dict:
    r = CliRunner().invoke(main, ["lineage", TASK, "--tracking-uri", uri, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _label_history(s: Settings) -> tuple[list, list]:
    from galmorph.labelling.store import LabelStore

    store = LabelStore(s.label_db_url)
    try:
        return (store.labels(TASK).to_dict(orient="records"), store.events().to_dict(orient="records"))
    finally:
        store.engine.dispose()


def _populate(s: Settings, tmp) -> None:
    """Two registered versions, alias moves and a rollback (audit log), labels with an undo, an Evidently file."""
    from galmorph.labelling.store import LabelStore
    from galmorph.promotion.registry import rollback

    _use(s.mlflow_tracking_uri)
    for seed in (0, 1):
        register_model(TinyNet(2, seed=seed), TASK, ["symmetric", "lopsided"], NAME)
    c = mlflow.MlflowClient(s.mlflow_tracking_uri)
    c.set_registered_model_alias(NAME, "champion", "1")
    c.set_registered_model_alias(NAME, "champion", "2")
    c.set_registered_model_alias(NAME, "previous-champion", "1")
    rollback(TASK, audit_log=s.audit_log, reason="backup test", lock_path=tmp / "promo.lock", client=c)
    store = LabelStore(s.label_db_url)
    store.register_queue(pd.DataFrame({"object_id": [f"obj{i}" for i in range(6)]}), "q")
    for i in range(6):
        store.set_label(f"obj{i}", "alice", "lopsided" if i % 2 else "symmetric", task=TASK)
    store.set_label("obj0", "bob", "unsure", task=TASK)
    store.set_label("obj1", "alice", "symmetric", task=TASK)
    store.undo("alice", task=TASK)
    store.engine.dispose()
    ws = s.evidently_workspace / "project-1"
    ws.mkdir(parents=True)
    (ws / "snapshot.json").write_text('{"drift": false}')


class Writer(threading.Thread):
    """Keeps creating runs (an artifact, then the tag saying it is there, then metrics) until stopped."""

    def __init__(self, uri: str):
        super().__init__(daemon=True)
        self.client, self.stop, self.runs, self.error = mlflow.MlflowClient(uri), threading.Event(), 0, None

    def run(self) -> None:
        try:
            exp = self.client.create_experiment("backup-load")
            while not self.stop.is_set():
                run = self.client.create_run(exp)
                rid = run.info.run_id
                self.client.log_text(rid, f"payload {self.runs}\n" * 50, "payload.txt")
                self.client.set_tag(rid, "artifact_written", "1")
                for step in range(5):
                    self.client.log_metric(rid, "loss", 1.0 / (step + 1), step=step)
                self.client.set_terminated(rid)
                self.runs += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.fixture()
def stacks(tmp_path):
    src, dst = _settings(tmp_path / "src-state"), _settings(tmp_path / "dst-state")
    try:
        yield src, dst
    finally:
        for s in (src, dst):
            stack_down(s, ("mlflow",))


def test_backup_while_running_restores_identical_lineage_and_labels(stacks, tmp_path, monkeypatch):
    src, dst = stacks
    # the writer thread's MLflow client prints run links; in-process, they would land in the CLI's captured stdout
    # between the backup's JSON lines (CliRunner swaps sys.stdout for the whole process) -- CI saw that once
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    stack_up(src, ("mlflow",))
    _populate(src, tmp_path)
    lineage_before, labels_before = _lineage(src.mlflow_tracking_uri), _label_history(src)
    audit_before = src.audit_log.read_text()
    assert lineage_before["model"]["version"] == "1" and lineage_before["model"]["aliases"] == ["champion"]
    assert lineage_before["model"]["decision"] == "restored"

    writer = Writer(src.mlflow_tracking_uri)
    writer.start()
    try:
        while writer.runs < 2 and writer.error is None and writer.is_alive():
            writer.stop.wait(0.1)
        bk = tmp_path / "backup"
        r = CliRunner().invoke(main, ["stack", "backup", str(bk), "--json"], env=_env(src))
        assert r.exit_code == 0, r.output
    finally:
        writer.stop.set()
        writer.join(60)
    assert writer.error is None, writer.error
    manifest = json.loads(r.stdout)
    assert {p["name"] for p in manifest["parts"]} == {"mlflow-store", "mlflow-artifacts", "label-db", "audit-log",
                                                      "evidently-workspace"}
    assert manifest["galmorph_version"] and manifest["created_at"] and manifest["tracking_uri"] == src.mlflow_tracking_uri
    assert manifest["foreign_artifact_locations"] == []
    paths = {f["path"]: f for f in manifest["files"]}
    assert {"mlflow/mlflow.db", "labels/labels.db", "registry/audit.jsonl",
            "evidently/project-1/snapshot.json"} <= set(paths)
    assert all(len(f["sha256"]) == 64 and f["size"] >= 0 for f in manifest["files"])

    # restore over the running source stack: refused
    r = CliRunner().invoke(main, ["stack", "restore", str(bk), "--force"], env=_env(src))
    assert r.exit_code == 1 and "is running" in r.output and "stack down" in r.output

    r = CliRunner().invoke(main, ["stack", "restore", str(bk), "--json"], env=_env(dst))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verified_files"] == len(manifest["files"])
    stack_up(dst, ("mlflow",))
    assert _lineage(dst.mlflow_tracking_uri) == lineage_before
    assert _label_history(dst) == labels_before
    assert dst.audit_log.read_text() == audit_before
    assert (dst.evidently_workspace / "project-1" / "snapshot.json").read_text() == '{"drift": false}'

    # the runs the writer had finished are in the snapshot with their artifacts (files copied after the db)
    c = mlflow.MlflowClient(dst.mlflow_tracking_uri)
    exp = c.get_experiment_by_name("backup-load")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    assert 2 <= len(runs) <= writer.runs + 1
    for run in runs:
        if run.data.tags.get("artifact_written") == "1":
            assert [a.path for a in c.list_artifacts(run.info.run_id)] == ["payload.txt"]

    # a non-empty state folder is refused without --force
    stack_down(dst, ("mlflow",))
    r = CliRunner().invoke(main, ["stack", "restore", str(bk)], env=_env(dst))
    assert r.exit_code == 1 and "already holds state" in r.output and "--force" in r.output


def test_restore_refuses_a_damaged_backup_naming_the_file(tmp_path):
    src, dst = _settings(tmp_path / "src"), _settings(tmp_path / "dst")
    from galmorph.labelling.store import LabelStore

    store = LabelStore(src.label_db_url)
    store.register_queue(pd.DataFrame({"object_id": ["a", "b"]}), "q")
    store.set_label("a", "alice", "lopsided", task=TASK)
    store.engine.dispose()
    bk = tmp_path / "bk"
    r = CliRunner().invoke(main, ["stack", "backup", str(bk)], env=_env(src))
    assert r.exit_code == 0, r.output
    assert "mlflow-store" in r.output and "skipped" in r.output  # no MLflow store yet: said, not failed
    damaged = tmp_path / "damaged"
    shutil.copytree(bk, damaged)
    db = damaged / "labels" / "labels.db"
    data = bytearray(db.read_bytes())
    data[-100] ^= 0xFF
    db.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["stack", "restore", str(damaged)], env=_env(dst))
    assert r.exit_code == 1
    assert "checksum mismatch: labels/labels.db" in r.output
    assert not (dst.state_dir / "labels").exists()  # nothing restored
    r = CliRunner().invoke(main, ["stack", "restore", str(tmp_path / "missing")], env=_env(dst))
    assert r.exit_code == 1 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["stack", "backup", str(bk)], env=_env(src))
    assert r.exit_code == 1 and "not empty" in r.output
    r = CliRunner().invoke(main, ["stack", "restore", str(bk)], env=_env(dst))
    assert r.exit_code == 0, r.output
    assert _label_history(dst) == _label_history(src)


def test_postgres_label_database_round_trips_through_pg_dump_and_pg_restore(tmp_path, pg):
    """The chart's steps (docs/deployment.md, "Backup and restore") on a real Postgres (pgserver's binaries):
    pg_dump -Fc of a label database with rows, pg_restore --no-owner into a fresh database, same history."""
    import subprocess

    import psycopg
    import pgserver
    from pathlib import Path

    from galmorph.labelling.store import LabelStore
    from galmorph.ops.backup import backup

    bin_dir = Path(pgserver.__file__).resolve().parent / "pginstall" / "bin"
    assert (bin_dir / "pg_dump").exists() and (bin_dir / "pg_restore").exists()
    sock, port = pg.base / "sock", pg.url.rsplit(":", 1)[1].split("/")[0]
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE labels_src")
        conn.execute("CREATE DATABASE labels_restored")
    url = f"postgresql://postgres@/%s?host={sock}&port={port}"
    store = LabelStore(url % "labels_src")
    store.register_queue(pd.DataFrame({"object_id": [f"o{i}" for i in range(5)]}), "q")
    for i in range(5):
        store.set_label(f"o{i}", "alice", "lopsided", task=TASK)
    store.set_label("o2", "bob", "symmetric", task=TASK)
    store.undo("alice", task=TASK)
    store.engine.dispose()
    # `stack backup` with a Postgres label database: skipped, pointing to the documented steps
    s = Settings(state_dir=tmp_path / "state", label_db_url=url % "labels_src", mlflow_tracking_uri="http://127.0.0.1:1")
    skipped = {p["name"]: p["reason"] for p in backup(s, tmp_path / "bk")["skipped"]}
    assert "Helm chart's case" in skipped["label-db"] and "pg_dump" in skipped["label-db"]

    dump = tmp_path / "labels.dump"
    common = ["-h", str(sock), "-p", port, "-U", "postgres"]
    subprocess.run([str(bin_dir / "pg_dump"), *common, "-Fc", "-d", "labels_src", "-f", str(dump)], check=True,
                   capture_output=True)
    subprocess.run([str(bin_dir / "pg_restore"), *common, "--no-owner", "--exit-on-error", "-d", "labels_restored",
                    str(dump)], check=True, capture_output=True)

    def history(db: str):
        st = LabelStore(url % db)
        try:
            return (st.labels(TASK).to_dict(orient="records"), st.events().to_dict(orient="records"),
                    st.objects().to_dict(orient="records"))
        finally:
            st.engine.dispose()

    assert history("labels_restored") == history("labels_src")
    assert len(history("labels_restored")[1]) == 7
    # the restored sequences continue after the restored rows (a new label gets a fresh id)
    st = LabelStore(url % "labels_restored")
    st.set_label("o0", "carol", "lopsided", task=TASK)
    assert st.events()["id"].is_unique
    st.engine.dispose()
