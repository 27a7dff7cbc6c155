"""Lineage of a model or a scored catalogue, from the MLflow and DVC records.

The chain, oldest first::

    data (manifest, DVC data version)  ->  training run  ->  registered version (+ aliases, decision)
        ->  releases scored with it (scoring run, catalogue, drift verdict)

:func:`lineage` accepts a model URI (``models:/galmorph-chirality/3``, ``models:/galmorph-chirality@champion``),
a bare task name (its champion) or a scored catalogue (``catalogue.parquet`` with its ``summary.json``
beside it, as :func:`galmorph.scoring.batch.merge_scores` writes). Scoring runs are found by their tags
(``galmorph.kind = scoring``, ``galmorph.model_version``, ``galmorph.model_uri``); drift verdicts by the
``drift.verdict`` tag of runs of the same release.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from galmorph.promotion.common import ModelRefError, mlflow_client as _client
from galmorph.promotion.common import parse_model_uri as _parse_model_uri

log = logging.getLogger(__name__)


class LineageError(ValueError):
    """The reference cannot be resolved to a model version (message says why)."""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` -> (name, version, None); ``models:/NAME@ALIAS`` -> (name, None, alias)
    (:func:`galmorph.promotion.common.parse_model_uri`, its error as a :class:`LineageError`)."""
    try:
        return _parse_model_uri(uri)
    except ModelRefError as exc:
        raise LineageError(str(exc)) from None


def _catalogue_summary(path: Path) -> dict:
    for cand in (path.parent / "summary.json", path.with_suffix(".summary.json")):
        if cand.exists():
            return json.loads(cand.read_text())
    raise LineageError(f"catalogue {path}: no summary.json beside it (written by `galmorph score`), so the model "
                       "that scored it is unknown")


def _all_experiment_ids(c) -> list[str]:
    return [e.experiment_id for e in c.search_experiments()]


def _search(c, filter_string: str, max_results: int = 200) -> list:
    ids = _all_experiment_ids(c)
    if not ids:
        return []
    return c.search_runs(ids, filter_string=filter_string, max_results=max_results, order_by=["attributes.start_time ASC"])


def data_record(manifest: str | None, tags: dict) -> dict:
    """The data link: the manifest, the DVC data version recorded by training, and the version DVC
    reports now when the manifest is on this machine (``current_data_version``, ``changed_since``)."""
    out: dict[str, Any] = {"manifest": manifest, "data_version": tags.get("galmorph.data_version"),
                           "data_version_source": tags.get("galmorph.data_version_source")}
    if manifest and Path(manifest).exists():
        try:
            from galmorph.catalogue.dvcops import data_version_info

            info = data_version_info(manifest)
            out["current_data_version"] = str(info.md5)
            out["current_data_version_source"] = str(info.source)
            if out["data_version"]:
                out["changed_since_training"] = str(info.md5) != out["data_version"]
        except Exception as exc:  # noqa: BLE001 - the recorded version still stands
            out["current_data_version_error"] = f"{type(exc).__name__}: {exc}"
    return out


def releases_scored_with(name: str, version: str, client=None) -> list[dict]:
    """Scoring runs of ``name`` version ``version``: release, run, catalogue artifact, counts and the
    drift verdict of the release (``drift.verdict`` tag on the scoring run or another run of the release)."""
    c = _client(client)
    runs = _search(c, f"tags.`galmorph.kind` = 'scoring' and tags.`galmorph.model_version` = '{version}'")
    out = []
    for r in runs:
        t = r.data.tags
        uri = t.get("galmorph.model_uri", "")
        if uri.startswith("models:/") and parse_model_uri(uri)[0] != name:
            continue
        release = t.get("galmorph.release")
        verdict = t.get("drift.verdict")
        drift_run = r.info.run_id if verdict else None
        if verdict is None and release not in (None, "None"):
            for d in _search(c, f"tags.`galmorph.release` = '{release}'"):
                if d.data.tags.get("drift.verdict"):
                    verdict, drift_run = d.data.tags["drift.verdict"], d.info.run_id
        out.append({"release": release, "run_id": r.info.run_id, "experiment_id": r.info.experiment_id,
                    "catalogue": f"runs:/{r.info.run_id}/catalogue", "model_uri": uri,
                    "n_scored": r.data.metrics.get("n_scored"), "n_quarantined": r.data.metrics.get("n_quarantined"),
                    "drift_verdict": verdict, "drift_run_id": drift_run})
    return out


def lineage(ref: str, client=None) -> dict:
    """The chain of ``ref`` (model URI, task name or scored catalogue path); see the module docstring.
    Returns ``{query, data, training, model, releases}`` (plus ``catalogue`` for a catalogue)."""
    from galmorph.tasks import TASKS

    c = _client(client)
    out: dict[str, Any] = {"query": ref}
    p = Path(ref)
    if ref in TASKS:
        from galmorph.promotion.registry import model_uri

        ref = model_uri(ref)
    elif not ref.startswith("models:/") and p.suffix in (".parquet", ".json") or p.is_file():
        if not p.exists():
            raise LineageError(f"catalogue {p} does not exist")
        summ = _catalogue_summary(p)
        uri, ver = summ.get("model_uri"), summ.get("model_version")
        out["catalogue"] = {"path": str(p), "release": summ.get("release"), "model_uri": uri, "model_version": ver,
                            "n_scored": summ.get("n_scored")}
        if not uri:
            raise LineageError(f"catalogue {p}: its summary names no model_uri")
        name = parse_model_uri(uri)[0] if str(uri).startswith("models:/") else None
        if name is None or ver in (None, "None"):
            raise LineageError(f"catalogue {p}: scored with {uri!r}, not a registered version; no registry lineage")
        ref = f"models:/{name}/{ver}"
    name, version, alias = parse_model_uri(ref)
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
        rm = c.get_registered_model(name)
    except MlflowException as exc:
        raise LineageError(f"{ref}: not in the registry ({exc.message})") from exc
    version = str(mv.version)
    aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == version)
    tags = dict(mv.tags or {})
    out["model"] = {"name": name, "version": version, "uri": f"models:/{name}/{version}", "aliases": aliases,
                    "run_id": mv.run_id, "description": mv.description or "", "decision": tags.get("galmorph.decision"),
                    "decision_time": tags.get("galmorph.decision_time"),
                    "card_run_id": tags.get("galmorph.card_run_id")}
    training: dict[str, Any] = {"run_id": mv.run_id}
    run_tags: dict = {}
    try:
        run = c.get_run(mv.run_id)
        run_tags = dict(run.data.tags)
        training.update({"experiment_id": run.info.experiment_id, "run_name": run.info.run_name,
                         "parent_run_id": run_tags.get("mlflow.parentRunId"), "preset": run_tags.get("galmorph.preset"),
                         "arch": run_tags.get("galmorph.arch"), "git_commit": run_tags.get("galmorph.git_commit"),
                         "start_time": run.info.start_time,
                         "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}})
    except MlflowException as exc:
        training["error"] = f"training run unreadable: {exc.message}"
    out["training"] = training
    manifest = run_tags.get("galmorph.manifest") or tags.get("galmorph.manifest")
    out["data"] = data_record(manifest, {**tags, **run_tags})
    out["releases"] = releases_scored_with(name, version, c)
    out["alias_moves"] = alias_moves(name, c)
    return out


def alias_moves(name: str, client=None) -> list[dict]:
    """The recorded moves of ``@champion`` of ``name``, oldest first (#27): origin (promote | rollback | manual),
    from -> to, decision, time, and the release rescored with the new champion (from the audit runs' tags)."""
    from galmorph.promotion.audit import alias_history

    try:
        hist = alias_history(name, client)
    except Exception as exc:  # noqa: BLE001 - the rest of the chain stands
        return [{"error": f"alias history unreadable: {type(exc).__name__}: {exc}"}]
    return [{k: h.get(k) for k in ("origin", "decision", "from", "to", "version", "time", "moved_at", "user",
                                   "audit_run_id", "rescoring")} for h in hist if h["from"] != h["to"]
            or h.get("origin") == "manual"]


def format_lineage(chain: dict) -> str:
    """The chain as indented text."""
    d, t, m = chain.get("data", {}), chain.get("training", {}), chain.get("model", {})
    lines = []
    if "catalogue" in chain:
        cat = chain["catalogue"]
        lines.append(f"catalogue {cat['path']} (release {cat.get('release')}, {cat.get('n_scored')} scored)")
    lines.append(f"data      manifest {d.get('manifest')}  version {d.get('data_version')} ({d.get('data_version_source')})")
    if d.get("changed_since_training"):
        lines.append(f"          ! the manifest has changed since training (now {d.get('current_data_version')})")
    lines.append(f"  -> training run {t.get('run_id')} (parent {t.get('parent_run_id')}, preset {t.get('preset')}, "
                 f"arch {t.get('arch')}, commit {t.get('git_commit')})")
    lines.append(f"  -> {m.get('name')} v{m.get('version')}  aliases: {', '.join(m.get('aliases') or []) or 'none'}  "
                 f"decision: {m.get('decision') or 'none'}")
    rel = chain.get("releases") or []
    if not rel:
        lines.append("  -> no release scored with it (scoring runs record the model version)")
    for r in rel:
        lines.append(f"  -> release {r['release']}: scoring run {r['run_id']}, catalogue {r['catalogue']}, "
                     f"{r.get('n_scored')} scored, drift verdict {r.get('drift_verdict') or 'not recorded'}")
    for mv in chain.get("alias_moves") or []:
        if "error" in mv:
            lines.append(f"  alias history: {mv['error']}")
            continue
        rs = mv.get("rescoring") or {}
        lines.append(f"  alias move ({mv.get('origin')}) @champion v{mv.get('from')} -> v{mv.get('to')} "
                     f"[{mv.get('decision')}] at {mv.get('time')}"
                     + (f"; rescoring of {rs.get('release')}: {rs.get('status')}" if rs else ""))
    return "\n".join(lines)
