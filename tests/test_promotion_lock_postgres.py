"""The Postgres promotion lock (galmorph.promotion.registry.PostgresAdvisoryLock) against a real, throwaway
PostgreSQL server: the binaries of the ``pgserver`` wheel (dev dependency), initdb once per session in a
temporary folder, the server listening on 127.0.0.1 with password (scram) logins like the chart's
``promotion_lock`` user, and the lock URL in the chart's form ``postgresql://user:pw@host:port/db``
(SQLAlchemy's default driver, psycopg 3 since SQLAlchemy 2.1: a runtime dependency, so that the promote
pods have it).

Postgres refuses to run as root: as root, initdb and postgres run as the unprivileged ``nobody`` user
(``subprocess``'s user/group switch) from a copy of the binaries in a folder that user can reach."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from galmorph.promotion.registry import (CHAMPION, LOCK_URL_ENV, PostgresAdvisoryLock, PromotionError, aliases, promote,
                               read_audit, select_lock)

LOCK_USER, LOCK_PW, LOCK_DB = "promotion_lock", "lock-pw", "promotion_lock"  # as in charts/galmorph/values.yaml


@dataclass
class PG:
    url: str  # the promotion_lock user's URL over TCP (the chart's form)
    admin_dsn: str  # superuser over the unix socket (trust)
    base: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world_traversable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _pg_binaries(base: Path, as_root: bool) -> Path:
    """The pgserver wheel's ``bin`` folder; as root, a copy under ``base`` (the unprivileged user may not
    reach the virtual environment, e.g. a checkout under /root). The copy keeps the wheel's layout:
    the binaries find their libraries (``../../../pgserver.libs``) and share/ relative to themselves."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (dev dependency) provides the Postgres binaries")
    pkg = Path(pgserver.__file__).resolve().parent
    if not as_root:
        return pkg / "pginstall" / "bin"
    dst = base / "site" / "pgserver" / "pginstall"
    (dst / "bin").mkdir(parents=True)
    for exe in ("initdb", "postgres"):
        shutil.copy2(pkg / "pginstall" / "bin" / exe, dst / "bin" / exe)
    for sub in ("lib", "share"):
        shutil.copytree(pkg / "pginstall" / sub, dst / sub, symlinks=True)
    if (pkg.parent / "pgserver.libs").is_dir():
        shutil.copytree(pkg.parent / "pgserver.libs", base / "site" / "pgserver.libs", symlinks=True)
    return dst / "bin"


@pytest.fixture(scope="session")
def pg():
    """A PostgreSQL server for the session (initdb once), stopped and deleted at the end."""
    import psycopg

    as_root = os.geteuid() == 0
    if as_root:
        nobody = pwd.getpwnam("nobody")
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    else:
        run_as = {}
    tmp = Path(tempfile.gettempdir())
    if as_root and not _world_traversable(tmp):
        tmp = Path("/tmp")
    base = Path(tempfile.mkdtemp(prefix="galmorph-pg-", dir=tmp))
    proc = None
    try:
        bin_dir = _pg_binaries(base, as_root)
        data, sock = base / "data", base / "sock"
        sock.mkdir()
        if as_root:
            for p in (base, sock):
                os.chown(p, nobody.pw_uid, nobody.pw_gid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "HOME": str(base)}
        init = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions"],
                              env=env, capture_output=True, text=True, **run_as)
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        port = _free_port()
        log = open(base / "postgres.log", "w")
        proc = subprocess.Popen([str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                 "-k", str(sock), "-c", "fsync=off", "-c", "synchronous_commit=off",
                                 "-c", "full_page_writes=off", "-c", "max_connections=40"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, **run_as)
        admin_dsn = f"host={sock} port={port} user=postgres dbname=postgres"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"postgres exited:\n{(base / 'postgres.log').read_text()}"
            try:
                conn = psycopg.connect(admin_dsn, autocommit=True)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, f"postgres not ready:\n{(base / 'postgres.log').read_text()}"
                time.sleep(0.1)
        with conn, conn.cursor() as cur:  # the chart's promotion_lock user and database (no superuser rights)
            cur.execute(f"CREATE ROLE {LOCK_USER} LOGIN PASSWORD '{LOCK_PW}'")
            cur.execute(f"CREATE DATABASE {LOCK_DB} OWNER {LOCK_USER}")
        yield PG(url=f"postgresql://{LOCK_USER}:{LOCK_PW}@127.0.0.1:{port}/{LOCK_DB}", admin_dsn=admin_dsn, base=base)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def _lock_pids(pg: PG, model: str) -> list[int]:
    """Backend pids holding (granted) the advisory lock of ``model``, seen from another connection."""
    import psycopg

    k = PostgresAdvisoryLock.key(model) & 0xFFFFFFFFFFFFFFFF  # a bigint key is (classid, objid), objsubid 1
    with psycopg.connect(pg.admin_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND classid = %s::bigint::oid AND objid = %s::bigint::oid", (k >> 32, k & 0xFFFFFFFF))
        return sorted(r[0] for r in cur.fetchall())


def _backend_alive(pg: PG, pid: int) -> bool:
    import psycopg

    with psycopg.connect(pg.admin_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return cur.fetchone()[0] > 0


_HOLDER = """
import sys
from galmorph.promotion.registry import select_lock
with select_lock(sys.argv[1]).hold(sys.argv[2], timeout=30, poll=0.05):
    print("HELD", flush=True)
    sys.stdin.readline()
print("RELEASED", flush=True)
"""


class Holder:
    """Another process holding ``model``'s lock (through select_lock, as the promote step) until released."""

    def __init__(self, pg: PG, model: str, tmp: Path):
        self.err = tmp / f"holder-{model}.err"
        with open(self.err, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, pg.url, model], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=fh, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "HELD", f"holder did not take the lock ({line!r}):\n{self.err.read_text()[-3000:]}"
        pids = _lock_pids(pg, model)
        assert len(pids) == 1, pids
        self.backend_pid = pids[0]

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "RELEASED", self.err.read_text()[-3000:]
            self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_the_postgres_driver_is_a_runtime_dependency():
    """The chart's lock URL (``postgresql://``, no driver named) needs SQLAlchemy's default Postgres driver
    in the promote pods' image, which installs the project's runtime dependencies only (no dev group)."""
    import sqlalchemy as sa

    driver = sa.engine.make_url("postgresql://u@h/d").get_dialect().driver  # psycopg (3) since SQLAlchemy 2.1
    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").split("[")[0].split(">")[0].split("=")[0] in (driver, f"{driver}-binary")
               for d in deps), (driver, deps)


def test_same_model_lock_serialises_across_processes(pg, tmp_path):
    model = "galmorph-pgtest-same"
    lock = select_lock(pg.url)
    assert isinstance(lock, PostgresAdvisoryLock)
    with Holder(pg, model, tmp_path) as h:
        # held elsewhere: a short timeout waits that long, then fails naming the model
        t0 = time.monotonic()
        with pytest.raises(PromotionError, match=f"advisory lock of {model} "):
            with lock.hold(model, timeout=0.6, poll=0.05):
                pytest.fail("took a lock another process holds")
        assert time.monotonic() - t0 >= 0.6
        assert _lock_pids(pg, model) == [h.backend_pid]
        # a patient second holder waits while the first holds it, and gets it after the release
        got, done, errors = threading.Event(), threading.Event(), []

        def second():
            try:
                with lock.hold(model, timeout=60, poll=0.05):
                    got.set()
                    done.wait(60)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        th = threading.Thread(target=second, daemon=True)
        th.start()
        assert not got.wait(1.5), "the second holder got the lock while the first held it"
        h.release()
        assert got.wait(20), errors
        pids = _lock_pids(pg, model)
        assert len(pids) == 1 and pids[0] != h.backend_pid
        done.set()
        th.join(30)
    assert not errors and not th.is_alive()
    assert _lock_pids(pg, model) == []  # released on leaving the block
    with lock.hold(model, timeout=0):
        pass


def test_different_models_do_not_block_each_other(pg, tmp_path):
    lock = select_lock(pg.url)
    a, b = "galmorph-pgtest-a", "galmorph-pgtest-b"
    assert PostgresAdvisoryLock.key(a) != PostgresAdvisoryLock.key(b)
    with Holder(pg, a, tmp_path) as h:
        with pytest.raises(PromotionError, match=a):
            with lock.hold(a, timeout=0):
                pass
        t0 = time.monotonic()
        with lock.hold(b, timeout=0):
            assert time.monotonic() - t0 < 5
            assert _lock_pids(pg, a) == [h.backend_pid] and len(_lock_pids(pg, b)) == 1
        h.release()


def test_lock_is_released_when_the_holder_dies(pg, tmp_path):
    model = "galmorph-pgtest-killed"
    lock = select_lock(pg.url)
    with Holder(pg, model, tmp_path) as h:
        with pytest.raises(PromotionError, match=model):
            with lock.hold(model, timeout=0.2, poll=0.05):
                pass
        h.kill()  # SIGKILL: no unlock, no clean disconnect; the server sees the connection drop
        t0 = time.monotonic()
        with lock.hold(model, timeout=20, poll=0.05):
            waited = time.monotonic() - t0
            assert _lock_pids(pg, model) != [h.backend_pid]
    assert waited < 15
    assert not _backend_alive(pg, h.backend_pid)


def test_promote_takes_the_postgres_lock(pg, mlflow_server, tmp_path, monkeypatch):
    """registry.promote (what the promote step runs, with ``lock_url`` from the settings) with
    GALMORPH_LOCK_URL set: waits for the lock another process holds (times out naming the model, nothing
    recorded), then promotes while holding it, seen in pg_locks from another connection."""
    from galmorph.settings import resolve_settings
    from test_eval_support import OracleNet, write_coded_dataset
    from test_promotion import CLASSES, FAST, _register

    coded, _ = write_coded_dataset(tmp_path / "coded", CLASSES, n=32, seed=5)
    task = "ptest-pglock"
    name = f"galmorph-{task}"
    v1 = _register(task, OracleNet(2, error_rate=0.2))
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv(LOCK_URL_ENV, pg.url)
    assert resolve_settings().lock_url == pg.url  # the promote step passes this as lock_url
    kw = dict(eval_manifest=coded, audit_log=audit, out_dir=tmp_path / "p", **FAST)

    with Holder(pg, name, tmp_path) as h:
        with pytest.raises(PromotionError, match=f"Postgres advisory lock of {name}"):
            promote(task, v1, lock_timeout=1, **kw)
        assert read_audit(audit) == [] and CHAMPION not in aliases(name)

        result: dict = {}

        def run():
            try:
                result["decision"] = promote(task, v1, lock_timeout=120, **kw)
            except BaseException as e:  # noqa: BLE001
                result["error"] = e

        th = threading.Thread(target=run, daemon=True)
        th.start()
        time.sleep(2.0)
        assert th.is_alive() and read_audit(audit) == [], "promote did not wait for the lock"
        h.release()
        seen: set[int] = set()
        while th.is_alive():
            seen.update(_lock_pids(pg, name))
            time.sleep(0.01)
        th.join()
    assert "error" not in result, result.get("error")
    assert result["decision"].decision == "first-champion"
    assert aliases(name)[CHAMPION] == v1 and [e["decision"] for e in read_audit(audit)] == ["first-champion"]
    assert seen and h.backend_pid not in seen, "promote did not hold the Postgres lock"
    assert _lock_pids(pg, name) == []
    assert not (audit.parent / f".{name}.promotion.lock").exists()  # no file lock instead
