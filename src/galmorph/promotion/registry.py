"""Registry access and guarded champion/challenger promotion in the MLflow model registry.

Registry access: :func:`model_uri` / :func:`model_ref` (task -> model URI), :func:`resolve_model_version`
(the one resolver of ``models:/NAME@alias`` to a registered version; :func:`pinned_model_uri` on top of it),
:func:`aliases`, :func:`latest_version`.

:func:`promote` evaluates a candidate version of ``galmorph-<task>`` and the current ``@champion`` on the
same evaluation manifest and applies a :class:`~galmorph.promotion.policy.PromotionPolicy`
(:mod:`galmorph.promotion.policy`). Pass: alias ``champion`` moves to the candidate and the old champion
becomes ``previous-champion``; both versions are tagged with the decision and metrics. Fail: the candidate
gets the ``challenger`` alias and the reasons are returned (and printed by the CLI). With no champion the
candidate becomes the first champion (every check still applies: the mirror test, the quality floor and
the absolute winding check; both evaluations judge the default predictions, #26). :func:`rollback`
restores ``previous-champion``. A version that becomes champion has its verified inference path checked
against fp32 and recorded on it (:func:`galmorph.scoring.accel.verified_path`, #31), so scoring uses it with
no check of its own.

Every decision is recorded (:mod:`galmorph.promotion.audit`): model-version tags (``galmorph.decision*``, a
``galmorph.audit.<time>`` history entry and ``galmorph.decision_audit_run``), one MLflow audit run per
decision, and a line of the local audit log.

Concurrency: the whole read-evaluate-compare-write sequence of one registered model runs under the one
lock of that registry (:func:`galmorph.promotion.locks.select_lock`: ``GALMORPH_LOCK_URL``, else derived
from the registry URI; never from the caller's audit log). Before writing, the champion is read again: if
it changed since this promotion read it (a writer outside the lock), nothing is written, the decision is
recorded as ``lost-race`` and :class:`PromotionRaceLost` is raised. After writing, the aliases are read
back and checked (:class:`RegistryConsistencyError` if someone changed them outside the lock).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from galmorph.jsonsafe import finite_json, json_default
from galmorph.promotion.audit import (AUDIT_ARTIFACT, AUDIT_EXPERIMENT, PromotionDecision, append_audit,
                                      log_mlflow_audit, read_audit, read_mlflow_audit, record_decision, stamp, who)
from galmorph.promotion.common import (CHALLENGER, CHAMPION, PREVIOUS, ModelRefError, PromotionError,
                                       PromotionRaceLost, RegistryConsistencyError, mlflow_client, parse_model_uri)
from galmorph.promotion.locks import LOCK_URL_ENV, FileLock, PostgresAdvisoryLock, registry_lock, select_lock
from galmorph.promotion.policy import PolicyError, PromotionPolicy, compare, quality_floor, winding_check

__all__ = [
    "AUDIT_ARTIFACT", "AUDIT_EXPERIMENT", "CHALLENGER", "CHAMPION", "LOCK_URL_ENV", "PREVIOUS", "FileLock",
    "ModelRefError", "PolicyError", "PostgresAdvisoryLock", "PromotionDecision", "PromotionError", "PromotionPolicy",
    "PromotionRaceLost", "RegistryConsistencyError", "aliases", "append_audit", "compare", "latest_version",
    "log_mlflow_audit", "model_ref", "model_uri", "pinned_model_uri", "promote", "quality_floor", "read_audit",
    "read_mlflow_audit", "registry_lock", "resolve_model_version", "rollback", "select_lock", "winding_check",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# registry access
# --------------------------------------------------------------------------------------------
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


def resolve_model_version(uri: str, client=None) -> tuple[str, str]:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` -> ``(NAME, VERSION)``: the one resolver of a
    registered model version (an alias is looked up in the registry, a version number is taken as given).
    :class:`ModelRefError` for another URI, one naming no version or alias, or an alias the model lacks."""
    name, version, alias = parse_model_uri(uri)
    if alias is None:
        return name, str(version)
    c = mlflow_client(client)
    try:
        return name, str(c.get_model_version_by_alias(name, alias).version)
    except Exception as exc:  # noqa: BLE001 - reraised with what was asked for
        where = getattr(c, "tracking_uri", None) or "the registry"
        raise ModelRefError(f"model {name!r} has no alias {alias!r} in the registry ({where}): {exc}") from exc


def pinned_model_uri(uri: str, client=None) -> str:
    """``models:/NAME@alias`` -> ``models:/NAME/<version>`` through :func:`resolve_model_version`, so that a
    run uses one version even if the alias moves; any other URI (``models:/NAME/N``, ``runs:/``, a path) unchanged."""
    if not str(uri).startswith("models:/") or "@" not in str(uri):
        return uri
    name, version = resolve_model_version(uri, client)
    return f"models:/{name}/{version}"


def aliases(name: str, client=None) -> dict[str, str]:
    """``{alias: version}`` of a registered model (one read, a consistent snapshot)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = mlflow_client(client).get_registered_model(name)
    except MlflowException as exc:
        raise PromotionError(f"registered model {name!r} not found in the registry ({exc.message})") from exc
    return {str(k): str(v) for k, v in (rm.aliases or {}).items()}


def latest_version(name: str, client=None) -> str:
    versions = mlflow_client(client).search_model_versions(f"name='{name}'")
    if not versions:
        raise PromotionError(f"registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def _candidate_version(name: str, version: str | int | None, client) -> str:
    """``version`` (default: the latest) of ``name``, checked to exist (the model too, with a clear message)."""
    from mlflow.exceptions import MlflowException

    aliases(name, client)  # fails early with a clear message if the model does not exist
    version = str(version) if version is not None else latest_version(name, client)
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise PromotionError(f"{name} version {version} does not exist ({exc.message})") from exc
    return version


def _tag(client, name: str, version: str | None, tags: dict[str, Any]) -> None:
    if version is None:
        return
    for k, v in tags.items():
        s = v if isinstance(v, str) else json.dumps(finite_json(v), default=json_default, sort_keys=True)
        client.set_model_version_tag(name, str(version), k, s[:5000])


def _record(audit_log: str | Path | None, dec: PromotionDecision, client=None) -> None:
    """Record ``dec`` (:func:`galmorph.promotion.audit.record_decision`): the MLflow audit run and the local log."""
    record_decision(audit_log, dec, client)


def _registry_uri(client) -> str:
    import mlflow

    return getattr(client, "_registry_uri", None) or mlflow.get_registry_uri()


def _lock(lock_path, lock_url, model_name: str, timeout: float, client):
    """An explicit ``lock_path`` file lock, else the registry's lock of ``model_name`` (:func:`select_lock`)."""
    if lock_path:
        return registry_lock(lock_path, timeout=timeout)
    backend = select_lock(lock_url, tracking_uri=_registry_uri(client))
    log.debug("promotion lock of %s: %r", model_name, backend)
    return backend.hold(model_name, timeout=timeout)


# --------------------------------------------------------------------------------------------
# promote: the steps
# --------------------------------------------------------------------------------------------
def _key_metrics(metrics: dict[str, float], policy: PromotionPolicy) -> dict[str, float]:
    keep = {"accuracy", "f1_macro", "auc_macro", "precision_macro", "recall_macro", "n", policy.primary_metric,
            "baseline_f1_macro", "baseline_accuracy", "n_absent_classes", "winding_disagreement",
            "winding_n_compared"}
    out = {k: v for k, v in metrics.items() if k in keep or (k.startswith("zbin_") and k.endswith("_auc_macro"))}
    for k in ("chirality_mirror_passed", "chirality_cvs_cvs_pred", "chirality_sweep_slope", "chirality_sweep_intercept"):
        if k in metrics:
            out[k] = metrics[k]
    return out


def _evaluation_set(eval_manifest):
    """``(manifest frame, its name for the record)`` of a manifest path or frame."""
    from galmorph.catalogue.manifest import read_manifest

    if isinstance(eval_manifest, (str, Path)):
        return read_manifest(eval_manifest), str(eval_manifest)
    return eval_manifest, "<DataFrame>"


def _evaluate(name: str, version: str, champ: str | None, manifest_df, out_dir: Path, st: str,
              policy: PromotionPolicy, data_root, log_evaluations: bool, evaluate_kwargs: dict | None):
    """Evaluate the candidate and the champion (if any) on the same set: ``(candidate, champion or None,
    chirality_equivariant)`` (:class:`galmorph.evaluation.core.EvaluationResult`)."""
    from galmorph.evaluation.core import evaluate
    from galmorph.models.io import load_for_inference

    cand_model = load_for_inference(f"models:/{name}/{version}")
    ce = bool(cand_model.spec.chirality_equivariant)
    ev_kw = dict(data_root=data_root, log_to_mlflow=log_evaluations, experiment="galmorph-promotion",
                 **{"rotation_passes": 0, "html": True, **(evaluate_kwargs or {})})
    if ce:
        ev_kw["chirality_diagnostics_on"] = True
    if ((policy.winding_margin is not None or policy.winding_max_disagreement is not None)
            and {"CW", "ACW"} <= set(map(str, cand_model.spec.classes))):
        from galmorph.scoring.ensemble import measure_winding_table

        # one measurement of the evaluation images, shared by both evaluations
        ev_kw.update(winding=True, winding_min_confidence=policy.winding_min_confidence,
                     winding_table=measure_winding_table(manifest_df, data_root=data_root))
    cand = evaluate(cand_model, manifest_df, out_dir / f"candidate-v{version}-{st}",
                    run_name=f"promotion-{name}-v{version}-candidate", **ev_kw)
    champ_ev = None
    if champ is not None:
        champ_ev = evaluate(f"models:/{name}/{champ}", manifest_df, out_dir / f"champion-v{champ}-{st}",
                            run_name=f"promotion-{name}-v{champ}-champion", **ev_kw)
    return cand, champ_ev, ce


def _outcome(passed: bool, champ: str | None, reasons: list[str], checks: dict) -> tuple[str, list[str]]:
    """The decision name and the reasons recorded with it."""
    if not passed:
        return "rejected", reasons
    if champ is None:
        reasons = ["no champion existed: the candidate becomes the first champion"]
    wd = checks.get("winding") or {}
    if wd.get("flagged"):
        reasons = reasons + [wd["reason"]]
    fl = checks.get("quality_floor")
    if fl:
        reasons = reasons + [f"quality floor passed: {fl['metric']} {fl['value']:.4f} (95% interval lower end "
                             f"{fl['ci_low']:.4f}) > majority-class {fl['majority_value']:.4f} + {fl['margin']:g} "
                             f"at the {fl.get('proportions_source')} class proportions"]
    return ("promoted" if champ is not None else "first-champion"), reasons


def _guard_race(c, dec: PromotionDecision, before: dict[str, str], audit_log) -> None:
    """Read the champion again before writing: if it changed since ``before`` was read (a writer outside
    this lock), record the decision as ``lost-race`` and raise :class:`PromotionRaceLost` (nothing written)."""
    now = aliases(dec.model_name, c)
    if now.get(CHAMPION) == before.get(CHAMPION):
        return
    msg = (f"{dec.model_name}: lost a race: the champion changed from v{before.get(CHAMPION)} to "
           f"v{now.get(CHAMPION)} while v{dec.candidate_version} was evaluated (a promotion outside this lock?); "
           "nothing written: run the promotion again to compare with the new champion")
    dec.checks["would_have_been"] = dec.decision
    dec.decision, dec.passed, dec.reasons = "lost-race", False, [msg] + dec.reasons
    dec.champion_after, dec.previous_champion_after, dec.challenger_after = (now.get(CHAMPION), now.get(PREVIOUS),
                                                                             now.get(CHALLENGER))
    _record(audit_log, dec, c)
    raise PromotionRaceLost(msg)


def _write_aliases(c, name: str, version: str, before: dict[str, str], passed: bool) -> dict[str, str]:
    """Move the aliases for the decision; returns the aliases expected afterwards."""
    champ = before.get(CHAMPION)
    if not passed:
        c.set_registered_model_alias(name, CHALLENGER, version)
        return {CHAMPION: champ, CHALLENGER: version}
    if champ is not None:
        c.set_registered_model_alias(name, PREVIOUS, champ)
    c.set_registered_model_alias(name, CHAMPION, version)
    if before.get(CHALLENGER) == version:
        c.delete_registered_model_alias(name, CHALLENGER)
    return {CHAMPION: version, **({PREVIOUS: champ} if champ is not None else {})}


def _verify_aliases(c, dec: PromotionDecision, expect: dict[str, str | None], audit_log) -> None:
    """Read the aliases back into ``dec``; a mismatch with ``expect`` is recorded as ``inconsistent`` and
    raised as :class:`RegistryConsistencyError`."""
    after = aliases(dec.model_name, c)
    dec.champion_after, dec.previous_champion_after, dec.challenger_after = (after.get(CHAMPION), after.get(PREVIOUS),
                                                                             after.get(CHALLENGER))
    bad = {k: (v, after.get(k)) for k, v in expect.items() if after.get(k) != v}
    if bad:
        dec.decision = "inconsistent"
        dec.reasons = dec.reasons + [f"alias {k} expected v{e} but the registry holds v{g}"
                                     for k, (e, g) in bad.items()]
        _record(audit_log, dec, c)
        raise RegistryConsistencyError("; ".join(dec.reasons))


def _tag_versions(c, dec: PromotionDecision, st: str, summary: dict, audit_log) -> None:
    """Tag the candidate and the champion it was compared with (a failure is recorded, then raised)."""
    name, version, champ = dec.model_name, dec.candidate_version, dec.champion_before
    try:
        _tag(c, name, version, {"galmorph.decision": dec.decision, "galmorph.decision_time": dec.timestamp,
                                "galmorph.decision_reasons": dec.reasons,
                                "galmorph.decision_metrics": dec.candidate_metrics,
                                "galmorph.decision_compared_to": str(champ), "galmorph.decision_manifest": dec.manifest,
                                f"galmorph.audit.{st}": summary})
        if champ is not None:
            old_tags = {"galmorph.decision_metrics": dec.champion_metrics, f"galmorph.audit.{st}": summary}
            if dec.passed:
                old_tags.update({"galmorph.decision": "superseded", "galmorph.decision_time": dec.timestamp,
                                 "galmorph.superseded_by": version})
            else:
                old_tags.update({"galmorph.last_defended": f"v{version} rejected at {dec.timestamp}"})
            _tag(c, name, champ, old_tags)
    except Exception as exc:
        dec.checks["tagging_error"] = f"{type(exc).__name__}: {exc}"
        _record(audit_log, dec, c)
        raise


def _update_card(c, dec: PromotionDecision, cand, summary: dict) -> None:
    """The candidate's model card, updated with this decision (a failure is noted; the decision stands)."""
    card = cand.report.get("model_card")
    if not card:
        return
    from galmorph.evaluation.card import attach_card, with_decision

    try:
        attach_card(with_decision(card, {**summary, "compared_to": dec.champion_before,
                                         "checks": finite_json(dec.checks)}),
                    dec.model_name, dec.candidate_version, run_id=cand.run_id, client=c)
    except Exception as exc:  # noqa: BLE001 - the decision stands; the card is documentation
        log.warning("model card of %s v%s not updated: %s", dec.model_name, dec.candidate_version, exc)
        dec.checks["card_error"] = f"{type(exc).__name__}: {exc}"


def _check_inference_path(name: str, version: str, manifest_df, data_root) -> None:
    """Pay the verified inference path's check (:func:`galmorph.scoring.accel.verified_path`, CPU) of a version that
    has just become champion, once, and record it on the version, so that `galmorph score` and every rescoring
    worker use it without checking again. Outside the registry lock; a failure is logged and leaves the check to
    the version's first scoring (the promotion stands)."""
    try:
        from galmorph.models.io import load_for_inference
        from galmorph.scoring.accel import recorded_choice, verified_path

        lm = load_for_inference(f"models:/{name}/{version}")
        if recorded_choice(lm, "cpu") is not None:
            return
        sample = manifest_df[[c for c in ("object_id", "image_uri", "label") if c in manifest_df.columns]]
        _, choice, _ = verified_path(lm, "cpu", data_root=data_root, release_sample=sample)
        log.info("inference path of %s v%s checked and recorded: %s (%s decode)", name, version, choice.chosen,
                 choice.decode)
    except Exception as exc:  # noqa: BLE001 - the decision stands; scoring checks the path when it first runs
        log.warning("inference path of %s v%s not checked at promotion (%s: %s); its first scoring checks it",
                    name, version, type(exc).__name__, exc)


# --------------------------------------------------------------------------------------------
# promote / rollback
# --------------------------------------------------------------------------------------------
def promote(task: str, version: str | int | None = None, *, eval_manifest, audit_log: str | Path,
            policy: PromotionPolicy | None = None, out_dir: str | Path | None = None,
            data_root: str | Path | None = None, lock_path: str | Path | None = None, lock_timeout: float = 3600.0,
            client=None, log_evaluations: bool = True, evaluate_kwargs: dict | None = None,
            lock_url: str | None = None) -> PromotionDecision:
    """Promote ``version`` (default: the latest) of ``galmorph-<task>`` if it beats ``@champion`` on
    ``eval_manifest`` under ``policy``; see the module docstring. Returns the decision (also in the
    audit log and the model-version tags)."""
    import tempfile

    from galmorph.evaluation.core import manifest_fingerprint
    from galmorph.models.io import registered_name

    policy = policy or PromotionPolicy()
    name = registered_name(task)
    c = mlflow_client(client)
    version = _candidate_version(name, version, c)
    manifest_df, mname = _evaluation_set(eval_manifest)
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="galmorph-promote-"))
    lock = _lock(lock_path, lock_url, name, lock_timeout, c)
    with lock:
        before = aliases(name, c)
        champ = before.get(CHAMPION)
        dec = PromotionDecision(task=task, model_name=name, action="promote", origin="promote", detected_by="promote",
                                decision="", passed=False,
                                candidate_version=version, champion_before=champ, champion_after=None,
                                policy=asdict(policy), manifest=mname,
                                manifest_fingerprint=manifest_fingerprint(manifest_df), **who())
        if champ == version:
            dec.decision, dec.passed = "already-champion", True
            dec.reasons = [f"version {version} is already the champion"]
            dec.champion_after, dec.previous_champion_after, dec.challenger_after = (champ, before.get(PREVIOUS),
                                                                                     before.get(CHALLENGER))
            _record(audit_log, dec, c)
            return dec
        st = stamp()
        cand, champ_ev, ce = _evaluate(name, version, champ, manifest_df, out_dir, st, policy, data_root,
                                       log_evaluations, evaluate_kwargs)
        passed, reasons, dec.checks = compare(cand.report, champ_ev.report if champ_ev else None, policy, ce)
        dec.passed = passed
        dec.decision, dec.reasons = _outcome(passed, champ, reasons, dec.checks)
        dec.candidate_metrics = _key_metrics(cand.metrics, policy)
        dec.champion_metrics = _key_metrics(champ_ev.metrics, policy) if champ_ev else {}
        _guard_race(c, dec, before, audit_log)
        _verify_aliases(c, dec, _write_aliases(c, name, version, before, passed), audit_log)
        summary = {"decision": dec.decision, "time": dec.timestamp, "candidate": version, "champion_before": champ,
                   "reasons": dec.reasons}
        _tag_versions(c, dec, st, summary, audit_log)
        _update_card(c, dec, cand, summary)
        _record(audit_log, dec, c)
    log.info(dec.summary())
    if dec.passed and dec.champion_after == version:
        _check_inference_path(name, version, manifest_df, data_root)
    return dec


def rollback(task: str, *, audit_log: str | Path, reason: str = "", lock_path: str | Path | None = None,
             lock_timeout: float = 3600.0, client=None, lock_url: str | None = None) -> PromotionDecision:
    """Restore ``@previous-champion`` as ``@champion``. The demoted version is tagged
    ``galmorph.decision=rolled-back`` and the ``previous-champion`` alias is removed (so a second
    rollback cannot flip back to the demoted model). Recorded like a promotion."""
    from galmorph.models.io import registered_name

    name = registered_name(task)
    c = mlflow_client(client)
    with _lock(lock_path, lock_url, name, lock_timeout, c):
        before = aliases(name, c)
        prev, champ = before.get(PREVIOUS), before.get(CHAMPION)
        if prev is None:
            raise PromotionError(f"{name} has no '{PREVIOUS}' alias: nothing to roll back to "
                                 f"(aliases: {before or 'none'})")
        w = who()
        c.set_registered_model_alias(name, CHAMPION, prev)
        c.delete_registered_model_alias(name, PREVIOUS)
        after = aliases(name, c)
        if after.get(CHAMPION) != prev or PREVIOUS in after:
            raise RegistryConsistencyError(f"{name}: after rollback the aliases are {after}, expected champion v{prev}")
        reasons = [f"rolled back from v{champ} to v{prev}" + (f": {reason}" if reason else "")]
        st = stamp()
        summary = {"decision": "rolled-back", "time": w["timestamp"], "from": champ, "to": prev, "reason": reason}
        _tag(c, name, champ, {"galmorph.decision": "rolled-back", "galmorph.decision_time": w["timestamp"],
                              "galmorph.decision_reasons": reasons, f"galmorph.audit.{st}": summary})
        _tag(c, name, prev, {"galmorph.decision": "restored", "galmorph.decision_time": w["timestamp"],
                             f"galmorph.audit.{st}": summary})
        dec = PromotionDecision(task=task, model_name=name, action="rollback", origin="rollback",
                                detected_by="rollback", decision="rolled-back", passed=True,
                                candidate_version=prev, champion_before=champ, champion_after=after.get(CHAMPION),
                                previous_champion_after=after.get(PREVIOUS), challenger_after=after.get(CHALLENGER),
                                reasons=reasons, **w)
        _record(audit_log, dec, c)
    log.info(dec.summary())
    return dec
