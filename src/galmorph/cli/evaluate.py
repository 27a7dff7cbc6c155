"""`galmorph evaluate`: metrics, diagnostics and an HTML report of a model on a labelled test manifest."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import data_root_option, json_option, tracking_uri_option, use_tracking_uri


def parse_edges(text: str | None) -> tuple[float, ...] | None:
    """``"0.01,0.03,0.05"`` -> edges (None when empty)."""
    if not text:
        return None
    try:
        edges = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise click.BadParameter(f"redshift edges must be comma-separated numbers, got {text!r}") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise click.BadParameter(f"redshift edges must be >= 2 increasing values, got {edges}")
    return edges


@main.command("evaluate")
@click.option("--model", "models", multiple=True, required=True,
              help="Model URI (models:/galmorph-<task>@champion, models:/NAME/VERSION, runs:/ID/model) or a task "
                   "name for its champion. Repeat for several trials: each is evaluated and mean ± σ reported.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Labelled test manifest (Parquet).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: <state_dir>/evaluations/<model>].")
@click.option("--z-edges", default=None,
              help="Redshift bin edges, comma-separated [default: 0.01,0.03,0.05,0.07,0.10,0.12,0.14,0.16,0.20].")
@click.option("--thresholds", default="0.5,0.85", show_default=True, help="Probability thresholds, comma-separated.")
@click.option("--chirality-diagnostics/--no-chirality-diagnostics", default=None,
              help="CVS, mirror, sweep and rotation-stability tests [default: on for CW/ACW models].")
@click.option("--rotation-passes", type=click.IntRange(0), default=10, show_default=True,
              help="MC-dropout passes per rotation (0 skips the rotation test).")
@click.option("--rotation-angles", type=click.IntRange(1), default=8, show_default=True,
              help="Rotations evenly spaced in 0-180 degrees.")
@click.option("--rotation-max-objects", type=click.IntRange(1), default=200, show_default=True,
              help="At most this many spirals in the rotation-stability test.")
@click.option("--sweep-n", type=click.IntRange(1), default=None, help="N of the CVS sweep sets [default: max(spirals, 144)].")
@click.option("--explain/--no-explain", default=None,
              help="[default: on with the HTML report] Grad-CAM, Grad-CAM++ and SmoothGrad maps of the most confident "
                                              "correct and wrong examples per class.")
@click.option("--explain-per-class", type=click.IntRange(1), default=2, show_default=True)
@click.option("--target-layer", default=None, help="Grad-CAM target layer (graph node or module name) "
                                                   "[default: the last convolution].")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--class-prior", "class_prior", default="model", show_default=True,
              metavar="model|none|as-trained|catalogue|CLASS=F,...",
              help="The class prior the predictions are moved to: 'model' = the prior the model recorded (its "
                   "catalogue's; models registered before #26 recorded none: as trained), 'none'/'as-trained', or "
                   "fractions. Recorded in report.json (meta.applied_class_prior) and MLflow.")
@click.option("--winding-ensemble/--no-winding-ensemble", "winding_ensemble", default=None,
              help="Chirality: the winding ensemble [default: as the model recorded]. Recorded like the prior.")
@data_root_option()
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow (report files only).")
@tracking_uri_option()
@click.option("--experiment", default="galmorph-evaluation", show_default=True)
@json_option("Print the flat metrics as JSON.")
def evaluate_cmd(models, manifest, out_dir, z_edges, thresholds, chirality_diagnostics, rotation_passes,
                 rotation_angles, rotation_max_objects, sweep_n, explain, explain_per_class, target_layer, batch_size,
                 class_prior, winding_ensemble, data_root, no_mlflow, tracking_uri, experiment, as_json) -> None:
    """Evaluate a model on a labelled test manifest: accuracy, per-class and macro precision/recall/F1,
    ROC/AUC (one-vs-rest), confusion matrices, per-redshift-bin ROC/AUC, results at probability
    thresholds; chirality diagnostics and explanations on request. Writes predictions.parquet,
    quarantine.parquet, report.json and report.html to OUT and logs them (and every number as a
    metric) to MLflow.
    """
    from galmorph.evaluation import EvaluationOptions, evaluate, evaluate_trials
    from galmorph.catalogue.manifest import DEFAULT_Z_EDGES, ManifestError
    from galmorph.promotion.registry import model_ref
    from galmorph.settings import resolve_settings

    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    edges = parse_edges(z_edges) or DEFAULT_Z_EDGES
    try:
        thr = tuple(float(x) for x in thresholds.split(",") if x.strip())
    except ValueError:
        fail(f"--thresholds must be comma-separated numbers, got {thresholds!r}")
    uris = [model_ref(m) for m in models]
    registry = [u for u in uris if u.startswith(("models:/", "runs:/"))]
    if no_mlflow and registry:
        fail(f"--no-mlflow cannot load a registry URI ({registry[0]}); give a local model path or drop "
             "--no-mlflow", 2)
    if not no_mlflow:
        use_tracking_uri(s)
    if out_dir is None:
        tag = uris[0].replace("models:/", "").replace("/", "_").replace("@", "_").replace(":", "_")
        out_dir = s.state_dir / "evaluations" / tag
    opts = EvaluationOptions(z_edges=edges, thresholds=thr, data_root=s.data_root, log_to_mlflow=not no_mlflow,
                             batch_size=batch_size, chirality_diagnostics_on=chirality_diagnostics, explain=explain,
                             explain_per_class=explain_per_class, explain_target_layer=target_layer, sweep_n=sweep_n,
                             rotation_passes=rotation_passes, rotation_angles=rotation_angles,
                             rotation_max_objects=rotation_max_objects, experiment=experiment,
                             class_prior=class_prior, winding_ensemble=winding_ensemble)
    try:
        if len(uris) == 1:
            res = evaluate(uris[0], manifest, out_dir, options=opts)
            out = {"model": res.model_uri, "version": res.model_version, "run_id": res.run_id,
                   "report_html": str(res.report_html), "predictions": str(res.predictions_path),
                   "metrics": res.metrics}
        else:
            results, agg = evaluate_trials(uris, manifest, out_dir, options=opts)
            out = {"models": [r.model_uri for r in results], "trials": str(out_dir / "trials.json"),
                   "aggregate": agg}
    except (ManifestError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if as_json:
        echo_json(out)
        return
    if len(uris) == 1:
        m = out["metrics"]
        click.echo(f"{out['model']} (v{out['version']}): accuracy {m.get('accuracy', float('nan')):.4f}  "
                   f"macro F1 {m.get('f1_macro', float('nan')):.4f}  macro AUC {m.get('auc_macro', float('nan')):.4f}")
        for k in ("chirality_cvs_cvs_pred", "chirality_mirror_passed", "chirality_sweep_slope",
                  "chirality_sweep_intercept", "chirality_rotation_eta_mean"):
            if k in m:
                click.echo(f"  {k}: {m[k]:.4g}")
        click.echo(f"report: {out['report_html']}" + (f"  (MLflow run {out['run_id']})" if out["run_id"] else ""))
    else:
        for k in ("accuracy", "f1_macro", "auc_macro"):
            a = out["aggregate"].get(k)
            if a:
                click.echo(f"{k}: {a['mean']:.4f} ± {a['std']:.4f} (n={a['n']})")
        click.echo(f"trials: {out['trials']}")
