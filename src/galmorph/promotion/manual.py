"""Alias moves made outside ``galmorph promote``/``rollback`` (the MLflow UI, the API), found by comparing the
registry with the audit (#27).

Every ``galmorph promote`` and ``rollback`` moves ``@champion`` and writes its audit record under the one lock of
the registry (:mod:`galmorph.promotion.locks`); the newest audit record therefore vouches for the champion
(``galmorph.audited_champion``, :func:`galmorph.promotion.audit.alias_history`). :func:`handle_champion` takes the
same lock, reads both, and when the registry's ``@champion`` is not the audited one, the move was made by hand:
it is recorded with origin ``manual`` (from -> to, when MLflow says), and the :class:`ManualPolicy` applies:

* ``allow``: recorded; the old champion becomes ``@previous-champion`` (so that a rollback restores it);
* ``check`` (default): the new champion is evaluated against the old one with the :class:`PromotionPolicy` of
  ``galmorph promote``; the verdict goes on the version (``galmorph.decision``, ``galmorph.manual_verdict``) and
  into the audit; the move stands;
* ``revert``: as ``check``, and a failed version loses ``@champion`` to the previous champion again
  (``galmorph.decision = manual-reverted`` on it, with the reasons).

A model no audit record speaks for (a registry from before #27) gets, at the receiver's first start, a
``baseline``/``adopted`` record of the champion it has: not checked, not rescored.

The same function serves a webhook delivery and the reconciliation at the receiver's start, so a move is handled
once whichever sees it first. :func:`champion_to_rescore` names the move that made the current champion when no
rescoring was linked to it yet; :func:`link_rescoring` links one (a tag on its audit run and on the version).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from galmorph.promotion.audit import PromotionDecision, alias_history, record_decision, stamp, who
from galmorph.promotion.common import CHAMPION, PREVIOUS, mlflow_client
from galmorph.promotion.policy import ManualPolicy, PromotionPolicy, compare

log = logging.getLogger(__name__)

MODEL_PREFIX = "galmorph-"
#: decisions that leave the moved version as champion (a rescoring follows)
KEEPS_MOVE = ("promoted", "first-champion", "rolled-back", "manual-allowed", "manual-passed", "manual-failed",
              "manual-unchecked")


def task_of(model_name: str) -> str:
    return model_name[len(MODEL_PREFIX):] if model_name.startswith(MODEL_PREFIX) else model_name


def last_manifest(history: list[dict]) -> str | None:
    """The evaluation manifest of the newest promotion in ``history`` that names one on this machine."""
    for h in reversed(history):
        m = h.get("manifest")
        if m and m != "<DataFrame>" and Path(m).exists():
            return m
    return None


def _registry_lock(model_name: str, lock_url: str | None, client, timeout: float):
    from galmorph.promotion.locks import select_lock
    from galmorph.promotion.registry import _registry_uri

    return select_lock(lock_url, tracking_uri=_registry_uri(client)).hold(model_name, timeout=timeout)


def handle_champion(model_name: str, *, audit_log: str | Path | None, policy: PromotionPolicy | None = None,
                    manual: ManualPolicy | None = None, event: dict | None = None, detected_by: str = "webhook",
                    out_dir: str | Path | None = None, data_root: str | Path | None = None,
                    lock_url: str | None = None, lock_timeout: float = 3600.0, client=None,
                    log_evaluations: bool = True, evaluate_kwargs: dict | None = None) -> PromotionDecision | None:
    """Compare ``@champion`` of ``model_name`` in the registry with the audit under the registry's lock; a move
    the audit does not know is recorded as ``manual`` and handled by ``manual`` (see the module docstring).
    Returns the decision, or None when the audit already vouches for the champion (nothing to do).
    ``event``: the webhook delivery (``timestamp``, ``delivery_id``) that announced the move."""
    from galmorph.promotion.registry import aliases

    c = mlflow_client(client)
    policy, manual = policy or PromotionPolicy(), manual or ManualPolicy()
    with _registry_lock(model_name, lock_url, c, lock_timeout):
        history = alias_history(model_name, c)
        last = history[-1]["to"] if history else None
        before = aliases(model_name, c)
        current = before.get(CHAMPION)
        if current == last:
            return None
        ev = event or {}
        dec = PromotionDecision(task=task_of(model_name), model_name=model_name, action="manual", origin="manual",
                                decision="", passed=True, candidate_version=current, champion_before=last,
                                champion_after=current, policy={**asdict(policy), "manual": asdict(manual)},
                                moved_at=ev.get("timestamp"), moved_by=ev.get("user"), detected_by=detected_by,
                                delivery_id=ev.get("delivery_id"), **who())
        dec.reasons = [f"@champion moved outside galmorph promote/rollback (MLflow UI or API): v{last} -> v{current}"
                       f" (found by the {detected_by})"]
        if not history and detected_by == "reconcile":
            # no audit record of this model states a champion (a registry from before #27): the receiver's first
            # start adopts the champion it finds as the baseline; moves from then on are judged against it
            dec.action = dec.origin = "baseline"
            dec.decision = "adopted"
            dec.reasons = [f"no audit record states the champion of {model_name}: v{current} adopted as the baseline "
                           "(not checked, not rescored)"]
        elif current is None:
            dec.decision, dec.passed = "manual-removed", False
            dec.reasons.append("the @champion alias was removed: no champion; nothing checked or rescored")
        elif manual.mode == "allow":
            dec.decision = "manual-allowed"
            dec.reasons.append("policy manual=allow: recorded without a check")
        else:
            _check(c, dec, policy, manual, history, out_dir, data_root, log_evaluations, evaluate_kwargs)
        if dec.origin == "manual":
            _settle_aliases(c, dec, before, last, manual)
            _tag_manual(c, dec)
        record_decision(audit_log, dec, c)
    log.info(dec.summary())
    return dec


def _check(c, dec: PromotionDecision, policy: PromotionPolicy, manual: ManualPolicy, history: list[dict],
           out_dir, data_root, log_evaluations: bool, evaluate_kwargs: dict | None) -> None:
    """Evaluate the hand-promoted version against the previous champion with ``policy`` (as ``promote``)."""
    import tempfile

    from galmorph.evaluation.core import manifest_fingerprint
    from galmorph.promotion.registry import _evaluate, _evaluation_set, _key_metrics

    manifest = manual.eval_manifest or last_manifest(history)
    if not manifest:
        dec.decision, dec.passed = "manual-unchecked", False
        dec.reasons.append("not checked: no evaluation manifest (set promotion.manual_eval_manifest in params.yaml; "
                           "by default the manifest of the model's last promotion is used, and none is on this machine)")
        return
    manifest_df, dec.manifest = _evaluation_set(manifest)
    dec.manifest_fingerprint = manifest_fingerprint(manifest_df)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="galmorph-manual-"))
    champ = dec.champion_before
    try:
        c.get_model_version(dec.model_name, str(champ)) if champ is not None else None
    except Exception:  # noqa: BLE001 - the old champion was deleted: judged like a first champion
        champ = None
    cand, champ_ev, ce = _evaluate(dec.model_name, str(dec.candidate_version), champ, manifest_df, out, stamp(),
                                   policy, data_root, log_evaluations, evaluate_kwargs)
    passed, reasons, dec.checks = compare(cand.report, champ_ev.report if champ_ev else None, policy, ce)
    dec.candidate_metrics = _key_metrics(cand.metrics, policy)
    dec.champion_metrics = _key_metrics(champ_ev.metrics, policy) if champ_ev else {}
    dec.passed = passed
    dec.decision = "manual-passed" if passed else "manual-failed"
    dec.reasons += ([f"policy check passed against v{champ}" if champ else "policy check passed (no earlier champion)"]
                    if passed else reasons)
    if cand.report.get("model_card"):
        dec.checks["_card"] = cand.report["model_card"]
        dec.checks["_card_run_id"] = cand.run_id


def _settle_aliases(c, dec: PromotionDecision, before: dict[str, str], last: str | None, manual: ManualPolicy) -> None:
    """``revert`` of a failed check: ``@champion`` back to the previous champion. A move that stands: the old
    champion becomes ``@previous-champion`` (a rollback then restores it, not an older one)."""
    from galmorph.promotion.registry import aliases

    if dec.decision == "manual-failed" and manual.mode == "revert":
        if last is None:
            dec.reasons.append("policy manual=revert: no previous champion to restore; the move stands")
        else:
            c.set_registered_model_alias(dec.model_name, CHAMPION, last)
            dec.decision = "manual-reverted"
            dec.reasons.append(f"policy manual=revert: @champion restored to v{last}")
    elif dec.decision in KEEPS_MOVE and last is not None and before.get(PREVIOUS) != last:
        try:
            c.get_model_version(dec.model_name, str(last))
            c.set_registered_model_alias(dec.model_name, PREVIOUS, last)
        except Exception as exc:  # noqa: BLE001 - a deleted old champion: nothing to point at
            dec.reasons.append(f"@previous-champion not moved to v{last}: {exc}"[:500])
    after = aliases(dec.model_name, c)
    dec.champion_after, dec.previous_champion_after, dec.challenger_after = (after.get(CHAMPION), after.get(PREVIOUS),
                                                                             after.get("challenger"))


def _tag_manual(c, dec: PromotionDecision) -> None:
    """The verdict on the hand-promoted version (and its model card), the move in the card's alias history."""
    from galmorph.promotion.registry import _tag

    card, card_run = dec.checks.pop("_card", None), dec.checks.pop("_card_run_id", None)
    if dec.candidate_version is None:
        return
    verdict = {"decision": dec.decision, "time": dec.timestamp, "origin": "manual", "from": dec.champion_before,
               "to": dec.candidate_version, "champion_after": dec.champion_after, "passed": dec.passed,
               "reasons": dec.reasons}
    tags: dict[str, Any] = {"galmorph.decision": dec.decision, "galmorph.decision_time": dec.timestamp,
                            "galmorph.decision_reasons": dec.reasons, "galmorph.manual_verdict": verdict,
                            f"galmorph.audit.{stamp()}": verdict}
    if dec.candidate_metrics:
        tags["galmorph.decision_metrics"] = dec.candidate_metrics
        tags["galmorph.decision_compared_to"] = str(dec.champion_before)
    if dec.decision == "manual-reverted":
        tags["galmorph.reverted"] = (f"hand promotion of v{dec.candidate_version} failed the policy check; @champion "
                                     f"restored to v{dec.champion_after} at {dec.timestamp}")
    _tag(c, dec.model_name, dec.candidate_version, tags)
    try:
        from galmorph.evaluation.card import note_alias_move, with_decision

        if card is not None:
            card = with_decision(card, {"decision": dec.decision, "time": dec.timestamp, "reasons": dec.reasons,
                                        "compared_to": dec.champion_before})
        note_alias_move(dec.model_name, dec.candidate_version, verdict, card=card, run_id=card_run, client=c)
    except Exception as exc:  # noqa: BLE001 - the verdict stands; the card is documentation
        log.warning("model card of %s v%s not updated: %s", dec.model_name, dec.candidate_version, exc)
        dec.checks["card_error"] = f"{type(exc).__name__}: {exc}"


def champion_to_rescore(model_name: str, client=None) -> dict | None:
    """The audit entry of the move that made the current champion (``from`` != ``to``, the moved version still
    champion) when no rescoring is linked to it yet; None otherwise."""
    hist = alias_history(model_name, client)
    if not hist:
        return None
    current = hist[-1]["to"]
    for h in reversed(hist):
        if h["to"] != current:
            return None
        if h["from"] != h["to"] and h["decision"] in KEEPS_MOVE:
            return None if (h.get("rescoring") or current is None) else h
    return None


def link_rescoring(model_name: str, entry: dict, info: dict, client=None) -> None:
    """Link a started rescoring to the move ``entry`` (:func:`champion_to_rescore`): the tag
    ``galmorph.rescoring`` on its audit run and ``galmorph.rescoring.<release>`` on the version."""
    from galmorph.jsonsafe import finite_json, json_default

    c = mlflow_client(client)
    text = json.dumps(finite_json(info), default=json_default, sort_keys=True)[:5000]
    c.set_tag(entry["audit_run_id"], "galmorph.rescoring", text)
    if entry.get("to"):
        c.set_model_version_tag(model_name, str(entry["to"]), f"galmorph.rescoring.{info.get('release')}"[:250], text)
