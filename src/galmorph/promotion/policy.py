"""The promotion policy: :class:`PromotionPolicy` (from params.yaml's ``promotion:`` section) and the checks
:func:`compare` applies to a candidate's and the champion's evaluation reports:

* the primary metric (default macro F1) must improve by at least ``min_improvement`` (delta);
* no redshift-bin AUC (bins with at least ``min_bin_n`` objects in both evaluations) may drop by more
  than ``max_bin_auc_drop`` (epsilon);
* chirality-equivariant models must pass the mirror test;
* quality floor (every candidate, the first champion too): judged on the predictions that will be deployed
  (the evaluation applies the model's recorded class prior and winding ensemble by default, #26), on the
  held-out galaxies re-weighted to the catalogue's class proportions (the evaluation report's ``skill``
  block, :func:`galmorph.evaluation.core.skill_vs_majority`): the lower end of the bootstrap 95 % interval
  of the candidate's ``floor_metric`` (default: the primary metric) must exceed the majority-class
  predictor's value at those proportions (and the value its own predictions score by chance, independent of
  the image) by at least ``min_margin_over_majority``;
* winding check (chirality; every candidate, the first champion too): the candidate's disagreement with the
  physical winding measurement (on the galaxies where the measurement is confident,
  ``|z| >= winding_min_confidence``, and the model predicts CW or ACW) may not exceed
  ``winding_max_disagreement`` (chance is 0.5), nor the champion's by more than ``winding_margin``; a
  failure is flagged in the decision, and blocks the promotion when ``winding_blocks``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from galmorph.promotion.common import PromotionError


class PolicyError(PromotionError, ValueError):
    """The promotion policy cannot be read (a missing or malformed params file, an unknown key, a bad value)."""


#: params.yaml spellings of policy fields.
POLICY_ALIASES = {"delta": "min_improvement", "epsilon": "max_bin_auc_drop", "primary": "primary_metric"}


@dataclass
class PromotionPolicy:
    primary_metric: str = "f1_macro"
    min_improvement: float = 0.0  # delta: candidate - champion >= delta
    max_bin_auc_drop: float = 0.05  # epsilon: champion - candidate <= epsilon in every z bin
    min_bin_n: int = 10  # bins with fewer evaluated objects (in either evaluation) are not compared
    require_mirror_test: bool = True  # for chirality-equivariant candidates
    bin_metric: str = "auc_macro"
    # quality floor (every candidate, the first champion too): the lower end of the bootstrap 95 % interval of
    # the candidate's floor_metric at the catalogue's class proportions must exceed the majority-class
    # predictor's by at least this gain; None switches the floor off
    min_margin_over_majority: float | None = 0.02
    floor_metric: str = ""  # f1_macro | accuracy ("": the primary metric)
    # winding check (chirality): challenger disagreement with the winding measurement - champion's > margin
    # is flagged (and blocks when winding_blocks); None switches the check off
    winding_margin: float | None = 0.02
    winding_min_confidence: float = 2.0
    winding_blocks: bool = True
    # winding check, absolute (every candidate, the first champion too): disagreement above this fails; None: off
    winding_max_disagreement: float | None = 0.25

    @classmethod
    def from_params(cls, params: dict | str | Path | None, missing_ok: bool = False,
                    **overrides) -> "PromotionPolicy":
        """Policy from the ``promotion:`` section of params.yaml (a path or a loaded dict); keyword
        overrides that are not None win (CLI flags). A path that does not exist is a :class:`PolicyError`
        naming it, unless ``missing_ok`` (a default location that may be absent: the default policy)."""
        section = policy_section(params, missing_ok)
        vals = {POLICY_ALIASES.get(k, k): v for k, v in section.items() if k not in MANUAL_KEYS}
        vals.update({POLICY_ALIASES.get(k, k): v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(vals) - set(known)
        if unknown:
            raise PolicyError(f"unknown promotion policy key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: _typed(k, v, cls.__dataclass_fields__[k].default) for k, v in vals.items()})


def policy_section(params: dict | str | Path | None, missing_ok: bool) -> dict:
    """The ``promotion:`` section of params.yaml given as a path (:func:`read_policy_section`) or as a loaded
    dict (the section itself or the whole file); ``{}`` for None."""
    if isinstance(params, (str, Path)):
        return read_policy_section(params, missing_ok=missing_ok)
    if isinstance(params, dict):
        return params.get("promotion", params) or {}
    return {}


#: params.yaml keys of the ``promotion:`` section that govern hand promotions (:class:`ManualPolicy`).
MANUAL_KEYS = ("manual", "manual_eval_manifest")
MANUAL_MODES = ("allow", "check", "revert")


@dataclass
class ManualPolicy:
    """What the platform does when ``@champion`` moves outside ``galmorph promote``/``rollback`` (the MLflow
    UI, the API): ``allow`` records the move; ``check`` also evaluates the new champion with the promotion
    policy and records the verdict; ``revert`` also restores the previous champion when the check fails.
    ``eval_manifest``: the evaluation set of the check (default: the manifest of the model's last promotion)."""

    mode: str = "check"
    eval_manifest: str = ""

    @classmethod
    def from_params(cls, params: dict | str | Path | None, missing_ok: bool = True) -> "ManualPolicy":
        section = policy_section(params, missing_ok)
        mode = str(section.get("manual") or "check").strip().lower()
        if mode not in MANUAL_MODES:
            raise PolicyError(f"promotion policy manual: {section.get('manual')!r} is not one of {list(MANUAL_MODES)}")
        return cls(mode=mode, eval_manifest=str(section.get("manual_eval_manifest") or ""))


def read_policy_section(path: str | Path, missing_ok: bool = False) -> dict:
    """The ``promotion:`` mapping of the YAML file ``path`` ({} when it has none); :class:`PolicyError`
    naming the file when it is missing (unless ``missing_ok``), unreadable or not a YAML mapping."""
    import yaml

    p = Path(path)
    if not p.is_file():
        if missing_ok and not p.exists():
            return {}
        raise PolicyError(f"promotion policy file {p} " + ("is not a file" if p.exists() else "does not exist"))
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"promotion policy file {p} is unreadable: {getattr(exc, 'strerror', None) or exc}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise PolicyError(f"promotion policy file {p} is not valid YAML{at}: "
                          f"{getattr(exc, 'problem', None) or exc}") from exc
    if doc is None:
        return {}
    section = doc.get("promotion", {}) if isinstance(doc, dict) else None
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise PolicyError(f"promotion policy file {p}: " + ("the document is not a mapping" if not isinstance(doc, dict)
                                                            else "its 'promotion:' section is not a mapping"))
    return section


def _typed(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the policy field ``key`` (numbers from YAML strings too); a clear
    :class:`PolicyError` when it is not one."""
    if value is None or isinstance(default, str):
        return value
    want = bool if isinstance(default, bool) else int if isinstance(default, int) else float
    if want is bool:
        if isinstance(value, bool):
            return value
    else:
        try:
            out = want(value)
            if want is float or float(value) == out:
                return out
        except (TypeError, ValueError):
            pass
    raise PolicyError(f"promotion policy {key}: {value!r} is not a {want.__name__}")


# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------
FLOOR_METRICS = ("f1_macro", "accuracy")


def _floor_of(skill: dict, metric: str, margin: float) -> dict:
    """The floor check of one skill block (:func:`galmorph.evaluation.core.skill_vs_majority`)."""
    m, base = skill[metric], skill["majority"]
    low, b = float(m.get("ci_low", math.nan)), float(base.get(metric, math.nan))
    chance = float((skill.get("chance") or {}).get(metric, math.nan))
    need = max(b, chance if math.isfinite(chance) else b) + float(margin)
    ok = math.isfinite(low) and math.isfinite(b) and low > need
    return {"passed": bool(ok), "metric": metric, "value": float(m.get("value", math.nan)), "ci_low": low,
            "ci_high": float(m.get("ci_high", math.nan)), "level": skill.get("level"), "n": skill.get("n"),
            "n_boot": skill.get("n_boot"), "majority_value": b, "majority_class": base.get("class"),
            "chance_value": chance, "margin": float(margin), "required": need,
            "proportions": skill.get("proportions"), "proportions_source": skill.get("proportions_source")}


def _floor_reason(what: str, c: dict, skill: dict, prior, ensemble) -> str:
    props = ", ".join(f"{k} {v:.3f}" for k, v in (skill.get("proportions") or {}).items())
    return (f"quality floor: {what}{c['metric']} {c['value']:.4f} (95% interval {c['ci_low']:.4f}..{c['ci_high']:.4f}, "
            f"n={skill.get('n')}) does not beat the majority-class predictor (always "
            f"{c['majority_class']!r}: {c['metric']} {c['majority_value']:.4f}; chance, its own predictions "
            f"independent of the image: {c['chance_value']:.4f}) by the required margin {c['margin']:g}: the "
            f"interval's lower end {c['ci_low']:.4f} must exceed {c['required']:.4f} (held-out galaxies at the "
            f"{skill.get('proportions_source')} proportions {props}; predictions with class prior {prior}, "
            f"ensemble {ensemble})")


def quality_floor(report: dict, margin: float | None, metric: str = "f1_macro") -> dict | None:
    """The quality floor of an evaluation report's default predictions (its ``skill`` block,
    :func:`galmorph.evaluation.core.skill_vs_majority`: the held-out galaxies at the catalogue's class
    proportions): the lower end of the bootstrap interval of ``metric`` (``f1_macro`` or ``accuracy``) must
    exceed the majority-class predictor's value by at least ``margin``. When the default predictions combine
    the network with the winding measurement (the report's ``skill_network`` block), the network's own
    predictions (same class prior, no ensemble) must show skill of their own: the lower end of their interval
    above both the majority-class and the chance predictor (no margin; a negative ``margin`` applies here too).
    The measurement needs no training, so a candidate whose skill is the measurement's alone is rejected. Returns the check (``passed``, ``metric``, ``value``, ``ci_low``,
    ``ci_high``, ``level``, ``majority_value``, ``majority_class``, ``margin``, ``required``, ``proportions``,
    ``proportions_source``, ``network`` (the network-alone check, when judged), ``reason`` when failed) or None
    when ``margin`` is None."""
    if margin is None:
        return None
    metric = metric if metric in FLOOR_METRICS else "f1_macro"
    skill = report.get("skill")
    if not skill or metric not in skill or not skill.get("majority"):
        return {"passed": False, "metric": metric, "margin": float(margin),
                "reason": "quality floor: the evaluation has no skill block (the default predictions at the "
                          "catalogue's class proportions with a bootstrap interval); re-evaluate with this version"}
    meta = report.get("meta") or {}
    prior, ens = meta.get("applied_class_prior_label"), meta.get("applied_ensemble_label")
    out = _floor_of(skill, metric, margin)
    out.update(applied_class_prior=prior, applied_ensemble=ens)
    if not out["passed"]:
        out["reason"] = _floor_reason("", out, skill, prior, ens)
        return out
    net = report.get("skill_network")
    if net and metric in net and net.get("majority"):
        # skill of its own: the interval above both no-skill predictors (no margin; the margin is the deployed
        # output's), so that a network the measurement carries is rejected and a weak but real one is not; a
        # policy with a negative margin (a user letting any model through) lowers this check as well
        out["network"] = _floor_of(net, metric, min(float(margin), 0.0))
        if not out["network"]["passed"]:
            out["passed"] = False
            out["reason"] = _floor_reason("the network alone (the winding measurement needs no training, so the "
                                          "model's own predictions must show skill of their own): ",
                                          out["network"], net, prior, "off")
    return out


def winding_check(candidate: dict, champion: dict | None, policy: PromotionPolicy) -> dict | None:
    """The winding check of two evaluation reports (their ``winding`` blocks,
    :func:`galmorph.scoring.ensemble.winding_report`): ``flagged`` when the candidate's disagreement with the
    measurement exceeds ``policy.winding_max_disagreement`` (every candidate, the first champion too) or
    the champion's by more than ``policy.winding_margin``; ``blocking`` when it is flagged and
    ``policy.winding_blocks``. None when both are off or the candidate has no block."""
    cw = candidate.get("winding")
    if (policy.winding_margin is None and policy.winding_max_disagreement is None) or not cw:
        return None
    hw = (champion or {}).get("winding") or {}
    a, b = float(cw.get("disagreement", math.nan)), float(hw.get("disagreement", math.nan))
    out = {"candidate_disagreement": a, "champion_disagreement": b, "candidate_n_compared": cw.get("n_compared"),
           "champion_n_compared": hw.get("n_compared"),
           "margin": None if policy.winding_margin is None else float(policy.winding_margin),
           "max_disagreement": policy.winding_max_disagreement,
           "min_confidence": cw.get("min_confidence"), "compared": False, "flagged": False, "blocking": False}
    tail = "" if policy.winding_blocks else " (flagged, not blocking)"
    reasons = []
    if policy.winding_max_disagreement is not None and math.isfinite(a):  # every candidate, the first too
        out["absolute_checked"] = True
        if a > float(policy.winding_max_disagreement) + 1e-12:
            reasons.append(f"winding check: the candidate disagrees with the winding measurement on {a:.1%} of its "
                           f"confident CW/ACW galaxies (n={cw.get('n_compared')}) > the maximum "
                           f"{float(policy.winding_max_disagreement):.1%} (chance: 50%)")
    if policy.winding_margin is None:
        out["note"] = "relative check off (winding_margin null)"
    elif champion is None or not (math.isfinite(a) and math.isfinite(b)):
        out["note"] = ("no champion to compare with" if champion is None else
                       "no galaxy with a confident measurement and a CW/ACW prediction in one of the evaluations")
    else:
        excess = a - b
        out.update(compared=True, excess=excess)
        if excess > float(policy.winding_margin) + 1e-12:
            reasons.append(f"winding check: the candidate disagrees with the winding measurement on {a:.1%} of its "
                           f"confident CW/ACW galaxies (n={cw.get('n_compared')}) vs the champion's {b:.1%} "
                           f"(n={hw.get('n_compared')}): +{excess:.3f} > margin {float(policy.winding_margin):g}")
    if reasons:
        out.update(flagged=True, blocking=bool(policy.winding_blocks), reason="; ".join(reasons) + tail)
    return out


def mirror_check(candidate: dict) -> tuple[dict, str | None]:
    """The mirror test of a chirality-equivariant candidate's report: ``(check, reason or None)``."""
    mirror = (candidate.get("chirality") or {}).get("mirror")
    ok = bool(mirror and mirror.get("passed"))
    check = {"passed": ok, **({k: mirror[k] for k in ("cvs_pred", "cvs_pred_mirror", "label_swap_fraction",
                                                       "max_prob_diff")} if mirror else {})}
    if ok:
        return check, None
    return check, "chirality-equivariant model fails the mirror test" + (
        f" (label swap fraction {mirror['label_swap_fraction']:.4f}, max |dp| {mirror['max_prob_diff']:.2e})"
        if mirror else " (not run)")


def primary_check(candidate: dict, champion: dict, policy: PromotionPolicy) -> tuple[dict, str | None]:
    """The primary metric must improve on the champion's by ``policy.min_improvement``: ``(check, reason)``."""
    pm = policy.primary_metric
    a, b = float(candidate["metrics"][pm]), float(champion["metrics"].get(pm, float("nan")))
    diff = a - b
    ok = math.isfinite(a) and (not math.isfinite(b) or diff >= policy.min_improvement)
    check = {"metric": pm, "candidate": a, "champion": b, "improvement": diff,
             "min_improvement": policy.min_improvement, "passed": ok}
    return check, None if ok else (f"{pm} {a:.4f} vs champion {b:.4f}: improvement {diff:+.4f} < "
                                   f"delta={policy.min_improvement}")


def redshift_bin_checks(candidate: dict, champion: dict, policy: PromotionPolicy) -> tuple[dict, list[str]]:
    """No redshift bin's ``policy.bin_metric`` may drop by more than ``policy.max_bin_auc_drop`` (bins with
    ``min_bin_n`` objects in both evaluations): ``(checks per bin, reasons)``."""
    bins: dict[str, Any] = {}
    reasons: list[str] = []
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
    return bins, reasons


def compare(candidate: dict, champion: dict | None, policy: PromotionPolicy, chirality_equivariant: bool = False,
            ) -> tuple[bool, list[str], dict]:
    """Apply the policy to two evaluation reports (``EvaluationResult.report``; ``champion`` None for the
    first model). Returns ``(passed, reasons, checks)``; reasons explain every failed check."""
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    cm = candidate["metrics"]
    if policy.primary_metric not in cm:
        raise PromotionError(f"primary metric {policy.primary_metric!r} not in the evaluation (available e.g. "
                             f"{sorted(k for k in cm if 'macro' in k or k == 'accuracy')})")
    if chirality_equivariant and policy.require_mirror_test:
        checks["mirror_test"], reason = mirror_check(candidate)
        reasons += [reason] if reason else []
    floor = quality_floor(candidate, policy.min_margin_over_majority, policy.floor_metric or policy.primary_metric)
    if floor is not None:
        checks["quality_floor"] = floor
        reasons += [] if floor["passed"] else [floor["reason"]]
    if champion is not None:
        checks["primary"], reason = primary_check(candidate, champion, policy)
        reasons += [reason] if reason else []
        checks["redshift_bins"], bin_reasons = redshift_bin_checks(candidate, champion, policy)
        reasons += bin_reasons
    wind = winding_check(candidate, champion, policy)
    if wind is not None:
        checks["winding"] = wind
        if wind["blocking"]:
            reasons.append(wind["reason"])
    return not reasons, reasons, checks
