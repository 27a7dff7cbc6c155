"""The registry-event receiver as a platform service (#27): ``galmorph hooks serve``, started by ``stack up``.

* :func:`ensure_secret`: the webhook secret (``GALMORPH_HOOKS_SECRET``, else generated once into
  ``<state>/hooks/secret``); :func:`ensure_encryption_key`: the key MLflow encrypts stored webhook secrets with
  (``<state>/hooks/mlflow-webhook.key``, handed to the local MLflow server; without it a restarted server could not
  read the secret back).
* :func:`register_webhooks`: the MLflow webhook ``galmorph-hooks`` for the alias and version events, created or
  updated (URL, secret, events) at every ``stack up``.
* :func:`build_receiver`: the :class:`galmorph.promotion.hooks.Receiver` whose handling is
  :func:`galmorph.promotion.manual.handle_champion` (policy from params.yaml's ``promotion:``) followed by a
  rescoring of the latest release with the new champion (:func:`start_rescoring`); at start it reconciles every
  ``galmorph-*`` model (alias moves made while it was down).
* :func:`start_rescoring`: the rescoring pipeline for the newest release the release watcher recorded, with the
  champion's version pinned (``model_uri=models:/NAME/N``): ``galmorph pipeline run rescoring --local`` in a
  detached process here, submitted to Kubeflow when ``GALMORPH_KFP_HOST`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from galmorph.settings import Settings

log = logging.getLogger(__name__)

WEBHOOK_NAME = "galmorph-hooks"
#: the check of a hand promotion evaluates as ``promote`` does, without the HTML report and its explanation maps
#: and without an MLflow evaluation run per model (the verdict follows the move within seconds; its metrics are in
#: the audit record; ``galmorph evaluate`` writes the full report)
CHECK_EVALUATION = {"html": False}


def _private_file(path: Path, make) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
        try:
            os.link(tmp, path)  # first writer wins; a concurrent start reads the same value
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def ensure_secret(settings: Settings) -> str:
    """The webhook HMAC secret: ``settings.hooks_secret``, else ``<state>/hooks/secret`` (generated once, 0600)."""
    return settings.hooks_secret or _private_file(settings.hooks_dir / "secret", lambda: secrets.token_urlsafe(32))


def ensure_encryption_key(settings: Settings) -> str:
    """The Fernet key the local MLflow server encrypts webhook secrets with (generated once, 0600)."""
    from cryptography.fernet import Fernet

    if os.environ.get("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"):
        return os.environ["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    return _private_file(settings.hooks_dir / "mlflow-webhook.key", lambda: Fernet.generate_key().decode())


def mlflow_webhook_env(settings: Settings) -> dict[str, str]:
    """What the local MLflow server needs to deliver to the receiver on 127.0.0.1: http and a loopback target
    allowed (the local stack only; the chart's receiver is an in-cluster Service), a short webhook cache, the key."""
    return {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_CACHE_TTL": "2", "MLFLOW_WEBHOOK_REQUEST_TIMEOUT": "10",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": ensure_encryption_key(settings)}


def register_webhooks(settings: Settings, client=None) -> dict:
    """Create or update the MLflow webhook ``galmorph-hooks`` (URL, secret, events); returns ``{id, url, events}``."""
    import mlflow

    from galmorph.promotion.hooks import EVENTS

    c = client or mlflow.MlflowClient(settings.mlflow_tracking_uri)
    secret, url = ensure_secret(settings), settings.hooks_endpoint
    existing = [w for w in c.list_webhooks(max_results=1000) if w.name == WEBHOOK_NAME]
    if existing:
        w = c.update_webhook(existing[0].webhook_id, url=url, events=list(EVENTS), secret=secret, status="ACTIVE")
    else:
        w = c.create_webhook(name=WEBHOOK_NAME, url=url, events=list(EVENTS), secret=secret,
                             description="galmorph: alias moves are recorded, checked and followed by a rescoring")
    return {"id": w.webhook_id, "url": url, "events": list(EVENTS)}


# --------------------------------------------------------------------------------------------
# rescoring with a new champion
# --------------------------------------------------------------------------------------------
def latest_release(settings: Settings, task: str) -> dict | None:
    """The newest release of ``task``: the newest the release watcher recorded on this machine, else (a
    cluster, where the watcher is another pod) the newest ready release under ``settings.releases_dir``
    (:func:`newest_release_in`); ``{"release", "path"}`` or None."""
    return watched_release(settings, task) or (newest_release_in(settings.releases_dir, task)
                                               if settings.releases_dir else None)


def _release_task(path: Path) -> str | None:
    try:
        return json.loads((path / "release.json").read_text()).get("task") if (path / "release.json").exists() else None
    except (OSError, ValueError, AttributeError):
        return None


def newest_release_in(root: str | Path, task: str) -> dict | None:
    """The ready release under ``root`` (the watcher's own scan, :func:`galmorph.ops.release.scan_releases`) whose
    ``release.json`` names ``task`` or no task, with the newest manifest: ``{"release", "path"}`` or None."""
    from galmorph.ops.release import scan_releases

    try:
        found, _skipped = scan_releases(root)
    except FileNotFoundError:
        log.warning("releases folder %s does not exist: no release to rescore", root)
        return None
    mine = [r for r in found if _release_task(r.path) in (None, task)]
    if not mine:
        return None
    best = max(mine, key=lambda r: (r.manifest.stat().st_mtime, r.name))
    return {"release": best.name, "path": str(best.path)}


def watched_release(settings: Settings, task: str) -> dict | None:
    """The newest release the release watcher recorded (``<state>/release-watch/state.json``) whose folder still
    exists and whose ``release.json`` names this task or none: ``{"release", "path"}``."""
    from galmorph.ops.release import load_state

    state = load_state(settings.state_dir / "release-watch" / "state.json")
    best = None
    for name, e in (state.get("releases") or {}).items():
        p = Path(e.get("path") or "")
        if e.get("status") not in ("submitted", "pending") or not p.is_dir():
            continue
        rtask = _release_task(p)
        when = e.get("at") or e.get("since") or ""
        if rtask in (None, task) and (best is None or when >= best[0]):
            best = (when, {"release": name, "path": str(p)})
    return best[1] if best else None


def _galmorph_bin() -> str:
    """The ``galmorph`` command beside this Python (the venv's), else the one on PATH."""
    cand = Path(sys.executable).parent / "galmorph"
    return str(cand) if cand.exists() else (shutil.which("galmorph") or "galmorph")


def start_rescoring(settings: Settings, task: str, model_name: str, version: str) -> dict[str, Any]:
    """Start the rescoring pipeline of the latest release of ``task`` with ``models:/<model_name>/<version>``
    (detached; returns at once): ``{"status": "started", "release", "release_uri", "model_uri", "runner", "pid",
    "log", "started_at"}``, or ``{"status": "no-release", ...}`` when the watcher knows no release."""
    rel = latest_release(settings, task)
    uri = f"models:/{model_name}/{version}"
    if rel is None:
        return {"status": "no-release", "model_uri": uri, "reason": "the release watcher has recorded no release of "
                f"{task} (galmorph release watch) and GALMORPH_RELEASES_DIR holds none: nothing to rescore"}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    logf = settings.logs_dir / f"rescoring-{rel['release']}-{model_name}-v{version}-{stamp}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    argv = [_galmorph_bin(), "pipeline", "run", "rescoring",
            "--param", f"release_uri={rel['path']}", "--param", f"release={rel['release']}",
            "--param", f"task={task}", "--param", f"model_uri={uri}", "--json"]
    argv += ["--host", settings.kfp_host] if settings.kfp_host else ["--local", "--pipeline-root",
                                                                     str(settings.state_dir / "kfp")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri)}
    with open(logf, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=settings.state_dir)
    return {"status": "started", "release": rel["release"], "release_uri": rel["path"], "model_uri": uri,
            "runner": "kfp" if settings.kfp_host else "local", "pid": proc.pid, "log": str(logf),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def rescore_if_new(settings: Settings, store, model_name: str, client=None, starter=None) -> dict | None:
    """The rescoring of the move that made the current champion, started once (claimed in ``store`` by its audit
    run, then linked in MLflow: :func:`galmorph.promotion.manual.link_rescoring`); None when there is none to start."""
    from galmorph.promotion.manual import champion_to_rescore, link_rescoring, task_of

    entry = champion_to_rescore(model_name, client)
    if entry is None or not store.claim_rescoring(entry["audit_run_id"], model_name, str(entry["to"])):
        return None
    starter = starter or start_rescoring
    try:
        info = starter(settings, task_of(model_name), model_name, str(entry["to"]))
    except Exception as exc:  # noqa: BLE001 - recorded on the move; the receiver goes on
        info = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    info = {**info, "move": entry["audit_run_id"], "version": str(entry["to"]), "origin": entry.get("origin")}
    store.set_rescoring(entry["audit_run_id"], info)
    link_rescoring(model_name, entry, info, client)
    log.info("%s v%s: rescoring %s", model_name, entry["to"], info.get("status"))
    return info


# --------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------
def _handler(settings: Settings, store, client, starter, evaluate_kwargs: dict | None = None):
    from galmorph.promotion.manual import handle_champion
    from galmorph.promotion.policy import ManualPolicy, PromotionPolicy

    def handle(model_name: str, event: dict | None, detected_by: str = "webhook") -> str:
        missing_ok = "params_file" not in settings.model_fields_set
        policy = PromotionPolicy.from_params(settings.params_file, missing_ok=missing_ok)
        manual = ManualPolicy.from_params(settings.params_file, missing_ok=missing_ok)
        dec = handle_champion(model_name, audit_log=settings.audit_log, policy=policy, manual=manual, event=event,
                              detected_by=detected_by, out_dir=settings.state_dir / "promotions",
                              data_root=settings.data_root, lock_url=settings.lock_url, client=client,
                              log_evaluations=False,
                              evaluate_kwargs=CHECK_EVALUATION if evaluate_kwargs is None else evaluate_kwargs)
        res = rescore_if_new(settings, store, model_name, client, starter)
        return f"{dec.decision if dec else 'audited'}; rescoring {res.get('status') if res else 'none'}"

    return handle


def governed(settings: Settings):
    """``name -> bool``: a registered model the receiver governs (``GALMORPH_HOOKS_MODELS`` glob patterns)."""
    import fnmatch

    pats = [p.strip() for p in settings.hooks_models.split(",") if p.strip()]
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in pats)


def reconcile(settings: Settings, handle, client=None) -> list[dict]:
    """Every governed registered model: registry vs audit, handled as a move found by the reconciliation."""
    import mlflow

    c = client or mlflow.MlflowClient(settings.mlflow_tracking_uri)
    out = []
    ours = governed(settings)
    for rm in c.search_registered_models(max_results=1000):
        if ours(rm.name):
            out.append({"model": rm.name, "outcome": handle(rm.name, None, "reconcile")})
    return out


def build_receiver(settings: Settings, starter=None, evaluate_kwargs: dict | None = None):
    """The receiver of this state folder (secret, delivery store, handling, reconciliation at start)."""
    import mlflow

    from galmorph.promotion.hooks import DeliveryStore, Receiver

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    store = DeliveryStore(settings.hooks_dir / "deliveries.db")
    handle = _handler(settings, store, client, starter, evaluate_kwargs)
    return Receiver(ensure_secret(settings), store, handle, reconcile=lambda: reconcile(settings, handle, client),
                    max_age=settings.hooks_max_age, models=governed(settings))


def serve(settings: Settings) -> None:
    """Run the receiver of ``settings`` until interrupted (``galmorph hooks serve``)."""
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = str(settings.mlflow_tracking_uri)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    import galmorph.evaluation.core  # noqa: F401 - loaded before the first delivery, which then is handled at once
    import galmorph.models.io  # noqa: F401

    build_receiver(settings).serve(settings.host, settings.hooks_port)
