"""`galmorph score`: streaming, resumable batch scoring of a release manifest."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import data_root_option, json_option, tracking_uri_option, use_tracking_uri


def _shards(ctx: click.Context, param: click.Parameter, text: str | None) -> list[int] | None:
    """``--shards`` through :func:`galmorph.scoring.batch.parse_shard_range` (None: all shards)."""
    if text is None:
        return None
    from galmorph.scoring.batch import parse_shard_range

    try:
        return parse_shard_range(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@main.command("score")
@click.option("--model", "model_uri", required=True,
              help="Model URI: models:/galmorph-<task>@champion, models:/NAME/VERSION, runs:/ID/model or a path. "
                   "A bare task name (chirality) means models:/galmorph-<task>@champion.")
@click.option("--manifest", "manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Manifest of the release to score (Parquet, or CSV with object_id and image_uri).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (shards/, scoring.json; the merged catalogue goes to OUT/catalogue.parquet).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--num-workers", type=click.IntRange(0), default=None,
              help="DataLoader worker processes decoding images [default: settings.num_workers].")
@click.option("--shard-size", type=click.IntRange(1), default=10_000, show_default=True,
              help="Rows per output shard (the unit of resumption).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=0.85, show_default=True,
              help="P_pred at or above which a row is flagged high_confidence.")
@click.option("--shards", default=None, callback=_shards,
              help="Only these shards, e.g. 0-3,7 (used by pipeline workers); an empty or reversed range is an error.")
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:1).")
@click.option("--precision", type=click.Choice(["auto", "verified", "fp32", "channels_last", "bf16", "onnx", "int8"]),
              default="verified", show_default=True,
              help="Inference path. verified: the fastest of channels_last, bf16, ONNX and the draft JPEG decode that "
                   "agrees with fp32 on the agreement images, checked once per model version (when it is promoted, "
                   "else on its first scoring) and recorded on the version; fp32 (with --decode full): the plain "
                   "eager path, no check. Any other is used only when its predictions agree with fp32 (auto: the "
                   "fastest that agrees, checked on every run). Recorded in scoring.json and MLflow.")
@click.option("--decode", type=click.Choice(["full", "draft", "auto"]), default=None,
              help="JPEG decoding: draft = reduced-scale DCT decode when the model input is much smaller "
                   "(checked against the full decode like a precision) [default: auto with --precision verified, "
                   "else full].")
@click.option("--release", default=None, help="Release name recorded in the summary and in MLflow.")
@click.option("--no-merge", is_flag=True, help="Only write shards; do not merge into the catalogue.")
@click.option("--log-mlflow/--no-log-mlflow", default=True, show_default=True,
              help="Record the scored release (summary + catalogue) as an MLflow run.")
@click.option("--winding-ensemble/--no-winding-ensemble", "winding_ensemble", default=None,
              help="Chirality: combine the network with the winding measurement (galmorph.scoring.ensemble): the "
                   "stacker the model fitted on its validation split, else the fixed rule on the CW/ACW odds "
                   "[default: as the model recorded; models registered before #26: off]. Recorded in "
                   "scoring.json, summary.json, the catalogue metadata and MLflow.")
@click.option("--winding-weight", type=click.FloatRange(0), default=None,
              help="Fixed-rule weight: log-odds added per unit of winding z; given, the fixed rule replaces a "
                   "stacker the model recorded [default: the model's recorded ensemble, else 3].")
@click.option("--winding-min-confidence", type=click.FloatRange(0), default=None,
              help="Fixed rule: |winding z| below this leaves the network's output unchanged; given, the fixed "
                   "rule replaces a stacker the model recorded [default: the model's recorded, else 0].")
@click.option("--tta-views", "tta_views", type=click.Choice(["1", "2", "8"]), default=None,
              help="Chirality: test-time views to score with (1, 2 = mirror pair, 8 = 4 rotations x mirror) "
                   "[default: the registered model's own]; recorded in scoring.json.")
@click.option("--class-prior", "class_prior", default="model", show_default=True,
              metavar="model|none|as-trained|catalogue|CLASS=F,...",
              help="Move the probabilities to the class prior of the population scored (Saerens et al. 2002): "
                   "'model' = the prior the model recorded (its training catalogue's before down-sampling/class "
                   "balancing; a model registered before #26 recorded none and scores as trained), 'none' or "
                   "'as-trained' = as trained, or fractions such as CW=0.06,ACW=0.06,other=0.88. Recorded in "
                   "scoring.json, summary.json, the catalogue metadata and MLflow (applied_class_prior).")
@click.option("--overwrite", is_flag=True, help="Discard shards of an earlier, different scoring run in OUT.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@tracking_uri_option()
@data_root_option()
@json_option()
def score_cmd(model_uri: str, manifest: Path, out_dir: Path, batch_size: int, num_workers: int | None,
              shard_size: int, threshold: float, shards: list[int] | None, device: str, precision: str,
              decode: str | None,
              release: str | None,
              no_merge: bool, log_mlflow: bool, winding_ensemble: bool | None, winding_weight: float | None,
              winding_min_confidence: float | None, tta_views: str | None, class_prior: str, overwrite: bool,
              no_progress: bool, tracking_uri: str | None,
              data_root: Path | None, as_json: bool) -> None:
    """Score a release manifest with a registered model into Parquet shards, then merge the catalogue.

    Resumable: after an interruption (even kill -9) run the same command again; completed shards are
    kept and the rest is scored. Unreadable images are quarantined with their reason. Chirality runs
    write the release's CVS = (n_ACW - n_CW)/sqrt(n_ACW + n_CW) with its uncertainty to summary.json.
    """
    from galmorph.catalogue.manifest import ManifestError
    from galmorph.promotion.registry import model_ref
    from galmorph.scoring.batch import ScoringError
    from galmorph.scoring.run import ScoringJob, run_scoring
    from galmorph.settings import resolve_settings

    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    use_tracking_uri(s)
    decode = decode or ("auto" if precision == "verified" else "full")
    job = ScoringJob(model=model_ref(model_uri), manifest=manifest, out_dir=out_dir, batch_size=batch_size,
                     num_workers=s.num_workers if num_workers is None else num_workers, shard_size=shard_size,
                     threshold=threshold, shards=shards, data_root=s.data_root, device=device, precision=precision,
                     decode=decode, tta_views=int(tta_views) if tta_views is not None else None,
                     class_prior=class_prior, winding_ensemble=winding_ensemble, winding_weight=winding_weight,
                     winding_min_confidence=winding_min_confidence, overwrite=overwrite, progress=not no_progress,
                     merge=not no_merge, release=release, log_mlflow=log_mlflow, tracking_uri=s.mlflow_tracking_uri)
    try:
        run = run_scoring(job)
    except (ManifestError, ScoringError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    if as_json:
        echo_json(run.to_dict())
    else:
        _print_run(run)


def _print_run(run) -> None:
    """The human summary of a :class:`galmorph.scoring.run.ScoringRun`."""
    res = run.scoring
    click.echo(f"scored {res.n_scored} rows, quarantined {res.n_quarantined} "
               f"({len(res.shards_skipped)} shard(s) resumed) at {res.images_per_s:.1f} img/s")
    if run.merged is not None:
        click.echo(f"catalogue: {run.merged.catalogue}")
        cv = run.merged.summary_data.get("cvs")
        if cv:
            click.echo(f"CVS = {cv['cvs']:.2f} +/- {cv['sigma']:.2f} (n_ACW={cv['n_acw']}, n_CW={cv['n_cw']})")
        sd = run.merged.summary_data
        click.echo(f"applied: class prior {sd.get('applied_class_prior_label', 'none')}; "
                   f"ensemble {sd.get('applied_ensemble_label', 'off')}")
    click.echo(f"inference path: {res.precision}, {res.decode} decode")
