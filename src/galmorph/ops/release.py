"""Watching a folder for new survey releases and starting exactly one rescoring run per release.

A release is a sub-folder ``DIR/<release>/`` holding ``release.json`` (``{"release": name, "manifest":
path}``) or ``manifest.parquet`` (or a simulator output with ``truth.parquet``). It is *ready* when
``release.json`` exists, or when its manifest's Parquet footer is readable (a half-copied file is not).

State (which releases were submitted, with the run id) lives in a JSON file guarded by an exclusive
``fcntl`` lock, written atomically, so that two watchers (a CronJob overlapping with a manual run, a
restart) never submit the same release twice. A release is recorded as ``pending`` *before* it is
submitted and ``submitted`` after; a ``pending`` entry left by a crash is resolved on the next pass
by looking the run up by its deterministic name (``galmorph-rescoring-<release>``) on Kubeflow before
submitting again.

A bad release folder (``release.json`` that is not valid JSON or not an object, a ``manifest`` or
``release`` that is not a non-empty string, a manifest that does not exist, a release name already
used by another folder) is skipped with the reason recorded under ``skipped`` in the state file;
the other releases go on. The state file is written atomically with the previous version kept as
``<state>.bak``; a corrupt state file is recovered from that backup with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Release:
    name: str
    path: Path  # the release folder (the rescoring pipeline's release_uri)
    manifest: Path


def run_name_for(release: str) -> str:
    return f"galmorph-rescoring-{release}"


class ReleaseError(ValueError):
    """A release folder cannot be processed; the message names the folder and the reason."""


class StateError(RuntimeError):
    """The watcher's state file is unusable (and so is its backup)."""


def _read_release_json(d: Path) -> dict:
    rj = d / "release.json"
    try:
        info = json.loads(rj.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"release {d.name}: cannot read release.json ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"release {d.name}: release.json is not valid JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise ReleaseError(f"release {d.name}: release.json must be a JSON object, got {type(info).__name__}")
    for key in ("manifest", "release"):
        if key in info and not (isinstance(info[key], str) and info[key].strip()):
            raise ReleaseError(f"release {d.name}: release.json '{key}' must be a non-empty string, "
                               f"got {info[key]!r}"[:500])
    name = info.get("release")
    if name is not None and not _safe_release_name(name.strip()):
        raise ReleaseError(f"release {d.name}: release.json 'release' {name!r} is not a usable release name "
                           f"(one path component of at most 100 printable characters, not '.' or '..')"[:500])
    return info


def _safe_release_name(name: str) -> bool:
    """A release name is used as a folder name (published catalogues) and in run names: one path
    component, printable, at most 100 characters."""
    return (0 < len(name) <= 100 and name not in (".", "..") and "/" not in name and "\\" not in name
            and name.isprintable())


def _ready_manifest(d: Path) -> Path | None:
    """The release's manifest when it is ready, None while it is still being written; raises
    :class:`ReleaseError` for a folder that is not a usable release."""
    import pyarrow.parquet as pq

    if (d / "release.json").exists():
        info = _read_release_json(d)
        m = Path(info.get("manifest", "manifest.parquet"))
        m = m if m.is_absolute() else d / m
        if not m.is_file():
            raise ReleaseError(f"release {d.name}: manifest {m} does not exist")
        return m
    m = d / "manifest.parquet"
    if not m.exists():
        return None
    try:
        pq.ParquetFile(m).metadata  # noqa: B018 - readable footer = completely written
    except Exception:  # noqa: BLE001
        log.info("release %s: manifest not complete yet; skipped", d)
        return None
    return m


def scan_releases(root: str | Path) -> tuple[list[Release], list[dict[str, str]]]:
    """Ready releases under ``root`` (sorted by folder name) and the folders skipped, each
    ``{"folder", "path", "status": "invalid"|"duplicate", "reason"}``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"release folder {root} does not exist")
    out: list[Release] = []
    skipped: list[dict[str, str]] = []
    by_name: dict[str, Release] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            m = _ready_manifest(d)
            if m is None:
                continue
            name = d.name
            if (d / "release.json").exists():
                name = _read_release_json(d).get("release", name).strip()
        except ReleaseError as exc:
            log.warning("%s; skipped", exc)
            skipped.append({"folder": d.name, "path": str(d.resolve()), "status": "invalid", "reason": str(exc)})
            continue
        if name in by_name:
            reason = f"release {name!r} of folder {d.name} is already the release of folder {by_name[name].path.name}"
            log.warning("%s; skipped", reason)
            skipped.append({"folder": d.name, "path": str(d.resolve()), "status": "duplicate", "reason": reason})
            continue
        rel = Release(name=str(name), path=d.resolve(), manifest=m)
        by_name[name] = rel
        out.append(rel)
    return out, skipped


def _read_state(path: Path) -> dict:
    state = json.loads(path.read_text())
    if not isinstance(state, dict) or not isinstance(state.get("releases", {}), dict):
        raise ValueError("not a release-watch state object")
    return state


def load_state(state_file: str | Path) -> dict:
    """The state dict; a corrupt file is recovered from ``<state>.bak`` with a warning (a clear
    :class:`StateError` when the backup is unusable too)."""
    state_file = Path(state_file)
    bak = state_file.with_name(state_file.name + ".bak")
    if not state_file.exists():
        if bak.exists():
            log.warning("release-watch state %s is missing; using its backup %s", state_file, bak)
            return load_state(bak)
        return {"releases": {}}
    try:
        return _read_state(state_file)
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        raise StateError(f"release-watch state {state_file}: cannot read ({exc.strerror or exc})") from exc
    try:
        state = _read_state(bak)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"release-watch state {state_file} is corrupt ({problem}) and its backup {bak} is "
                         f"unusable ({exc}); fix or remove it (removing it resubmits every release)") from exc
    log.warning("release-watch state %s is corrupt (%s); recovered from its backup %s", state_file, problem, bak)
    return state


def save_state(state: dict, state_file: str | Path) -> None:
    """Write ``state`` atomically, keeping the previous file as ``<state>.bak``."""
    state_file = Path(state_file)
    tmp = state_file.with_name(f".{state_file.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(state, indent=2, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        if state_file.exists():
            try:
                _read_state(state_file)  # only a good file becomes the backup
                bak_tmp = state_file.with_name(f".{state_file.name}.bak-{os.getpid()}")
                shutil.copy2(state_file, bak_tmp)
                os.replace(bak_tmp, state_file.with_name(state_file.name + ".bak"))
            except (ValueError, UnicodeDecodeError):
                pass
        os.replace(tmp, state_file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StateError(f"release-watch state {state_file}: cannot write ({exc.strerror or exc})") from exc


@contextlib.contextmanager
def locked_state(state_file: str | Path):
    """Yield the state dict under an exclusive lock; written back atomically on exit."""
    state_file = Path(state_file)
    lock = state_file.with_name(state_file.name + ".lock")
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StateError(f"release-watch state {state_file}: cannot create its lock ({exc.strerror or exc})") from exc
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            state = load_state(state_file)
            state.setdefault("releases", {})
            yield state
            save_state(state, state_file)
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def process_releases(root: str | Path, state_file: str | Path, start_run: Callable[[Release], dict[str, Any]],
                     find_existing: Callable[[Release], str | None] | None = None) -> list[dict[str, Any]]:
    """One pass: start ``start_run(release)`` for every ready release not yet in the state file.

    ``find_existing(release)`` (optional) returns the id of a run already started for a release left
    ``pending`` by an interrupted pass, so it is recorded instead of started again. Returns what was done.
    """
    done: list[dict[str, Any]] = []
    with locked_state(state_file) as state:
        rels = state["releases"]
        found, skipped = scan_releases(root)
        state["skipped"] = {}
        for sk in skipped:
            state["skipped"][sk["folder"]] = {**sk, "at": _now()}
            done.append({"release": sk["folder"], "action": sk["status"], "error": sk["reason"]})
        for rel in found:
            entry = rels.get(rel.name)
            if entry and entry.get("status") == "submitted":
                if entry.get("path") and entry["path"] != str(rel.path):
                    reason = (f"release {rel.name!r} of folder {rel.path} was already submitted from "
                              f"{entry['path']}")
                    state["skipped"][rel.path.name] = {"folder": rel.path.name, "path": str(rel.path),
                                                       "status": "duplicate", "reason": reason, "at": _now()}
                    done.append({"release": rel.name, "action": "duplicate", "error": reason})
                    log.warning("%s; skipped", reason)
                continue
            try:
                if entry and entry.get("status") == "pending" and find_existing is not None:
                    existing = find_existing(rel)
                    if existing:
                        rels[rel.name] = {**entry, "status": "submitted", "run_id": existing, "recovered": True}
                        done.append({"release": rel.name, "action": "recovered", "run_id": existing})
                        continue
            except Exception as exc:  # noqa: BLE001 - recorded, retried next pass; the others go on
                rels[rel.name] = {**entry, "error": f"looking up its run failed: {exc}"[:2000], "at": _now()}
                done.append({"release": rel.name, "action": "failed", "error": str(exc)})
                log.error("release %s: looking up an earlier run failed: %s", rel.name, exc)
                continue
            rels[rel.name] = {"status": "pending", "path": str(rel.path), "manifest": str(rel.manifest),
                              "since": _now()}
            # persist "pending" before starting: a crash now is resolved by find_existing next time
            save_state(state, state_file)
            log.info("new release %s (%s): starting the rescoring pipeline", rel.name, rel.path)
            try:
                res = start_run(rel)
                if not isinstance(res, dict):
                    raise TypeError(f"run starter returned {type(res).__name__}, not a dict")
            except Exception as exc:  # noqa: BLE001 - recorded, retried next pass
                rels[rel.name] = {**rels[rel.name], "status": "failed", "error": str(exc)[:2000], "at": _now()}
                done.append({"release": rel.name, "action": "failed", "error": str(exc)})
                log.error("release %s: rescoring could not be started: %s", rel.name, exc)
                continue
            rels[rel.name] = {**rels[rel.name], "status": "submitted", "run_id": res.get("run_id") or
                              res.get("run_dir"), "at": _now()}
            done.append({"release": rel.name, "action": "started", **{k: v for k, v in res.items()
                                                                      if k in ("run_id", "run_dir")}})
    return done


def watch(root: str | Path, state_file: str | Path, start_run: Callable[[Release], dict[str, Any]],
          find_existing: Callable[[Release], str | None] | None = None, once: bool = False,
          interval: float = 60.0, max_passes: int | None = None) -> list[dict[str, Any]]:
    """Poll ``root`` every ``interval`` seconds (or once) and start one run per new release."""
    all_done: list[dict[str, Any]] = []
    n = 0
    while True:
        all_done += process_releases(root, state_file, start_run, find_existing)
        n += 1
        if once or (max_passes is not None and n >= max_passes):
            return all_done
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# run starters
# --------------------------------------------------------------------------------------------
def local_starter(params: dict[str, Any] | None = None, pipeline_root: str | Path | None = None,
                  tracking_uri: str | None = None, data_root: str | Path | None = None,
                  connect_timeout: float | None = None):
    """Start the rescoring pipeline locally (kfp.local) for a release (not started when the MLflow server
    does not answer within ``connect_timeout`` s)."""
    from galmorph.ops.run import run_local

    def start(rel: Release) -> dict[str, Any]:
        p = {**(params or {}), "release_uri": str(rel.path), "release": rel.name}
        return run_local("rescoring", p, pipeline_root, tracking_uri=tracking_uri, data_root=data_root,
                         connect_timeout=connect_timeout)

    return start


def host_starter(host: str, params: dict[str, Any] | None = None, experiment: str = "galmorph", client=None,
                 release_root_in_cluster: str | None = None, namespace: str | None = None):
    """Submit the rescoring pipeline to Kubeflow for a release; and find a run already submitted for it.

    ``release_root_in_cluster`` maps the watched folder to the path the pipeline pods see (default:
    the same path, e.g. both mount the releases PVC at /releases). ``namespace`` is the Kubeflow
    profile namespace of multi-user installs."""
    from galmorph.ops.run import make_client, submit

    client = client or make_client(host, namespace)

    def uri(rel: Release) -> str:
        return str(Path(release_root_in_cluster) / rel.path.name) if release_root_in_cluster else str(rel.path)

    def start(rel: Release) -> dict[str, Any]:
        p = {**(params or {}), "release_uri": uri(rel), "release": rel.name}
        return submit("rescoring", host, p, run_name=run_name_for(rel.name), experiment=experiment, client=client)

    def find_existing(rel: Release) -> str | None:
        flt = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS",
                                          "string_value": run_name_for(rel.name)}]})
        resp = client.list_runs(page_size=5, filter=flt)
        runs = list(getattr(resp, "runs", None) or [])
        return getattr(runs[0], "run_id", None) if runs else None

    return start, find_existing
