"""Backup and restore of the local stack's state (``galmorph stack backup DIR`` / ``stack restore DIR``).

What is saved, into ``DIR`` (the layout of a state folder):

- ``mlflow/mlflow.db``: the MLflow store (sqlite), copied with sqlite's online backup API
  (:meth:`sqlite3.Connection.backup`, one step under a read transaction), so the copy is a consistent
  snapshot even while the MLflow server runs and writes;
- ``mlflow/artifacts/``: the server's artifact store (``--artifacts-destination``). The runs in the
  store name their artifacts ``mlflow-artifacts:/...`` (served by the server, independent of the
  state folder), so a restored store works under any state folder;
- ``labels/labels.db``: the label database (sqlite, the same way);
- ``registry/``: the promotion audit log(s) (``*.jsonl``; the configured ``audit_log`` included);
- ``evidently/``: the drift (Evidently) workspace;
- ``galmorph-backup.json``: the manifest: every file's path, size and sha256, the galmorph version,
  the time, the source state folder and the tracking URI form.

Consistency while the stack runs: the databases are snapshotted first; the folders are copied after
that snapshot. Artifacts are immutable once written and are written before the store refers to them,
so every artifact the snapshot names is in the copy (files written later are harmless extras). A
sqlite file found inside a copied folder (e.g. in the Evidently workspace) is copied with the backup
API too.

A Postgres label database or tracking store (``postgresql://...``) is the Helm chart's case: it is not
saved here (the manifest lists it under ``skipped``); docs/deployment.md, "Backup and restore", gives
the ``pg_dump``/``pg_restore`` steps.

``restore`` refuses a state folder whose stack runs (``stack status`` shows it ours) and one that
already holds state (unless ``force``), verifies every sha256 before touching anything, then copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

from galmorph.ops.stack import owned_pid
from galmorph.settings import Settings

MANIFEST = "galmorph-backup.json"
FORMAT = 1
DOCS = "docs/deployment.md, section 'Backup and restore'"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SERVICES = ("mlflow", "evidently")


class BackupError(RuntimeError):
    """A backup or restore cannot proceed; the message names the file or folder and the reason."""


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def sqlite_path(url: str | None) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (SQLAlchemy/MLflow form), None for any other database."""
    if not url or not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0]).expanduser()


def _redact(url: str | None) -> str | None:
    """A database URL without its password."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def sqlite_snapshot(src: Path, dst: Path) -> None:
    """A consistent copy of the sqlite database ``src`` while others may write to it: the online backup
    API in one step (``pages=-1``: one read transaction over the whole copy), then an integrity check."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    tmp.unlink(missing_ok=True)
    try:
        if not src.is_file():
            raise sqlite3.OperationalError("no such file")
        source = sqlite3.connect(src, timeout=60)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open the database {src} ({exc})") from exc
    try:
        with sqlite3.connect(tmp) as target:
            source.backup(target, pages=-1)
            ok = target.execute("PRAGMA integrity_check").fetchone()[0]
        target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot snapshot the database {src} ({exc})") from exc
    finally:
        source.close()
    if ok != "ok":
        raise BackupError(f"the snapshot of {src} fails sqlite's integrity check: {ok}")
    os.replace(tmp, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder; sqlite files inside it through :func:`sqlite_snapshot`, their -wal/-shm/-journal skipped."""
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            if name.endswith(("-wal", "-shm", "-journal")) or name.endswith(".lock"):
                continue
            s, d = Path(root) / name, dst / rel / name
            if not s.is_file():
                continue
            if _is_sqlite(s):
                sqlite_snapshot(s, d)
            else:
                shutil.copy2(s, d)


def _audit_logs(settings: Settings) -> list[Path]:
    """The audit log and every other ``*.jsonl`` beside it (rotated logs) that exist."""
    audit = Path(settings.audit_log)
    found = sorted(audit.parent.glob("*.jsonl*")) if audit.parent.is_dir() else []
    return [p for p in found if p.is_file() and not p.name.endswith(".lock")]


def _manifest_files(dest: Path) -> list[dict]:
    out = []
    for p in sorted(dest.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out.append({"path": p.relative_to(dest).as_posix(), "size": p.stat().st_size, "sha256": sha256(p)})
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("galmorph")
    except PackageNotFoundError:
        return "unknown"


def _foreign_artifact_locations(db: Path) -> list[str]:
    """Experiments of the snapshot whose artifacts are not under ``mlflow-artifacts:/`` (absolute paths
    that a restore into another folder would not move)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            rows = c.execute("SELECT artifact_location FROM experiments").fetchall()
    except sqlite3.Error:
        return []
    return sorted({r[0] for r in rows if r[0] and not str(r[0]).startswith("mlflow-artifacts:")})


# ------------------------------------------------------------------------------------------------
# backup
# ------------------------------------------------------------------------------------------------
def _snapshot_databases(settings: Settings, dest: Path, parts: list, skipped: list) -> None:
    for name, url, rel in (("mlflow-store", settings.mlflow_backend_uri, "mlflow/mlflow.db"),
                           ("label-db", settings.label_db_url, "labels/labels.db")):
        path = sqlite_path(url)
        if path is None:
            skipped.append({"name": name, "url": _redact(url),
                            "reason": f"not sqlite: a Postgres database is the Helm chart's case; back it up with "
                                      f"pg_dump as in {DOCS}"})
        elif not path.is_file():
            skipped.append({"name": name, "url": _redact(url), "reason": f"{path} does not exist (nothing saved yet)"})
        else:
            sqlite_snapshot(path, dest / rel)
            parts.append({"name": name, "kind": "sqlite", "source": str(path), "path": rel,
                          "method": "sqlite3 online backup API"})


def _copy_folders(settings: Settings, dest: Path, parts: list, skipped: list) -> None:
    for name, src, rel in (("mlflow-artifacts", settings.mlflow_artifacts_dir, "mlflow/artifacts"),
                           ("evidently-workspace", settings.evidently_workspace, "evidently")):
        if src.is_dir():
            _copy_tree(src, dest / rel)
            parts.append({"name": name, "kind": "folder", "source": str(src), "path": rel, "method": "copy"})
        else:
            skipped.append({"name": name, "source": str(src), "reason": "does not exist (nothing saved yet)"})
    logs = _audit_logs(settings)
    for p in logs:
        (dest / "registry").mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest / "registry" / p.name)
    if logs:
        parts.append({"name": "audit-log", "kind": "files", "source": str(Path(settings.audit_log).parent),
                      "path": "registry", "files": [p.name for p in logs], "audit_log": Path(settings.audit_log).name,
                      "method": "copy"})
    else:
        skipped.append({"name": "audit-log", "source": str(settings.audit_log), "reason": "does not exist"})


def backup(settings: Settings, dest: str | Path) -> dict:
    """Save the state of ``settings``' stack into ``dest`` (new or empty folder); returns the manifest.
    Safe while the stack runs (see the module docstring)."""
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"backup folder {dest} exists and is not empty; choose a new folder")
    if dest == settings.state_dir or settings.state_dir in dest.parents:
        raise BackupError(f"backup folder {dest} is inside the state folder {settings.state_dir}; choose another")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the backup folder {dest} ({exc.strerror or exc})") from exc
    started = time.time()
    parts: list[dict] = []
    skipped: list[dict] = []
    _snapshot_databases(settings, dest, parts, skipped)  # the databases first, the folders after them
    _copy_folders(settings, dest, parts, skipped)
    db = dest / "mlflow" / "mlflow.db"
    manifest = {
        "format": FORMAT, "kind": "galmorph-stack-backup", "galmorph_version": _version(),
        "created_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3), "source_state_dir": str(settings.state_dir),
        "tracking_uri": settings.mlflow_tracking_uri, "backend_store_uri": _redact(settings.mlflow_backend_uri),
        "label_db_url": _redact(settings.label_db_url),
        "artifact_uri_form": "mlflow-artifacts:/ (served by the MLflow server from its --artifacts-destination; "
                             "independent of the state folder)",
        "foreign_artifact_locations": _foreign_artifact_locations(db) if db.is_file() else [],
        "consistency": "databases: sqlite online backup API (one consistent snapshot each, taken first); folders "
                       "copied after the snapshots (artifacts are immutable once written, so all the snapshot "
                       "names are present; later files are extras)",
        "parts": parts, "skipped": skipped, "files": _manifest_files(dest),
    }
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, dest / MANIFEST)
    return {**manifest, "dir": str(dest), "manifest": str(dest / MANIFEST)}


# ------------------------------------------------------------------------------------------------
# restore
# ------------------------------------------------------------------------------------------------
def read_manifest(src: str | Path) -> dict:
    src = Path(src).expanduser()
    if not src.is_dir():
        raise BackupError(f"backup folder {src} does not exist")
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{path} not found: {src} is not a galmorph stack backup") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != "galmorph-stack-backup":
        raise BackupError(f"{path} is not a galmorph stack backup manifest")
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: backup format {manifest.get('format')!r}, this galmorph reads {FORMAT}")
    return manifest


def verify(src: str | Path, manifest: dict | None = None) -> list[dict]:
    """Check every file the manifest lists (present, size, sha256); raises naming the first bad file."""
    src = Path(src).expanduser()
    manifest = manifest or read_manifest(src)
    for f in manifest.get("files", []):
        p = src / f["path"]
        if not p.is_file():
            raise BackupError(f"backup file missing: {f['path']} (listed in {MANIFEST})")
        if p.stat().st_size != f["size"] or sha256(p) != f["sha256"]:
            raise BackupError(f"checksum mismatch: {f['path']} differs from the sha256 recorded in {MANIFEST}; "
                              "the backup is damaged")
    return manifest.get("files", [])


def _targets(settings: Settings) -> dict[str, Path | None]:
    """Where each part goes in the target state folder (None: not a file here, e.g. a Postgres URL)."""
    return {"mlflow-store": sqlite_path(settings.mlflow_backend_uri), "label-db": sqlite_path(settings.label_db_url),
            "mlflow-artifacts": settings.mlflow_artifacts_dir, "evidently-workspace": settings.evidently_workspace,
            "audit-log": Path(settings.audit_log).parent}


def _has_state(p: Path, part: str, settings: Settings) -> bool:
    if part == "audit-log":
        return bool(_audit_logs(settings))
    return p.is_file() or (p.is_dir() and any(p.iterdir()))


def _check_target(settings: Settings, force: bool) -> None:
    running = [n for n in _SERVICES if owned_pid(settings, n) is not None]
    if running:
        raise BackupError(f"the stack of {settings.state_dir} is running ({', '.join(running)}); "
                          "run `galmorph stack down` first")
    full = [str(p) for part, p in _targets(settings).items() if p is not None and _has_state(p, part, settings)]
    if full and not force:
        raise BackupError(f"state folder {settings.state_dir} already holds state ({', '.join(full)}); "
                          "restore into an empty state folder or pass --force to replace it")


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    else:
        for q in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm"), p.with_name(p.name + "-journal")):
            q.unlink(missing_ok=True)


def _restore_part(src: Path, part: dict, target: Path, settings: Settings) -> dict:
    rel = src / part["path"]
    if part["name"] == "audit-log":
        target.mkdir(parents=True, exist_ok=True)
        for p in _audit_logs(settings):
            p.unlink()
        for name in part.get("files", []):
            out = Path(settings.audit_log) if name == part.get("audit_log") else target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(rel / name, out)
        return {"name": part["name"], "to": str(target)}
    _remove(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if rel.is_dir():
        shutil.copytree(rel, target)
    else:
        shutil.copy2(rel, target)
    return {"name": part["name"], "to": str(target)}


def restore(settings: Settings, src: str | Path, force: bool = False) -> dict:
    """Restore the backup ``src`` into ``settings``' state folder (see the module docstring); returns what
    was restored and skipped. ``stack up`` then serves it."""
    src = Path(src).expanduser().resolve()
    manifest = read_manifest(src)
    _check_target(settings, force)
    files = verify(src, manifest)
    targets = _targets(settings)
    restored, skipped = [], list(manifest.get("skipped", []))
    for part in manifest.get("parts", []):
        target = targets.get(part["name"])
        if target is None:
            skipped.append({"name": part["name"], "reason": f"the target is not sqlite here (a Postgres database "
                                                            f"is the chart's case: pg_restore as in {DOCS})"})
            continue
        try:
            restored.append(_restore_part(src, part, target, settings))
        except OSError as exc:
            raise BackupError(f"cannot restore {part['path']} to {target} ({exc.strerror or exc})") from exc
    return {"dir": str(src), "state_dir": str(settings.state_dir), "verified_files": len(files),
            "restored": restored, "skipped": skipped, "backup_created_at": manifest.get("created_at"),
            "galmorph_version": manifest.get("galmorph_version")}
