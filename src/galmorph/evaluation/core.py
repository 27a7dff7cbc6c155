"""``evaluate``: score a registered/logged model on a labelled test manifest and write the report.

Outputs in ``out_dir``: ``predictions.parquet`` (every manifest row: probabilities, prediction, label,
z, z_bin, error), ``quarantine.parquet`` (rows that could not be evaluated, with the reason),
``report.json`` (every number), ``report.html`` (plots and tables), ``model_card.json`` / ``.md``
(:mod:`galmorph.evaluation.card`) and, with explanations, ``explanations.npz``. With ``log_to_mlflow`` all of them are logged as artifacts and every number as
an MLflow metric, in the active run or in a new run of the ``galmorph-evaluation`` experiment tagged
with the model name and version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.evaluation import chirality as chir
from galmorph.evaluation.calibration import calibration_report
from galmorph.evaluation.metrics import (aggregate_trials, classification_metrics, flatten_metrics,
                                         redshift_bin_metrics, threshold_metrics)
from galmorph.jsonsafe import finite_json, json_default
from galmorph.catalogue.manifest import DEFAULT_Z_EDGES, assign_z_bin, quarantine_record, read_manifest, write_quarantine

log = logging.getLogger(__name__)

EVALUATION_EXPERIMENT = "galmorph-evaluation"


@dataclass
class EvaluationResult:
    metrics: dict[str, float]  # flat, MLflow metric names
    report: dict  # nested, everything (also in report.json)
    predictions: pd.DataFrame
    predictions_path: Path
    report_json: Path
    report_html: Path
    quarantine_path: Path
    model_uri: str
    model_name: str | None = None
    model_version: str | None = None
    run_id: str | None = None
    extra_paths: dict[str, Path] = field(default_factory=dict)


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash of the evaluated rows (object ids, labels, image URIs) to tie comparisons to the
    same evaluation set."""
    h = hashlib.sha256()
    for col in ("object_id", "label", "image_uri"):
        if col in manifest.columns:
            h.update("\x1f".join(manifest[col].astype(str).tolist()).encode())
    return h.hexdigest()[:16]


def _model_name_version(loaded, uri: str) -> tuple[str | None, str | None]:
    from galmorph.models.io import registered_name

    name = None
    if uri.startswith("models:/"):
        rest = uri[len("models:/"):]
        name = rest.split("@")[0] if "@" in rest else rest.split("/")[0]
    return name or registered_name(loaded.spec.task), loaded.version




def _encoder_init(spec) -> str:
    """Where the model's encoder weights came from (ModelSpec ``encoder_init``, else ``extra``)."""
    v = getattr(spec, "encoder_init", None) or (spec.extra or {}).get("encoder_init")
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v) if v else ""


def mlflow_client():
    import mlflow

    return mlflow.MlflowClient()


def _load_images(manifest: pd.DataFrame, rows: Sequence[int], spec, data_root):
    import torch

    from galmorph.datasets.images import ManifestImageDataset

    ds = ManifestImageDataset(manifest, spec.image_size, spec.in_chans, spec.crop_fraction, data_root=data_root)
    return torch.stack([ds[int(i)][0] for i in rows]) if len(rows) else torch.empty(0)


def chirality_diagnostics(loaded, manifest: pd.DataFrame, pred: pd.DataFrame, valid: np.ndarray, *,
                          data_root=None, batch_size: int = 32, sweep_n: int | None = None,
                          sweep_realisations: int = 10, rotation_passes: int = 10, rotation_angles: int = 8,
                          rotation_max_objects: int = 32, mirror_atol: float = 1e-5, seed: int = 0) -> dict:
    """CVS of predictions vs labels, the mirror test, the sweep test, rotation stability and the
    MC-dropout predictive spread (both on at most ``rotation_max_objects`` spirals; the spread only for
    a model with dropout, else ``skipped["mc_dropout"]`` says why).

    ``pred`` is the prediction table of ``manifest`` (same row order) and ``valid`` marks the rows
    with a usable prediction and label. Parts that cannot run (no spirals of one sense, ...) are
    reported under ``skipped`` with the reason instead of failing the evaluation.
    """
    from galmorph.scoring.inference import predict_manifest

    out: dict = {"skipped": {}}
    lab, prd = pred.loc[valid, "label"].astype(str).to_numpy(), pred.loc[valid, "pred"].astype(str).to_numpy()
    out["cvs"] = chir.cvs_summary(lab, prd)
    pm = predict_manifest(loaded, manifest, batch_size=batch_size, data_root=data_root, mirror=True)
    out["mirror"] = chir.mirror_test(pred, pm, atol=mirror_atol)
    try:
        out["sweep"] = chir.cvs_sweep(lab, prd, n=sweep_n, realisations=sweep_realisations, seed=seed)
    except ValueError as exc:
        out["skipped"]["sweep"] = str(exc)
    spiral_rows = np.flatnonzero(valid & pred["label"].isin([chir.CW, chir.ACW]).to_numpy())
    if len(spiral_rows) and rotation_passes > 0 and rotation_angles > 0:
        rows = spiral_rows[:rotation_max_objects]
        x = _load_images(manifest, rows, loaded.spec, data_root)
        out["rotation"] = chir.rotation_stability(loaded.module, x, loaded.spec.classes, n_passes=rotation_passes,
                                                  n_rotations=rotation_angles, seed=seed)
        out["rotation"].pop("per_galaxy", None)
        out["rotation"].pop("mean_probs", None)
        # MC-dropout predictive spread of the same galaxies; a model without dropout is refused with the reason
        try:
            mc = chir.mc_dropout_predictive(loaded.module, x, n_passes=max(2, rotation_passes), seed=seed,
                                            batch_size=batch_size)
            out["mc_dropout"] = {"n_passes": mc["n_passes"], "n_galaxies": int(len(rows)), "spread": mc["spread"],
                                 "entropy_mean": float(np.mean(mc["entropy"])),
                                 "mutual_information_mean": float(np.mean(mc["mutual_information"]))}
        except chir.NoDropoutError as exc:
            out["skipped"]["mc_dropout"] = str(exc)
    else:
        out["skipped"]["rotation"] = "no labelled spirals (CW/ACW) in the test set"
    return out


@dataclass(frozen=True)
class EvaluationOptions:
    """Settings of :func:`evaluate` (each one may also be passed to it as a keyword argument)."""

    z_edges: Sequence[float] = DEFAULT_Z_EDGES  #: redshift bin edges of the per-bin metrics
    thresholds: Sequence[float] = (0.5, 0.85)  #: probability thresholds of the high-confidence subsets
    data_root: str | Path | None = None  #: resolves ``data://`` image URIs
    log_to_mlflow: bool = True  #: log metrics and artifacts (active run, or a new run of ``experiment``)
    batch_size: int = 32
    #: CVS, mirror, sweep and rotation-stability diagnostics (None: for models with classes CW and ACW)
    chirality_diagnostics_on: bool | None = None
    explain: bool | None = None  #: Grad-CAM / Grad-CAM++ / SmoothGrad panels (None: when ``html``)
    explain_per_class: int = 2  #: most confident correct and wrong examples per class
    explain_target_layer: str | None = None  #: Grad-CAM layer (default: the last convolution)
    sweep_n: int | None = None  #: N of the CVS sweep sets
    sweep_realisations: int = 10
    rotation_passes: int = 10  #: MC-dropout passes per rotation (0 skips the rotation test)
    rotation_angles: int = 8
    rotation_max_objects: int = 200  #: at most this many spirals in the rotation-stability test
    mirror_atol: float = 1e-5
    experiment: str = EVALUATION_EXPERIMENT
    run_name: str | None = None
    seed: int = 0
    html: bool = True  #: write ``report.html``
    calibration_bins: int = 10
    card: bool = True  #: the model card (attached to the registered model version when logging to MLflow)
    #: agreement of the predicted CW/ACW with the winding measurement (None: for models with CW and ACW)
    winding: bool | None = None
    winding_table: pd.DataFrame | None = field(default=None, compare=False)  #: a winding measurement to reuse
    winding_min_confidence: float = 2.0
    #: the class prior the predictions are moved to (#26): ``model`` = the prior the model recorded (its
    #: catalogue's; as trained for a model that recorded none), ``none``/``as-trained``, ``catalogue`` or fractions;
    #: applied to a LoadedModel only when its spec has no prior applied yet
    class_prior: str | dict | None = "model"
    #: the winding ensemble (#26): None = as the model recorded (galmorph.scoring.ensemble.ensemble_for), False = off
    winding_ensemble: bool | None = None
    #: bootstrap resamples of the skill block (the promotion floor's interval); 0 skips the block
    skill_bootstrap: int = 1000


@dataclass(frozen=True)
class _Subject:
    """What :func:`evaluate` evaluates: the loaded model and the manifest (rows in their order)."""

    loaded: Any
    uri: str
    name: str | None
    version: str | None
    classes: list[str]
    manifest: pd.DataFrame
    manifest_name: str


@dataclass
class _Scored:
    """The prediction table of every manifest row and which rows count (``valid``)."""

    pred: pd.DataFrame
    valid: np.ndarray
    counts: dict[str, int]
    quarantine: list
    ensemble: Any = None  #: the winding ensemble applied (None: none)
    winding_table: pd.DataFrame | None = None  #: the measurement it used (reused by the winding report)


def evaluate(model_uri, manifest, out_dir: str | Path, *, options: EvaluationOptions | None = None,
             **overrides) -> EvaluationResult:
    """Evaluate a model (MLflow model URI or :class:`~galmorph.models.io.LoadedModel`) on a labelled
    manifest (path or DataFrame) with ``options`` (:class:`EvaluationOptions`; keyword arguments
    override its fields: ``evaluate(uri, manifest, out, rotation_passes=0)``).

    Metrics: accuracy; precision/recall/F1 per class and macro; one-vs-rest ROC and AUC; confusion
    matrices (counts, normalised); per-redshift-bin accuracy/F1/AUC/ROC (``z_edges``); coverage and
    accuracy at each probability threshold. Chirality models (classes CW/ACW, or
    ``chirality_diagnostics_on=True``) also get the CVS, mirror, sweep and rotation-stability
    diagnostics (rotation stability on at most ``rotation_max_objects`` spirals); ``explain`` (default:
    whenever an HTML report is written) adds Grad-CAM / Grad-CAM++ / SmoothGrad maps of the most
    confident correct and wrong examples per class, one panel per class in the report. Calibration:
    reliability diagram and ECE overall and per redshift bin of the (temperature-scaled) probabilities.
    ``card``: the model card (written next to the report; attached to the registered model version
    when logging to MLflow). ``winding`` (default: chirality models) adds the agreement of the predicted
    CW/ACW with the winding measurement on its confident galaxies (:func:`galmorph.scoring.ensemble.winding_report`;
    ``winding_table``: a measurement of the same objects to reuse) as ``report["winding"]`` and
    ``winding_*`` metrics.

    Rows whose image cannot be read or whose label is not one of the model's classes go to the
    quarantine table with the reason; unlabelled rows are scored but not counted in the metrics.
    """
    opt = replace(options or EvaluationOptions(), **overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subject = _subject(model_uri, manifest, opt.class_prior)
    scored = _score(subject, opt)
    report = _report(subject, scored, opt)
    explanations, extra = _explain(report, subject, scored, opt, out_dir)
    metrics = _finish_report(report, subject, opt)
    paths = _write_outputs(report, scored, explanations, opt, out_dir, extra)
    run_id = None
    if opt.log_to_mlflow:
        run_id = log_evaluation(metrics, paths + list(extra.values()), report["meta"], experiment=opt.experiment,
                                run_name=opt.run_name)
        if opt.card and subject.name and subject.version:
            _attach_card(report["model_card"], subject.name, subject.version, run_id)
    html_path = out_dir / "report.html"
    log.info("evaluation of %s: accuracy %.4f, macro F1 %.4f, macro AUC %.4f (report %s)", subject.uri,
             metrics.get("accuracy", float("nan")), metrics.get("f1_macro", float("nan")),
             metrics.get("auc_macro", float("nan")), html_path)
    return EvaluationResult(metrics=metrics, report=report, predictions=scored.pred, predictions_path=paths[0],
                            report_json=paths[2], report_html=html_path, quarantine_path=paths[1],
                            model_uri=subject.uri, model_name=subject.name, model_version=subject.version,
                            run_id=run_id, extra_paths=extra)


def _subject(model_uri, manifest, class_prior: str | dict | None = "model") -> _Subject:
    """Read the manifest (a path or a DataFrame; no rows is an error) and load the model with ``class_prior``
    (a LoadedModel gets it only when its spec has no prior applied yet)."""
    from galmorph.models.io import LoadedModel, load_for_inference, with_class_prior

    if isinstance(manifest, (str, Path)):
        manifest_name = str(manifest)
        manifest = read_manifest(manifest)
    else:
        manifest_name = "<DataFrame>"
    manifest = manifest.reset_index(drop=True)
    if len(manifest) == 0:
        raise ValueError(f"manifest {manifest_name} has no rows to evaluate")
    if isinstance(model_uri, LoadedModel):
        loaded = model_uri
        if not loaded.spec.class_prior and "applied_class_prior" not in (loaded.spec.extra or {}):
            loaded = replace(loaded, spec=with_class_prior(loaded.spec, class_prior))
    else:
        loaded = load_for_inference(str(model_uri), class_prior=class_prior)
    name, version = _model_name_version(loaded, loaded.uri)
    classes = [str(c) for c in loaded.spec.classes]
    log.info("evaluating %s (%s v%s) on %s (%d rows)", loaded.uri, name, version, manifest_name, len(manifest))
    return _Subject(loaded, loaded.uri, name, version, classes, manifest, manifest_name)


def _score(subject: _Subject, opt: EvaluationOptions) -> _Scored:
    """Predict every row; rows with an unreadable image or a label outside the model's classes are
    quarantined, unlabelled rows are not counted. No countable row is an error."""
    from galmorph.scoring.inference import predict_manifest

    manifest, classes = subject.manifest, subject.classes
    pred = predict_manifest(subject.loaded, manifest, batch_size=opt.batch_size, data_root=opt.data_root)
    ens, table = _apply_ensemble(subject, pred, opt)
    pred["z"] = manifest["z"].to_numpy(dtype=float) if "z" in manifest.columns else np.nan
    pred["z_bin"] = assign_z_bin(pred["z"], opt.z_edges).to_numpy()
    if "label" not in pred.columns:
        pred["label"] = None
    scored = pred["error"].isna().to_numpy()
    labelled = pred["label"].notna().to_numpy()
    known = pred["label"].astype("string").isin(classes).fillna(False).to_numpy().astype(bool)
    valid = scored & labelled & known
    qrecords = []
    for i in np.flatnonzero(~scored):
        qrecords.append(quarantine_record(pred.at[i, "object_id"], "evaluate", f"image unreadable: {pred.at[i, 'error']}",
                                          manifest.iloc[i]))
    for i in np.flatnonzero(scored & labelled & ~known):
        qrecords.append(quarantine_record(pred.at[i, "object_id"], "evaluate",
                                          f"label {pred.at[i, 'label']!r} is not one of the model classes {classes}",
                                          manifest.iloc[i]))
    pred["evaluated"] = valid
    counts = {"total": int(len(pred)), "evaluated": int(valid.sum()), "image_errors": int((~scored).sum()),
              "unlabelled": int((scored & ~labelled).sum()), "unknown_label": int((scored & labelled & ~known).sum())}
    assert counts["evaluated"] + counts["image_errors"] + counts["unlabelled"] + counts["unknown_label"] == len(pred)
    if counts["evaluated"] == 0:
        seen = sorted(pred["label"].dropna().astype(str).unique())[:10]
        raise ValueError(f"no row of {subject.manifest_name} can be evaluated by {subject.uri}: {counts} "
                         f"(model classes {classes}; labels seen {seen})")
    if qrecords:
        log.warning("%d rows quarantined (%s)", len(qrecords), {k: v for k, v in counts.items() if k != "total"})
    return _Scored(pred, valid, counts, qrecords, ens, table)


def _apply_ensemble(subject: _Subject, pred: pd.DataFrame, opt: EvaluationOptions):
    """The winding ensemble the predictions get (#26; :func:`galmorph.scoring.ensemble.ensemble_for`), applied
    to ``pred`` in place (``p_<class>``, ``pred``, ``p_pred``; ``p_CW_network``/``p_ACW_network`` kept):
    ``(ensemble or None, the winding measurement or None)``."""
    from galmorph.scoring.ensemble import ensemble_for, measure_winding_table

    ens = ensemble_for(subject.loaded.spec, opt.winding_ensemble)
    if ens is None:
        return None, None
    classes = subject.classes
    table = opt.winding_table if opt.winding_table is not None else measure_winding_table(
        subject.manifest, data_root=opt.data_root, options=ens.options)
    zmap = pd.Series(table["winding_z"].to_numpy(dtype=float), index=table["object_id"].astype(str))
    z = zmap[~zmap.index.duplicated()].reindex(pred["object_id"].astype(str)).to_numpy(dtype=float)
    pcols = [f"p_{c}" for c in classes]
    ok = pred["error"].isna().to_numpy() if "error" in pred.columns else np.ones(len(pred), dtype=bool)
    p = pred[pcols].to_numpy(dtype=float)
    from galmorph.models.io import prior_logit_shift

    # the stacked rule works on the probabilities as trained: it takes the class prior off and puts it back
    comb, _applied = ens.combine(p[ok], z[ok], classes, prior_logit_shift(subject.loaded.spec))
    pred["p_CW_network"], pred["p_ACW_network"] = pred["p_CW"], pred["p_ACW"]
    pred["pred_network"] = pred["pred"]  # the network alone (its class prior): the floor judges it too
    p[ok] = comb
    for j, c in enumerate(pcols):
        pred[c] = p[:, j]
    arg = np.nan_to_num(p, nan=-1.0).argmax(axis=1)
    pred.loc[ok, "pred"] = np.asarray(classes, dtype=object)[arg[ok]]
    if "p_pred" in pred.columns:
        pred.loc[ok, "p_pred"] = p[ok, arg[ok]]
    return ens, table


def skill_vs_majority(y: Sequence, yp: Sequence, classes: Sequence[str], prior: dict[str, float] | None = None,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Skill of the predictions ``yp`` of labels ``y`` against the majority-class predictor at the class
    proportions ``prior`` (the catalogue's; None or {}: the held-out set's own). Each held-out galaxy is
    weighted by ``prior[label] / (held-out fraction of label)`` (the held-out set re-weighted to the
    catalogue's proportions; classes absent from the held-out set are left out and the prior renormalised),
    and the held-out set is resampled ``n_boot`` times at those weights for a ``level`` percentile interval.

    Returns ``{"accuracy", "f1_macro"}`` each ``{"value", "ci_low", "ci_high"}``, ``majority`` (the class with
    the largest prior and its ``accuracy``/``f1_macro`` at those proportions), ``chance`` (the expected
    ``accuracy``/``f1_macro`` of the same prediction frequencies independent of the image), ``proportions`` (used),
    ``proportions_source`` (``catalogue`` or ``held-out``), ``n``, ``n_boot``, ``level``."""
    y = np.asarray([str(v) for v in y], dtype=object)
    yp = np.asarray([str(v) for v in yp], dtype=object)
    classes = [str(c) for c in classes]
    n = len(y)
    held = {c: float(np.mean(y == c)) if n else 0.0 for c in classes}
    present = [c for c in classes if held[c] > 0]
    use_prior = bool(prior) and sum(float(prior.get(c, 0.0)) for c in present) > 0
    if use_prior:
        tot = sum(float(prior.get(c, 0.0)) for c in present)
        props = {c: float(prior.get(c, 0.0)) / tot for c in present}
    else:
        props = {c: held[c] for c in present}
    w = np.array([props.get(c, 0.0) / held[c] if held.get(c, 0) > 0 else 0.0 for c in y], dtype=float)
    yi = np.array([classes.index(c) for c in y]) if n else np.zeros(0, dtype=int)
    pi = np.array([classes.index(c) if c in classes else -1 for c in yp]) if n else np.zeros(0, dtype=int)
    supported = [classes.index(c) for c in present if props[c] > 0]

    def scores(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # W: (B, n) weights -> accuracy, macro-F1
        tot = W.sum(axis=1)
        acc = (W * (yi == pi)).sum(axis=1) / np.maximum(tot, 1e-300)
        f1s = []
        for k in supported:
            tp = (W * ((yi == k) & (pi == k))).sum(axis=1)
            fp = (W * ((yi != k) & (pi == k))).sum(axis=1)
            fn = (W * ((yi == k) & (pi != k))).sum(axis=1)
            den = 2 * tp + fp + fn
            f1s.append(np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0))
        return acc, np.mean(f1s, axis=0) if f1s else np.full(len(W), np.nan)

    acc0, f10 = scores(w[None, :])
    out: dict[str, Any] = {"n": int(n), "n_boot": int(n_boot), "level": float(level), "proportions": props,
                           "proportions_source": "catalogue" if use_prior else "held-out"}
    alpha = (1 - level) / 2
    if n_boot > 0 and n > 0 and w.sum() > 0:
        rng = np.random.default_rng(seed)
        W = rng.multinomial(n, w / w.sum(), size=int(n_boot)).astype(float)
        acc_b, f1_b = scores(W)
        lo = lambda v: float(np.quantile(v, alpha))  # noqa: E731
        hi = lambda v: float(np.quantile(v, 1 - alpha))  # noqa: E731
        out["accuracy"] = {"value": float(acc0[0]), "ci_low": lo(acc_b), "ci_high": hi(acc_b)}
        out["f1_macro"] = {"value": float(f10[0]), "ci_low": lo(f1_b), "ci_high": hi(f1_b)}
    else:
        out["accuracy"] = {"value": float(acc0[0]), "ci_low": float("nan"), "ci_high": float("nan")}
        out["f1_macro"] = {"value": float(f10[0]), "ci_low": float("nan"), "ci_high": float("nan")}
    if present:
        major = max(present, key=lambda c: props[c])
        pm = props[major]
        k = len(supported)
        out["majority"] = {"class": major, "accuracy": pm, "f1_macro": (2 * pm / (1 + pm)) / k if k else 0.0}
        # chance: the candidate's own predictions, independent of the image (its prediction frequencies at
        # these proportions, shuffled across the galaxies): what a model without skill scores in expectation
        q = {classes[k_]: float((w * (pi == k_)).sum() / max(w.sum(), 1e-300)) for k_ in supported}
        f1c = [2 * props[c] * q[c] / (props[c] + q[c]) if props[c] + q[c] > 0 else 0.0 for c in q]
        out["chance"] = {"accuracy": float(sum(props[c] * q[c] for c in q)),
                         "f1_macro": float(np.mean(f1c)) if f1c else 0.0, "prediction_frequencies": q}
    return out


def _report(subject: _Subject, scored: _Scored, opt: EvaluationOptions) -> dict:
    """The report's metadata, counts and metrics, with the chirality and winding diagnostics when on."""
    loaded, classes, pred, valid = subject.loaded, subject.classes, scored.pred, scored.valid
    ev = pred[valid]
    proba = ev[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    y = ev["label"].astype(str).to_numpy()
    temperature = float(getattr(loaded.spec, "temperature", 1.0) or 1.0)
    report: dict = {
        "meta": {"model_uri": subject.uri, "model_name": subject.name, "model_version": subject.version,
                 "run_id_model": loaded.run_id, "task": loaded.spec.task, "arch": loaded.spec.arch, "classes": classes,
                 "chirality_equivariant": bool(loaded.spec.chirality_equivariant),
                 "manifest": subject.manifest_name, "image_size": loaded.spec.image_size,
                 "crop_fraction": loaded.spec.crop_fraction, "temperature": temperature,
                 "encoder_init": _encoder_init(loaded.spec),
                 "manifest_fingerprint": manifest_fingerprint(subject.manifest),
                 "z_edges": list(map(float, opt.z_edges)), "thresholds": list(map(float, opt.thresholds)),
                 **_applied(loaded.spec, scored.ensemble)},
        "counts": scored.counts,
        "classification": classification_metrics(y, proba, classes),
        "redshift_bins": redshift_bin_metrics(y, proba, classes, ev["z"].to_numpy(dtype=float), opt.z_edges),
        "thresholds": threshold_metrics(y, proba, classes, opt.thresholds),
        "calibration": calibration_report(y, proba, classes, ev["z"].to_numpy(dtype=float), opt.z_edges,
                                          n_bins=opt.calibration_bins, temperature=temperature),
    }
    spirals = {chir.CW, chir.ACW} <= set(classes)
    if opt.chirality_diagnostics_on if opt.chirality_diagnostics_on is not None else spirals:
        report["chirality"] = chirality_diagnostics(
            loaded, subject.manifest, pred, valid, data_root=opt.data_root, batch_size=opt.batch_size,
            sweep_n=opt.sweep_n, sweep_realisations=opt.sweep_realisations, rotation_passes=opt.rotation_passes,
            rotation_angles=opt.rotation_angles, rotation_max_objects=opt.rotation_max_objects,
            mirror_atol=opt.mirror_atol, seed=opt.seed)
    if opt.winding if opt.winding is not None else spirals:
        from galmorph.scoring.ensemble import winding_report

        table = scored.winding_table if scored.winding_table is not None else opt.winding_table
        report["winding"] = winding_report(pred, subject.manifest, data_root=opt.data_root, table=table,
                                           min_confidence=opt.winding_min_confidence)
    if opt.skill_bootstrap > 0:  # the promotion floor (#26): the default predictions at the catalogue's proportions
        from galmorph.models.io import model_class_prior

        prior = model_class_prior(loaded.spec) or dict(loaded.spec.class_prior or {})
        report["skill"] = skill_vs_majority(y, ev["pred"].astype(str).to_numpy(), classes, prior,
                                            n_boot=opt.skill_bootstrap, seed=opt.seed)
        if scored.ensemble is not None and "pred_network" in ev.columns:
            # the winding measurement needs no training: the network's own predictions (same class prior, no
            # ensemble), so that the floor can tell a model's skill from the measurement's
            report["skill_network"] = skill_vs_majority(y, ev["pred_network"].astype(str).to_numpy(), classes,
                                                        prior, n_boot=opt.skill_bootstrap, seed=opt.seed)
    return report


def _applied(spec, ens) -> dict[str, Any]:
    """``applied_class_prior``/``applied_ensemble`` (+ ``_label``) of the report's meta (#26)."""
    from galmorph.scoring.batch import applied_defaults

    return applied_defaults(spec, ens)


def _explain(report: dict, subject: _Subject, scored: _Scored, opt: EvaluationOptions,
             out_dir: Path) -> tuple[dict | None, dict[str, Path]]:
    """Explanation maps of the selected examples (``explain``, default: with the HTML report) into
    ``report["explanations"]`` and ``explanations.npz``; returns the maps for the HTML report and the
    extra files written."""
    explanations = None
    extra: dict[str, Path] = {}
    if not (opt.explain if opt.explain is not None else opt.html):
        return explanations, extra
    from galmorph.evaluation.explain import explain_examples, select_examples

    classes, pred, valid = subject.classes, scored.pred, scored.valid
    ex = select_examples(pred[valid].reset_index(drop=True), classes, opt.explain_per_class)
    if not len(ex):
        report["explanations"] = {"skipped": "no evaluated examples"}
        return explanations, extra
    rows = np.flatnonzero(valid)[ex["row"].to_numpy()]
    ex["row"] = rows
    x = _load_images(subject.manifest, rows, subject.loaded.spec, opt.data_root)
    maps = explain_examples(subject.loaded.module, x, ex, classes, target_layer=opt.explain_target_layer)
    explanations = {"examples": ex, "maps": maps, "images": x.numpy()}
    extra["explanations"] = out_dir / "explanations.npz"
    np.savez_compressed(extra["explanations"], object_id=ex["object_id"].to_numpy(dtype=str),
                        kind=ex["kind"].to_numpy(dtype=str), images=x.numpy(),
                        **{k: v for k, v in maps.items() if isinstance(v, np.ndarray)})
    report["explanations"] = {"target_layer": maps["target_layer"], "views": maps.get("views", []),
                              "examples": ex.to_dict(orient="records"),
                              **({"skipped": maps["skipped"]} if "skipped" in maps else {})}
    return explanations, extra


def _finish_report(report: dict, subject: _Subject, opt: EvaluationOptions) -> dict[str, float]:
    """Add the model card (with the training record when logging to MLflow) and the flat metrics
    (``report["metrics"]``, also returned)."""
    training = {}
    if opt.card and opt.log_to_mlflow:
        from galmorph.evaluation.card import training_record

        training = training_record(subject.loaded.run_id)
    if opt.card:
        from galmorph.evaluation.card import build_model_card

        report["model_card"] = build_model_card(report, training)
    metrics = flatten_metrics(report)
    if "winding" in report:
        from galmorph.scoring.ensemble import winding_metrics

        metrics.update(winding_metrics(report["winding"]))
    report["metrics"] = metrics
    return metrics


def _write_outputs(report: dict, scored: _Scored, explanations: dict | None, opt: EvaluationOptions,
                   out_dir: Path, extra: dict[str, Path]) -> list[Path]:
    """Write the predictions, the quarantine table, report.json, report.html (with ``html``) and the
    model card (with ``card``, added to ``extra``); returns the paths to log besides ``extra``:
    predictions, quarantine, report.json[, report.html]."""
    pred_path = out_dir / "predictions.parquet"
    scored.pred.to_parquet(pred_path, index=False)
    q_path = write_quarantine(scored.quarantine, out_dir / "quarantine.parquet")
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(finite_json(report), indent=1, default=json_default))
    html_path = out_dir / "report.html"
    if opt.html:
        from galmorph.evaluation.report import build_report_html

        html_path.write_text(build_report_html(report, explanations), encoding="utf-8")
    if opt.card:
        from galmorph.evaluation.card import card_markdown

        card_paths = [out_dir / "model_card.json", out_dir / "model_card.md"]
        card_paths[0].write_text(json.dumps(finite_json(report["model_card"]), indent=1, default=json_default))
        card_paths[1].write_text(card_markdown(report["model_card"]), encoding="utf-8")
        extra["model_card"] = card_paths[0]
        extra["model_card_md"] = card_paths[1]
    return [pred_path, q_path, json_path] + ([html_path] if opt.html else [])


def _attach_card(card: dict, name: str, version: str, run_id: str) -> None:
    """Attach the model card to the registered model version and tag it with the evaluation run
    (best effort: the evaluation stands without the registry update)."""
    from galmorph.evaluation.card import attach_card

    try:
        attach_card(card, name, version, run_id=None)
        mlflow_client().set_model_version_tag(name, str(version), "galmorph.card_run_id", run_id)
    except Exception as exc:  # noqa: BLE001 - the evaluation stands without the registry update
        log.warning("model card not attached to %s v%s: %s", name, version, exc)


def log_evaluation(metrics: dict[str, float], artifacts: Sequence[Path], meta: dict,
                   experiment: str = EVALUATION_EXPERIMENT, run_name: str | None = None,
                   artifact_path: str = "evaluation") -> str:
    """Log every finite metric and the artifacts to the active MLflow run, or to a new run of
    ``experiment`` tagged with the model name/version. Returns the run id."""
    import mlflow

    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    tags = {"galmorph.kind": "evaluation", "galmorph.model_uri": str(meta.get("model_uri")),
            "galmorph.model_name": str(meta.get("model_name")), "galmorph.model_version": str(meta.get("model_version")),
            "galmorph.task": str(meta.get("task")), "galmorph.manifest": str(meta.get("manifest")),
            "galmorph.manifest_fingerprint": str(meta.get("manifest_fingerprint")),
            **{k: str(meta[f"{k}_label"]) for k in ("applied_class_prior", "applied_ensemble") if f"{k}_label" in meta}}
    active = mlflow.active_run()
    ctx = None
    if active is None:
        mlflow.set_experiment(experiment)
        ctx = mlflow.start_run(run_name=run_name or f"evaluate-{meta.get('model_name')}-v{meta.get('model_version')}")
        active = ctx.__enter__()
    try:
        mlflow.set_tags(tags)
        items = list(finite.items())
        for i in range(0, len(items), 500):
            mlflow.log_metrics(dict(items[i:i + 500]))
        for p in artifacts:
            mlflow.log_artifact(str(p), artifact_path=artifact_path)
        return active.info.run_id
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


def evaluate_trials(model_uris: Sequence, manifest, out_dir: str | Path, **kwargs) -> tuple[list[EvaluationResult], dict]:
    """Evaluate several models (e.g. the same configuration trained with different seeds) on one
    manifest and aggregate: returns the results and ``{metric: {mean, std, n}}`` (also written to
    ``out_dir/trials.json`` and, as ``<metric>_mean`` / ``_std``, logged when ``log_to_mlflow``)."""
    out_dir = Path(out_dir)
    results = [evaluate(u, manifest, out_dir / f"trial{i}", **kwargs) for i, u in enumerate(model_uris)]
    agg = aggregate_trials([r.metrics for r in results])
    (out_dir / "trials.json").write_text(json.dumps(finite_json({"models": [r.model_uri for r in results],
                                                            "aggregate": agg}), indent=1))
    return results, agg
