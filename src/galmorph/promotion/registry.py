"""Guarded champion/challenger promotion in the MLflow model registry.

:func:`promote` evaluates a candidate version of ``galmorph-<task>`` and the current ``@champion`` on the
same evaluation manifest and applies a :class:`PromotionPolicy`:

* the primary metric (default macro F1) must improve by at least ``min_improvement`` (delta);
* no redshift-bin AUC (bins with at least ``min_bin_n`` objects in both evaluations) may drop by more
  than ``max_bin_auc_drop`` (epsilon);
* chirality-equivariant models must pass the mirror test;
* quality floor (also for the first champion): the candidate's macro-F1 must beat the majority-class
  predictor's macro-F1 on the same evaluation set by ``min_margin_over_majority``;
* winding check (chirality): the candidate's disagreement with the physical winding measurement (on the
  galaxies where the measurement is confident, ``|z| >= winding_min_confidence``, and the model predicts
  CW or ACW) may exceed the champion's by at most ``winding_margin``; a larger excess is flagged in the
  decision, and blocks the promotion when ``winding_blocks``.

Pass: alias ``champion`` moves to the candidate and the old champion becomes ``previous-champion``;
both versions are tagged with the decision and metrics. Fail: the candidate gets the ``challenger``
alias and the reasons are returned (and printed by the CLI). With no champion the candidate becomes
the first champion (the mirror test and the quality floor still apply). :func:`rollback` restores ``previous-champion``.

Every decision is recorded where every pod and a person can read it: MLflow model-version tags
(``galmorph.decision*``, a ``galmorph.audit.<time>`` history entry and ``galmorph.decision_audit_run``)
plus one audit run per decision in the MLflow experiment ``galmorph-promotion-audit`` holding the full
record as the artifact ``audit/decision.json`` (:func:`read_mlflow_audit` reads them back). The record is
also appended as one JSON line to the local audit log (a convenience of the machine that decided).

Concurrency: the whole read-evaluate-compare-write sequence of one registered model runs under one
exclusive lock per registered model, from :func:`select_lock`: a Postgres advisory lock
(``pg_advisory_lock`` through SQLAlchemy) when the lock URL (``GALMORPH_LOCK_URL``, or a ``postgresql``
tracking URI) is a Postgres database — e.g. the tracking server's backend store, shared by every pod —
else an ``fcntl.flock`` file lock in the folder of a ``file://`` lock URL (a shared filesystem) or beside
the audit log. After writing, the aliases are read back and checked (:class:`RegistryConsistencyError`
if someone changed them outside the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from galmorph.jsonsafe import finite_json, json_default

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"


def model_uri(task: str, alias: str = CHAMPION) -> str:
    """The registered model of ``task`` at ``alias``: ``models:/galmorph-<task>@<alias>``."""
    from galmorph.models.io import registered_name

    if not task or not alias:
        raise ValueError(f"model URI needs a task and an alias, got task={task!r}, alias={alias!r}")
    return f"models:/{registered_name(task)}@{alias}"


def model_ref(text: str, alias: str = CHAMPION) -> str:
    """A bare task name (``chirality``) -> :func:`model_uri` of that task at ``alias``; any other text
    is a model URI or path and is returned unchanged."""
    from galmorph.tasks import TASKS

    return model_uri(text, alias) if text in TASKS else text


class PromotionError(RuntimeError):
    """A promotion or rollback cannot be carried out (message says why)."""


class RegistryConsistencyError(PromotionError):
    """The aliases read back after a promotion are not the ones written."""


@dataclass
class PromotionPolicy:
    primary_metric: str = "f1_macro"
    min_improvement: float = 0.0  # delta: candidate - champion >= delta
    max_bin_auc_drop: float = 0.05  # epsilon: champion - candidate <= epsilon in every z bin
    min_bin_n: int = 10  # bins with fewer evaluated objects (in either evaluation) are not compared
    require_mirror_test: bool = True  # for chirality-equivariant candidates
    bin_metric: str = "auc_macro"
    # quality floor: the candidate's macro-F1 must beat the majority-class predictor's macro-F1 on the same
    # evaluation set by at least this margin (also for the first champion); None switches the floor off
    min_margin_over_majority: float | None = 0.05
    # winding check (chirality): challenger disagreement with the winding measurement - champion's > margin
    # is flagged (and blocks when winding_blocks); None switches the check off
    winding_margin: float | None = 0.02
    winding_min_confidence: float = 2.0
    winding_blocks: bool = True

    @classmethod
    def from_params(cls, params: dict | str | Path | None, **overrides) -> "PromotionPolicy":
        """Policy from the ``promotion:`` section of params.yaml (a path or a loaded dict); keyword
        overrides that are not None win (CLI flags)."""
        section: dict = {}
        if isinstance(params, (str, Path)):
            import yaml

            p = Path(params)
            if p.exists():
                section = (yaml.safe_load(p.read_text()) or {}).get("promotion", {}) or {}
        elif isinstance(params, dict):
            section = params.get("promotion", params) or {}
        aliases = {"delta": "min_improvement", "epsilon": "max_bin_auc_drop", "primary": "primary_metric"}
        vals = {aliases.get(k, k): v for k, v in section.items()}
        vals.update({aliases.get(k, k): v for k, v in overrides.items() if v is not None})
        unknown = set(vals) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown promotion policy key(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**vals)


@dataclass
class PromotionDecision:
    task: str
    model_name: str
    action: str  # promote | rollback
    decision: str  # promoted | first-champion | rejected | already-champion | rolled-back
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

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        head = (f"{self.model_name}: {self.decision} (candidate v{self.candidate_version}, champion "
                f"v{self.champion_before} -> v{self.champion_after})")
        return head + "".join(f"\n  - {r}" for r in self.reasons)


# --------------------------------------------------------------------------------------------
# locking and audit
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def registry_lock(lock_path: str | Path, timeout: float = 3600.0, poll: float = 0.2):
    """Exclusive advisory lock (``fcntl.flock``) on ``lock_path``; waits up to ``timeout`` seconds."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    t0 = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout:
                    raise PromotionError(f"could not lock {lock_path} within {timeout:.0f}s (another promotion running?)")
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {datetime.now(timezone.utc).isoformat()}\n".encode())
        log.debug("locked %s", lock_path)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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



def default_lock_path(audit_log: str | Path, model_name: str) -> Path:
    return Path(audit_log).parent / f".{model_name}.promotion.lock"


#: Environment variable naming the lock every promoting pod shares (``postgresql://...`` or ``file:///dir``).
LOCK_URL_ENV = "GALMORPH_LOCK_URL"


class FileLock:
    """Promotion lock backend: ``fcntl.flock`` on ``<folder>/.<model>.promotion.lock`` (one machine, or a
    filesystem every promoting process mounts)."""

    kind = "file"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, model_name: str) -> Path:
        return self.folder / f".{model_name}.promotion.lock"

    def hold(self, model_name: str, timeout: float = 3600.0):
        return registry_lock(self.path(model_name), timeout=timeout)

    def __repr__(self) -> str:
        return f"FileLock({str(self.folder)!r})"


class PostgresAdvisoryLock:
    """Promotion lock backend: a session-level Postgres advisory lock (``pg_try_advisory_lock`` polled up
    to the timeout, ``pg_advisory_unlock`` after) keyed by the registered model name, on the database of
    ``url`` (e.g. the MLflow backend store every pod reaches)."""

    kind = "postgres"

    def __init__(self, url: str):
        self.url = url

    @staticmethod
    def key(model_name: str) -> int:
        """A stable signed 64-bit advisory-lock key of ``model_name``."""
        import hashlib

        return int.from_bytes(hashlib.sha256(f"galmorph.promotion:{model_name}".encode()).digest()[:8], "big",
                              signed=True)

    @contextlib.contextmanager
    def hold(self, model_name: str, timeout: float = 3600.0, poll: float = 0.5):
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        k = self.key(model_name)
        t0 = time.monotonic()
        try:
            with engine.connect() as conn:
                while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": k}).scalar():
                    if time.monotonic() - t0 > timeout:
                        raise PromotionError(f"could not take the Postgres advisory lock of {model_name} (key {k}) "
                                             f"within {timeout:.0f}s (another promotion running?)")
                    time.sleep(poll)
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": k})
        finally:
            engine.dispose()

    def __repr__(self) -> str:
        import sqlalchemy as sa

        return f"PostgresAdvisoryLock({sa.engine.make_url(self.url).render_as_string(hide_password=True)!r})"


def select_lock(lock_url: str | None, audit_log: str | Path | None = None, tracking_uri: str | None = None):
    """The promotion lock backend: ``lock_url`` (default: ``$GALMORPH_LOCK_URL``; then a ``postgresql``
    ``tracking_uri``) ``postgresql[+driver]://...`` -> :class:`PostgresAdvisoryLock`; ``file:///dir`` or a
    plain folder -> :class:`FileLock` there; none -> :class:`FileLock` beside ``audit_log``."""
    url = lock_url or os.environ.get(LOCK_URL_ENV) or ""
    if not url and tracking_uri and tracking_uri.startswith("postgresql"):
        url = tracking_uri
    if url.startswith(("postgresql:", "postgresql+", "postgres:")):
        return PostgresAdvisoryLock(url.replace("postgres://", "postgresql://", 1))
    if url.startswith("file://"):
        return FileLock(url[len("file://"):])
    if "://" in url:
        raise PromotionError(f"unsupported promotion lock URL {url!r}: use postgresql://... or file:///folder")
    if url:
        return FileLock(url)
    if audit_log is None:
        raise PromotionError(f"no promotion lock: set {LOCK_URL_ENV} or pass an audit log folder")
    return FileLock(Path(audit_log).parent)


AUDIT_EXPERIMENT = "galmorph-promotion-audit"
AUDIT_ARTIFACT = "audit/decision.json"


def log_mlflow_audit(record: dict, client=None) -> str:
    """One MLflow run per decision in the experiment ``galmorph-promotion-audit``: tags
    ``galmorph.model``, ``galmorph.version``, ``galmorph.decision``, ``galmorph.action``, the record as
    the artifact ``audit/decision.json``. Returns the run id."""
    import tempfile

    c = _client(client)
    exp = c.get_experiment_by_name(AUDIT_EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else c.create_experiment(AUDIT_EXPERIMENT)
    tags = {"galmorph.model": str(record.get("model_name")), "galmorph.version": str(record.get("candidate_version")),
            "galmorph.decision": str(record.get("decision")), "galmorph.action": str(record.get("action")),
            "galmorph.user": str(record.get("user")), "galmorph.host": str(record.get("host"))}
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

    c = _client(client)
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


def _record(audit_log: str | Path | None, dec: "PromotionDecision", client=None) -> None:
    """The decision into MLflow (an audit run; its id tagged on the version) and the local audit log."""
    try:
        run_id = log_mlflow_audit(dec.to_dict(), client)
        dec.checks["audit_run_id"] = run_id
        if dec.candidate_version is not None:
            _client(client).set_model_version_tag(dec.model_name, str(dec.candidate_version),
                                                  "galmorph.decision_audit_run", run_id)
    except Exception as exc:  # noqa: BLE001 - the local record below still holds it; say so loudly
        log.error("audit record of %s v%s not written to MLflow: %s", dec.model_name, dec.candidate_version, exc)
        dec.checks["audit_error"] = f"{type(exc).__name__}: {exc}"
    if audit_log is not None:
        append_audit(audit_log, dec.to_dict())


# --------------------------------------------------------------------------------------------
# registry helpers
# --------------------------------------------------------------------------------------------
def _client(client=None):
    if client is not None:
        return client
    import mlflow

    return mlflow.MlflowClient()


def aliases(name: str, client=None) -> dict[str, str]:
    """``{alias: version}`` of a registered model (one read, a consistent snapshot)."""
    from mlflow.exceptions import MlflowException

    c = _client(client)
    try:
        rm = c.get_registered_model(name)
    except MlflowException as exc:
        raise PromotionError(f"registered model {name!r} not found in the registry ({exc.message})") from exc
    return {str(k): str(v) for k, v in (rm.aliases or {}).items()}


def latest_version(name: str, client=None) -> str:
    c = _client(client)
    versions = c.search_model_versions(f"name='{name}'")
    if not versions:
        raise PromotionError(f"registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def _check_version(name: str, version: str, client) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise PromotionError(f"{name} version {version} does not exist ({exc.message})") from exc


def _tag(client, name: str, version: str | None, tags: dict[str, Any]) -> None:
    if version is None:
        return
    for k, v in tags.items():
        s = v if isinstance(v, str) else json.dumps(finite_json(v), default=json_default, sort_keys=True)
        client.set_model_version_tag(name, str(version), k, s[:5000])


# --------------------------------------------------------------------------------------------
# the policy
# --------------------------------------------------------------------------------------------
def quality_floor(report: dict, margin: float | None) -> dict | None:
    """The quality floor of an evaluation report: its macro-F1 (mean over the classes with support,
    :func:`galmorph.evaluation.metrics.macro_f1`) must exceed the majority-class predictor's macro-F1 on
    the same objects by at least ``margin``. Returns the check (``passed``, ``f1_macro``,
    ``majority_f1_macro``, ``majority_class``, ``margin``, ``reason``) or None when ``margin`` is None."""
    if margin is None:
        return None
    cls = report.get("classification") or {}
    base = cls.get("majority_baseline")
    f1 = float((cls.get("macro") or {}).get("f1", float("nan")))
    if not base:
        return {"passed": False, "margin": float(margin), "f1_macro": f1,
                "reason": "quality floor: the evaluation has no majority-class baseline (re-evaluate with this version)"}
    b = float(base["f1_macro"])
    ok = math.isfinite(f1) and math.isfinite(b) and f1 >= b + float(margin)
    out = {"passed": bool(ok), "f1_macro": f1, "majority_f1_macro": b, "majority_class": base.get("class"),
           "margin": float(margin), "absent_classes": list(cls.get("absent_classes", []))}
    if not ok:
        out["reason"] = (f"quality floor: macro-F1 {f1:.4f} does not beat the majority-class predictor (always "
                         f"{base.get('class')!r}: macro-F1 {b:.4f}) by the required margin {float(margin):g} on the "
                         f"held-out set (needs >= {b + float(margin):.4f})")
    return out


def winding_check(candidate: dict, champion: dict | None, policy: PromotionPolicy) -> dict | None:
    """The winding check of two evaluation reports (their ``winding`` blocks,
    :func:`galmorph.scoring.ensemble.winding_report`): ``flagged`` when the candidate's disagreement with the
    measurement exceeds the champion's by more than ``policy.winding_margin``; ``blocking`` when it is
    flagged and ``policy.winding_blocks``. None when the check is off or the candidate has no block."""
    cw = candidate.get("winding")
    if policy.winding_margin is None or not cw:
        return None
    hw = (champion or {}).get("winding") or {}
    a, b = float(cw.get("disagreement", math.nan)), float(hw.get("disagreement", math.nan))
    out = {"candidate_disagreement": a, "champion_disagreement": b, "candidate_n_compared": cw.get("n_compared"),
           "champion_n_compared": hw.get("n_compared"), "margin": float(policy.winding_margin),
           "min_confidence": cw.get("min_confidence"), "compared": False, "flagged": False, "blocking": False}
    if champion is None or not (math.isfinite(a) and math.isfinite(b)):
        out["note"] = ("no champion to compare with" if champion is None else
                       "no galaxy with a confident measurement and a CW/ACW prediction in one of the evaluations")
        return out
    excess = a - b
    flagged = excess > float(policy.winding_margin) + 1e-12
    out.update(compared=True, excess=excess, flagged=bool(flagged), blocking=bool(flagged and policy.winding_blocks))
    if flagged:
        out["reason"] = (f"winding check: the candidate disagrees with the winding measurement on {a:.1%} of its "
                         f"confident CW/ACW galaxies (n={cw.get('n_compared')}) vs the champion's {b:.1%} "
                         f"(n={hw.get('n_compared')}): +{excess:.3f} > margin {float(policy.winding_margin):g}"
                         + ("" if policy.winding_blocks else " (flagged, not blocking)"))
    return out


def compare(candidate: dict, champion: dict | None, policy: PromotionPolicy, chirality_equivariant: bool = False,
            ) -> tuple[bool, list[str], dict]:
    """Apply the policy to two evaluation reports (``EvaluationResult.report``; ``champion`` None for the
    first model). Returns ``(passed, reasons, checks)``; reasons explain every failed check."""
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    cm = candidate["metrics"]
    pm = policy.primary_metric
    if pm not in cm:
        raise PromotionError(f"primary metric {pm!r} not in the evaluation (available e.g. "
                             f"{sorted(k for k in cm if 'macro' in k or k == 'accuracy')})")
    if chirality_equivariant and policy.require_mirror_test:
        mirror = (candidate.get("chirality") or {}).get("mirror")
        ok = bool(mirror and mirror.get("passed"))
        checks["mirror_test"] = {"passed": ok, **({k: mirror[k] for k in ("cvs_pred", "cvs_pred_mirror",
                                                                         "label_swap_fraction", "max_prob_diff")}
                                                 if mirror else {})}
        if not ok:
            reasons.append("chirality-equivariant model fails the mirror test" + (
                f" (label swap fraction {mirror['label_swap_fraction']:.4f}, max |dp| {mirror['max_prob_diff']:.2e})"
                if mirror else " (not run)"))
    floor = quality_floor(candidate, policy.min_margin_over_majority)
    if floor is not None:
        checks["quality_floor"] = floor
        if not floor["passed"]:
            reasons.append(floor["reason"])
    if champion is not None:
        a, b = float(cm[pm]), float(champion["metrics"].get(pm, float("nan")))
        diff = a - b
        ok = math.isfinite(a) and (not math.isfinite(b) or diff >= policy.min_improvement)
        checks["primary"] = {"metric": pm, "candidate": a, "champion": b, "improvement": diff,
                             "min_improvement": policy.min_improvement, "passed": ok}
        if not ok:
            reasons.append(f"{pm} {a:.4f} vs champion {b:.4f}: improvement {diff:+.4f} < delta={policy.min_improvement}")
        bins: dict[str, Any] = {}
        for zb, d in candidate.get("redshift_bins", {}).items():
            e = champion.get("redshift_bins", {}).get(zb)
            if e is None:
                continue
            ca, ch = d.get(policy.bin_metric, float("nan")), e.get(policy.bin_metric, float("nan"))
            if (d.get("n", 0) < policy.min_bin_n or e.get("n", 0) < policy.min_bin_n or ca is None or ch is None
                    or not (math.isfinite(ca) and math.isfinite(ch))):
                bins[zb] = {"compared": False, "n": d.get("n", 0)}
                continue
            drop = ch - ca
            ok_b = drop <= policy.max_bin_auc_drop + 1e-12
            bins[zb] = {"compared": True, "candidate": ca, "champion": ch, "drop": drop, "passed": ok_b}
            if not ok_b:
                reasons.append(f"redshift bin {zb}: {policy.bin_metric} {ca:.4f} vs champion {ch:.4f} drops by "
                               f"{drop:.4f} > epsilon={policy.max_bin_auc_drop}")
        checks["redshift_bins"] = bins
    wind = winding_check(candidate, champion, policy)
    if wind is not None:
        checks["winding"] = wind
        if wind["blocking"]:
            reasons.append(wind["reason"])
    return not reasons, reasons, checks


# --------------------------------------------------------------------------------------------
# promote / rollback
# --------------------------------------------------------------------------------------------
def _who() -> dict:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "unknown"
    return {"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "user": user,
            "host": socket.gethostname(), "pid": os.getpid()}


def _stamp() -> str:
    """A tag-name-safe UTC time stamp (MLflow tag keys allow no '+')."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _key_metrics(metrics: dict[str, float], policy: PromotionPolicy) -> dict[str, float]:
    keep = {"accuracy", "f1_macro", "auc_macro", "precision_macro", "recall_macro", "n", policy.primary_metric,
            "baseline_f1_macro", "baseline_accuracy", "n_absent_classes", "winding_disagreement",
            "winding_n_compared"}
    out = {k: v for k, v in metrics.items() if k in keep or (k.startswith("zbin_") and k.endswith("_auc_macro"))}
    for k in ("chirality_mirror_passed", "chirality_cvs_cvs_pred", "chirality_sweep_slope", "chirality_sweep_intercept"):
        if k in metrics:
            out[k] = metrics[k]
    return out


def _lock(lock_path, lock_url, audit_log, model_name: str, timeout: float):
    """An explicit ``lock_path`` file lock, else the :func:`select_lock` backend's lock of ``model_name``."""
    if lock_path:
        return registry_lock(lock_path, timeout=timeout)
    import mlflow

    backend = select_lock(lock_url, audit_log, mlflow.get_tracking_uri())
    log.debug("promotion lock of %s: %r", model_name, backend)
    return backend.hold(model_name, timeout=timeout)


def promote(task: str, version: str | int | None = None, *, eval_manifest, audit_log: str | Path,
            policy: PromotionPolicy | None = None, out_dir: str | Path | None = None,
            data_root: str | Path | None = None, lock_path: str | Path | None = None, lock_timeout: float = 3600.0,
            client=None, log_evaluations: bool = True, evaluate_kwargs: dict | None = None,
            lock_url: str | None = None) -> PromotionDecision:
    """Promote ``version`` (default: the latest) of ``galmorph-<task>`` if it beats ``@champion`` on
    ``eval_manifest`` under ``policy``; see the module docstring. Returns the decision (also in the
    audit log and the model-version tags)."""
    import tempfile

    from galmorph.evaluation.core import evaluate, manifest_fingerprint
    from galmorph.catalogue.manifest import read_manifest
    from galmorph.models.io import load_for_inference, registered_name

    policy = policy or PromotionPolicy()
    name = registered_name(task)
    c = _client(client)
    aliases(name, c)  # fails early with a clear message if the model does not exist
    version = str(version) if version is not None else latest_version(name, c)
    _check_version(name, version, c)
    manifest_df = read_manifest(eval_manifest) if isinstance(eval_manifest, (str, Path)) else eval_manifest
    mname = str(eval_manifest) if isinstance(eval_manifest, (str, Path)) else "<DataFrame>"
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="galmorph-promote-"))
    lock = _lock(lock_path, lock_url, audit_log, name, lock_timeout)
    ekw = {"rotation_passes": 0, "html": True, **(evaluate_kwargs or {})}

    with lock:
        before = aliases(name, c)
        champ = before.get(CHAMPION)
        who = _who()
        base = dict(task=task, model_name=name, action="promote", candidate_version=version, champion_before=champ,
                    policy=asdict(policy), manifest=mname, manifest_fingerprint=manifest_fingerprint(manifest_df), **who)
        if champ == version:
            dec = PromotionDecision(**base, decision="already-champion", passed=True, champion_after=champ,
                                    previous_champion_after=before.get(PREVIOUS), challenger_after=before.get(CHALLENGER),
                                    reasons=[f"version {version} is already the champion"])
            _record(audit_log, dec, c)
            return dec
        cand_model = load_for_inference(f"models:/{name}/{version}")
        ce = bool(cand_model.spec.chirality_equivariant)
        stamp = _stamp()
        ev_kw = dict(data_root=data_root, log_to_mlflow=log_evaluations, experiment="galmorph-promotion", **ekw)
        if ce:
            ev_kw["chirality_diagnostics_on"] = True
        if policy.winding_margin is not None and {"CW", "ACW"} <= set(map(str, cand_model.spec.classes)):
            from galmorph.scoring.ensemble import measure_winding_table

            # one measurement of the evaluation images, shared by both evaluations
            ev_kw.update(winding=True, winding_min_confidence=policy.winding_min_confidence,
                         winding_table=measure_winding_table(manifest_df, data_root=data_root))
        cand = evaluate(cand_model, manifest_df, out_dir / f"candidate-v{version}-{stamp}",
                        run_name=f"promotion-{name}-v{version}-candidate", **ev_kw)
        champ_ev = None
        if champ is not None:
            champ_ev = evaluate(f"models:/{name}/{champ}", manifest_df, out_dir / f"champion-v{champ}-{stamp}",
                                run_name=f"promotion-{name}-v{champ}-champion", **ev_kw)
        passed, reasons, checks = compare(cand.report, champ_ev.report if champ_ev else None, policy, ce)
        cm = _key_metrics(cand.metrics, policy)
        hm = _key_metrics(champ_ev.metrics, policy) if champ_ev else {}
        if passed:
            if champ is not None:
                c.set_registered_model_alias(name, PREVIOUS, champ)
            c.set_registered_model_alias(name, CHAMPION, version)
            if before.get(CHALLENGER) == version:
                c.delete_registered_model_alias(name, CHALLENGER)
            decision = "promoted" if champ is not None else "first-champion"
            if champ is None:
                reasons = ["no champion existed: the candidate becomes the first champion"]
            wd = checks.get("winding") or {}
            if wd.get("flagged"):
                reasons = reasons + [wd["reason"]]
            fl = checks.get("quality_floor")
            if fl:
                reasons = reasons + [f"quality floor passed: macro-F1 {fl['f1_macro']:.4f} >= majority-class "
                                     f"{fl['majority_f1_macro']:.4f} + {fl['margin']:g}"]
        else:
            c.set_registered_model_alias(name, CHALLENGER, version)
            decision = "rejected"
        after = aliases(name, c)
        # post-check: what we wrote is what the registry holds
        expect = {CHAMPION: version if passed else champ}
        if passed and champ is not None:
            expect[PREVIOUS] = champ
        if not passed:
            expect[CHALLENGER] = version
        bad = {k: (v, after.get(k)) for k, v in expect.items() if after.get(k) != v}
        dec = PromotionDecision(**base, decision=decision, passed=passed, champion_after=after.get(CHAMPION),
                                previous_champion_after=after.get(PREVIOUS), challenger_after=after.get(CHALLENGER),
                                reasons=reasons, checks=checks, candidate_metrics=cm, champion_metrics=hm)
        if bad:
            dec.decision = "inconsistent"
            dec.reasons = reasons + [f"alias {k} expected v{e} but the registry holds v{g}" for k, (e, g) in bad.items()]
            _record(audit_log, dec, c)
            raise RegistryConsistencyError("; ".join(dec.reasons))
        summary = {"decision": decision, "time": who["timestamp"], "candidate": version, "champion_before": champ,
                   "reasons": reasons}
        try:
            _tag(c, name, version, {"galmorph.decision": decision, "galmorph.decision_time": who["timestamp"],
                                    "galmorph.decision_reasons": reasons, "galmorph.decision_metrics": cm,
                                    "galmorph.decision_compared_to": str(champ), "galmorph.decision_manifest": mname,
                                    f"galmorph.audit.{stamp}": summary})
            if champ is not None:
                old_tags = {"galmorph.decision_metrics": hm, f"galmorph.audit.{stamp}": summary}
                if passed:
                    old_tags.update({"galmorph.decision": "superseded", "galmorph.decision_time": who["timestamp"],
                                     "galmorph.superseded_by": version})
                else:
                    old_tags.update({"galmorph.last_defended": f"v{version} rejected at {who['timestamp']}"})
                _tag(c, name, champ, old_tags)
        except Exception as exc:
            dec.checks["tagging_error"] = f"{type(exc).__name__}: {exc}"
            _record(audit_log, dec, c)
            raise
        card = cand.report.get("model_card")
        if card:  # the candidate's model card, updated with this decision
            from galmorph.evaluation.card import attach_card, with_decision

            try:
                attach_card(with_decision(card, {**summary, "compared_to": champ, "checks": finite_json(checks)}),
                            name, version, run_id=cand.run_id, client=c)
            except Exception as exc:  # noqa: BLE001 - the decision stands; the card is documentation
                log.warning("model card of %s v%s not updated: %s", name, version, exc)
                dec.checks["card_error"] = f"{type(exc).__name__}: {exc}"
        _record(audit_log, dec, c)
    log.info(dec.summary())
    return dec


def rollback(task: str, *, audit_log: str | Path, reason: str = "", lock_path: str | Path | None = None,
             lock_timeout: float = 3600.0, client=None, lock_url: str | None = None) -> PromotionDecision:
    """Restore ``@previous-champion`` as ``@champion``. The demoted version is tagged
    ``galmorph.decision=rolled-back`` and the ``previous-champion`` alias is removed (so a second
    rollback cannot flip back to the demoted model). Recorded like a promotion."""
    from galmorph.models.io import registered_name

    name = registered_name(task)
    c = _client(client)
    with _lock(lock_path, lock_url, audit_log, name, lock_timeout):
        before = aliases(name, c)
        prev, champ = before.get(PREVIOUS), before.get(CHAMPION)
        if prev is None:
            raise PromotionError(f"{name} has no '{PREVIOUS}' alias: nothing to roll back to "
                                 f"(aliases: {before or 'none'})")
        who = _who()
        c.set_registered_model_alias(name, CHAMPION, prev)
        c.delete_registered_model_alias(name, PREVIOUS)
        after = aliases(name, c)
        if after.get(CHAMPION) != prev or PREVIOUS in after:
            raise RegistryConsistencyError(f"{name}: after rollback the aliases are {after}, expected champion v{prev}")
        reasons = [f"rolled back from v{champ} to v{prev}" + (f": {reason}" if reason else "")]
        stamp = _stamp()
        summary = {"decision": "rolled-back", "time": who["timestamp"], "from": champ, "to": prev, "reason": reason}
        _tag(c, name, champ, {"galmorph.decision": "rolled-back", "galmorph.decision_time": who["timestamp"],
                              "galmorph.decision_reasons": reasons, f"galmorph.audit.{stamp}": summary})
        _tag(c, name, prev, {"galmorph.decision": "restored", "galmorph.decision_time": who["timestamp"],
                             f"galmorph.audit.{stamp}": summary})
        dec = PromotionDecision(task=task, model_name=name, action="rollback", decision="rolled-back", passed=True,
                                candidate_version=prev, champion_before=champ, champion_after=after.get(CHAMPION),
                                previous_champion_after=after.get(PREVIOUS), challenger_after=after.get(CHALLENGER),
                                reasons=reasons, **who)
        _record(audit_log, dec, c)
    log.info(dec.summary())
    return dec
