"""Model cards: one per registered model version, written at evaluation and updated at promotion.

A card (a JSON-able dict, rendered to markdown by the ``card.md.j2`` template) holds the model's
identity and encoder origin, its training data (manifest, DVC data version, class counts), its
metrics overall and per redshift bin, its calibration, the failure modes the evaluation found (e.g.
a failed mirror test), the intended use and the promotion decision. :func:`attach_card` puts it on
the MLflow model version: the version **description** holds a short readable summary
(:func:`card_summary`), the tag ``galmorph.card`` the card JSON (truncated to MLflow's tag limit),
and the full card is logged as ``model_card.json`` / ``model_card.md`` artifacts of the evaluation
run (tag ``galmorph.card_run_id``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from galmorph.jsonsafe import finite_json, json_default

log = logging.getLogger(__name__)

INTENDED_USE = {
    "chirality": ("Winding sense (CW / ACW / other) of galaxy images for statistical studies of the spin "
                  "distribution (CVS); chirality-equivariant models swap CW/ACW exactly under mirroring. "
                  "Not for single-object claims at low confidence."),
    "arms": "Number of spiral arms of face-on spirals as catalogued by Galaxy Zoo 2; not for edge-on or irregular galaxies.",
    "lopsided": "Lopsided vs symmetric classification of disc galaxies (with the A1 measurement as the physical cross-check).",
}


def _r(v: Any, nd: int = 4) -> Any:
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, nd)
    return v


def training_record(run_id: str | None, client=None) -> dict:
    """What the training run recorded: manifest, DVC data version tags, preset, parent run and the
    class counts (``class_counts.json`` artifact). Empty when the run cannot be read."""
    if not run_id:
        return {}
    import mlflow

    c = client or mlflow.MlflowClient()
    try:
        run = c.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - a card without training details is still a card
        log.warning("model card: training run %s unreadable (%s)", run_id, exc)
        return {"run_id": run_id}
    tags = run.data.tags
    out: dict[str, Any] = {"run_id": run_id, "experiment_id": run.info.experiment_id}
    for k in ("galmorph.manifest", "galmorph.preset", "galmorph.arch", "mlflow.parentRunId", "galmorph.git_commit"):
        if k in tags:
            out[k.split(".", 1)[1]] = tags[k]
    dv = {k.split(".", 1)[1]: v for k, v in tags.items() if k.startswith("galmorph.data_version")}
    if dv:
        out["data_version"] = dv
    try:
        counts = mlflow.artifacts.load_dict(f"runs:/{run_id}/class_counts.json")
        out["class_counts"] = counts
    except Exception:  # noqa: BLE001 - older runs have no class counts
        pass
    return out


def failure_modes(report: Mapping) -> list[str]:
    """Weak spots the evaluation report shows, in words."""
    out = []
    cls = report.get("classification") or {}
    ch = report.get("chirality") or {}
    mirror = ch.get("mirror")
    if mirror is not None:
        if mirror.get("passed"):
            out.append(f"mirror test passed (label swap {mirror.get('label_swap_fraction')}, max |dp| "
                       f"{mirror.get('max_prob_diff'):.2g})")
        else:
            out.append(f"FAILS the mirror test: only {mirror.get('label_swap_fraction')} of CW/ACW predictions swap "
                       f"under mirroring (max |dp| {mirror.get('max_prob_diff')}); its CVS is not trustworthy")
    for c in cls.get("absent_classes", []):
        out.append(f"class {c!r} has no examples in the evaluation set: its performance is unknown")
    for c, d in (cls.get("per_class") or {}).items():
        if d.get("support", 0) > 0 and d.get("f1", 1.0) < 0.5:
            out.append(f"class {c!r}: F1 {d['f1']:.3f} (support {d['support']})")
    base = cls.get("majority_baseline")
    f1 = (cls.get("macro") or {}).get("f1")
    if base and f1 is not None and f1 <= base["f1_macro"]:
        out.append(f"macro-F1 {f1:.3f} no better than always predicting {base['class']!r} ({base['f1_macro']:.3f})")
    acc = cls.get("accuracy")
    for b, d in (report.get("redshift_bins") or {}).items():
        if d.get("n", 0) >= 10 and acc is not None and d.get("accuracy") is not None \
                and math.isfinite(d["accuracy"]) and d["accuracy"] < acc - 0.1:
            out.append(f"redshift bin {b}: accuracy {d['accuracy']:.3f} vs {acc:.3f} overall (n={d['n']})")
    cal = (report.get("calibration") or {}).get("overall") or {}
    if cal.get("ece") is not None and math.isfinite(cal["ece"]) and cal["ece"] > 0.1:
        out.append(f"probabilities poorly calibrated: ECE {cal['ece']:.3f}")
    return out


def build_model_card(report: Mapping, training: Mapping | None = None, decision: Mapping | None = None) -> dict:
    """The card of the evaluated model from an evaluation report (:func:`galmorph.evaluation.core.evaluate`),
    the training record (:func:`training_record`) and an optional promotion decision."""
    meta = report.get("meta") or {}
    cls = report.get("classification") or {}
    cal = report.get("calibration") or {}
    zcal = cal.get("redshift_bins") or {}
    task = meta.get("task")
    model = {"name": meta.get("model_name"), "version": meta.get("model_version"), "uri": meta.get("model_uri"),
             "task": task, "arch": meta.get("arch"), "classes": meta.get("classes"),
             "chirality_equivariant": meta.get("chirality_equivariant"), "image_size": meta.get("image_size"),
             "crop_fraction": meta.get("crop_fraction"), "encoder_init": meta.get("encoder_init") or "unknown",
             "training_run_id": meta.get("run_id_model")}
    overall = {"accuracy": _r(cls.get("accuracy")), "f1_macro": _r((cls.get("macro") or {}).get("f1")),
               "auc_macro": _r((cls.get("macro") or {}).get("auc")),
               "majority_baseline_f1_macro": _r((cls.get("majority_baseline") or {}).get("f1_macro")),
               "absent_classes": ", ".join(cls.get("absent_classes", [])) or "none"}
    for c, d in (cls.get("per_class") or {}).items():
        overall[f"f1_{c}"] = _r(d.get("f1"))
    zb = {b: {"n": d.get("n"), "accuracy": _r(d.get("accuracy")), "f1_macro": _r(d.get("f1_macro")),
              "auc_macro": _r(d.get("auc_macro")), "ece": _r((zcal.get(b) or {}).get("ece"))}
          for b, d in (report.get("redshift_bins") or {}).items() if d.get("n", 0) > 0}
    card = {
        "model": model,
        "training": dict(training or {}),
        "evaluation": {"manifest": meta.get("manifest"), "manifest_fingerprint": meta.get("manifest_fingerprint"),
                       "n": cls.get("n"), "overall": overall, "redshift_bins": zb},
        "calibration": {"temperature": _r(cal.get("temperature", meta.get("temperature", 1.0))),
                        "ece": _r((cal.get("overall") or {}).get("ece")), "n_bins": cal.get("n_bins")},
        "failure_modes": failure_modes(report),
        "intended_use": INTENDED_USE.get(str(task), "Classification of galaxy images for the task it was trained on."),
        "decision": dict(decision) if decision else None,
    }
    card["summary"] = card_summary(card)
    return finite_json(card)


def with_decision(card: Mapping, decision: Mapping) -> dict:
    """The card updated with a promotion decision (``decision``, ``time``, ``compared_to``, ``reasons``)."""
    out = json.loads(json.dumps(card, default=json_default))
    out["decision"] = dict(decision)
    out["summary"] = card_summary(out)
    return out


def card_summary(card: Mapping) -> str:
    """A short readable summary (the MLflow version description)."""
    m, ev, cal = card.get("model") or {}, card.get("evaluation") or {}, card.get("calibration") or {}
    o = ev.get("overall") or {}
    tr = card.get("training") or {}
    dv = tr.get("data_version") or {}
    lines = [f"{m.get('task')} classifier ({m.get('arch')}, {m.get('image_size')} px, encoder "
             f"{m.get('encoder_init')}).",
             f"Evaluated on {ev.get('n')} galaxies ({ev.get('manifest')}): accuracy {o.get('accuracy')}, macro-F1 "
             f"{o.get('f1_macro')} (majority-class {o.get('majority_baseline_f1_macro')}), macro AUC {o.get('auc_macro')}.",
             f"Calibration: temperature {cal.get('temperature')}, ECE {cal.get('ece')}."]
    if tr.get("manifest") or dv:
        lines.append(f"Trained on {tr.get('manifest', '?')}" + (f" (data version {json.dumps(dv, sort_keys=True)})"
                                                                 if dv else "") + ".")
    fm = card.get("failure_modes") or []
    if fm:
        lines.append("Known issues: " + "; ".join(fm[:3]) + ("; ..." if len(fm) > 3 else "") + ".")
    for m in (card.get("alias_history") or [])[-3:]:
        lines.append(f"Alias move ({m.get('origin')}): @champion v{m.get('from')} -> v{m.get('to')}, {m.get('decision')} "
                     f"at {m.get('time')}" + (f"; champion now v{m['champion_after']}"
                                              if m.get("champion_after") not in (None, m.get("to")) else "") + ".")
    d = card.get("decision")
    if d:
        lines.append(f"Promotion: {d.get('decision')} at {d.get('time')}" +
                     (f" ({'; '.join(d.get('reasons') or [])})" if d.get("reasons") else "") + ".")
    return "\n".join(lines)


def card_markdown(card: Mapping) -> str:
    """The card as markdown (template ``card.md.j2``)."""
    from galmorph.evaluation.templating import template_env

    return template_env(autoescape=False).get_template("card.md.j2").render(c=card)


def attach_card(card: Mapping, model_name: str, version: str, run_id: str | None = None, client=None) -> None:
    """Attach ``card`` to the registered model version: description = :func:`card_summary`, tag
    ``galmorph.card`` = the JSON (truncated at 5000 characters), and, with ``run_id``, the full card as
    ``evaluation/model_card.json`` / ``.md`` artifacts of that run (tag ``galmorph.card_run_id``)."""
    import mlflow

    c = client or mlflow.MlflowClient()
    c.update_model_version(model_name, str(version), description=card.get("summary") or card_summary(card))
    text = json.dumps(finite_json(card), default=json_default, sort_keys=True)
    c.set_model_version_tag(model_name, str(version), "galmorph.card", text[:5000])
    if run_id:
        c.log_dict(run_id, finite_json(card), "evaluation/model_card.json")
        c.log_text(run_id, card_markdown(card), "evaluation/model_card.md")
        c.set_model_version_tag(model_name, str(version), "galmorph.card_run_id", run_id)


def note_alias_move(model_name: str, version: str, move: Mapping | None, card: Mapping | None = None,
                    run_id: str | None = None, client=None) -> dict:
    """Add ``move`` (an alias move: ``origin``, ``from``, ``to``, ``decision``, ``time``, #27) to the
    ``alias_history`` of the version's card (``card``, else the one in its ``galmorph.card`` tag) and attach it
    again (:func:`attach_card`; a version without a card gets the tag only, its description is kept)."""
    import mlflow

    c = client or mlflow.MlflowClient()
    if card is None:
        text = (c.get_model_version(model_name, str(version)).tags or {}).get("galmorph.card")
        try:
            card = json.loads(text) if text else {}
        except ValueError:  # truncated at the tag limit: the history starts again
            card = {}
    out = json.loads(json.dumps(card, default=json_default))
    if move:
        entry = {k: move.get(k) for k in ("origin", "from", "to", "decision", "time", "champion_after", "passed")}
        entry["reasons"] = [str(r)[:300] for r in (move.get("reasons") or [])[:3]]
        out.setdefault("alias_history", []).append(entry)
        out["alias_history"] = out["alias_history"][-20:]
    if out.get("model"):
        out["summary"] = card_summary(out)
        attach_card(out, model_name, version, run_id=run_id, client=c)
    else:
        c.set_model_version_tag(model_name, str(version), "galmorph.card",
                                json.dumps(finite_json(out), default=json_default, sort_keys=True)[:5000])
    return out
