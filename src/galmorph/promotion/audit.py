"""The audit trail of promotion decisions.

Every decision (:class:`PromotionDecision`) is recorded where every pod and a person can read it: one
audit run per decision in the MLflow experiment ``galmorph-promotion-audit`` holding the full record as
the artifact ``audit/decision.json`` (:func:`read_mlflow_audit` reads them back; the run id is tagged on
the candidate version as ``galmorph.decision_audit_run``). The record is also appended as one JSON line
to the local audit log (:func:`append_audit`, :func:`read_audit`; a convenience of the machine that decided).
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from galmorph.jsonsafe import finite_json, json_default
from galmorph.promotion.common import mlflow_client

log = logging.getLogger(__name__)

AUDIT_EXPERIMENT = "galmorph-promotion-audit"
AUDIT_ARTIFACT = "audit/decision.json"


@dataclass
class PromotionDecision:
    task: str
    model_name: str
    action: str  # promote | rollback | manual
    # promoted | first-champion | rejected | already-champion | rolled-back | lost-race | inconsistent |
    # manual-allowed | manual-passed | manual-failed | manual-unchecked | manual-reverted | manual-removed
    decision: str
    passed: bool
    candidate_version: str | None
    champion_before: str | None
    champion_after: str | None
    previous_champion_after: str | None = None
    challenger_after: str | None = None
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    manifest: str | None = None
    manifest_fingerprint: str | None = None
    timestamp: str = ""
    user: str = ""
    host: str = ""
    pid: int = 0
    # the alias move itself (#27): who moved @champion (promote | rollback | manual: the MLflow UI or API), when
    # and by whom as far as MLflow says (``moved_at``: the event's time; ``moved_by``: MLflow names no user), how
    # the platform learnt it (``detected_by``: webhook | reconcile | the command) and the delivery
    origin: str = ""
    moved_at: str | None = None
    moved_by: str | None = None
    detected_by: str = ""
    delivery_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        head = (f"{self.model_name}: {self.decision} (candidate v{self.candidate_version}, champion "
                f"v{self.champion_before} -> v{self.champion_after})")
        return head + "".join(f"\n  - {r}" for r in self.reasons)


def who() -> dict:
    """Who decides, when: ``timestamp`` (UTC, ms), ``user``, ``host``, ``pid``."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "unknown"
    return {"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "user": user,
            "host": socket.gethostname(), "pid": os.getpid()}


def stamp() -> str:
    """A tag-name-safe UTC time stamp (MLflow tag keys allow no '+')."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


# --------------------------------------------------------------------------------------------
# the local audit log
# --------------------------------------------------------------------------------------------
def append_audit(audit_log: str | Path, record: dict) -> Path:
    """Append one JSON line (under its own flock so that lines never interleave)."""
    audit_log = Path(audit_log)
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(finite_json(record), default=json_default, sort_keys=True) + "\n"
    with open(audit_log, "a", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return audit_log


def read_audit(audit_log: str | Path) -> list[dict]:
    p = Path(audit_log)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# the MLflow audit runs
# --------------------------------------------------------------------------------------------
def log_mlflow_audit(record: dict, client=None) -> str:
    """One MLflow run per decision in the experiment ``galmorph-promotion-audit``: tags
    ``galmorph.model``, ``galmorph.version``, ``galmorph.decision``, ``galmorph.action``, the record as
    the artifact ``audit/decision.json``. Returns the run id."""
    import tempfile

    c = mlflow_client(client)
    exp = c.get_experiment_by_name(AUDIT_EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else c.create_experiment(AUDIT_EXPERIMENT)
    tags = {"galmorph.model": str(record.get("model_name")), "galmorph.version": str(record.get("candidate_version")),
            "galmorph.decision": str(record.get("decision")), "galmorph.action": str(record.get("action")),
            "galmorph.user": str(record.get("user")), "galmorph.host": str(record.get("host")),
            **move_tags(record)}
    run = c.create_run(exp_id, run_name=f"{record.get('model_name')}-v{record.get('candidate_version')}-"
                                        f"{record.get('decision')}", tags=tags)
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        p = Path(tmp) / Path(AUDIT_ARTIFACT).name
        p.write_text(json.dumps(finite_json(record), default=json_default, sort_keys=True, indent=1))
        c.log_artifact(run.info.run_id, str(p), artifact_path=str(Path(AUDIT_ARTIFACT).parent))
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def read_mlflow_audit(model_name: str, client=None) -> list[dict]:
    """Every audit record of ``model_name`` from MLflow alone (oldest first)."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    c = mlflow_client(client)
    exp = c.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`galmorph.model` = '{model_name}'",
                         order_by=["attributes.start_time ASC"], max_results=10000)
    out = []
    with tempfile.TemporaryDirectory(prefix="audit-read-") as tmp:
        for r in runs:
            p = download_artifacts(run_id=r.info.run_id, artifact_path=AUDIT_ARTIFACT, dst_path=f"{tmp}/{r.info.run_id}")
            out.append({**json.loads(Path(p).read_text()), "audit_run_id": r.info.run_id})
    return out


def record_decision(audit_log: str | Path | None, dec: PromotionDecision, client=None) -> None:
    """The decision into MLflow (an audit run; its id tagged on the candidate version) and the local audit log."""
    try:
        run_id = log_mlflow_audit(dec.to_dict(), client)
        dec.checks["audit_run_id"] = run_id
        if dec.candidate_version is not None:
            mlflow_client(client).set_model_version_tag(dec.model_name, str(dec.candidate_version),
                                                        "galmorph.decision_audit_run", run_id)
    except Exception as exc:  # noqa: BLE001 - the local record below still holds it; say so loudly
        log.error("audit record of %s v%s not written to MLflow: %s", dec.model_name, dec.candidate_version, exc)
        dec.checks["audit_error"] = f"{type(exc).__name__}: {exc}"
    if audit_log is not None:
        append_audit(audit_log, dec.to_dict())


# --------------------------------------------------------------------------------------------
# the alias history (#27): which @champion every record leaves, read from the audit runs' tags
# --------------------------------------------------------------------------------------------
#: decisions whose record does not state the champion it leaves (another writer moved it): their
#: ``galmorph.audited_champion`` is the champion they read, not the one they found afterwards
UNWITNESSED = ("lost-race", "inconsistent")


def move_tags(record: dict) -> dict[str, str]:
    """The audit run's tags of the alias move: origin, champion before, the champion the record vouches for
    (``galmorph.audited_champion``: the registry vs audit comparison of :mod:`galmorph.promotion.manual`), time."""
    before, after = record.get("champion_before"), record.get("champion_after")
    vouched = before if record.get("decision") in UNWITNESSED else after
    origin = record.get("origin") or record.get("action") or ""
    return {"galmorph.origin": str(origin), "galmorph.champion_before": str(before),
            "galmorph.audited_champion": str(vouched), "galmorph.time": str(record.get("timestamp") or ""),
            "galmorph.moved_at": str(record.get("moved_at") or record.get("timestamp") or ""),
            "galmorph.manifest": str(record.get("manifest") or "")[:5000]}


def _none(v: str | None) -> str | None:
    return None if v in (None, "", "None") else v


def alias_history(model_name: str, client=None, max_results: int = 1000) -> list[dict]:
    """Every recorded move or decision on ``@champion`` of ``model_name``, oldest first, from the audit runs'
    tags alone (fast: no artifact is read): ``origin``, ``decision``, ``from``, ``to``, ``version``, ``time``,
    ``moved_at``, ``user``, ``audit_run_id``, ``rescoring`` (the release rescored with the new champion)."""
    c = mlflow_client(client)
    exp = c.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`galmorph.model` = '{model_name}'",
                         order_by=["attributes.start_time ASC"], max_results=max_results)
    out = []
    for r in runs:
        t = r.data.tags
        if "galmorph.audited_champion" not in t:
            continue  # a record from before #27: its champion is not on the run
        rescoring = t.get("galmorph.rescoring")
        out.append({"origin": t.get("galmorph.origin"), "decision": t.get("galmorph.decision"),
                    "from": _none(t.get("galmorph.champion_before")), "to": _none(t.get("galmorph.audited_champion")),
                    "version": _none(t.get("galmorph.version")), "time": t.get("galmorph.time"),
                    "moved_at": t.get("galmorph.moved_at"), "user": t.get("galmorph.user"),
                    "manifest": _none(t.get("galmorph.manifest")), "audit_run_id": r.info.run_id,
                    "start_time": r.info.start_time,
                    "rescoring": json.loads(rescoring) if rescoring else None})
    return out


def audited_champion(model_name: str, client=None) -> tuple[bool, str | None]:
    """``(known, version)``: the @champion the newest audit record vouches for (``known`` False: no record)."""
    hist = alias_history(model_name, client)
    return (True, hist[-1]["to"]) if hist else (False, None)
