"""The promotion lock: one registry, one lock.

The read-evaluate-compare-write sequence of a promotion (and a rollback) of one registered model runs
under one exclusive lock per registered model *of the registry*, whatever audit log or state folder the
caller uses. :func:`select_lock` picks the backend:

1. ``lock_url`` (``GALMORPH_LOCK_URL``) when set: ``postgresql://...`` -> :class:`PostgresAdvisoryLock`
   on that database; ``file:///folder`` or a plain folder -> :class:`FileLock` there (a filesystem every
   promoting process mounts).
2. else derived from the registry (tracking) URI, so that every process using that registry shares it:

   * ``postgresql://...`` -> :class:`PostgresAdvisoryLock` on the tracking database itself;
   * ``sqlite:///path/mlflow.db`` -> :class:`FileLock` beside the database file (keyed by its name);
   * ``file:///path/mlruns`` or a plain folder -> :class:`FileLock` beside the store folder;
   * ``http(s)://`` on this machine (``localhost``, ``127.x``, ``::1``) -> :class:`FileLock` in the
     machine-wide folder :data:`LOCAL_LOCK_DIR`, keyed by the port (every process of the machine
     talks to the same server, whatever its state folder);
   * anything else (a remote tracking server, another database) has no lock every promoting process is
     known to share: :class:`~galmorph.promotion.common.PromotionError` saying to set ``GALMORPH_LOCK_URL``.

File locks are ``flock`` locks through the :mod:`filelock` library (a filesystem without ``flock`` is
refused rather than silently given a weaker lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from galmorph.promotion.common import PromotionError

log = logging.getLogger(__name__)

#: Environment variable naming the lock every promoting pod shares (``postgresql://...`` or ``file:///dir``).
LOCK_URL_ENV = "GALMORPH_LOCK_URL"
#: Machine-wide folder of the locks of tracking servers on this machine (``http://127.0.0.1:PORT``).
LOCAL_LOCK_DIR = Path("/tmp" if Path("/tmp").is_dir() else tempfile.gettempdir()) / "galmorph-promotion-locks"
_SET_LOCK_URL = (f"set {LOCK_URL_ENV} to a lock every promoting process shares: postgresql://USER:PW@HOST/DB "
                 "(e.g. the tracking server's backend database) or file:///FOLDER on a filesystem they all mount")


@contextlib.contextmanager
def registry_lock(lock_path: str | Path, timeout: float = 3600.0, poll: float = 0.2, mode: int = 0o644):
    """Exclusive ``flock`` lock on ``lock_path`` (:class:`filelock.FileLock`); waits up to ``timeout`` seconds,
    then :class:`PromotionError`."""
    import filelock

    lock_path = Path(lock_path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lk = filelock.FileLock(lock_path, mode=mode, thread_local=False, fallback_to_soft=False)
        lk.acquire(timeout=timeout, poll_interval=poll)
    except filelock.Timeout:
        raise PromotionError(f"could not lock {lock_path} within {timeout:g}s (another promotion running?)") from None
    except OSError as exc:
        raise PromotionError(f"cannot take the promotion lock {lock_path}: {exc.strerror or exc}; "
                             f"{_SET_LOCK_URL}") from exc
    log.debug("locked %s", lock_path)
    try:
        yield
    finally:
        lk.release()


class FileLock:
    """Promotion lock backend: ``flock`` on ``<folder>/.[<scope>.]<model>.promotion.lock`` (one machine, or a
    filesystem every promoting process mounts); ``scope`` keys the lock by a store beside which it lives."""

    kind = "file"

    def __init__(self, folder: str | Path, scope: str | None = None, mode: int = 0o644):
        self.folder = Path(folder)
        self.scope = scope
        self.mode = mode

    def path(self, model_name: str) -> Path:
        return self.folder / f".{self.scope + '.' if self.scope else ''}{model_name}.promotion.lock"

    def hold(self, model_name: str, timeout: float = 3600.0):
        if self.mode & 0o002:  # a machine-wide folder: every user may create locks in it, none may delete others'
            with contextlib.suppress(OSError):
                self.folder.mkdir(parents=True, exist_ok=True)
                if self.folder.stat().st_uid == os.geteuid():
                    self.folder.chmod(0o1777)
        return registry_lock(self.path(model_name), timeout=timeout, mode=self.mode)

    def __eq__(self, other) -> bool:
        return isinstance(other, FileLock) and (self.folder, self.scope) == (other.folder, other.scope)

    def __repr__(self) -> str:
        return f"FileLock({str(self.folder)!r}" + (f", scope={self.scope!r})" if self.scope else ")")


class PostgresAdvisoryLock:
    """Promotion lock backend: a session-level Postgres advisory lock (``pg_try_advisory_lock`` polled up
    to the timeout, ``pg_advisory_unlock`` after) keyed by the registered model name, on the database of
    ``url`` (e.g. the MLflow backend store every pod reaches)."""

    kind = "postgres"
    connect_timeout = 10  # seconds to reach the database before the promotion fails

    def __init__(self, url: str):
        self.url = url

    @staticmethod
    def key(model_name: str) -> int:
        """A stable signed 64-bit advisory-lock key of ``model_name``."""
        return int.from_bytes(hashlib.sha256(f"galmorph.promotion:{model_name}".encode()).digest()[:8], "big",
                              signed=True)

    def where(self) -> str:
        """The lock database's URL without its password."""
        import sqlalchemy as sa

        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - an unparsable URL: say no more than its scheme
            return self.url.split("://", 1)[0] + "://..."

    @contextlib.contextmanager
    def hold(self, model_name: str, timeout: float = 3600.0, poll: float = 0.5):
        import sqlalchemy as sa

        k = self.key(model_name)
        try:
            engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool,
                                      connect_args={"connect_timeout": self.connect_timeout})
            conn = engine.connect()
        except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, a database that is down
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise PromotionError(f"cannot reach the promotion lock database {self.where()} ({LOCK_URL_ENV}): "
                                 f"{detail[0] if detail else type(exc).__name__}; start it, or point "
                                 f"{LOCK_URL_ENV} at a reachable postgresql:// database") from None
        t0 = time.monotonic()
        try:
            with conn:
                while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": k}).scalar():
                    if time.monotonic() - t0 > timeout:
                        raise PromotionError(f"could not take the Postgres advisory lock of {model_name} (key {k}) "
                                             f"within {timeout:g}s (another promotion running?)")
                    time.sleep(poll)
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": k})
        finally:
            engine.dispose()

    def __eq__(self, other) -> bool:
        return isinstance(other, PostgresAdvisoryLock) and self.url == other.url

    def __repr__(self) -> str:
        return f"PostgresAdvisoryLock({self.where()!r})"


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


def _postgres(url: str) -> PostgresAdvisoryLock:
    return PostgresAdvisoryLock(url.replace("postgres://", "postgresql://", 1))


def lock_from_url(url: str):
    """The backend of an explicit lock URL (``GALMORPH_LOCK_URL``): ``postgresql[+driver]://...`` ->
    :class:`PostgresAdvisoryLock`; ``file:///dir`` or a plain folder -> :class:`FileLock` there."""
    if _is_postgres(url):
        return _postgres(url)
    if url.startswith("file://"):
        return FileLock(unquote(urlsplit(url).path) or url[len("file://"):])
    if "://" in url:
        raise PromotionError(f"unsupported promotion lock URL {url!r}: use postgresql://... or file:///folder")
    return FileLock(url)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lock_of_store(tracking_uri: str):
    """The lock every process using the registry at ``tracking_uri`` shares (see the module docstring);
    :class:`PromotionError` when there is none to derive."""
    uri = str(tracking_uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if _is_postgres(uri):
        return _postgres(uri)
    if scheme == "sqlite":
        import sqlalchemy as sa

        db = sa.engine.make_url(uri).database
        if not db or db == ":memory:":
            raise PromotionError(f"tracking URI {uri!r}: an in-memory registry has no promotion lock; {_SET_LOCK_URL}")
        db = Path(db).expanduser().resolve()
        return FileLock(db.parent, scope=db.name)
    if scheme in ("", "file") and not uri.startswith(("databricks", "uc")):
        root = Path(unquote(parts.path) if scheme == "file" else uri).expanduser().resolve()
        return FileLock(root.parent, scope=root.name)
    if scheme in ("http", "https") and _is_loopback(parts.hostname):
        port = parts.port or (443 if scheme == "https" else 80)
        return FileLock(LOCAL_LOCK_DIR, scope=f"{scheme}-loopback-{port}", mode=0o666)
    where = "the remote tracking server" if scheme in ("http", "https") else "the registry"
    raise PromotionError(f"no promotion lock for {where} {redact(uri)}: promotions by other processes or machines "
                         f"could not be serialised with this one; {_SET_LOCK_URL}")


def redact(uri: str) -> str:
    """``uri`` without a password."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    return uri


def select_lock(lock_url: str | None = None, *, tracking_uri: str | None = None):
    """The promotion lock backend: ``lock_url`` (default ``$GALMORPH_LOCK_URL``) through :func:`lock_from_url`,
    else the lock of the registry at ``tracking_uri`` (default: this process's MLflow registry URI) through
    :func:`lock_of_store`. Never depends on the caller's audit log or state folder."""
    url = lock_url or os.environ.get(LOCK_URL_ENV) or ""
    if url:
        return lock_from_url(url)
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_registry_uri()
    return lock_of_store(tracking_uri)
