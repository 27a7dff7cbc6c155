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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
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


def _ready_manifest(d: Path) -> Path | None:
    import pyarrow.parquet as pq

    rj = d / "release.json"
    if rj.exists():
        try:
            info = json.loads(rj.read_text())
        except json.JSONDecodeError:
            log.warning("release %s: release.json is not valid JSON yet; skipped", d)
            return None
        m = Path(info.get("manifest", "manifest.parquet"))
        return m if m.is_absolute() else d / m
    m = d / "manifest.parquet"
    if not m.exists():
        return None
    try:
        pq.ParquetFile(m).metadata  # noqa: B018 - readable footer = completely written
    except Exception:  # noqa: BLE001
        log.info("release %s: manifest not complete yet; skipped", d)
        return None
    return m


def find_releases(root: str | Path) -> list[Release]:
    """Ready releases under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"release folder {root} does not exist")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = _ready_manifest(d)
        if m is None:
            continue
        name = d.name
        if (d / "release.json").exists():
            with contextlib.suppress(Exception):
                name = json.loads((d / "release.json").read_text()).get("release", name)
        out.append(Release(name=str(name), path=d.resolve(), manifest=m))
    return out


@contextlib.contextmanager
def locked_state(state_file: str | Path):
    """Yield the state dict under an exclusive lock; written back atomically on exit."""
    state_file = Path(state_file)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    lock = state_file.with_name(state_file.name + ".lock")
    with open(lock, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            state = json.loads(state_file.read_text()) if state_file.exists() else {}
            state.setdefault("releases", {})
            yield state
            tmp = state_file.with_name(f".{state_file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
            os.replace(tmp, state_file)
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
        for rel in find_releases(root):
            entry = rels.get(rel.name)
            if entry and entry.get("status") == "submitted":
                continue
            if entry and entry.get("status") == "pending" and find_existing is not None:
                existing = find_existing(rel)
                if existing:
                    rels[rel.name] = {**entry, "status": "submitted", "run_id": existing, "recovered": True}
                    done.append({"release": rel.name, "action": "recovered", "run_id": existing})
                    continue
            rels[rel.name] = {"status": "pending", "path": str(rel.path), "manifest": str(rel.manifest),
                              "since": _now()}
            # persist "pending" before starting: a crash now is resolved by find_existing next time
            tmp = Path(state_file).with_name(f".{Path(state_file).name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
            os.replace(tmp, state_file)
            log.info("new release %s (%s): starting the rescoring pipeline", rel.name, rel.path)
            try:
                res = start_run(rel)
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
                  tracking_uri: str | None = None, data_root: str | Path | None = None):
    """Start the rescoring pipeline locally (kfp.local) for a release."""
    from galmorph.pipelines.run import run_local

    def start(rel: Release) -> dict[str, Any]:
        p = {**(params or {}), "release_uri": str(rel.path), "release": rel.name}
        return run_local("rescoring", p, pipeline_root, tracking_uri=tracking_uri, data_root=data_root)

    return start


def host_starter(host: str, params: dict[str, Any] | None = None, experiment: str = "galmorph", client=None,
                 release_root_in_cluster: str | None = None, namespace: str | None = None):
    """Submit the rescoring pipeline to Kubeflow for a release; and find a run already submitted for it.

    ``release_root_in_cluster`` maps the watched folder to the path the pipeline pods see (default:
    the same path, e.g. both mount the releases PVC at /releases). ``namespace`` is the Kubeflow
    profile namespace of multi-user installs."""
    from galmorph.pipelines.run import make_client, submit

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
