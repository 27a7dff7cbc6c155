"""``galmorph drift``: drift of a current set against a reference, per redshift bin and survey."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import data_root_option, json_option, tracking_uri_option, use_tracking_uri


@main.command("drift")
@click.option("--reference", "reference", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Reference SET: a manifest, scored table or drift-features table (Parquet/CSV).")
@click.option("--current", "current", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Current SET (same kinds); features are computed when the table has none.")
@click.option("--by", "by", default=None,
              help="Comma-separated group-by columns [default: params.yaml drift.by = z_bin,survey].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder for reports and summary [default: <state>/drift/<release or time>].")
@click.option("--release", default=None, help="Release name (snapshot tag release:<name>).")
@click.option("--model-version", default=None, help="Model version that scored the sets (tag model:<v>).")
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Evidently workspace folder [default: settings.evidently_workspace].")
@click.option("--project", default=None, help="Evidently project name [default: params drift.project].")
@click.option("--no-workspace", is_flag=True, help="Do not add snapshots to an Evidently workspace.")
@click.option("--mlflow-run-id", default=None, help="MLflow run (e.g. the scoring run) to log drift metrics to.")
@tracking_uri_option()
@data_root_option()
@click.option("--params", "params_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Params file holding the `drift:` thresholds [default: settings.params_file].")
@click.option("--drift-share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Override drift.drift_share (share of drifted columns that means drift).")
@click.option("--max-drifted-columns", type=click.IntRange(1), default=None,
              help="Override drift.max_drifted_columns (this many drifted columns also means drift).")
@click.option("--min-group-size", type=click.IntRange(2), default=None, help="Override drift.min_group_size.")
@click.option("--num-workers", type=click.IntRange(0), default=None,
              help="Processes measuring image features [default: settings.num_workers].")
@click.option("--no-fail", is_flag=True, help="Exit 0 even when drift is found (the verdict is still printed).")
@json_option("Print the summary as JSON instead of a table.")
def drift_cmd(reference: Path, current: Path, by: str | None, out_dir: Path | None, release: str | None,
              model_version: str | None, workspace: Path | None, project: str | None, no_workspace: bool,
              mlflow_run_id: str | None, tracking_uri: str | None, data_root: Path | None,
              params_file: Path | None, drift_share: float | None, max_drifted_columns: int | None,
              min_group_size: int | None, num_workers: int | None, no_fail: bool, as_json: bool) -> None:
    """Compare a CURRENT set with a REFERENCE set overall and per group (redshift bin, survey).

    Writes Evidently reports (HTML + JSON) per group, summary.json / summary.md / verdict.txt,
    adds the reports as snapshots to the Evidently workspace project (its dashboard panels come
    from monitoring/dashboards.py) and logs drift metrics to --mlflow-run-id.

    Exit code: 0 no drift, 3 drift (drift.exit_code_drift; --no-fail gives 0), 1 bad input.
    """
    from datetime import datetime, timezone

    from galmorph.drift import DriftConfig, DriftInputError, run_drift
    from galmorph.catalogue.manifest import ManifestError
    from galmorph.settings import resolve_settings
    from galmorph.ops.stack import healthy

    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    try:
        cfg = DriftConfig.from_params(params_file or s.params_file, drift_share=drift_share,
                                      max_drifted_columns=max_drifted_columns, min_group_size=min_group_size)
    except (ValueError, OSError) as exc:
        fail(f"drift thresholds: {exc}")
    groups = tuple(b.strip() for b in by.split(",") if b.strip()) if by is not None else cfg.by
    stamp = release or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir or (s.state_dir / "drift" / stamp)
    ws = None if no_workspace else (workspace or s.evidently_workspace)
    ui_url = f"http://{s.host}:{s.evidently_port}"
    if mlflow_run_id:
        use_tracking_uri(s)
    try:
        res = run_drift(reference, current, by=groups, config=cfg, out_dir=out, release=release,
                        model_version=model_version, workspace=ws, project=project, mlflow_run_id=mlflow_run_id,
                        data_root=s.data_root, num_workers=s.num_workers if num_workers is None else num_workers,
                        ui_url=ui_url if ws is not None and healthy(ui_url + "/") else None)
    except (DriftInputError, ManifestError, FileNotFoundError) as exc:
        fail(str(exc))
    except OSError as exc:  # an unwritable output/state folder (read-only, not a folder, disk full)
        fail(f"cannot write the drift outputs under {out}: {exc.strerror or exc}"
             + (f" ({exc.filename})" if exc.filename else ""))
    if as_json:
        echo_json(res.to_dict())
    else:
        click.echo(res.table())
        click.echo(f"\nverdict: {res.verdict}   (reports and summary in {out})")
        if res.project_id:
            click.echo(f"Evidently project {res.project_id} in {ws}; `galmorph monitor serve` shows the dashboard")
    sys.exit(0 if no_fail else res.exit_code)
