"""`galmorph pipeline`: compile, run (locally or on Kubeflow), upload and schedule the KFP pipelines."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main, resolve_kfp_target
from galmorph.cli.options import data_root_option, json_option, tracking_uri_option
from galmorph.ops import PIPELINES

_NAMES = click.Choice(list(PIPELINES))


@main.group()
def pipeline() -> None:
    """Kubeflow pipelines: training, rescoring, labelling (definitions in pipelines/*.py)."""


@pipeline.command("compile")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the IR YAML packages [default: pipelines/].")
@click.option("--check", is_flag=True, help="Do not write; exit 1 when a committed package is stale.")
@click.argument("names", nargs=-1, type=_NAMES)
def compile_cmd(out_dir: Path | None, check: bool, names: tuple[str, ...]) -> None:
    """Compile the pipelines to KFP IR YAML packages (upload them in the Kubeflow UI)."""
    import tempfile

    from galmorph.ops import compiled_dir
    from galmorph.ops.compile import compile_all, stale_packages

    names = names or PIPELINES
    if check:
        with tempfile.TemporaryDirectory() as tmp:
            compile_all(tmp, names)
            stale = stale_packages(out_dir or compiled_dir(), tmp, names)
        for n, diff in stale.items():
            click.echo(f"stale: {n}\n{diff}", err=True)
        if stale:
            fail(f"{len(stale)} package(s) stale; run `galmorph pipeline compile`")
        click.echo("all packages up to date")
        return
    for p in compile_all(out_dir, names):
        click.echo(f"wrote {p}")


@pipeline.command("run")
@click.argument("name", type=_NAMES)
@click.option("--local", "local_run", is_flag=True, help="Run here with kfp.local (SubprocessRunner).")
@click.option("--host", default=None, help="Kubeflow Pipelines endpoint to submit to [settings.kfp_host].")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Pipeline parameter (repeatable).")
@click.option("--pipeline-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Local runs: where task outputs go [default: <state>/kfp].")
@click.option("--experiment", default="galmorph", show_default=True, help="Kubeflow experiment (--host).")
@click.option("--run-name", default=None, help="Run name (--host).")
@click.option("--runner", type=click.Choice(["subprocess", "docker"]), default="subprocess", show_default=True,
              help="Local runs: components as subprocesses here, or in their images (podman; make images).")
@tracking_uri_option()
@data_root_option()
@json_option()
def run_cmd(name: str, local_run: bool, host: str | None, params: tuple[str, ...], pipeline_root: Path | None,
            experiment: str, run_name: str | None, runner: str, tracking_uri: str | None,
            data_root: Path | None, as_json: bool) -> None:
    """Run pipeline NAME locally (--local, against the local MLflow server) or submit it (--host URL)."""
    from galmorph.ops.run import PipelineParamError, PipelineRunError, parse_param_items, run_local, submit
    from galmorph.settings import resolve_settings

    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    host = resolve_kfp_target(local_run, host, s.kfp_host)
    try:
        raw = parse_param_items(params)
        if local_run and runner == "docker":
            from galmorph.ops.docker_runner import ContainerRunError, run_local_docker

            try:
                res = run_local_docker(name, raw, pipeline_root or s.state_dir / "kfp",
                                       tracking_uri=s.mlflow_tracking_uri, data_root=s.data_root,
                                       state_dir=s.state_dir)
            except ContainerRunError as exc:
                raise PipelineRunError(str(exc)) from exc
        elif local_run:
            res = run_local(name, raw, pipeline_root or s.state_dir / "kfp", tracking_uri=s.mlflow_tracking_uri,
                            data_root=s.data_root, connect_timeout=s.mlflow_connect_timeout)
        else:
            res = submit(name, host, raw, run_name=run_name, experiment=experiment)
    except PipelineParamError as exc:  # a usage error: nothing was run or submitted
        fail(str(exc), 2)
        return
    except PipelineRunError as exc:
        fail(str(exc))
        return
    if as_json:
        echo_json(res)
    elif local_run:
        click.echo(f"pipeline {name} finished in {res['seconds']:.0f} s; outputs under {res['run_dir']}")
        click.echo(f"MLflow UI: {s.mlflow_tracking_uri}")
    else:
        click.echo(f"submitted {name} to {host}: run {res['run_id']}")


@pipeline.command("upload")
@click.option("--host", default=None, help="Kubeflow Pipelines endpoint [settings.kfp_host].")
@click.option("--package-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the compiled packages [default: pipelines/].")
@click.option("--namespace", default=None, help="Kubeflow namespace (multi-user installs).")
def upload_cmd(host: str | None, package_dir: Path | None, namespace: str | None) -> None:
    """Upload every compiled package, or a new version of it (named by its content hash); idempotent."""
    from galmorph.ops.run import PipelineRunError, upload_all
    from galmorph.settings import resolve_settings

    host = host or resolve_settings().kfp_host
    if not host:
        fail("--host URL (or GALMORPH_KFP_HOST) is required")
    try:
        for r in upload_all(host, package_dir, namespace=namespace):
            click.echo(f"{r['pipeline']:24s} {r['action']:12s} {r['version']}")
    except PipelineRunError as exc:
        fail(str(exc))


@pipeline.command("schedule")
@click.argument("name", type=_NAMES)
@click.option("--cron", required=True, help="Cron expression, 5 fields (e.g. '0 3 * * 1') or 6 with seconds.")
@click.option("--host", default=None, help="Kubeflow Pipelines endpoint [settings.kfp_host].")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Pipeline parameter (repeatable).")
@click.option("--experiment", default="galmorph", show_default=True)
@click.option("--job-name", default=None, help="Recurring run name [galmorph-NAME-recurring].")
@click.option("--namespace", default=None, help="Kubeflow namespace (multi-user installs).")
def schedule_cmd(name: str, cron: str, host: str | None, params: tuple[str, ...], experiment: str,
                 job_name: str | None, namespace: str | None) -> None:
    """Create the recurring run of pipeline NAME (replaced when its cron or package changed)."""
    from galmorph.ops.run import PipelineRunError, parse_param_items, schedule
    from galmorph.settings import resolve_settings

    host = host or resolve_settings().kfp_host
    if not host:
        fail("--host URL (or GALMORPH_KFP_HOST) is required")
    try:
        r = schedule(name, cron, host, parse_param_items(params), experiment=experiment, job_name=job_name,
                     namespace=namespace)
    except PipelineRunError as exc:
        fail(str(exc))
        return
    click.echo(f"{r['job_name']}: {r['action']} (cron '{r['cron']}', recurring run {r['recurring_run_id']})")


@pipeline.command("params")
@click.argument("name", type=_NAMES)
def params_cmd(name: str) -> None:
    """List a pipeline's parameters with their types and defaults."""
    from galmorph.ops.run import pipeline_parameters

    for k, (t, d) in pipeline_parameters(name).items():
        click.echo(f"{k:24s} {getattr(t, '__name__', str(t)):6s} {d!r}")
