"""`galmorph release watch`: start one rescoring run per new survey release."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main, resolve_kfp_target
from galmorph.cli.options import data_root_option, tracking_uri_option


@main.group("release")
def release_group() -> None:
    """Survey releases: watch a folder and rescore each new release once."""


@release_group.command("watch")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default=None, help="Submit to this Kubeflow Pipelines endpoint [settings.kfp_host].")
@click.option("--local", "local_run", is_flag=True, help="Run the rescoring pipeline here with kfp.local.")
@click.option("--once", is_flag=True, help="One pass, then exit (CronJob mode).")
@click.option("--interval", type=click.FloatRange(1), default=300, show_default=True, help="Seconds between passes.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Extra rescoring pipeline parameter.")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Processed-release state [<state>/release-watch/state.json].")
@click.option("--cluster-path", default=None, help="Path of DIR as the pipeline pods see it (--host).")
@click.option("--experiment", default="galmorph", show_default=True)
@click.option("--namespace", default=None, help="Kubeflow namespace (multi-user installs; with --host).")
@tracking_uri_option()
@data_root_option()
def watch_cmd(directory: Path, host: str | None, local_run: bool, once: bool, interval: float,
              params: tuple[str, ...], state_file: Path | None, cluster_path: str | None, experiment: str,
              namespace: str | None, tracking_uri: str | None, data_root: Path | None) -> None:
    """Watch DIRECTORY for release folders (DIR/<release>/release.json or manifest.parquet) and start
    exactly one rescoring run per release (idempotent across restarts and concurrent watchers)."""
    from galmorph.ops.run import PipelineRunError, parse_param_items
    from galmorph.ops.release import StateError, host_starter, local_starter, watch
    from galmorph.settings import resolve_settings

    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    host = resolve_kfp_target(local_run, host, s.kfp_host)
    state = state_file or s.state_dir / "release-watch" / "state.json"
    try:
        raw = parse_param_items(params)
        if local_run:
            start, find = local_starter(raw, s.state_dir / "kfp", tracking_uri=s.mlflow_tracking_uri,
                                        data_root=s.data_root, connect_timeout=s.mlflow_connect_timeout), None
        else:
            start, find = host_starter(host, raw, experiment=experiment, release_root_in_cluster=cluster_path,
                                       namespace=namespace)
    except PipelineRunError as exc:  # bad --param, or the Kubeflow endpoint unreachable
        fail(str(exc))
        return
    try:
        done = watch(directory, state, start, find, once=once, interval=interval)
    except (FileNotFoundError, StateError) as exc:
        fail(str(exc))
        return
    echo_json(done)
